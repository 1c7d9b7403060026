//! File data through a pipe: on kernels where a splice into a kTLS socket keeps the TLS record
//! open (Linux 6.5 and later), HTTP/2's short file runs go from the page cache to the socket
//! through a pipe, unread; elsewhere they are read into the TLS buffer as before. Pipes are
//! bounded per worker and never leak, and a file that shrinks under a splice ends the
//! connection with an alert.

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::config::{expect_kernel, module_loaded, skipped};
use nginx_ktls_tests::h2::{self, H2};
use nginx_ktls_tests::kernel;
use nginx_ktls_tests::logs::{connection_lines, Ktls, Sent};
use nginx_ktls_tests::nginx::{Nginx, Setup};
use nginx_ktls_tests::tls::{ClientOpts, TlsConn, TlsVersion};
use std::fs::OpenOptions;
use std::io;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The worker's pipe bound (`MAX_PIPES` in the module), two descriptors each.
const MAX_PIPE_FDS: usize = 2 * 16;

/// Whether this run's connections with `ktls on` must splice their HTTP/2 file data.
fn splice_expected() -> bool {
    module_loaded() && expect_kernel() && kernel::at_least(6, 5)
}

fn h2_opts() -> ClientOpts {
    ClientOpts::new(TlsVersion::Tls13).h2()
}

#[test]
fn start_up_says_which_path_short_file_data_takes() {
    let srv = Setup::new("splice-notice").start();
    let log = srv.error_log();
    let keeps = "splice() keeps kernel TLS records open on this kernel";
    let ends = "splice() ends a kernel TLS record at every call on this kernel";
    let said = (log.contains(keeps), log.contains(ends));
    let want = match (module_loaded() && expect_kernel(), kernel::at_least(6, 5)) {
        // No kTLS here: nothing to choose.
        (false, _) if !kernel::tls_ulp_available() => (false, false),
        (false, _) => (said.0, said.1),
        (true, true) => (true, false),
        (true, false) => (false, true),
    };
    assert_eq!(said, want, "{log}");
    srv.finish();
}

#[test]
fn h2_file_data_goes_through_the_pipe_where_records_stay_open() {
    let big = pseudo_random(90, 1 << 20);
    let srv = Setup::new("splice-h2")
        .http2()
        .file("big", big.clone())
        .start();
    for ktls in Ktls::BOTH {
        let what = format!("{ktls:?}");
        let uri = format!("/big?{what}");
        let mut conn = TlsConn::connect(srv.port(ktls), &h2_opts()).expect("connect");
        let r = h2::get_concurrent(&mut conn, &[&uri]).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r[0].status, 200, "{what}");
        assert_body(&what, &big, &r[0].body);
        let e = srv.sent_entry(&what, ktls, &uri, Sent::MayCopy);
        let log = srv.error_log();
        if !module_loaded() || ktls == Ktls::Off {
            continue;
        }
        let spliced = e.ktls_splice_bytes.expect("$ktls_splice_bytes");
        let lines = connection_lines(&log, e.connection);
        let drained = lines.iter().any(|l| l.starts_with("splice to socket: "));
        if splice_expected() {
            // Every DATA frame is 8 KiB, short of a sendfile of its own.
            assert_eq!(spliced, big.len() as u64, "{what}: {e:?}");
            assert!(drained, "{what}: no \"splice to socket\" debug line");
            assert_eq!(e.ktls_sendfile_bytes, Some(0), "{what}: {e:?}");
        } else {
            assert_eq!(spliced, 0, "{what}: {e:?}");
            assert!(!drained, "{what}: a splice where records end at every call");
        }
    }
    srv.finish();
}

#[test]
fn ktls_splice_off_reads_short_runs_into_the_buffer() {
    if !module_loaded() {
        skipped("ktls_splice off: needs the module's directive (KTLS_MODULE=none)");
        return;
    }
    let big = pseudo_random(94, 300_000);
    let srv = Setup::new("splice-off")
        .http2()
        .http("ktls_splice off;")
        .file("big", big.clone())
        .start();
    let mut conn = TlsConn::connect(srv.port(Ktls::On), &h2_opts()).expect("connect");
    let r = h2::get_concurrent(&mut conn, &["/big?off"]).expect("download");
    assert_body("ktls_splice off", &big, &r[0].body);
    let e = srv.sent_entry("ktls_splice off", Ktls::On, "/big?off", Sent::MayCopy);
    assert_eq!(e.ktls_splice_bytes, Some(0), "{e:?}");
    srv.finish();
}

#[test]
fn h2_concurrent_streams_through_the_pipe_are_byte_exact() {
    let mut setup = Setup::new("splice-streams").http2();
    let bodies: Vec<Vec<u8>> = (0..8)
        .map(|i| pseudo_random(100 + i, 300_000 + 4099 * i as usize))
        .collect();
    for (i, b) in bodies.iter().enumerate() {
        setup = setup.file(&format!("s{i}"), b.clone());
    }
    let srv = setup.start();
    for ktls in Ktls::BOTH {
        let paths: Vec<String> = (0..8).map(|i| format!("/s{i}?{ktls:?}")).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let mut conn = TlsConn::connect(srv.port(ktls), &h2_opts()).expect("connect");
        let r = h2::get_concurrent(&mut conn, &refs).unwrap_or_else(|e| panic!("{ktls:?}: {e}"));
        for ((resp, body), path) in r.iter().zip(&bodies).zip(&paths) {
            assert_eq!(resp.status, 200, "{path}");
            assert_body(path, body, &resp.body);
        }
    }
    srv.finish();
}

/// Starts an HTTP/2 download of `uri` that reads `read` body bytes, then goes away without
/// reading the rest (the kernel answers the server with a reset).
fn abort_after(srv: &Nginx, uri: &str, read: usize) {
    let opts = h2_opts().rcvbuf(32 * 1024);
    let mut conn = TlsConn::connect(srv.port(Ktls::On), &opts).expect("connect");
    let mut h2 = H2::open(&mut conn).expect("h2");
    let r = h2.get_watching(&[uri], |_, got| {
        if got >= read {
            return Err(io::Error::other("going away"));
        }
        Ok(())
    });
    assert!(
        r.is_err(),
        "{uri}: the download ended before the client went away"
    );
}

/// Waits (bounded) until the worker holds no more sockets than `sockets`; returns what it
/// holds then.  The bound is generous: a loaded machine (the suite runs tests in parallel, or
/// a sanitizer build) takes seconds to see two dozen resets.
fn settle(srv: &Nginx, sockets: usize) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = srv.worker_descriptors();
        if now.0 <= sockets {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the worker still holds {} sockets after 60 s, {sockets} before the clients came",
            now.0
        );
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn pipes_are_bounded_and_not_leaked_when_clients_go_away() {
    let body = pseudo_random(92, 8 << 20);
    let srv = Setup::new("splice-abort")
        .http2()
        .http("send_timeout 10s;")
        .file("big", body)
        .start();
    // The worker may hold a pipe of its own (its standard output).
    let (sockets, own_pipes) = srv.worker_descriptors();

    let mut after = Vec::new();
    for storm in 0..2 {
        // More downloads at once than the worker has pipes: the rest read into the buffer.
        let clients: Vec<_> = (0..24)
            .map(|i| {
                let srv = &srv;
                let uri = format!("/big?storm={storm}&client={i}");
                move || abort_after(srv, &uri, 64 * 1024 * (1 + i % 4))
            })
            .collect();
        std::thread::scope(|s| {
            for client in clients {
                s.spawn(client);
            }
        });
        // Pipes given back empty stay open for reuse; pipes with bytes in them are closed.
        let pipes = settle(&srv, sockets).1 - own_pipes;
        assert!(
            pipes <= MAX_PIPE_FDS,
            "storm {storm}: {pipes} pipe descriptors, more than the bound"
        );
        let taken = srv.error_log().matches("splice: pipe taken").count();
        if splice_expected() {
            // A pipe lost to the worker's count would, after a storm, leave none to take.
            assert!(
                taken > after.last().copied().unwrap_or(0),
                "storm {storm}: no connection took a pipe"
            );
        } else {
            assert_eq!(
                (pipes, taken),
                (0, 0),
                "storm {storm}: pipes where nothing splices"
            );
        }
        after.push(taken);
    }

    // And the worker still serves.
    let mut conn = TlsConn::connect(srv.port(Ktls::On), &h2_opts()).expect("connect");
    let r = h2::get_concurrent(&mut conn, &["/big?after"]).expect("download after the storms");
    assert_eq!(r[0].body.len(), 8 << 20);
    srv.finish();
}

#[test]
fn file_truncated_under_a_splice_ends_the_connection() {
    let len = 8 << 20;
    let cut = 4 << 20;
    let content = pseudo_random(93, len);
    let mut setup = Setup::new("splice-truncate")
        .http2()
        .listen("sndbuf=16k")
        .http("send_timeout 10s;");
    for ktls in Ktls::BOTH {
        setup = setup.file(&format!("t-{ktls:?}"), content.clone());
    }
    let srv = setup.start();
    for ktls in Ktls::BOTH {
        let what = format!("{ktls:?}");
        let path = srv.html(&format!("t-{what}"));
        let opts = h2_opts().rcvbuf(16 * 1024);
        let mut conn = TlsConn::connect(srv.port(ktls), &opts).expect("connect");
        let mut h2 = H2::open(&mut conn).expect("h2");
        let mut cut_done = false;
        let mut body_len = 0;
        // Well short of the cut: with 16 KiB socket buffers and a pipe of at most 1 MiB,
        // what the server holds cannot reach it.
        let r = h2.get_watching(&[&format!("/t-{what}")], |_, got| {
            body_len = got;
            if !cut_done && got >= 1 << 20 {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(cut as u64))
                    .expect("truncate");
                cut_done = true;
            }
            Ok(())
        });
        assert!(cut_done, "{what}: the file was not cut");
        match r {
            Err(_) => {}
            Ok(r) => {
                // A stream may end (RST) without the connection ending.
                assert!(r[0].body.len() <= cut, "{what}: {} bytes", r[0].body.len());
                assert_body(&what, &content[..r[0].body.len()], &r[0].body);
            }
        }
        assert!(
            body_len <= cut,
            "{what}: {body_len} body bytes, more than the {cut} left"
        );
        let p = path.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !srv
            .error_log()
            .lines()
            .any(|l| l.contains(" [alert] ") && l.contains(&p))
        {
            assert!(Instant::now() < deadline, "{what}: no alert about {p}");
            sleep(Duration::from_millis(50));
        }
        if splice_expected() && ktls == Ktls::On {
            let want = format!("splice() reported that \"{p}\" was truncated at ");
            assert!(srv.error_log().contains(&want), "{what}: no {want:?}");
        }
    }
    // The alerts about the truncated files are the point of this test.
    srv.finish_allowing(&["/html/t-"]);
}
