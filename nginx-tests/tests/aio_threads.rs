//! `aio threads`: with kTLS, the module's `sendfile()` and its reads into the TLS buffer run in
//! nginx's thread pool, so a disk that is slow to answer holds up a thread, never the worker.
//!
//! - Bodies, on any kernel: whole files, ranges, SSI and HTTP/2 with the default pool, a named
//!   pool and a pool named by a variable; under kTLS, the debug log must show the module's tasks.
//! - On a slow disk (dm-delay, as root under `scripts/ktls-vm`, caches dropped before each
//!   case): small requests during a cold download, a client that goes away, a file truncated and
//!   a graceful shutdown while a task is in flight, and 20 cold downloads on 2 threads.

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::cases::{each, Case};
use nginx_ktls_tests::config::{expect_kernel, module_loaded, size_for_run, skipped};
use nginx_ktls_tests::h1::{get, H1};
use nginx_ktls_tests::h2;
use nginx_ktls_tests::logs::{assert_send_path, connection_lines, Ktls, Sent};
use nginx_ktls_tests::nginx::{Nginx, Setup};
use nginx_ktls_tests::slow_disk::SlowDisk;
use nginx_ktls_tests::tls::{ClientOpts, TlsConn, TlsVersion};
use std::fs::OpenOptions;
use std::thread;
use std::time::{Duration, Instant};

/// Whether this run drives the module's thread path: kTLS, and the module on that server.
fn module_threads(ktls: Ktls) -> bool {
    expect_kernel() && module_loaded() && ktls == Ktls::On
}

/// Under kTLS with the module, the connection's debug lines show a task of `kind`
/// ("sendfile" or "read") posted and completed.
#[track_caller]
fn assert_tasks(what: &str, srv: &Nginx, connection: u64, kind: &str) {
    let lines = connection_lines(&srv.error_log(), connection);
    let posted = format!("posted: {kind}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ktls thread: task #") && l.ends_with(&posted)),
        "{what}: no {kind} task posted on *{connection}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ktls thread: task #") && l.contains(" done: ")),
        "{what}: no task completed on *{connection}"
    );
}

/// How many of the module's thread tasks completed so far (debug log).
fn tasks_done(srv: &Nginx) -> usize {
    srv.error_log()
        .lines()
        .filter(|l| l.contains(" ktls thread: task #") && l.contains(" done: "))
        .count()
}

/// Waits (bounded) until `n` more of the module's tasks completed than `before`: the
/// download under test is under way.
#[track_caller]
fn wait_for_tasks(srv: &Nginx, before: usize, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tasks_done(srv) < before + n {
        assert!(
            Instant::now() < deadline,
            "{what}: no thread task completed"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Drops the page cache where that is possible (as root under kTLS), so that reads miss it.
fn cold() {
    if SlowDisk::available() {
        SlowDisk::drop_caches();
    }
}

#[test]
fn bodies_with_thread_pools() {
    let big = pseudo_random(81, 3 << 20);
    let small = pseudo_random(82, 5000);
    let page =
        "<p><!--# include virtual=\"/pool/big\" --></p><!--# include virtual=\"/pool/small\" -->";
    let expected_page = [&b"<p>"[..], &big, b"</p>", &small].concat();
    // proxy_cache hits: the upstream is a plain server of the same nginx (root: its html).
    let upstream = format!("/dev/shm/ktls-aio-upstream-{}.sock", std::process::id());
    let srv = Setup::new("aio-bodies")
        .main("thread_pool two threads=2;")
        .http("aio threads;")
        .http(&format!(
            "proxy_cache_path tmp/cache keys_zone=aio:1m;\n\
             server {{\n    listen unix:{upstream};\n    access_log off;\n}}"
        ))
        .server(&format!(
            "location /cached/ {{\n    proxy_pass http://unix:{upstream}:/;\n    \
             proxy_cache aio;\n    proxy_cache_key $uri$arg_case;\n    proxy_cache_valid 200 1h;\n}}"
        ))
        .server(
            "location /pool/ {\n    aio threads=two;\n}\n\
             location /var/ {\n    set $tp two;\n    aio threads=$tp;\n}\n\
             location /ssi/ {\n    ssi on;\n}",
        )
        .http2()
        .file("big", big.clone())
        .file("small", small.clone())
        .file("pool/big", big.clone())
        .file("pool/small", small.clone())
        .file("var/small", small.clone())
        .file("ssi/page.shtml", page.into())
        .start();
    each(Case::all(), |case| {
        let name = case.name();
        let h1_cases: [(&str, &[u8], Sent, &str); 5] = [
            ("/big", &big, Sent::Sendfile, "sendfile"),
            ("/pool/big", &big, Sent::Sendfile, "sendfile"),
            ("/var/small", &small, Sent::MayCopy, "read"),
            ("/small", &small, Sent::MayCopy, "read"),
            (
                "/ssi/page.shtml",
                &expected_page,
                Sent::Sendfile,
                "sendfile",
            ),
        ];
        for (path, want, sent, kind) in h1_cases {
            cold();
            let uri = format!("{path}?case={name}");
            let mut c =
                H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
            let r = c.get(&uri).unwrap_or_else(|e| panic!("{name} {uri}: {e}"));
            assert_eq!(r.status, 200, "{name} {uri}");
            assert_body(&format!("{name} {uri}"), want, &r.body);
            let e = srv.sent_entry(&format!("{name} {uri}"), case.ktls, &uri, sent);
            if module_threads(case.ktls) {
                assert_tasks(&format!("{name} {uri}"), &srv, e.connection, kind);
            }
        }

        // A proxy_cache hit: the body comes from the cache file, after its header.
        for pass in ["miss", "hit"] {
            cold();
            let uri = format!("/cached/big?case={name}&pass={pass}");
            let mut c =
                H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
            let r = c.get(&uri).unwrap_or_else(|e| panic!("{name} {uri}: {e}"));
            assert_eq!(r.status, 200, "{name} {uri}");
            assert_body(&format!("{name} {uri}"), &big, &r.body);
            if pass == "miss" {
                // nginx may finish the response before it puts the file into the cache.
                wait_for_cache_update(&srv, &uri);
            }
        }
        let hit = srv.entry(&format!("/cached/big?case={name}&pass=hit"));
        assert!(
            connection_lines(&srv.error_log(), hit.connection)
                .iter()
                .any(|l| l.starts_with("http file cache send")),
            "{name}: the second request was not a cache hit"
        );
        assert_send_path(
            &format!("{name} cache hit"),
            case.ktls,
            &srv.error_log(),
            &hit,
            Sent::Sendfile,
        );
        if module_threads(case.ktls) {
            assert_tasks(
                &format!("{name} cache hit"),
                &srv,
                hit.connection,
                "sendfile",
            );
        }

        // A range: part of the file, from its offset.
        cold();
        let uri = format!("/pool/big?case={name}&range");
        let mut c = H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
        c.conn
            .send(&get(&uri, "Range: bytes=1000-1500999\r\n"))
            .expect("send");
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("{name} {uri}: {e}"));
        assert_eq!(r.status, 206, "{name} {uri}");
        assert_body(&format!("{name} {uri}"), &big[1000..1501000], &r.body);

        // HTTP/2: 8k frames read into the buffer, two streams of two files at once.
        cold();
        let mut conn =
            TlsConn::connect(srv.port(case.ktls), &case.opts().h2()).expect("connect h2");
        let paths = [
            format!("/big?case={name}&h2"),
            format!("/var/small?case={name}&h2"),
        ];
        let got = h2::get_concurrent(&mut conn, &[&paths[0], &paths[1]])
            .unwrap_or_else(|e| panic!("{name} h2: {e}"));
        assert_body(&format!("{name} h2 big"), &big, &got[0].body);
        assert_body(&format!("{name} h2 small"), &small, &got[1].body);
        let e = srv.sent_entry(&format!("{name} h2"), case.ktls, &paths[0], Sent::MayCopy);
        if module_threads(case.ktls) {
            assert_tasks(&format!("{name} h2"), &srv, e.connection, "read");
        }
    });
    srv.finish();
}

/// A test server whose `/slow/` is a slow disk, read in threads (`/sync/`: the same files
/// without threads); `/small` is a small page that stays in the page cache.
struct SlowServer {
    disk: SlowDisk,
    srv: Nginx,
    small: Vec<u8>,
}

/// `n` files of 2 MiB named PREFIX0, PREFIX1, ...
fn numbered_files(prefix: &str, seed: u64, n: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("{prefix}{i}"), pseudo_random(seed + i, 2 << 20)))
        .collect()
}

fn as_refs(files: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    files
        .iter()
        .map(|(n, f)| (n.as_str(), f.as_slice()))
        .collect()
}

impl SlowServer {
    /// The worker goes on serving after a fault on another connection.
    #[track_caller]
    fn assert_still_serving(&self, after: &str) {
        let opts = ClientOpts::new(TlsVersion::Tls13);
        let mut c = H1::new(TlsConn::connect(self.srv.port(Ktls::On), &opts).expect("connect"));
        let r = c
            .get(&format!("/small?after={after}"))
            .unwrap_or_else(|e| panic!("request after {after}: {e}"));
        assert_body(&format!("request after {after}"), &self.small, &r.body);
    }
}

fn slow_server(name: &str, delay_ms: u32, files: &[(&str, &[u8])]) -> Option<SlowServer> {
    slow_server_with(name, delay_ms, files, "")
}

/// [`slow_server`] with more directives for the `http` block.
fn slow_server_with(
    name: &str,
    delay_ms: u32,
    files: &[(&str, &[u8])],
    http: &str,
) -> Option<SlowServer> {
    if !SlowDisk::available() {
        skipped(&format!(
            "{name}: a slow disk needs root under scripts/ktls-vm"
        ));
        return None;
    }
    let disk = SlowDisk::new(name, 160, delay_ms);
    for (rel, content) in files {
        disk.write(rel, content);
    }
    let small = pseudo_random(90, 2000);
    let d = disk.path().display();
    let srv = Setup::new(name)
        .main("thread_pool two threads=2;\nthread_pool tiny threads=1 max_queue=1;")
        .http("send_timeout 20s;")
        .http(http)
        .server(&format!(
            "location /slow/ {{\n    alias {d}/;\n    aio threads;\n}}\n\
             location /two/ {{\n    alias {d}/;\n    aio threads=two;\n}}\n\
             location /tiny/ {{\n    alias {d}/;\n    aio threads=tiny;\n}}\n\
             location /limited/ {{\n    alias {d}/;\n    aio threads;\n    limit_rate 2m;\n}}\n\
             location /sync/ {{\n    alias {d}/;\n}}"
        ))
        .http2()
        .file("small", small.clone())
        .start();
    Some(SlowServer { disk, srv, small })
}

/// Latencies of small requests, one every 50 ms on a keep-alive connection, while `busy` runs.
/// Waits, up to 10 s, until the connection that served `uri` has stored it in the cache.
fn wait_for_cache_update(srv: &Nginx, uri: &str) {
    let connection = srv.entry(uri).connection;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connection_lines(&srv.error_log(), connection)
        .iter()
        .any(|l| l.starts_with("http file cache update"))
    {
        assert!(Instant::now() < deadline, "{uri}: not cached after 10 s");
        thread::sleep(Duration::from_millis(20));
    }
}

/// How the small requests are made: on one keep-alive connection, or each on a new one (its
/// handshake counted).
#[derive(Clone, Copy)]
enum Sampling {
    KeepAlive,
    NewConnections,
}

/// Latencies of small requests, one every 50 ms, while `busy` runs.
fn sample_latencies(
    port: u16,
    small: &[u8],
    busy: &thread::JoinHandle<()>,
    sampling: Sampling,
) -> Vec<Duration> {
    let opts = ClientOpts::new(TlsVersion::Tls13);
    let connect = || H1::new(TlsConn::connect(port, &opts).expect("connect"));
    let mut kept = connect();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0;
    // At least five: a download from the page cache can be over within a few samples, and
    // its samples are the reference the cold runs are measured against.
    while (!busy.is_finished() || got.len() < 5) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        n += 1;
        let t = Instant::now();
        let mut fresh;
        let c = match sampling {
            Sampling::KeepAlive => &mut kept,
            Sampling::NewConnections => {
                fresh = connect();
                &mut fresh
            }
        };
        let r = c.get(&format!("/small?sample={n}")).expect("small request");
        got.push(t.elapsed());
        assert_body("small request", small, &r.body);
    }
    got
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

/// One download of `path` (HTTP/1.1 or HTTP/2), from the disk if `cold` and from the page
/// cache otherwise, with small requests sampled meanwhile: (p50, max) of the samples.
fn stall_during_download(
    s: &SlowServer,
    path: &str,
    (h2, cold): (bool, bool),
    sampling: Sampling,
    want: &[u8],
) -> (Duration, Duration) {
    let port = s.srv.port(Ktls::On);
    let mut warm =
        H1::new(TlsConn::connect(port, &ClientOpts::new(TlsVersion::Tls13)).expect("connect"));
    if cold {
        SlowDisk::drop_caches();
    } else {
        warm.get(path).expect("warm the file");
    }
    warm.get("/small?warm").expect("warm");
    let want = want.to_vec();
    let uri = path.to_string();
    let download = thread::spawn(move || {
        let path = uri;
        let opts = ClientOpts::new(TlsVersion::Tls13);
        let body = if h2 {
            let mut conn = TlsConn::connect(port, &opts.h2()).expect("connect h2");
            h2::get_concurrent(&mut conn, &[&path])
                .expect("h2 download")
                .remove(0)
                .body
        } else {
            let mut c = H1::new(TlsConn::connect(port, &opts).expect("connect"));
            c.get(&path).expect("download").body
        };
        assert_body(&format!("cold download {path}"), &want, &body);
    });
    let mut samples = sample_latencies(port, &s.small, &download, sampling);
    download.join().expect("the download");
    assert!(samples.len() >= 5, "{path}: only {} samples", samples.len());
    samples.sort();
    (percentile(&samples, 50), *samples.last().unwrap())
}

#[test]
fn small_requests_do_not_wait_for_a_cold_disk() {
    let big = pseudo_random(91, 8 << 20);
    // Debug logging costs the worker more than the transfer under UML: it would hide the stalls.
    let Some(s) = slow_server_with(
        "aio-stall",
        100,
        &[("big", &big)],
        "error_log logs/error.log notice;",
    ) else {
        return;
    };
    let ms = Duration::from_millis;
    let mut failures = Vec::new();
    for h2 in [false, true] {
        let proto = if h2 { "HTTP/2" } else { "HTTP/1.1" };
        let run =
            |path, cold, sampling| stall_during_download(&s, path, (h2, cold), sampling, &big);
        let warm = run("/slow/big", false, Sampling::KeepAlive);
        let threads = run("/slow/big", true, Sampling::KeepAlive);
        let sync = run("/sync/big", true, Sampling::KeepAlive);
        let warm_new = run("/slow/big", false, Sampling::NewConnections);
        let threads_new = run("/slow/big", true, Sampling::NewConnections);
        eprintln!(
            "{proto} small-request p50/max: page cache {:?}/{:?}; cold disk: module with threads \
             {:?}/{:?}, module without {:?}/{:?}; on new connections: page cache {:?}/{:?}, cold disk with threads {:?}/{:?}",
            warm.0,
            warm.1,
            threads.0,
            threads.1,
            sync.0,
            sync.1,
            warm_new.0,
            warm_new.1,
            threads_new.0,
            threads_new.1
        );
        // Under UML the kernel's crypto is generic C: an HTTP/2 download keeps the worker busy
        // encrypting whole socket buffers even from the page cache, so HTTP/2 is measured
        // against its page-cache run; HTTP/1.1's sendfile() encrypts in the thread.
        let (p50_bound, max_bound) = if h2 {
            (warm.0 + ms(100), sync.1)
        } else {
            (ms(50), ms(200))
        };
        // The disk is slow enough to show: without threads the worker waits for it.
        if sync.0 < warm.0 + ms(200) && sync.1 < warm.1 + ms(400) {
            failures.push(format!(
                "{proto}: without threads no stall showed: {sync:?}"
            ));
        }
        if threads.0 > p50_bound || threads.1 >= max_bound {
            failures.push(format!(
                "{proto}: with threads p50/max {threads:?}, bounds {p50_bound:?}/{max_bound:?}"
            ));
        }
        // A new connection's handshake is the guest's slowest step (a few tens of ms of
        // userspace crypto on one CPU): the cold download may at most double it, and must
        // not make it wait for the disk as the worker without threads does.
        let new_p50_bound = warm_new.0 * 2 + ms(20);
        if threads_new.0 > new_p50_bound || threads_new.1 >= sync.1 {
            failures.push(format!(
                "{proto}: new connections with threads p50/max {threads_new:?}, bounds \
                 {new_p50_bound:?}/{:?}",
                sync.1
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    s.srv.finish();
}

/// Starts a download of `path` on its own thread; the handle ends the client's side of the
/// connection (both directions) when asked, which makes the thread's reads fail.
fn download_in_background(
    port: u16,
    path: &str,
    h2: bool,
    opts: ClientOpts,
) -> (std::net::TcpStream, thread::JoinHandle<Option<Vec<u8>>>) {
    let mut conn = TlsConn::connect(port, &if h2 { opts.h2() } else { opts }).expect("connect");
    let socket = conn.stream.get_ref().try_clone().expect("clone the socket");
    let path = path.to_string();
    let t = thread::spawn(move || {
        if h2 {
            h2::get_concurrent(&mut conn, &[&path])
                .ok()
                .map(|mut r| r.remove(0).body)
        } else {
            let mut c = H1::new(conn);
            c.get(&path).ok().map(|r| r.body)
        }
    });
    (socket, t)
}

#[test]
fn client_goes_away_while_a_thread_works() {
    let big = pseudo_random(92, 24 << 20);
    let Some(s) = slow_server("aio-abort", 20, &[("big", &big)]) else {
        return;
    };
    for (path, h2) in [("/slow/big?h1", false), ("/slow/big?h2", true)] {
        SlowDisk::drop_caches();
        let opts = ClientOpts::new(TlsVersion::Tls13).rcvbuf(16 * 1024);
        let done_before = tasks_done(&s.srv);
        let (socket, t) = download_in_background(s.srv.port(Ktls::On), path, h2, opts);
        wait_for_tasks(&s.srv, done_before, 2, path);
        socket.shutdown(std::net::Shutdown::Both).expect("shutdown");
        assert!(
            t.join().expect("the download").is_none(),
            "{path}: the download completed before the client went away"
        );
        s.assert_still_serving(path);
    }
    let SlowServer { disk, mut srv, .. } = s;
    assert!(srv.quit(Duration::from_secs(60)), "nginx did not quit");
    srv.finish();
    drop(disk);
}

#[test]
fn file_truncated_while_a_thread_works() {
    let content = pseudo_random(93, 16 << 20);
    let cut: usize = 4 << 20;
    let Some(s) = slow_server(
        "aio-truncate",
        20,
        &[("t-h1", &content), ("t-h2", &content)],
    ) else {
        return;
    };
    for (rel, h2) in [("t-h1", false), ("t-h2", true)] {
        SlowDisk::drop_caches();
        let path = s.disk.path().join(rel);
        // At 2 MB/s, well short of the cut when the file shrinks.
        let uri = format!("/limited/{rel}");
        let opts = ClientOpts::new(TlsVersion::Tls13);
        let done_before = tasks_done(&s.srv);
        let (_socket, t) = download_in_background(s.srv.port(Ktls::On), &uri, h2, opts);
        // Truncate once threads work for this download (a slow start must not let the request
        // arrive after the truncation).
        wait_for_tasks(&s.srv, done_before, 2, rel);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(cut as u64))
            .expect("truncate");
        let body = t.join().expect("the download");
        assert!(
            body.is_none(),
            "{rel}: a complete response after a truncation"
        );
        let log = s.srv.error_log();
        let p = path.display().to_string();
        assert!(
            log.lines()
                .any(|l| l.contains(" [alert] ") && l.contains(&p)),
            "{rel}: no alert naming {p}"
        );
        if module_threads(Ktls::On) {
            // The thread's sendfile() (HTTP/1.1), or its read into the buffer (HTTP/2's frames).
            let want = if h2 {
                "preadv() read only "
            } else {
                "sendfile() reported that "
            };
            assert!(
                log.lines()
                    .any(|l| l.contains(" [alert] ") && l.contains(want) && l.contains(&p)),
                "{rel}: no alert \"{want}...{p}...\""
            );
        }
        s.assert_still_serving(rel);
    }
    s.srv.finish_allowing(&["/slow-aio-truncate/t-"]);
}

#[test]
fn graceful_quit_during_a_cold_transfer() {
    let big = pseudo_random(94, 16 << 20);
    let Some(s) = slow_server("aio-quit", 20, &[("big", &big)]) else {
        return;
    };
    SlowDisk::drop_caches();
    let port = s.srv.port(Ktls::On);
    let want = big.clone();
    let download = thread::spawn(move || {
        let mut c =
            H1::new(TlsConn::connect(port, &ClientOpts::new(TlsVersion::Tls13)).expect("connect"));
        let r = c.get("/slow/big?quit").expect("download across the quit");
        assert_body("download across the quit", &want, &r.body);
    });
    wait_for_tasks(&s.srv, 0, 2, "download across the quit");
    let SlowServer { disk, mut srv, .. } = s;
    assert!(srv.quit(Duration::from_secs(90)), "nginx did not quit");
    download.join().expect("the download");
    srv.finish();
    drop(disk);
}

#[test]
fn twenty_cold_downloads_on_two_threads() {
    let files = numbered_files("f", 100, 20);
    let Some(s) = slow_server("aio-many", 20, &as_refs(&files)) else {
        return;
    };
    SlowDisk::drop_caches();
    let port = s.srv.port(Ktls::On);
    let clients: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, (name, f))| {
            let want = f.clone();
            let path = format!("/two/{name}");
            thread::spawn(move || {
                let opts = ClientOpts::new(TlsVersion::Tls13);
                let body = if i % 2 == 0 {
                    let mut c = H1::new(TlsConn::connect(port, &opts).expect("connect"));
                    c.get(&path).expect("download").body
                } else {
                    let mut conn = TlsConn::connect(port, &opts.h2()).expect("connect h2");
                    h2::get_concurrent(&mut conn, &[&path])
                        .expect("download")
                        .remove(0)
                        .body
                };
                assert_body(&path, &want, &body);
            })
        })
        .collect();
    let failed = clients
        .into_iter()
        .map(|c| c.join())
        .filter(Result::is_err)
        .count();
    assert_eq!(failed, 0, "downloads failed (messages above)");
    s.srv.finish();
}

#[test]
fn full_thread_queue_fails_only_those_requests() {
    let files = numbered_files("q", 130, 8);
    let Some(s) = slow_server("aio-queue", 100, &as_refs(&files)) else {
        return;
    };
    SlowDisk::drop_caches();
    let port = s.srv.port(Ktls::On);
    // One thread and a queue of one: most of these find the queue full.
    let clients: Vec<_> = files
        .iter()
        .map(|(name, f)| {
            let want = f.clone();
            let path = format!("/tiny/{name}");
            thread::spawn(move || {
                let opts = ClientOpts::new(TlsVersion::Tls13);
                let mut c = H1::new(TlsConn::connect(port, &opts).expect("connect"));
                // A failed request ends its connection; a served one is byte-exact.
                if let Ok(r) = c.get(&path) {
                    assert_body(&path, &want, &r.body);
                    true
                } else {
                    false
                }
            })
        })
        .collect();
    let served = clients
        .into_iter()
        .map(|c| c.join().expect("a client panicked"))
        .filter(|&ok| ok)
        .count();
    let log = s.srv.error_log();
    let overflows = log
        .lines()
        .filter(|l| l.contains(" [error] ") && l.contains("thread pool \"tiny\" queue overflow"))
        .count();
    assert!(
        overflows > 0,
        "no queue overflow with 8 downloads on one thread (served {served})"
    );
    assert!(
        served < 8,
        "{overflows} overflows, yet every download was served"
    );
    s.assert_still_serving("queue-overflow");
    s.srv.finish();
}

/// A large HTTP/2 download from an `aio threads` location completes byte-exact, from the slow
/// disk and then from the page cache: the module's tasks hand the connection back every time
/// (a download that stalls fails on the client's read timeout). 20 MiB on the host, 8 MiB
/// under UML, where system calls are slow: hundreds of tasks either way.
#[test]
fn large_download_over_http2_from_threads() {
    let big = pseudo_random(140, size_for_run(20 << 20, 8 << 20));
    let Some(s) = slow_server("aio-h2-large", 5, &[("big", &big)]) else {
        return;
    };
    SlowDisk::drop_caches();
    for round in ["cold", "cached"] {
        let opts = ClientOpts::new(TlsVersion::Tls13).h2();
        let mut conn = TlsConn::connect(s.srv.port(Ktls::On), &opts).expect("connect");
        let path = format!("/slow/big?{round}");
        let r = h2::get_concurrent(&mut conn, &[&path]).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_body(&path, &big, &r[0].body);
    }
    s.srv.finish();
}
