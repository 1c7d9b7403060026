//! Seeded random traffic from clients this project did not write: Node's `http2` and `https`
//! modules (`clients/random-traffic.js`), six connections at a time, HTTP/2 with windows from
//! 1 KiB to 1 MiB and up to 32 streams, HTTP/1.1 keepalive, whole files, single and multiple
//! ranges, HEAD, slow readers and cancels, on files whose sizes sit at record, frame and window
//! boundaries.  Every server variant (`aio threads` on and off, `ktls_splice` on and off,
//! `ssl_buffer_size` 4k and 16k) takes the same seed against the module and against nginx's own
//! path (`ktls off`): every completed body byte-exact, every status the expected one, no
//! failed stream or connection that the client did not cancel, and no worker lost, alert or
//! crit line on either.
//!
//! The `aio threads` variants evict their files from the page cache every 250 ms, and under
//! kTLS, as root, serve them from a slow disk, so that reads and sendfiles wait in threads while
//! streams are cancelled and connections end: the module's own tasks under kTLS; without kTLS
//! nginx reads the files into memory itself (no `sendfile` on a userspace TLS connection), in
//! threads, and the module sends what they read.
//!
//! Under kTLS each run takes four of the eight variants, one `aio` setting for each
//! `ktls_splice` and `ssl_buffer_size` pair, picked by the seed's low bits (the guest is slow;
//! runs with other seeds take the others), unless `KTLS_RANDOM_VARIANT` names variants.
//!
//! `KTLS_RANDOM_SEED` picks the seed (default: from the clock, printed), `KTLS_RANDOM_SECONDS`
//! how long each variant's traffic runs per server (default 4), `KTLS_RANDOM_VARIANT` only the
//! variants whose name contains it (`aio-threads`, `splice-off`, `buf-4k`, ...).

use nginx_ktls_tests::body::pseudo_random;
use nginx_ktls_tests::config::{expect_kernel, module_loaded};
use nginx_ktls_tests::logs::Ktls;
use nginx_ktls_tests::nginx::{Nginx, Setup};
use nginx_ktls_tests::slow_disk::SlowDisk;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sizes at TLS record (16 KiB), HTTP/2 frame (16 KiB), window (64 KiB - 1) and
/// `ssl_buffer_size` (4 KiB) boundaries, and a few larger ones.
const SIZES: [usize; 16] = [
    0,
    1,
    4095,
    4096,
    4097,
    16383,
    16384,
    16385,
    65535,
    65536,
    65537,
    262_144,
    1 << 20,
    (2 << 20) + 1,
    3_000_001,
    5_000_000,
];

fn seed() -> u32 {
    std::env::var("KTLS_RANDOM_SEED")
        .ok()
        .map(|s| s.parse().expect("KTLS_RANDOM_SEED: a number"))
        .unwrap_or_else(|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            now.subsec_nanos() ^ now.as_secs() as u32
        })
}

fn seconds() -> u64 {
    std::env::var("KTLS_RANDOM_SECONDS")
        .ok()
        .map(|s| s.parse().expect("KTLS_RANDOM_SECONDS: a number"))
        .unwrap_or(4)
}

/// The client script, beside this crate's sources.
fn client() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/random-traffic.js"
    ))
}

/// One server variant.
struct Variant {
    aio_threads: bool,
    splice: bool,
    buffer: &'static str,
}

impl Variant {
    fn all() -> Vec<Variant> {
        let mut all = Vec::new();
        for aio_threads in [true, false] {
            for splice in [true, false] {
                for buffer in ["4k", "16k"] {
                    all.push(Variant {
                        aio_threads,
                        splice,
                        buffer,
                    });
                }
            }
        }
        all
    }

    /// Whether a run with `seed` takes this variant (see the module's doc).
    fn taken(&self, seed: u32, only: &str) -> bool {
        if !only.is_empty() || !expect_kernel() {
            return self.name().contains(only);
        }
        let pair = usize::from(self.splice) * 2 + usize::from(self.buffer == "16k");
        self.aio_threads == ((seed >> pair) & 1 == 1)
    }

    fn name(&self) -> String {
        format!(
            "aio-{}-splice-{}-buf-{}",
            if self.aio_threads { "threads" } else { "off" },
            if self.splice { "on" } else { "off" },
            self.buffer
        )
    }

    /// The server, and where its files are: the html directory at `/`, or for `aio threads`
    /// under kTLS a slow disk at `/d/`.
    fn start(&self, files: &[(String, Vec<u8>)]) -> Served {
        let mut setup = Setup::new(&format!("random-{}", self.name()))
            .http2()
            .http(&format!("ssl_buffer_size {};", self.buffer))
            .http("send_timeout 20s;");
        let mut disk = None;
        if self.aio_threads {
            setup = setup
                .main("thread_pool default threads=4;")
                .http("aio threads;");
            if SlowDisk::available() {
                let d = SlowDisk::new(&format!("random-{}", self.name()), 64, 2);
                for (name, data) in files {
                    d.write(name, data);
                }
                setup = setup.server(&format!(
                    "location /d/ {{\n    alias {}/;\n}}",
                    d.path().display()
                ));
                disk = Some(d);
            }
        }
        if module_loaded() {
            setup = setup.server(&format!(
                "ktls_splice {};",
                if self.splice { "on" } else { "off" }
            ));
        }
        for (name, data) in files {
            setup = setup.file(name, data.clone());
        }
        let srv = setup.start();
        let (dir, prefix) = match &disk {
            Some(d) => (d.path().to_path_buf(), "/d/"),
            None => (srv.html(""), "/"),
        };
        Served {
            srv,
            _disk: disk,
            evicted: self.aio_threads,
            dir,
            prefix,
        }
    }
}

struct Served {
    srv: Nginx,
    /// Mounted while the server serves from it.
    _disk: Option<SlowDisk>,
    evicted: bool,
    dir: PathBuf,
    prefix: &'static str,
}

impl Served {
    /// The client against the server at `port`; for `aio threads`, with the files evicted from
    /// the page cache every 250 ms meanwhile.
    fn traffic(&self, port: u16, seed: u32, seconds: u64) -> Outcome {
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            if self.evicted {
                s.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        evict(&self.dir);
                        std::thread::sleep(Duration::from_millis(250));
                    }
                });
            }
            let outcome = run_client(port, &self.dir, self.prefix, seed, seconds);
            done.store(true, Ordering::Relaxed);
            outcome
        })
    }
}

/// Drops the pages of the files in `dir` from the page cache (only theirs: dropping all
/// caches would evict the guest's programs too, and slow everything down).
fn evict(dir: &Path) {
    use std::os::fd::AsRawFd;
    for entry in std::fs::read_dir(dir).expect("the files' directory") {
        let entry = entry.expect("a directory entry");
        if !entry.file_type().expect("its type").is_file() {
            continue;
        }
        let file = std::fs::File::open(entry.path()).expect("open a file");
        // SAFETY: a valid descriptor; the advice only drops clean cached pages.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// What the client printed: its totals and mismatches, as JSON.
struct Outcome {
    json: String,
}

impl Outcome {
    fn number(&self, key: &str) -> u64 {
        let at = self
            .json
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("no {key} in {}", self.json));
        self.json[at + key.len() + 3..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {}", self.json))
    }

    fn mismatches(&self) -> &str {
        let at = self.json.find("\"mismatches\":").expect("mismatches");
        &self.json[at + 13..self.json.len() - 1]
    }
}

/// Runs the client against `port` for `seconds` with `seed`, bounded.
fn run_client(port: u16, dir: &Path, prefix: &str, seed: u32, seconds: u64) -> Outcome {
    let mut child = Command::new("node")
        .arg(client())
        .arg(port.to_string())
        .arg(dir)
        .arg(seed.to_string())
        .arg(seconds.to_string())
        .arg(prefix)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (Debian's nodejs) runs the client");
    // Streams in flight at the deadline finish within the server's send_timeout.
    let limit = Duration::from_secs(seconds + 90);
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait for node").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("seed {seed}: the client did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("node's output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "seed {seed}: the client failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Outcome {
        json: stdout.trim().to_string(),
    }
}

#[test]
fn random_traffic_from_node_is_served_byte_exact() {
    let seed = seed();
    let seconds = seconds();
    println!("random traffic: seed {seed}, {seconds} s per variant and server");
    let files: Vec<(String, Vec<u8>)> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &size)| (format!("s{size}"), pseudo_random(900 + i as u64, size)))
        .collect();
    let only = std::env::var("KTLS_RANDOM_VARIANT").unwrap_or_default();
    for variant in Variant::all() {
        if !variant.taken(seed, &only) {
            continue;
        }
        let served = variant.start(&files);
        for ktls in Ktls::BOTH {
            let what = format!("seed {seed}, {}, ktls {ktls:?}", variant.name());
            let outcome = served.traffic(served.srv.port(ktls), seed, seconds);
            println!("{what}: {}", outcome.json);
            // A lost worker shows to the client only as resets and short bodies: name it.
            let lost = served.srv.lost_workers();
            assert!(lost.is_empty(), "{what}: {}", lost.join("\n"));
            assert_eq!(outcome.mismatches(), "[]", "{what}: mismatches");
            assert!(outcome.number("complete") > 0, "{what}: nothing completed");
            assert!(outcome.number("cancelled") > 0, "{what}: nothing cancelled");
        }
        if variant.aio_threads && module_loaded() && expect_kernel() {
            assert_tasks_ran(&served.srv, &variant.name());
        }
        served.srv.finish();
    }
}

/// The module's thread tasks ran: reads where the page cache missed (sendfiles only where a
/// file run reaches `ktls_sendfile_min_size`, which a short run need not meet).
#[track_caller]
fn assert_tasks_ran(srv: &Nginx, what: &str) {
    let log = srv.error_log();
    let count = |kind: &str| {
        log.lines()
            .filter(|l| l.contains(" ktls thread: task #") && l.ends_with(kind))
            .count()
    };
    let (sendfiles, reads) = (count("posted: sendfile"), count("posted: read"));
    println!("{what}: thread tasks posted: {sendfiles} sendfile, {reads} read");
    assert!(sendfiles + reads > 0, "{what}: no thread task posted");
    if SlowDisk::available() {
        assert!(reads > 0, "{what}: no read task posted from the slow disk");
    }
}
