//! The receiving half under kTLS after nginx's TLS shutdown: lingering close in HTTP/1 (after
//! a response, after an unread request body) and in HTTP/2 (after GOAWAY, on reload) drains
//! the connection until the client's close_notify, which ends it as it does under userspace
//! TLS: no line above `info` for the connection. nginx's own path fails there with `recv()`
//! and EIO wherever OpenSSL turned kTLS on for receiving (a known nginx bug, see
//! `patches/README.md`); the module's cases must pass everywhere.

use nginx_ktls_tests::cases::{each_known_nginx_bug, recv_eio_after_shutdown, Case};
use nginx_ktls_tests::config::{expect_kernel, module_loaded, skipped};
use nginx_ktls_tests::h2::H2;
use nginx_ktls_tests::kernel;
use nginx_ktls_tests::logs::{connection_lines, level_at_info_or_above, AccessEntry, Ktls};
use nginx_ktls_tests::nginx::{Nginx, Setup};
use nginx_ktls_tests::tls::{TlsConn, TlsVersion};
use std::io::{self, Read};

const PAGE: &[u8] = b"a small page\n";

/// Reads until the server's close_notify, then sends the client's own and closes, as curl and
/// browsers do.
fn close_after_server(mut conn: TlsConn) -> io::Result<Vec<u8>> {
    let mut got = Vec::new();
    conn.stream.read_to_end(&mut got)?;
    conn.stream.shutdown().map_err(io::Error::other)?;
    Ok(got)
}

/// The error log lines of `connection` above `info`.
fn lines_above_info(srv: &Nginx, connection: u64) -> Vec<String> {
    let tag = format!(": *{connection} ");
    srv.error_log()
        .lines()
        .filter(|l| l.contains(&tag))
        .filter(|l| level_at_info_or_above(l).is_some_and(|level| level != "info"))
        .map(str::to_string)
        .collect()
}

/// What every case asserts once nginx closed the connection: nothing logged above `info` but
/// what nginx logs for the request under userspace TLS (`expected`: level and text);
/// under the module, where kTLS decrypted the connection and nginx lingered, the client's
/// close_notify was read as a record (by the module, or by an nginx with the patch in
/// `patches/`, whose own lingering read logs the record's type). Under a kTLS kernel TLS 1.2
/// connections must have had kTLS receiving (OpenSSL 3.0 and later give it), or the case
/// proves nothing.
#[track_caller]
fn assert_clean_close(srv: &Nginx, case: Case, entry: &AccessEntry, expected: &[(&str, &str)]) {
    srv.wait_closed(entry.connection);
    let mut above = lines_above_info(srv, entry.connection);
    above.retain(|l| {
        !expected
            .iter()
            .any(|(level, text)| l.contains(&format!(" [{level}] ")) && l.contains(text))
    });
    assert!(
        above.is_empty(),
        "{}: logged above info: {above:#?}",
        case.name()
    );
    let rx = entry.ktls_rx.as_deref() == Some("1");
    if expect_kernel() && module_loaded() && case.version == TlsVersion::Tls12 {
        assert!(
            rx,
            "{}: no kTLS receiving ($ktls_rx {:?})",
            case.name(),
            entry.ktls_rx
        );
    }
    let lines = connection_lines(&srv.error_log(), entry.connection);
    // nginx may have read all there was before it closed (a body it discarded whole): no
    // lingering close then, and nothing to read after the shutdown.
    let lingered = lines.iter().any(|l| l.starts_with("lingering read: "));
    if rx && lingered && case.ktls == Ktls::On {
        assert!(
            lines.iter().any(|l| l == "ktls recv: close_notify")
                || lines.iter().any(|l| l == "SSL record type: 21"),
            "{}: the client's close_notify was not read as a record; the connection's last \
             lines: {:#?}",
            case.name(),
            &lines[lines.len().saturating_sub(40)..]
        );
    }
}

#[test]
fn lingering_close_after_a_response_ends_at_close_notify() {
    let srv = Setup::new("rx-linger")
        .server("lingering_close always;\nlocation / { }")
        .file("page", PAGE.to_vec())
        .start();
    each_known_nginx_bug(Case::all(), recv_eio_after_shutdown(), |case| {
        let uri = format!("/page?case={}", case.name());
        let mut conn = TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect");
        let request = format!("GET {uri} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        conn.send(request.as_bytes()).expect("request");
        let got = close_after_server(conn).expect("response and close_notify");
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n") && got.ends_with(PAGE));
        assert_clean_close(&srv, case, &srv.entry(&uri), &[]);
    });
    srv.finish_allowing(&["recv() failed (5: Input/output error)"]);
}

#[test]
fn lingering_close_after_an_unread_body_ends_at_close_notify() {
    let srv = Setup::new("rx-413")
        .server("client_max_body_size 1k;\nlocation / { }")
        .file("page", PAGE.to_vec())
        .start();
    let body = vec![b'x'; 64 << 10];
    each_known_nginx_bug(Case::all(), recv_eio_after_shutdown(), |case| {
        let uri = format!("/page?case={}", case.name());
        let mut conn = TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect");
        let head = format!(
            "POST {uri} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.send(head.as_bytes()).expect("request head");
        conn.send(&body).expect("request body");
        let got = close_after_server(conn).expect("response and close_notify");
        assert!(
            got.starts_with(b"HTTP/1.1 413 "),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        let too_large = (
            "error",
            "client intended to send too large body: 65536 bytes",
        );
        assert_clean_close(&srv, case, &srv.entry(&uri), &[too_large]);
    });
    srv.finish_allowing(&["recv() failed (5: Input/output error)"]);
}

/// Gets the page over HTTP/2 on a new connection, which it returns open, with the URI asked.
fn h2_get_page(srv: &Nginx, case: Case) -> (String, TlsConn) {
    let uri = format!("/page?case={}", case.name());
    let mut conn = TlsConn::connect(srv.port(case.ktls), &case.opts().h2()).expect("connect");
    let responses = H2::open(&mut conn)
        .and_then(|mut h2| h2.get(&[&uri]))
        .expect("GET");
    assert_eq!(
        (responses[0].status, responses[0].body.as_slice()),
        (200, PAGE)
    );
    (uri, conn)
}

/// HTTP/2 with `keepalive_requests 1`: GOAWAY after the first stream, then lingering close.
#[test]
fn http2_lingering_close_after_goaway_ends_at_close_notify() {
    let srv = Setup::new("rx-h2-goaway")
        .http2()
        .server("keepalive_requests 1;\nlocation / { }")
        .file("page", PAGE.to_vec())
        .start();
    each_known_nginx_bug(Case::all(), recv_eio_after_shutdown(), |case| {
        let (uri, conn) = h2_get_page(&srv, case);
        close_after_server(conn).expect("GOAWAY and close_notify");
        assert_clean_close(&srv, case, &srv.entry(&uri), &[]);
    });
    srv.finish_allowing(&["recv() failed (5: Input/output error)"]);
}

/// `nginx -s reload` with an idle HTTP/2 connection: the old worker sends GOAWAY and drains it.
#[test]
fn http2_idle_connection_on_reload_ends_at_close_notify() {
    let srv = Setup::new("rx-h2-reload")
        .http2()
        .server("location / { }")
        .file("page", PAGE.to_vec())
        .start();
    each_known_nginx_bug(Case::all(), recv_eio_after_shutdown(), |case| {
        let (uri, conn) = h2_get_page(&srv, case);
        let entry = srv.entry(&uri);
        srv.reload();
        close_after_server(conn).expect("GOAWAY and close_notify");
        assert_clean_close(&srv, case, &entry, &[]);
    });
    srv.finish_allowing(&["recv() failed (5: Input/output error)"]);
}

/// `ktls_rx` chooses where a `ktls on` connection decrypts what it receives, as `$ktls_rx`
/// shows: `on` wherever OpenSSL sets kTLS up (TLS 1.2; TLS 1.3 from OpenSSL 3.2), `off`
/// nowhere, `auto` as `on` but for TLS 1.3 on a kernel that cannot take a client's new key
/// (before Linux 6.14). Responses arrive either way; without kTLS every value gives 0.
#[test]
fn ktls_rx_chooses_where_connections_decrypt() {
    if !module_loaded() {
        skipped("ktls_rx is the module's directive");
        return;
    }
    let openssl_tls13 = openssl::version::number() >= 0x3020_0000;
    let kernel_rekeys = kernel::at_least(6, 14);
    for (value, tls12, tls13) in [
        ("on", true, openssl_tls13),
        ("off", false, false),
        ("auto", true, openssl_tls13 && kernel_rekeys),
    ] {
        let srv = Setup::new(&format!("rx-{value}"))
            .server(&format!("ktls_rx {value};\nlocation / {{ }}"))
            .file("page", PAGE.to_vec())
            .start();
        for case in Case::all().into_iter().filter(|c| c.ktls == Ktls::On) {
            let uri = format!("/page?case={}", case.name());
            let mut conn = TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect");
            let request =
                format!("GET {uri} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            conn.send(request.as_bytes()).expect("request");
            let got = close_after_server(conn).expect("response and close_notify");
            assert!(got.ends_with(PAGE), "ktls_rx {value}, {}", case.name());
            let kernel_receives = expect_kernel()
                && match case.version {
                    TlsVersion::Tls12 => tls12,
                    TlsVersion::Tls13 => tls13,
                };
            assert_eq!(
                srv.entry(&uri).ktls_rx.as_deref(),
                Some(if kernel_receives { "1" } else { "0" }),
                "ktls_rx {value}, {}: $ktls_rx",
                case.name()
            );
        }
        srv.finish();
    }
}
