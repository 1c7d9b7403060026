//! Byte-exact static file bodies of the edge sizes around a TLS record (16 KiB) and
//! large ones, over TLS 1.2 and 1.3, with HTTP/1.1 keep-alive and HTTP/2, on both send paths.

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::config::size_for_run;
use nginx_ktls_tests::h1::H1;
use nginx_ktls_tests::h2;
use nginx_ktls_tests::kernel::TlsStat;
use nginx_ktls_tests::logs::{assert_send_path, Ktls, Sent};
use nginx_ktls_tests::nginx::{Nginx, Setup};
use nginx_ktls_tests::tls::{ClientOpts, TlsConn, TlsVersion};

/// The edge sizes around a record, one record-sized run of many, and a large body: 64 MiB on
/// the host, 16 MiB under UML, where it is four cases of one HTTP/2 client at 35-50 MB/s.
fn sizes() -> [usize; 7] {
    [
        0,
        1,
        16383,
        16384,
        16385,
        1 << 20,
        size_for_run(64 << 20, 16 << 20),
    ]
}

/// The server, and the content of its file `b<size>` for each of `sizes()`.
fn server(name: &str, h2: bool) -> (Nginx, Vec<Vec<u8>>) {
    let mut setup = Setup::new(name);
    if h2 {
        setup = setup.http2();
    }
    let contents: Vec<Vec<u8>> = sizes()
        .iter()
        .map(|&s| pseudo_random(s as u64, s))
        .collect();
    for (size, content) in sizes().iter().zip(&contents) {
        setup = setup.file(&format!("b{size}"), content.clone());
    }
    (setup.start(), contents)
}

fn case_name(ktls: Ktls, v: TlsVersion) -> String {
    format!("{ktls:?}-{}", v.name())
}

/// All sizes one after another on one keep-alive connection per path and TLS version.
#[test]
fn http1_keepalive_sizes() {
    let (srv, contents) = server("bodies-h1", false);
    let stat = TlsStat::snapshot();
    for ktls in Ktls::BOTH {
        for v in TlsVersion::BOTH {
            let case = case_name(ktls, v);
            let opts = ClientOpts::new(v);
            let mut c = H1::new(TlsConn::connect(srv.port(ktls), &opts).expect("connect"));
            let mut entries = Vec::new();
            for (n, (size, content)) in sizes().into_iter().zip(&contents).enumerate() {
                let uri = format!("/b{size}?case={case}");
                let r = c.get(&uri).unwrap_or_else(|e| panic!("{case} {uri}: {e}"));
                assert_eq!(r.status, 200, "{case} {uri}");
                assert_eq!(
                    r.header("Content-Length"),
                    Some(size.to_string().as_str()),
                    "{case} {uri}"
                );
                assert_body(&format!("{case} {uri}"), content, &r.body);
                let e = srv.entry(&uri);
                assert_eq!(
                    (e.connection_requests, e.ssl_protocol.as_str()),
                    (n as u64 + 1, v.name()),
                    "{case} {uri}"
                );
                entries.push((uri, size, e));
            }
            let log = srv.error_log();
            for (uri, size, e) in entries {
                assert_send_path(
                    &format!("{case} {uri}"),
                    ktls,
                    &log,
                    &e,
                    Sent::for_file(size),
                );
            }
        }
    }
    stat.assert_tx_used("http1_keepalive_sizes");
    srv.finish();
}

/// All sizes as concurrent streams of one HTTP/2 connection per path and TLS version.
#[test]
fn http2_concurrent_sizes() {
    let (srv, contents) = server("bodies-h2", true);
    let stat = TlsStat::snapshot();
    for ktls in Ktls::BOTH {
        for v in TlsVersion::BOTH {
            let case = case_name(ktls, v);
            let mut conn =
                TlsConn::connect(srv.port(ktls), &ClientOpts::new(v).h2()).expect("connect");
            let uris: Vec<String> = sizes()
                .iter()
                .map(|s| format!("/b{s}?case={case}"))
                .collect();
            let paths: Vec<&str> = uris.iter().map(String::as_str).collect();
            let responses =
                h2::get_concurrent(&mut conn, &paths).unwrap_or_else(|e| panic!("{case}: {e}"));
            for ((content, uri), r) in contents.iter().zip(&uris).zip(&responses) {
                assert_eq!(r.status, 200, "{case} {uri}");
                assert_body(&format!("{case} {uri}"), content, &r.body);
            }
            let entries: Vec<_> = uris.iter().map(|u| srv.entry(u)).collect();
            let log = srv.error_log();
            for ((size, uri), e) in sizes().into_iter().zip(&uris).zip(entries) {
                assert_eq!(e.server_protocol, "HTTP/2.0", "{case} {uri}");
                // HTTP/2's default 8 KiB DATA frames are file runs the module copies on purpose;
                // mixed_chains runs HTTP/2 with 16 KiB frames, which go out with SSL_sendfile().
                let sent = if size == 0 {
                    Sent::Memory
                } else {
                    Sent::MayCopy
                };
                assert_send_path(&format!("{case} {uri}"), ktls, &log, &e, sent);
            }
        }
    }
    stat.assert_tx_used("http2_concurrent_sizes");
    srv.finish();
}
