//! Chains that mix memory and file buffers: SSI pages with files between text
//! (chunked), multipart byte ranges, single ranges at odd offsets and at the end of the file,
//! and HTTP/2 with several concurrent large streams.

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::cases::Case;
use nginx_ktls_tests::config::size_for_run;
use nginx_ktls_tests::h1::{content_range, get, multipart, H1};
use nginx_ktls_tests::h2;
use nginx_ktls_tests::kernel::TlsStat;
use nginx_ktls_tests::logs::Sent;
use nginx_ktls_tests::nginx::Setup;
use nginx_ktls_tests::tls::TlsConn;

const FILE_LEN: usize = 1 << 20;

/// SSI: three includes of different sizes with text between, twice on one connection.
#[test]
fn ssi_files_between_text() {
    let files = [
        pseudo_random(21, 16385),
        pseudo_random(22, FILE_LEN),
        pseudo_random(23, 100),
    ];
    let page =
        "<html>\n<!--# include virtual=\"/f0\" -->middle text\n<!--# include virtual=\"/f1\" -->\
                <!--# include virtual=\"/f2\" -->\n<!--# include virtual=\"/f0\" -->end\n";
    let expected = [
        &b"<html>\n"[..],
        &files[0],
        b"middle text\n",
        &files[1],
        &files[2],
        b"\n",
        &files[0],
        b"end\n",
    ]
    .concat();
    let mut setup = Setup::new("ssi")
        .server("location /ssi/ {\n    ssi on;\n}")
        .file("ssi/page.shtml", page.into());
    for (n, f) in files.iter().enumerate() {
        setup = setup.file(&format!("f{n}"), f.clone());
    }
    let srv = setup.start();
    let stat = TlsStat::snapshot();
    for case in Case::all() {
        let name = case.name();
        let mut c = H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
        for n in 0..2 {
            let uri = format!("/ssi/page.shtml?case={name}&n={n}");
            let r = c.get(&uri).unwrap_or_else(|e| panic!("{name} {uri}: {e}"));
            assert_eq!(r.status, 200, "{name} {uri}");
            assert!(r.chunked, "{name} {uri}: not chunked: {:?}", r.headers);
            assert_body(&format!("{name} {uri}"), &expected, &r.body);
            srv.sent_entry(&format!("{name} {uri}"), case.ktls, &uri, Sent::Sendfile);
        }
    }
    stat.assert_tx_used("ssi_files_between_text");
    srv.finish();
}

/// Multipart ranges, then single ranges at odd offsets and at the end, on one connection.
#[test]
fn byte_ranges() {
    let file = pseudo_random(31, FILE_LEN);
    let srv = Setup::new("ranges").file("file", file.clone()).start();
    let last = FILE_LEN - 1;
    let multi = format!(
        "bytes=0-9,100-199,16380-16390,16383-32768,{}-{last}",
        last - 75
    );
    let singles = [
        ("bytes=1-16384".to_string(), 1, 16384),
        ("bytes=12345-".to_string(), 12345, last),
        ("bytes=-1".to_string(), last, last),
        (format!("bytes={last}-"), last, last),
        ("bytes=7-7".to_string(), 7, 7),
        (format!("bytes=16385-{}", FILE_LEN + 5000), 16385, last),
    ];
    for case in Case::all() {
        let name = case.name();
        let mut c = H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
        let uri = format!("/file?case={name}&multi");
        c.conn
            .send(&get(&uri, &format!("Range: {multi}\r\n")))
            .expect("send");
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("{name} {uri}: {e}"));
        assert_eq!(r.status, 206, "{name} {uri}");
        let ct = r.header("Content-Type").unwrap_or_default().to_string();
        let parts = multipart(&ct, &r.body).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Vec<(usize, usize)> = vec![
            (0, 9),
            (100, 199),
            (16380, 16390),
            (16383, 32768),
            (last - 75, last),
        ];
        assert_eq!(parts.len(), want.len(), "{name}: parts");
        for (p, (a, b)) in parts.iter().zip(want) {
            assert_eq!(
                (p.first, p.last, p.total),
                (a as u64, b as u64, FILE_LEN as u64),
                "{name}"
            );
            assert_body(&format!("{name} part {a}-{b}"), &file[a..=b], &p.data);
        }
        for (n, (range, a, b)) in singles.iter().enumerate() {
            let uri = format!("/file?case={name}&single={n}");
            c.conn
                .send(&get(&uri, &format!("Range: {range}\r\n")))
                .expect("send");
            let r = c
                .read_response()
                .unwrap_or_else(|e| panic!("{name} {range}: {e}"));
            assert_eq!(r.status, 206, "{name} {range}");
            let cr = r.header("Content-Range").and_then(content_range);
            assert_eq!(
                cr,
                Some((*a as u64, *b as u64, FILE_LEN as u64)),
                "{name} {range}"
            );
            assert_body(&format!("{name} {range}"), &file[*a..=*b], &r.body);
        }
        for n in 0..singles.len() {
            let uri = format!("/file?case={name}&single={n}");
            // $ktls_sendfile_bytes counts per connection: the multipart response before these
            // had a 16386-byte part, so it is above zero even after the one-byte ranges.
            let e = srv.sent_entry(
                &format!("{name} single {n}"),
                case.ktls,
                &uri,
                Sent::Sendfile,
            );
            assert_eq!(e.connection_requests, n as u64 + 2, "{name}: keep-alive");
        }
    }
    srv.finish();
}

/// Four large files as concurrent HTTP/2 streams on one connection, twice per connection.
#[test]
fn http2_concurrent_large_streams() {
    let len = size_for_run(16 << 20, 4 << 20);
    let files: Vec<Vec<u8>> = (0..4)
        .map(|n| pseudo_random(40 + n, len + n as usize * 4099))
        .collect();
    // 16 KiB DATA frames: file runs of a full TLS record, which the module sends with
    // SSL_sendfile() (it copies shorter ones, such as the default 8 KiB).
    let mut setup = Setup::new("h2-large")
        .http2()
        .server("http2_chunk_size 16k;");
    for (n, f) in files.iter().enumerate() {
        setup = setup.file(&format!("L{n}"), f.clone());
    }
    let srv = setup.start();
    let stat = TlsStat::snapshot();
    for case in Case::all() {
        let name = case.name();
        let mut conn = TlsConn::connect(srv.port(case.ktls), &case.opts().h2()).expect("connect");
        let uris: Vec<String> = (0..4).map(|n| format!("/L{n}?case={name}")).collect();
        let paths: Vec<&str> = uris.iter().map(String::as_str).collect();
        let rs = h2::get_concurrent(&mut conn, &paths).unwrap_or_else(|e| panic!("{name}: {e}"));
        for ((f, uri), r) in files.iter().zip(&uris).zip(&rs) {
            assert_eq!(r.status, 200, "{name} {uri}");
            assert_body(&format!("{name} {uri}"), f, &r.body);
        }
        for uri in &uris {
            srv.sent_entry(&format!("{name} {uri}"), case.ktls, uri, Sent::Sendfile);
        }
    }
    stat.assert_tx_used("http2_concurrent_large_streams");
    srv.finish();
}
