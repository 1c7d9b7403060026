//! `sendfile_max_chunk` and `limit_rate` hold on both send paths.

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::cases::Case;
use nginx_ktls_tests::config::expect_kernel;
use nginx_ktls_tests::h1::H1;
use nginx_ktls_tests::logs::{connection_lines, Sent};
use nginx_ktls_tests::nginx::Setup;
use nginx_ktls_tests::tls::TlsConn;
use std::time::{Duration, Instant};

/// With `sendfile_max_chunk 16k`, no single SSL_sendfile() call sends more than 16 KiB.
#[test]
fn sendfile_max_chunk_small() {
    let file = pseudo_random(51, 4 << 20);
    let srv = Setup::new("maxchunk")
        .server("sendfile_max_chunk 16k;")
        .file("file", file.clone())
        .start();
    for case in Case::all() {
        let name = case.name();
        let mut c = H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
        let uri = format!("/file?case={name}");
        let r = c.get(&uri).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.status, 200, "{name}");
        assert_body(&name, &file, &r.body);
        let e = srv.sent_entry(&name, case.ktls, &uri, Sent::Sendfile);
        let log = srv.error_log();
        let sends: Vec<i64> = connection_lines(&log, e.connection)
            .iter()
            .filter_map(|l| l.strip_prefix("SSL_sendfile: ")?.trim().parse().ok())
            .collect();
        // Only under kTLS does anything go out with SSL_sendfile(); on both paths then.
        if expect_kernel() {
            assert!(!sends.is_empty(), "{name}: no SSL_sendfile: lines");
            assert!(
                sends.iter().all(|&n| n <= 16384),
                "{name}: SSL_sendfile() over 16k: {sends:?}"
            );
        } else {
            assert!(
                sends.is_empty(),
                "{name}: SSL_sendfile() without kTLS: {sends:?}"
            );
        }
    }
    srv.finish();
}

/// `limit_rate 256k` on a 1 MiB file: nginx allows `rate * (whole seconds elapsed + 1)` bytes,
/// so the transfer cannot end before 1 MiB / 256k - 2 s = 2 s. Only this lower bound is
/// asserted, and that the body arrives complete. The four cases run at once.
#[test]
fn limit_rate_lower_bound() {
    let file = pseudo_random(52, 1 << 20);
    let srv = Setup::new("limitrate")
        .server("location /slow/ {\n    limit_rate 256k;\n}")
        .file("slow/file", file.clone())
        .start();
    std::thread::scope(|s| {
        let handles: Vec<_> = Case::all()
            .into_iter()
            .map(|case| {
                let (srv, file) = (&srv, &file);
                s.spawn(move || {
                    let name = case.name();
                    let mut c = H1::new(
                        TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"),
                    );
                    let start = Instant::now();
                    let r = c
                        .get(&format!("/slow/file?case={name}"))
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    let took = start.elapsed();
                    assert_eq!(r.status, 200, "{name}");
                    assert_body(&name, file, &r.body);
                    assert!(
                        took >= Duration::from_secs(2),
                        "{name}: limit_rate not applied, took {took:?}"
                    );
                })
            })
            .collect();
        for h in handles {
            h.join().expect("case thread");
        }
    });
    for case in Case::all() {
        let uri = format!("/slow/file?case={}", case.name());
        srv.sent_entry(&case.name(), case.ktls, &uri, Sent::Sendfile);
    }
    srv.finish();
}
