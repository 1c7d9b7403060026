//! Faults in the middle of a response. A client that goes away is logged at info
//! and the worker goes on serving; a file truncated while it is being sent ends the connection
//! with an alert, and the client never gets a byte that was not in the file. No worker crashes
//! (`finish` fails on "exited on signal").

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::cases::{each_known_nginx_bug, small_sndbuf_stall, Case};
use nginx_ktls_tests::config::{expect_kernel, module_loaded, size_for_run};
use nginx_ktls_tests::h1::{get, H1};
use nginx_ktls_tests::logs::{assert_send_path, Ktls, Sent};
use nginx_ktls_tests::nginx::Nginx;
use nginx_ktls_tests::nginx::Setup;
use nginx_ktls_tests::tls::TlsConn;
use std::fs::OpenOptions;
use std::io::{self, Read};

/// Reads raw response bytes (head and body) until at least `n` have arrived.
fn read_at_least(conn: &mut TlsConn, n: usize, out: &mut Vec<u8>) {
    let mut buf = vec![0; 16384];
    while out.len() < n {
        let got = conn.stream.read(&mut buf).expect("read before the fault");
        assert!(got > 0, "connection closed before the fault");
        out.extend_from_slice(&buf[..got]);
    }
}

/// Reads until the server ends the connection (EOF, reset or a TLS error all count: a
/// truncated response cannot end cleanly); only a read timeout is an error.
fn read_until_close(conn: &mut TlsConn, out: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = vec![0; 16384];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(e)
            }
            Err(_) => return Ok(()),
        }
    }
}

/// A fresh connection still gets a complete response.
fn next_request_works(srv: &Nginx, case: Case, label: &str, small: &[u8]) {
    let mut c = H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
    let r = c
        .get(&format!("/small?after={label}"))
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(r.status, 200, "{label}");
    assert_body(&format!("{label}: request after the fault"), small, &r.body);
}

#[test]
fn client_closes_mid_transfer() {
    let len = size_for_run(64 << 20, 16 << 20);
    let big = pseudo_random(71, len);
    let small = pseudo_random(72, 1 << 20);
    let srv = Setup::new("abort")
        .listen("sndbuf=16k")
        // nginx's own path can stall here (small_sndbuf_stall()): end such a stall early.
        .http("send_timeout 10s;")
        .file("big", big)
        .file("small", small.clone())
        .start();
    each_known_nginx_bug(Case::all(), small_sndbuf_stall(), |case| {
        let name = case.name();
        let uri = format!("/big?case={name}");
        let mut conn =
            TlsConn::connect(srv.port(case.ktls), &case.opts().rcvbuf(16 * 1024)).expect("connect");
        conn.send(&get(&uri, "")).expect("send");
        read_at_least(&mut conn, 256 * 1024, &mut Vec::new());
        // Unread data in the receive buffer: the close sends a reset.
        drop(conn);
        next_request_works(&srv, case, &name, &small);
        let e = srv.entry(&uri);
        assert!(
            e.body_bytes_sent < len as u64,
            "{name}: whole body sent to a closed client? {e:?}"
        );
        let log = srv.error_log();
        let tag = format!(" *{} ", e.connection);
        let levels: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&tag) && !l.contains(" [debug] "))
            .filter_map(|l| l.split(" [").nth(1)?.split(']').next())
            .collect();
        assert!(
            levels.contains(&"info"),
            "{name}: the close is not logged at info: {levels:?}"
        );
        assert!(
            levels.iter().all(|&l| l == "info"),
            "{name}: logged above info: {levels:?}"
        );
        assert_send_path(&name, case.ktls, &log, &e, Sent::Sendfile);
    });
    srv.finish();
}

#[test]
fn file_truncated_while_sending() {
    let len = size_for_run(16 << 20, 8 << 20);
    let cut = 2 << 20;
    let small = pseudo_random(73, 1 << 20);
    let mut setup = Setup::new("truncate")
        .listen("sndbuf=16k")
        .http("send_timeout 10s;")
        .file("small", small.clone());
    let content = pseudo_random(74, len);
    for case in Case::all() {
        setup = setup.file(&format!("t-{}", case.name()), content.clone());
    }
    let srv = setup.start();
    each_known_nginx_bug(Case::all(), small_sndbuf_stall(), |case| {
        let name = case.name();
        let path = srv.html(&format!("t-{name}"));
        let mut conn =
            TlsConn::connect(srv.port(case.ktls), &case.opts().rcvbuf(16 * 1024)).expect("connect");
        conn.send(&get(&format!("/t-{name}"), "")).expect("send");
        let mut raw = Vec::new();
        // Well short of the cut, with the 16 KiB buffers: what is in flight cannot reach it.
        read_at_least(&mut conn, 1 << 20, &mut raw);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(cut as u64))
            .expect("truncate");
        read_until_close(&mut conn, &mut raw)
            .unwrap_or_else(|e| panic!("{name}: connection not closed: {e}"));
        let head_end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response head")
            + 4;
        let body = &raw[head_end..];
        assert!(
            body.len() <= cut,
            "{name}: {} body bytes, more than the {cut} left in the file",
            body.len()
        );
        assert_body(&name, &content[..body.len()], body);
        next_request_works(&srv, case, &name, &small);
        let log = srv.error_log();
        let p = path.display().to_string();
        assert!(
            log.lines()
                .any(|l| l.contains(" [alert] ") && l.contains(&p)),
            "{name}: no alert about {p}"
        );
        if expect_kernel() && module_loaded() && case.ktls == Ktls::On {
            let want = format!("SSL_sendfile() reported that \"{p}\" was truncated at ");
            assert!(log.contains(&want), "{name}: no {want:?}");
        }
    });
    // The alerts about the truncated files are the point of this test.
    srv.finish_allowing(&["/html/t-"]);
}
