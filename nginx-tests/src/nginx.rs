//! Starting and stopping nginx with a config from a template, and `nginx -t`.
//!
//! Every test server has two `server` blocks on free ports of 127.0.0.1: one with `ktls on;` and
//! one with `ktls off;` (nginx's own send path), identical otherwise, so each case runs on both
//! paths in the same run and a difference between them is a finding.

use crate::cert;
use crate::config::{binaries, expect_kernel, module_loaded};
use crate::logs::{self, AccessEntry, Ktls};
use crate::workdir::WorkDir;
use std::ffi::CStr;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// What a test adds to the common config.
pub struct Setup {
    name: String,
    main: String,
    http: String,
    server: String,
    listen: String,
    http2: bool,
    files: Vec<(String, Vec<u8>)>,
}

impl Setup {
    pub fn new(name: &str) -> Setup {
        Setup {
            name: name.to_string(),
            main: String::new(),
            http: String::new(),
            server: String::new(),
            listen: String::new(),
            http2: false,
            files: Vec::new(),
        }
    }

    /// Directives for the main context (`thread_pool`, ...).
    pub fn main(mut self, text: &str) -> Setup {
        self.main.push_str(text);
        self.main.push('\n');
        self
    }

    /// Directives for the `http` block.
    pub fn http(mut self, text: &str) -> Setup {
        self.http.push_str(text);
        self.http.push('\n');
        self
    }

    /// Directives (and `location`s) for both `server` blocks.
    pub fn server(mut self, text: &str) -> Setup {
        self.server.push_str(text);
        self.server.push('\n');
        self
    }

    /// Extra `listen` parameters, e.g. `sndbuf=16k`.
    pub fn listen(mut self, params: &str) -> Setup {
        self.listen = format!(" {params}");
        self
    }

    pub fn http2(mut self) -> Setup {
        self.http2 = true;
        self
    }

    /// A file under the document root (relative path, without leading slash).
    pub fn file(mut self, rel: &str, content: Vec<u8>) -> Setup {
        self.files.push((rel.to_string(), content));
        self
    }

    /// The whole nginx.conf for a prefix and ports (`[ktls on, ktls off]`).
    pub fn render(&self, prefix: &Path, ports: [u16; 2]) -> String {
        let b = binaries();
        let p = prefix.display();
        let load = b
            .module
            .as_ref()
            .map(|m| format!("load_module {};\n", m.display()))
            .unwrap_or_default();
        let servers: String = Ktls::BOTH
            .iter()
            .zip(ports)
            .map(|(k, port)| {
                let h2_listen = if self.http2 && !b.has_http2_directive() { " http2" } else { "" };
                let h2_directive = if self.http2 && b.has_http2_directive() { "http2 on;" } else { "" };
                let ktls = match (module_loaded(), k) {
                    (false, _) => "",
                    (true, Ktls::On) => "ktls on;",
                    (true, Ktls::Off) => "ktls off;",
                };
                format!(
                    "    server {{\n        listen 127.0.0.1:{port} ssl{h2_listen}{listen};\n        \
                     {h2_directive}\n        {ktls}\n        root {p}/html;\n{server}    }}\n",
                    listen = self.listen,
                    server = indent(&self.server, 8),
                )
            })
            .collect();
        format!(
            "{load}{user}{main}worker_processes 1;\ndaemon off;\nmaster_process on;\npid {p}/nginx.pid;\n\
             error_log {p}/logs/error.log debug;\n\
             events {{\n    worker_connections 1024;\n}}\n\
             http {{\n    {log_format}\n    access_log {p}/logs/access.log ktls;\n\
             \x20   client_body_temp_path {p}/tmp/client_body;\n    proxy_temp_path {p}/tmp/proxy;\n\
             \x20   fastcgi_temp_path {p}/tmp/fastcgi;\n    uwsgi_temp_path {p}/tmp/uwsgi;\n\
             \x20   scgi_temp_path {p}/tmp/scgi;\n\
             \x20   types {{\n        text/html html shtml;\n    }}\n\
             \x20   default_type application/octet-stream;\n    sendfile on;\n\
             \x20   keepalive_requests 10000;\n\
             \x20   ssl_certificate {p}/cert.pem;\n    ssl_certificate_key {p}/key.pem;\n\
             \x20   ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_conf_command Options KTLS;\n\
             \x20   ssl_session_cache shared:SSL:1m;\n{http}{servers}}}\n",
            user = user_directive(),
            main = self.main,
            log_format = logs::log_format(),
            http = indent(&self.http, 4),
        )
    }

    /// A fresh work dir with nginx's directories and the certificate.
    fn work_dir(&self) -> WorkDir {
        let dir = WorkDir::new(&self.name);
        for rel in ["logs", "tmp", "html"] {
            dir.subdir(rel);
        }
        let c = cert::localhost();
        dir.write("cert.pem", &c.cert);
        dir.write("key.pem", &c.key);
        dir
    }

    /// Writes the work dir (cert, files, config) and starts nginx; retries with other ports if
    /// one was taken between choosing and binding it (tests run in parallel).
    pub fn start(self) -> Nginx {
        let dir = self.work_dir();
        for (rel, content) in &self.files {
            if let Some(parent) = Path::new(rel)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                dir.subdir(&format!("html/{}", parent.display()));
            }
            dir.write(&format!("html/{rel}"), content);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = free_ports();
            let conf = dir.write("nginx.conf", self.render(dir.path(), ports).as_bytes());
            match spawn(dir.path(), &conf, ports) {
                Ok(child) => {
                    return Nginx {
                        dir,
                        child: Some(child),
                        ports,
                    }
                }
                Err(e) if attempt < 3 && e.contains("Address already in use") => continue,
                Err(e) => panic!("nginx did not start: {e}"),
            }
        }
    }

    /// Writes the config to a fresh work dir and runs `nginx -t` on it.
    pub fn config_test(self) -> ConfigTest {
        let dir = self.work_dir();
        let text = self.render(dir.path(), free_ports());
        config_test(&binaries().nginx, dir, &text)
    }
}

fn indent(text: &str, n: usize) -> String {
    text.lines().map(|l| format!("{:n$}{l}\n", "")).collect()
}

/// As root, workers run as `nobody` with its primary group (`nogroup` on Debian: a bare
/// `user nobody;` would look for a group named `nobody`), the way nginx is run in production,
/// which is why the work dirs are 0755 and the files 0644. Not root: `user` does not apply.
fn user_directive() -> String {
    // SAFETY: getpwnam/getgrgid return pointers to static storage, read at once; test processes
    // do not call them from other threads (the config is rendered on the test's own thread, and
    // a concurrent call could only give another entry's data, not undefined memory).
    unsafe {
        if libc::geteuid() != 0 {
            return String::new();
        }
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(!pw.is_null(), "no user nobody");
        let gr = libc::getgrgid((*pw).pw_gid);
        assert!(!gr.is_null(), "no group for nobody");
        let group = CStr::from_ptr((*gr).gr_name).to_string_lossy().into_owned();
        format!("user nobody {group};\n")
    }
}

/// Two ports free now and different from each other: both are bound at once while they are
/// chosen, as the kernel may hand a port it just freed out again.
fn free_ports() -> [u16; 2] {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let (a, b) = (bind(), bind());
    [a, b].map(|l| l.local_addr().expect("bound address").port())
}

/// How long nginx may take to start and stop: UML's system calls are slow.
fn startup_limit() -> Duration {
    Duration::from_secs(if expect_kernel() { 60 } else { 15 })
}

fn spawn(prefix: &Path, conf: &Path, ports: [u16; 2]) -> Result<Child, String> {
    let stderr_path = prefix.join("logs/stderr.log");
    let stderr = fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
    let mut child = Command::new(&binaries().nginx)
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        // Its own process group, so that a master that does not stop can be killed together
        // with its workers.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", binaries().nginx.display()))?;
    let deadline = Instant::now() + startup_limit();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let err = fs::read_to_string(&stderr_path).unwrap_or_default();
            return Err(format!("nginx exited with {status}: {err}"));
        }
        let up = ports.iter().all(|&p| {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], p)),
                Duration::from_millis(200),
            )
            .is_ok()
        });
        // The master binds the listeners before it reads nothing else; the pid file shows the
        // configuration was fully processed.
        if up && prefix.join("nginx.pid").exists() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            stop_child(&mut child);
            return Err(format!("not listening after {:?}", startup_limit()));
        }
        sleep(Duration::from_millis(20));
    }
}

/// SIGTERM (fast shutdown: the master stops its workers), then SIGKILL to the whole process
/// group if it has not exited in time. The group kill happens before the master is reaped, so
/// its pid (the group id) cannot belong to anything else yet.
fn stop_child(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain kill(2) on the process we spawned (not yet reaped).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + startup_limit();
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(Duration::from_millis(20));
    }
    eprintln!("nginx master {pid} did not exit after SIGTERM: killing its process group");
    // SAFETY: as above; the group is the one spawn() created for this master.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
}

/// A running nginx; stopped on drop, and if the test is failing, the tail of its error log is
/// printed first.
pub struct Nginx {
    dir: WorkDir,
    child: Option<Child>,
    ports: [u16; 2],
}

impl Nginx {
    pub fn port(&self, ktls: Ktls) -> u16 {
        match ktls {
            Ktls::On => self.ports[0],
            Ktls::Off => self.ports[1],
        }
    }

    /// What the worker processes (children of the master) have open: `(sockets, pipes)`.
    /// Waits (up to 10 s) for the master to have started its worker: nginx answers on its
    /// ports before then (the master listens), and a count taken too early would miss the
    /// listening sockets that the worker inherits.
    pub fn worker_descriptors(&self) -> (usize, usize) {
        let master = self.child.as_ref().map_or(0, Child::id);
        let deadline = Instant::now() + Duration::from_secs(10);
        let workers = loop {
            let workers = children_of(master);
            if !workers.is_empty() {
                break workers;
            }
            assert!(
                Instant::now() < deadline,
                "nginx has no worker process after 10 s"
            );
            sleep(Duration::from_millis(20));
        };
        let mut counts = (0, 0);
        for pid in workers {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let target = fs::read_link(fd.path()).unwrap_or_default();
                let target = target.to_string_lossy();
                if target.starts_with("socket:") {
                    counts.0 += 1;
                } else if target.starts_with("pipe:") {
                    counts.1 += 1;
                }
            }
        }
        counts
    }

    pub fn prefix(&self) -> &Path {
        self.dir.path()
    }

    /// A path under the document root.
    pub fn html(&self, rel: &str) -> PathBuf {
        self.dir.path().join("html").join(rel)
    }

    pub fn error_log_path(&self) -> PathBuf {
        self.dir.path().join("logs/error.log")
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.error_log_path()).unwrap_or_default()
    }

    pub fn access_log(&self) -> Vec<AccessEntry> {
        logs::read_access_log(&self.dir.path().join("logs/access.log"))
    }

    /// The access log line for `uri` (make URIs unique per request, e.g. with `?n=`).
    pub fn entry(&self, uri: &str) -> AccessEntry {
        logs::wait_access_entry(&self.dir.path().join("logs/access.log"), uri)
    }

    /// The access log line for `uri`, once the error log shows that its
    /// response went out the way `sent` says on a connection with kTLS
    /// `ktls` (see [`logs::assert_send_path`]).
    #[track_caller]
    pub fn sent_entry(&self, what: &str, ktls: Ktls, uri: &str, sent: logs::Sent) -> AccessEntry {
        let e = self.entry(uri);
        logs::assert_send_path(what, ktls, &self.error_log(), &e, sent);
        e
    }

    /// Waits (bounded) until nginx has closed `connection` (its debug line says so).
    #[track_caller]
    pub fn wait_closed(&self, connection: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !logs::connection_lines(&self.error_log(), connection)
            .iter()
            .any(|l| l.starts_with("close http connection"))
        {
            assert!(
                Instant::now() < deadline,
                "connection {connection} was not closed after 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nginx -s quit` (SIGQUIT to the master): workers finish what they serve, then exit.
    /// Returns whether nginx exited within `limit`; if not, it is stopped as on drop.
    pub fn quit(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: plain kill(2) on the master we spawned (not yet reaped).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGQUIT) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            sleep(Duration::from_millis(20));
        }
        stop_child(&mut child);
        false
    }

    /// `nginx -s reload` (SIGHUP to the master): new workers start, the old ones close their
    /// idle connections and exit once the busy ones are done.
    pub fn reload(&self) {
        let master = self.child.as_ref().expect("nginx is running").id();
        // SAFETY: plain kill(2) on the master we spawned (not yet reaped).
        unsafe { libc::kill(master as libc::pid_t, libc::SIGHUP) };
    }

    /// Stops nginx and asserts its error log shows nothing wrong: no crashed worker ("exited on
    /// signal"), nothing at alert, crit or emerg level except lines containing one of `allowed`.
    #[track_caller]
    pub fn finish_allowing(mut self, allowed: &[&str]) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        let log = self.error_log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| {
                is_lost_worker(l)
                    || [" [alert] ", " [crit] ", " [emerg] "]
                        .iter()
                        .any(|lvl| l.contains(lvl))
            })
            .filter(|l| is_lost_worker(l) || !allowed.iter().any(|a| l.contains(a)))
            .take(20)
            .collect();
        assert!(
            bad.is_empty(),
            "error.log of {}:\n{}",
            self.dir.path().display(),
            bad.join("\n")
        );
    }

    /// The master's lines about workers that died (`exited on signal`) so far.
    pub fn lost_workers(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| is_lost_worker(l))
            .map(str::to_string)
            .collect()
    }

    #[track_caller]
    pub fn finish(self) {
        self.finish_allowing(&[]);
    }

    /// Under a sanitizer build (`KTLS_SANITIZER_REPORTS`, the reports' folder): copies the
    /// sanitizer reports a process wrote to the error log (its stderr) there, before the work
    /// dir goes. UBSan, once set up lazily in a worker, writes there rather than to its
    /// log_path, and takes ASan's later reports with it.
    fn keep_sanitizer_reports(&self) {
        let Some(dir) = std::env::var_os("KTLS_SANITIZER_REPORTS") else {
            return;
        };
        let log = self.error_log();
        if !log.lines().any(is_sanitizer_line) {
            return;
        }
        let name = self.dir.path().file_name().unwrap_or_default();
        let mut path = PathBuf::from(dir);
        path.push(format!("sanitizer.error-log.{}", name.to_string_lossy()));
        let report: String = log
            .lines()
            .filter(|l| !l.contains(" [debug] "))
            .map(|l| format!("{l}\n"))
            .collect();
        if let Err(e) = fs::write(&path, report) {
            eprintln!("sanitizer report {}: {e}", path.display());
        }
    }

    fn print_log_tail(&self) {
        let log = self.error_log();
        let lines: Vec<&str> = log.lines().collect();
        let notable: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.contains(" [debug] "))
            .rev()
            .take(30)
            .collect();
        eprintln!(
            "---- {}: non-debug error.log lines (last 30, newest first) ----",
            self.dir.path().display()
        );
        for l in notable {
            eprintln!("{l}");
        }
        eprintln!("---- error.log tail ----");
        for l in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("{l}");
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        self.keep_sanitizer_reports();
        if std::thread::panicking() {
            self.print_log_tail();
        }
    }
}

/// The outcome of `nginx -t`.
pub struct ConfigTest {
    pub status: ExitStatus,
    pub stderr: String,
    pub conf_path: PathBuf,
    pub conf_text: String,
    _dir: WorkDir,
}

impl ConfigTest {
    /// 1-based number of the one config line containing `needle`, as nginx reports lines.
    pub fn line_of(&self, needle: &str) -> usize {
        let matches: Vec<usize> = self
            .conf_text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(
            matches.len(),
            1,
            "{needle:?} should be on exactly one config line"
        );
        matches[0]
    }
}

/// Runs `binary -t` on `conf_text`, written as nginx.conf in `dir` (which is also the prefix).
pub fn config_test(binary: &Path, dir: WorkDir, conf_text: &str) -> ConfigTest {
    for rel in ["logs", "tmp"] {
        dir.subdir(rel);
    }
    let conf_path = dir.write("nginx.conf", conf_text.as_bytes());
    let out = Command::new(binary)
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.path().join("logs/error.log"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {} -t: {e}", binary.display()));
    ConfigTest {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        conf_path,
        conf_text: conf_text.to_string(),
        _dir: dir,
    }
}

/// The processes whose parent is `pid`, from `/proc/*/stat` (field 4).
/// Whether an error-log line is the master's report of a worker that died.
fn is_lost_worker(line: &str) -> bool {
    line.contains("exited on signal")
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // The command name (field 2) may hold spaces: count from its ')'.
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Whether an error-log line starts a sanitizer report.
fn is_sanitizer_line(line: &str) -> bool {
    line.contains(": runtime error: ") || line.contains("ERROR: AddressSanitizer")
}
