//! Request bodies under kTLS receive: WebDAV PUT uploads of sizes on and around the 16k record
//! boundary up to a few MB, with Content-Length and chunked over HTTP/1.1 (keep-alive, and
//! six connections at once), over HTTP/2 with curl (six streams at once on one connection),
//! in TLS 1.3 early data, and with a client KeyUpdate in the middle of the body. nginx must
//! store every body byte for byte, on the module's path and on nginx's own, and log nothing
//! above `info`; under a kTLS kernel the connections must have had kTLS receiving wherever
//! OpenSSL gives it, or the test proves nothing about it.

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::cases::{each, Case};
use nginx_ktls_tests::config::{expect_kernel, module_loaded};
use nginx_ktls_tests::h1::{Response, H1};
use nginx_ktls_tests::kernel;
use nginx_ktls_tests::logs::{connection_lines, level_at_info_or_above, Ktls};
use nginx_ktls_tests::nginx::{Nginx, Setup};
use nginx_ktls_tests::tls::{TlsConn, TlsVersion};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::thread;

/// Around one record (16384 bytes of plaintext), around 64k (nginx's HTTP/2 preread and
/// window), past a MiB, and a few MB.
const SIZES: [usize; 9] = [
    0,
    1,
    16383,
    16384,
    16385,
    65537,
    (1 << 20) + 3,
    (3 << 20) + 1,
    (5 << 20) - 7,
];

/// Stores what is PUT under /up/, in the document root, through a temporary file of nginx's.
const UPLOADS: &str = "location /up/ {\n    dav_methods PUT;\n    create_full_put_path on;\n    \
                       client_max_body_size 64m;\n}";

/// The module's line when it ends a connection instead of writing with the old key.
const CLOSED_LINE: &str = "ktls: closing connection: the client asked for a TLS 1.3 KeyUpdate";

#[derive(Clone, Copy, Debug)]
enum Encoding {
    ContentLength,
    Chunked,
}

/// A server that stores uploads; `module` holds directives of the module for its servers
/// (left out where the module is not loaded).
fn server(name: &str, module: &str, extra_http: &str) -> Nginx {
    let module = if module_loaded() { module } else { "" };
    let srv = Setup::new(name)
        .http2()
        .http(extra_http)
        .server(&format!("{module}\n{UPLOADS}"))
        .file("up/.keep", Vec::new())
        .start();
    // The workers (`nobody` when the tests run as root) create the uploads' directories.
    fs::set_permissions(srv.html("up"), fs::Permissions::from_mode(0o777)).expect("chmod up/");
    srv
}

/// The body of the upload number `n`: its own bytes, so that one stored in the place of
/// another is found.
fn body(n: u64, size: usize) -> Vec<u8> {
    pseudo_random(0x5eed_0000 + n, size)
}

/// `body` in chunks of seeded sizes from 1 byte to about 40k, so chunk boundaries fall on,
/// before and after record boundaries.
fn chunked(body: &[u8], seed: u64) -> Vec<u8> {
    let lengths = pseudo_random(seed, body.len() / 2 + 8);
    let mut out = Vec::with_capacity(body.len() + body.len() / 1000 + 64);
    let mut at = 0;
    for pair in lengths.chunks_exact(2) {
        if at == body.len() {
            break;
        }
        let want = 1 + usize::from(u16::from_le_bytes([pair[0], pair[1]])) % 40_000;
        let n = want.min(body.len() - at);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&body[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The request head of a PUT of `len` bytes.
fn put_head(uri: &str, len: usize, encoding: Encoding) -> String {
    let framing = match encoding {
        Encoding::ContentLength => format!("Content-Length: {len}"),
        Encoding::Chunked => "Transfer-Encoding: chunked".to_string(),
    };
    format!("PUT {uri} HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\n")
}

/// PUTs `body` to `uri` on a keep-alive connection and reads the response.
fn put(h1: &mut H1, uri: &str, body: &[u8], encoding: Encoding) -> io::Result<Response> {
    h1.conn
        .send(put_head(uri, body.len(), encoding).as_bytes())?;
    match encoding {
        Encoding::ContentLength => h1.conn.send(body)?,
        Encoding::Chunked => h1.conn.send(&chunked(body, body.len() as u64))?,
    }
    h1.read_response()
}

/// Whether a connection of `case` must have had kTLS receiving: under a kTLS kernel, with the
/// module (whose `ktls_rx on` server, like nginx's own path, keeps what OpenSSL sets up),
/// TLS 1.2 always and TLS 1.3 from OpenSSL 3.2 (the client and nginx run on one libssl).
fn kernel_receives(case: Case) -> bool {
    expect_kernel()
        && module_loaded()
        && (case.version == TlsVersion::Tls12 || openssl::version::number() >= 0x3020_0000)
}

/// The upload at `uri` was created and stored as sent, on a connection whose kernel
/// decrypted what it received exactly where `kernel_rx` says (checked under a kTLS kernel
/// with the module, whose `$ktls_rx` tells).
#[track_caller]
fn assert_stored(srv: &Nginx, uri: &str, status: u16, sent: &[u8], kernel_rx: bool) {
    assert_eq!(status, 201, "{uri}: status");
    let stored = fs::read(srv.html(uri.trim_start_matches('/'))).expect("the stored upload");
    assert_body(uri, sent, &stored);
    let rx = srv.entry(uri).ktls_rx;
    if expect_kernel() && module_loaded() {
        let want = if kernel_rx { "1" } else { "0" };
        assert_eq!(rx.as_deref(), Some(want), "{uri}: $ktls_rx");
    }
}

/// Whether an error-log line about a connection is above `info` (nginx's own lines about
/// starting and stopping name no connection; a lost worker or a line at `alert` and above
/// anywhere is `Nginx::finish`'s to find).
fn above_info(line: &str) -> bool {
    line.contains(": *") && level_at_info_or_above(line).is_some_and(|level| level != "info")
}

/// Stops nginx: the uploads logged nothing above `info` (every line at `info` or below is
/// what nginx logs for a client under userspace TLS too).
#[track_caller]
fn finish_quiet(srv: Nginx) {
    let above: Vec<String> = srv
        .error_log()
        .lines()
        .filter(|l| above_info(l))
        .map(str::to_string)
        .collect();
    assert!(above.is_empty(), "logged above info: {above:#?}");
    srv.finish();
}

#[test]
fn uploads_over_http1_are_stored_byte_exact() {
    let srv = server("up-h1", "ktls_rx on;", "");
    each(Case::all(), |case| {
        for encoding in [Encoding::ContentLength, Encoding::Chunked] {
            let mut h1 =
                H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
            for (n, size) in SIZES.into_iter().enumerate() {
                let uri = format!("/up/h1/{}/{encoding:?}/{size}", case.name());
                let sent = body(n as u64, size);
                let got = put(&mut h1, &uri, &sent, encoding).expect("PUT");
                assert_stored(&srv, &uri, got.status, &sent, kernel_receives(case));
            }
        }
    });
    finish_quiet(srv);
}

#[test]
fn parallel_uploads_over_http1_are_stored_byte_exact() {
    let srv = server("up-parallel", "ktls_rx on;", "");
    each(Case::all(), |case| {
        let uris: Vec<String> = thread::scope(|s| {
            let workers: Vec<_> = (0..6u64)
                .map(|n| {
                    let srv = &srv;
                    s.spawn(move || {
                        let encoding = if n % 2 == 0 {
                            Encoding::ContentLength
                        } else {
                            Encoding::Chunked
                        };
                        let mut h1 = H1::new(
                            TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"),
                        );
                        let mut uris = Vec::new();
                        for round in 0..3 {
                            let uri = format!("/up/parallel/{}/{n}/{round}", case.name());
                            let sent = body(n * 10 + round, (2 << 20) + (n * 4099) as usize);
                            let got = put(&mut h1, &uri, &sent, encoding).expect("PUT");
                            assert_eq!(got.status, 201, "{uri}");
                            uris.push(uri);
                        }
                        uris
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("an uploading thread"))
                .collect()
        });
        for (i, uri) in uris.iter().enumerate() {
            let (n, round) = (i as u64 / 3, i as u64 % 3);
            let sent = body(n * 10 + round, (2 << 20) + (n * 4099) as usize);
            assert_stored(&srv, uri, 201, &sent, kernel_receives(case));
        }
    });
    finish_quiet(srv);
}

/// curl's options for the case's TLS version, exactly.
fn curl_tls(version: TlsVersion) -> [&'static str; 2] {
    match version {
        TlsVersion::Tls12 => ["--tlsv1.2", "--tls-max"],
        TlsVersion::Tls13 => ["--tlsv1.3", "--tls-max"],
    }
}

#[test]
fn uploads_over_http2_with_curl_are_stored_byte_exact() {
    let srv = server("up-h2", "ktls_rx on;", "");
    let sources = srv.prefix().join("sources");
    fs::create_dir_all(&sources).expect("mkdir");
    let bodies: Vec<Vec<u8>> = SIZES
        .into_iter()
        .enumerate()
        .map(|(n, size)| body(100 + n as u64, size))
        .collect();
    for (size, sent) in SIZES.iter().zip(&bodies) {
        fs::write(sources.join(size.to_string()), sent).expect("a file to upload");
    }
    each(Case::all(), |case| {
        let uri = |size: usize| format!("/up/h2/{}/{size}", case.name());
        let port = srv.port(case.ktls);
        let mut curl = Command::new("curl");
        curl.args(["--http2", "-sk", "--parallel", "--parallel-max", "6"])
            .args([
                "--max-time",
                "120",
                "-w",
                "%{http_version} %{response_code}\\n",
            ])
            .args(curl_tls(case.version))
            .arg(case.version.name().trim_start_matches("TLSv"));
        for size in SIZES {
            curl.arg("-T")
                .arg(sources.join(size.to_string()))
                .arg(format!("https://127.0.0.1:{port}{}", uri(size)))
                .args(["-o", "/dev/null"]);
        }
        let out = curl.output().expect("curl");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: curl: {}; {report}",
            case.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            report.lines().collect::<Vec<_>>(),
            vec!["2 201"; SIZES.len()],
            "{}: HTTP version and status of each upload",
            case.name()
        );
        for (size, sent) in SIZES.into_iter().zip(&bodies) {
            assert_stored(&srv, &uri(size), 201, sent, kernel_receives(case));
        }
    });
    finish_quiet(srv);
}

/// Whether the module must end a connection whose client asks, with its KeyUpdate, for the
/// server's sending key to change: where kTLS sends and the new key cannot reach the kernel
/// (OpenSSL before 3.2, Linux before 6.14; see `key_update.rs`).
fn requested_key_update_closes() -> bool {
    expect_kernel() && !(openssl::version::number() >= 0x3020_0000 && kernel::at_least(6, 14))
}

/// A client's TLS 1.3 KeyUpdate halfway through a 1 MiB body, on the module's server with the
/// default `ktls_rx auto`: the body is stored as sent, and the connection goes on, except
/// where a KeyUpdate that asks for the server's key closes it before the response, with one
/// `info` line. nginx's own path under kTLS is `key_update.rs`'s (its read fails on Linux
/// 6.12 with OpenSSL 3.5).
#[test]
fn key_update_in_the_middle_of_an_upload() {
    if expect_kernel() && !module_loaded() {
        nginx_ktls_tests::config::skipped("nginx's own path under a KeyUpdate is key_update.rs's");
        return;
    }
    let srv = server("up-key-update", "", "");
    let case = Case {
        ktls: Ktls::On,
        version: TlsVersion::Tls13,
    };
    // `ktls_rx auto` receives TLS 1.3 in the kernel only where it takes the KeyUpdate's key.
    let kernel_rx = kernel_receives(case) && kernel::at_least(6, 14);
    let mut closed = 0;
    for requested in [false, true] {
        for encoding in [Encoding::ContentLength, Encoding::Chunked] {
            let uri = format!("/up/key-update/{encoding:?}/requested={requested}");
            let sent = body(200 + u64::from(requested), (1 << 20) + 3);
            let wire = match encoding {
                Encoding::ContentLength => sent.clone(),
                Encoding::Chunked => chunked(&sent, 7),
            };
            let (first, second) = wire.split_at(wire.len() / 2);
            let mut h1 =
                H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
            h1.conn
                .send(put_head(&uri, sent.len(), encoding).as_bytes())
                .expect("request head");
            h1.conn.send(first).expect("the first half of the body");
            h1.conn.key_update(requested).expect("KeyUpdate");
            h1.conn.send(second).expect("the second half of the body");
            let got = h1.read_response();
            if requested && requested_key_update_closes() {
                let e = got.expect_err("a response written with the old key");
                assert!(
                    !e.to_string().contains("bad record mac"),
                    "{uri}: a record the client could not decrypt: {e}"
                );
                closed += 1;
                srv.entry(&uri);
                let stored = fs::read(srv.html(uri.trim_start_matches('/'))).expect("stored");
                assert_body(&uri, &sent, &stored);
                continue;
            }
            let got = got.unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_stored(&srv, &uri, got.status, &sent, kernel_rx);
            let next = format!("{uri}-next");
            let got = put(&mut h1, &next, b"after the KeyUpdate", encoding).expect("next PUT");
            assert_stored(&srv, &next, got.status, b"after the KeyUpdate", kernel_rx);
        }
    }
    let closed_lines = srv
        .error_log()
        .lines()
        .filter(|l| l.contains(" [info] ") && l.contains(CLOSED_LINE))
        .count();
    assert_eq!(closed_lines, closed, "\"{CLOSED_LINE}\" lines");
    finish_quiet(srv);
}

/// nginx's early data limit (NGX_SSL_BUFSIZE).
const EARLY_LIMIT: usize = 16384;

/// A PUT in TLS 1.3 early data (0-RTT): the request head and as much of the body as fits in
/// the early data, the rest after the handshake; a body that fits whole, and one of 1 MiB.
#[test]
fn uploads_in_early_data_are_stored_byte_exact() {
    let srv = server("up-early", "ktls_rx on;", "ssl_early_data on;");
    each(Case::tls13(), |case| {
        for size in [8000, (1 << 20) + 3] {
            let ticket_uri = format!("/up/early/{}/ticket-{size}", case.name());
            let mut h1 =
                H1::new(TlsConn::connect(srv.port(case.ktls), &case.opts()).expect("connect"));
            let got = put(&mut h1, &ticket_uri, b"ticket", Encoding::ContentLength).expect("PUT");
            assert_eq!(got.status, 201, "{ticket_uri}");
            let session = h1.conn.session().expect("a session ticket");
            let uri = format!("/up/early/{}/{size}", case.name());
            let sent = body(300 + size as u64, size);
            let mut early = put_head(&uri, size, Encoding::ContentLength).into_bytes();
            let in_early = (EARLY_LIMIT - early.len()).min(size);
            early.extend_from_slice(&sent[..in_early]);
            let conn = TlsConn::resume(srv.port(case.ktls), &case.opts(), &session, &early)
                .unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert!(conn.reused(), "{uri}: session not resumed");
            let mut h1 = H1::new(conn);
            h1.conn
                .send(&sent[in_early..])
                .expect("the rest of the body");
            let got = h1.read_response().unwrap_or_else(|e| panic!("{uri}: {e}"));
            // OpenSSL turns kTLS on for receiving at the end of the handshake: a request
            // answered within the early data is logged before then.
            let kernel_rx = kernel_receives(case) && in_early < size;
            assert_stored(&srv, &uri, got.status, &sent, kernel_rx);
            let entry = srv.entry(&uri);
            let read_early: usize = connection_lines(&srv.error_log(), entry.connection)
                .iter()
                .filter_map(|l| l.strip_prefix("SSL_read_early_data: 1, "))
                .map(|n| n.trim().parse::<usize>().unwrap_or(0))
                .sum();
            assert_eq!(read_early, early.len(), "{uri}: bytes nginx read in 0-RTT");
        }
    });
    finish_quiet(srv);
}

/// The module's debug line when it tells the kernel that a client does not pad.
const NO_PAD_LINE: &str = "ktls_rx_no_pad: TLS_RX_EXPECT_NO_PAD set";

/// The module's warning at start where the kernel reads padded records wrong under the option.
const NO_PAD_IGNORED: &str = "\"ktls_rx_no_pad on\" is ignored";

/// `ktls_rx_no_pad on`: uploads from a TLS 1.3 client that pads its records (to 4096-byte
/// blocks) and from one that does not are stored as sent. Under a kTLS kernel the module
/// first checks that the kernel reads padded records right under `TLS_RX_EXPECT_NO_PAD`:
/// Linux 6.1 and 6.12 do not (a second padded record in one read comes out with its type
/// byte as data), and there the option is ignored with one warning; from 7.0 on it is set
/// on each connection that receives TLS 1.3 in the kernel, and the padded records were the
/// kernel's mispredictions (`TlsRxNoPadViolation` rose).
#[test]
fn uploads_under_no_pad_are_stored_byte_exact_padded_or_not() {
    let srv = server("up-no-pad", "ktls_rx on;\nktls_rx_no_pad on;", "");
    let stat = kernel::TlsStat::snapshot();
    let case = Case {
        ktls: Ktls::On,
        version: TlsVersion::Tls13,
    };
    let ignored = srv.error_log().contains(NO_PAD_IGNORED);
    if expect_kernel() && module_loaded() {
        let broken = kernel::series(6, 1) || kernel::series(6, 12);
        if broken || kernel::at_least(7, 0) {
            assert_eq!(ignored, broken, "\"{NO_PAD_IGNORED}\" at start");
        }
    }
    let sets_no_pad = kernel_receives(case) && !ignored;
    for pad_to in [None, Some(4096)] {
        let opts = match pad_to {
            Some(block) => case.opts().pad_to(block),
            None => case.opts(),
        };
        let mut h1 = H1::new(TlsConn::connect(srv.port(case.ktls), &opts).expect("connect"));
        for (n, size) in SIZES.into_iter().enumerate() {
            let uri = format!("/up/no-pad/{pad_to:?}/{size}");
            let sent = body(400 + n as u64, size);
            let got = put(&mut h1, &uri, &sent, Encoding::ContentLength).expect("PUT");
            assert_stored(&srv, &uri, got.status, &sent, kernel_receives(case));
            let entry = srv.entry(&uri);
            let set = connection_lines(&srv.error_log(), entry.connection)
                .iter()
                .filter(|l| l.trim() == NO_PAD_LINE)
                .count();
            assert_eq!(
                set,
                usize::from(sets_no_pad),
                "{uri}: \"{NO_PAD_LINE}\" lines"
            );
        }
    }
    if sets_no_pad {
        assert!(
            stat.rise("TlsRxNoPadViolation") > 0,
            "padded records were not seen as mispredictions: was TLS_RX_EXPECT_NO_PAD set?"
        );
    }
    finish_quiet(srv);
}
