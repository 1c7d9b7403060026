//! Short socket buffers on both ends: the server's send buffer is 16 KiB
//! (`listen ... sndbuf=16k`) and the client's receive buffer is small and read slowly, so every
//! send meets a full buffer (EAGAIN, partial sends) many times; several requests share one
//! keep-alive connection.

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::cases::{each_known_nginx_bug, small_sndbuf_stall, Case};
use nginx_ktls_tests::h1::{Pace, H1};
use nginx_ktls_tests::kernel::TlsStat;
use nginx_ktls_tests::logs::{Ktls, Sent};
use nginx_ktls_tests::nginx::Setup;
use nginx_ktls_tests::tls::TlsConn;
use std::time::Duration;

#[test]
fn slow_reader_small_buffers_keepalive() {
    let one = pseudo_random(1, 1 << 20);
    let big = pseudo_random(64, 64 << 20);
    let srv = Setup::new("sockbuf")
        .listen("sndbuf=16k")
        .file("one", one.clone())
        .file("big", big.clone())
        .start();
    let stat = TlsStat::snapshot();
    for case in Case::all() {
        let name = case.name();
        let conn =
            TlsConn::connect(srv.port(case.ktls), &case.opts().rcvbuf(16 * 1024)).expect("connect");
        let mut c = H1::new(conn);
        let mut uris = Vec::new();
        for (n, (path, content)) in [("one", &one), ("big", &big), ("one", &one)]
            .into_iter()
            .enumerate()
        {
            // The 1 MiB bodies are read in small pieces with a pause every 16 KiB; the 64 MiB
            // one in small pieces with a pause per MiB, which keeps the run time sane.
            c.pace = if content.len() == one.len() {
                Pace::slow(4096, Duration::from_millis(2), 16 * 1024)
            } else {
                Pace::slow(4096, Duration::from_millis(2), 1 << 20)
            };
            let uri = format!("/{path}?case={name}&n={n}");
            let r = c.get(&uri).unwrap_or_else(|e| panic!("{name} {uri}: {e}"));
            assert_eq!(r.status, 200, "{name} {uri}");
            assert_body(&format!("{name} {uri}"), content, &r.body);
            uris.push(uri);
        }
        for (n, uri) in uris.iter().enumerate() {
            let e = srv.sent_entry(&format!("{name} {uri}"), case.ktls, uri, Sent::Sendfile);
            assert_eq!(
                e.connection_requests,
                n as u64 + 1,
                "{name} {uri}: keep-alive"
            );
        }
    }
    stat.assert_tx_used("slow_reader_small_buffers_keepalive");
    srv.finish();
}

/// The seed thread's first report: with a small `sndbuf`, responses over kTLS stall. A fast
/// reader on fresh connections meets it often: `sendfile()` runs out of socket space with a
/// corked partial segment that nothing pushes, the socket never turns writable, and the
/// response hangs until `send_timeout` (kept short here, so that a stall ends the response
/// early instead of hanging the test). nginx's own path gets two connections: on 6.1 it stalls
/// at the first, from 6.12 on every one completes at the kernel's pace (about 200 ms a push);
/// the module gets eight, for the stall to have its chances.
#[test]
fn fast_reader_small_sndbuf_fresh_connections() {
    let one = pseudo_random(3, 1 << 20);
    let srv = Setup::new("stall")
        .listen("sndbuf=16k")
        .http("send_timeout 5s;")
        .file("one", one.clone())
        .start();
    each_known_nginx_bug(Case::all(), small_sndbuf_stall(), |case| {
        let name = case.name();
        let connections = match case.ktls {
            Ktls::On => 8,
            Ktls::Off => 2,
        };
        for n in 0..connections {
            let conn = TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect");
            let mut c = H1::new(conn);
            let uri = format!("/one?case={name}&n={n}");
            let r = c.get(&uri).unwrap_or_else(|e| panic!("{name} {uri}: {e}"));
            assert_eq!(r.status, 200, "{name} {uri}");
            assert_body(&format!("{name} {uri}"), &one, &r.body);
        }
    });
    srv.finish();
}
