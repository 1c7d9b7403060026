//! TLS 1.3 early data (0-RTT) with short buffers: the case of the nginx-devel
//! thread on SSL_sendfile() and early data (2021-10-18). A resumed session sends the request in 0-RTT,
//! the response (1 MiB, chunked: SSI text around an included file, so memory and file buffers)
//! starts while the handshake and the request body are still pending, and the client reads it
//! slowly through a small receive buffer. The whole response must arrive intact, the request
//! body must be read and discarded (a second request on the connection works), nothing hangs.

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::cases::Case;
use nginx_ktls_tests::h1::{get, Pace, H1};
use nginx_ktls_tests::kernel::TlsStat;
use nginx_ktls_tests::logs::{assert_send_path, connection_lines, Sent};
use nginx_ktls_tests::nginx::{Nginx, Setup};
use nginx_ktls_tests::tls::TlsConn;
use openssl::ssl::SslSession;
use std::time::Duration;

const BEFORE: &[u8] = b"<p>before</p>\n";
const AFTER: &[u8] = b"\n<p>after</p>\n";
/// nginx's early data limit (NGX_SSL_BUFSIZE).
const EARLY_LIMIT: usize = 16384;

fn server() -> (Nginx, Vec<u8>) {
    let file = pseudo_random(11, 1 << 20);
    let mut page = BEFORE.to_vec();
    page.extend_from_slice(b"<!--# include virtual=\"/file\" -->");
    page.extend_from_slice(AFTER);
    let srv = Setup::new("early")
        .listen("sndbuf=16k")
        .http("ssl_early_data on;")
        .server("location = /page.shtml {\n    ssi on;\n}")
        .file("file", file.clone())
        .file("page.shtml", page)
        .file("small", b"ticket".to_vec())
        .start();
    (srv, file)
}

/// A session ticket from a full handshake; it must allow early data.
fn ticket(srv: &Nginx, case: Case) -> SslSession {
    let mut c = H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
    let r = c
        .get(&format!("/small?ticket={}", case.name()))
        .expect("ticket request");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ticket"[..]));
    let session = c
        .conn
        .session()
        .expect("no session ticket after a TLS 1.3 response");
    assert_eq!(
        session.max_early_data() as usize,
        EARLY_LIMIT,
        "ticket's max_early_data"
    );
    session
}

/// One 0-RTT exchange: `body_len` request body bytes, of which `early_body` go in the early
/// data with the request head, and the rest after the handshake.
fn zero_rtt(srv: &Nginx, case: Case, file: &[u8], label: &str, body_len: usize, early_body: usize) {
    let name = format!("{}-{label}", case.name());
    let session = ticket(srv, case);
    let uri = format!("/page.shtml?case={name}");
    let cl = if body_len > 0 {
        format!("Content-Length: {body_len}\r\n")
    } else {
        String::new()
    };
    let body = pseudo_random(99, body_len);
    let mut early = get(&uri, &cl);
    early.extend_from_slice(&body[..early_body]);
    assert!(
        early.len() <= EARLY_LIMIT,
        "{name}: test sends more early data than allowed"
    );
    let opts = case.opts().rcvbuf(16 * 1024);
    let conn = TlsConn::resume(srv.port(case.ktls), &opts, &session, &early)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(conn.reused(), "{name}: session not resumed");
    let mut c = H1::new(conn);
    if early_body < body_len {
        // The rest of the body comes later, as in the seed case, while the response is under way.
        std::thread::sleep(Duration::from_millis(50));
        c.conn
            .send(&body[early_body..])
            .unwrap_or_else(|e| panic!("{name}: body: {e}"));
    }
    c.pace = Pace::slow(1024, Duration::from_millis(1), 8 * 1024);
    let r = c.read_response().unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(r.status, 200, "{name}");
    assert!(
        r.chunked,
        "{name}: SSI response should be chunked: {:?}",
        r.headers
    );
    let expected = [BEFORE, file, AFTER].concat();
    assert_body(&format!("{name} {uri}"), &expected, &r.body);
    // The body was discarded, so the next request on the connection is read as a request.
    c.pace = Pace::FAST;
    let second = format!("/file?case={name}&second");
    let r2 = c
        .get(&second)
        .unwrap_or_else(|e| panic!("{name}: second request: {e}"));
    assert_eq!(r2.status, 200, "{name} second");
    assert_body(&format!("{name} {second}"), file, &r2.body);

    let (e1, e2) = (srv.entry(&uri), srv.entry(&second));
    assert_eq!(
        e1.connection, e2.connection,
        "{name}: second request on another connection"
    );
    assert_eq!(
        (e1.connection_requests, e2.connection_requests),
        (1, 2),
        "{name}"
    );
    assert_eq!(e1.ssl_session_reused, "r", "{name}");
    let log = srv.error_log();
    let read_early = connection_lines(&log, e1.connection)
        .iter()
        .filter_map(|l| l.strip_prefix("SSL_read_early_data: 1, "))
        .map(|n| n.trim().parse::<usize>().unwrap_or(0))
        .sum::<usize>();
    assert_eq!(
        read_early,
        early.len(),
        "{name}: early data bytes nginx read in 0-RTT"
    );
    // 0-RTT data is written with SSL_write_early_data(); the second response, after the
    // handshake, goes out with SSL_sendfile().
    assert_send_path(
        &format!("{name} {uri}"),
        case.ktls,
        &log,
        &e1,
        Sent::MayCopy,
    );
    assert_send_path(
        &format!("{name} {second}"),
        case.ktls,
        &log,
        &e2,
        Sent::Sendfile,
    );
}

/// The seed case: `Content-Length: 10` in 0-RTT, the 10 body bytes after the handshake.
#[test]
fn early_data_body_sent_later() {
    let (srv, file) = server();
    let stat = TlsStat::snapshot();
    for case in Case::tls13() {
        zero_rtt(&srv, case, &file, "seed", 10, 0);
    }
    stat.assert_tx_used("early_data_body_sent_later");
    srv.finish();
}

/// The whole request, without a body, in 0-RTT.
#[test]
fn early_data_no_body() {
    let (srv, file) = server();
    for case in Case::tls13() {
        zero_rtt(&srv, case, &file, "nobody", 0, 0);
    }
    srv.finish();
}

/// A 40000-byte body: as much as the early data limit allows in 0-RTT, the rest after.
#[test]
fn early_data_body_over_limit() {
    let (srv, file) = server();
    let head = get(
        "/page.shtml?case=on-TLSv1.3-over",
        "Content-Length: 40000\r\n",
    )
    .len();
    for case in Case::tls13() {
        // The head's length differs by the case name's length; leave room for the longest.
        zero_rtt(&srv, case, &file, "over", 40000, EARLY_LIMIT - head - 8);
    }
    srv.finish();
}
