//! TLS 1.3 KeyUpdate from the client on kTLS connections: of both kinds (`update_requested`
//! asks the server to move its own sending key on too), between two requests and in the middle
//! of a large response, over HTTP/1.1 and HTTP/2, with the module and with nginx's own path.
//!
//! What happens depends on who can give the kernel a new key (the OpenSSL release and the
//! kernel), so the expectation is stated per combination, that is per Debian release:
//!
//! | release | kernel / OpenSSL | update_not_requested | update_requested |
//! |---|---|---|---|
//! | bookworm | 6.1 / 3.0 | continues | module: closed unwritten; nginx: stale records |
//! | trixie | 6.12 / 3.5 | module: continues; nginx's read fails, `[crit]` | module: closed unwritten; nginx: `[crit]` |
//! | sid | 7.2 / 3.6 | continues | continues |
//!
//! On trixie the module's `ktls_rx auto` (the default) keeps TLS 1.3 receiving in userspace,
//! where OpenSSL follows the client's new key. On the host (userspace TLS) every case continues.

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::cases::Case;
use nginx_ktls_tests::config::{expect_kernel, module_loaded};
use nginx_ktls_tests::h1::H1;
use nginx_ktls_tests::h2::H2;
use nginx_ktls_tests::kernel;
use nginx_ktls_tests::logs::Ktls;
use nginx_ktls_tests::nginx::{Nginx, Setup};
use nginx_ktls_tests::tls::TlsConn;
use std::time::{Duration, Instant};

const BIG: usize = 1 << 20;
/// When, in the middle of the large response, the client sends its KeyUpdate.
const MIDDLE: usize = 256 * 1024;

/// The module's line when it ends a connection instead of writing with the old key.
const CLOSED_LINE: &str = "ktls: closing connection: the client asked for a TLS 1.3 KeyUpdate";
/// nginx's line when OpenSSL cannot give the kernel the client's new key.
const READ_FAILS_LINE: &str = "no suitable record layer";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Every response arrives byte-exact.
    Continues,
    /// The module ends the connection before writing with the old key: the client sees the
    /// connection end, never a record it cannot decrypt; one `info` line says why.
    Closed,
    /// The kernel decrypts what the client sends, and OpenSSL cannot give it the client's new
    /// key: nginx's `SSL_read()` fails, logged at `crit`, and the connection ends.
    ReadFails,
    /// nginx's own path goes on writing with the old key, which the client rejects.
    StaleRecords,
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    H1,
    H2,
}

#[derive(Clone, Copy, Debug)]
enum When {
    BetweenRequests,
    MidResponse,
}

fn expected(ktls: Ktls, requested: bool) -> Outcome {
    if !expect_kernel() {
        return Outcome::Continues;
    }
    // The client and nginx run on the same libssl.
    let openssl_rekeys = openssl::version::number() >= 0x3020_0000;
    match (openssl_rekeys, kernel::at_least(6, 14)) {
        (true, true) => Outcome::Continues,
        // The module's `ktls_rx auto` receives TLS 1.3 in userspace on such a kernel.
        (true, false) if ktls == Ktls::On && module_loaded() && requested => Outcome::Closed,
        (true, false) if ktls == Ktls::On && module_loaded() => Outcome::Continues,
        // Otherwise OpenSSL 3.2+ puts TLS 1.3 receive into the kernel too.
        (true, false) => Outcome::ReadFails,
        // OpenSSL 3.0 receives in userspace and sends through the kernel.
        (false, _) if !requested => Outcome::Continues,
        (false, _) if ktls == Ktls::On && module_loaded() => Outcome::Closed,
        (false, _) => Outcome::StaleRecords,
    }
}

fn server() -> Nginx {
    Setup::new("key-update")
        .http2()
        .file("small", b"small response\n".to_vec())
        .file("big", pseudo_random(41, BIG))
        .start()
}

/// The case as its URIs name it (`?case=`).
fn uri_name(case: Case, proto: Proto, when: When, requested: bool) -> String {
    format!("{}-{proto:?}-{when:?}-requested={requested}", case.name())
}

/// One connection: a small response, the KeyUpdate and a large response, then another small
/// one. Every response that arrives must be byte-exact; the first failure ends the exchange
/// and is returned.
fn exchange(
    srv: &Nginx,
    case: Case,
    proto: Proto,
    when: When,
    requested: bool,
) -> Result<(), String> {
    let name = uri_name(case, proto, when, requested);
    let small = b"small response\n".to_vec();
    let big = pseudo_random(41, BIG);
    let uri = |path: &str, n: u32| format!("/{path}?case={name}&n={n}");
    let opts = match proto {
        Proto::H1 => case.opts(),
        Proto::H2 => case.opts().h2(),
    };
    let mut conn = TlsConn::connect(srv.port(case.ktls), &opts).map_err(|e| e.to_string())?;
    let err = |e: std::io::Error| e.to_string();
    match proto {
        Proto::H1 => {
            let mut c = H1::new(conn);
            let r = c.get(&uri("small", 0)).map_err(err)?;
            assert_body(&name, &small, &r.body);
            match when {
                When::BetweenRequests => c.conn.key_update(requested).map_err(err)?,
                When::MidResponse => {
                    c.after_reading(MIDDLE, move |conn| conn.key_update(requested))
                }
            }
            let r = c.get(&uri("big", 1)).map_err(err)?;
            assert_body(&name, &big, &r.body);
            let r = c.get(&uri("small", 2)).map_err(err)?;
            assert_body(&name, &small, &r.body);
        }
        Proto::H2 => {
            let mut h2 = H2::open(&mut conn).map_err(err)?;
            let r = h2.get(&[&uri("small", 0)]).map_err(err)?;
            assert_body(&name, &small, &r[0].body);
            let mut updated = false;
            if let When::BetweenRequests = when {
                updated = true;
                h2.conn().key_update(requested).map_err(err)?;
            }
            let r = h2
                .get_watching(&[&uri("big", 1)], |conn, got| {
                    if !updated && got >= MIDDLE {
                        updated = true;
                        conn.key_update(requested)?;
                    }
                    Ok(())
                })
                .map_err(err)?;
            assert_body(&name, &big, &r[0].body);
            let r = h2.get(&[&uri("small", 2)]).map_err(err)?;
            assert_body(&name, &small, &r[0].body);
        }
    }
    Ok(())
}

/// Lines of the error log at `level` that contain `text`.
fn count(srv: &Nginx, level: &str, text: &str) -> usize {
    srv.error_log()
        .lines()
        .filter(|l| l.contains(level) && l.contains(text))
        .count()
}

/// [`count`], waiting up to 10 s for it to reach `n`: nginx logs a failure after the client
/// has seen the connection end.
fn wait_count(srv: &Nginx, level: &str, text: &str, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = count(srv, level, text);
        if got >= n || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A failure the client reports when a record does not decrypt.
fn undecryptable(error: &str) -> bool {
    error.contains("bad record mac") || error.contains("decryption failed")
}

/// Runs every case and checks its outcome against [`expected`], and the error log's lines.
#[test]
fn client_key_update() {
    let srv = server();
    let mut failed = Vec::new();
    for case in Case::tls13() {
        for proto in [Proto::H1, Proto::H2] {
            for when in [When::BetweenRequests, When::MidResponse] {
                for requested in [false, true] {
                    let want = expected(case.ktls, requested);
                    let name = format!("{} {proto:?} {when:?} requested={requested}", case.name());
                    let closed_before = count(&srv, "[info]", CLOSED_LINE);
                    let fails_before = count(&srv, "[crit]", READ_FAILS_LINE);
                    let result = exchange(&srv, case, proto, when, requested);
                    assert_ktls_used(&srv, &uri_name(case, proto, when, requested));
                    let (closed, read_fails) = match want {
                        Outcome::Closed => (
                            wait_count(&srv, "[info]", CLOSED_LINE, closed_before + 1)
                                - closed_before,
                            0,
                        ),
                        Outcome::ReadFails => (
                            0,
                            wait_count(&srv, "[crit]", READ_FAILS_LINE, fails_before + 1)
                                - fails_before,
                        ),
                        _ => (
                            count(&srv, "[info]", CLOSED_LINE) - closed_before,
                            count(&srv, "[crit]", READ_FAILS_LINE) - fails_before,
                        ),
                    };
                    let verdict = match (want, &result) {
                        (Outcome::Continues, Ok(())) => Ok(()),
                        (Outcome::Closed, Err(e)) if !undecryptable(e) && closed == 1 => Ok(()),
                        (Outcome::ReadFails, Err(e)) if !undecryptable(e) && read_fails == 1 => Ok(()),
                        (Outcome::StaleRecords, Err(e)) if undecryptable(e) => Ok(()),
                        _ => Err(format!(
                            "{name}: expected {want:?}, got {result:?} ({closed} \"{CLOSED_LINE}\", \
                             {read_fails} \"{READ_FAILS_LINE}\" lines)"
                        )),
                    };
                    eprintln!("{name}: {want:?}: {result:?}");
                    if let Err(e) = verdict {
                        eprintln!("{e}");
                        failed.push(name);
                    }
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "failed cases (messages above): {failed:?}"
    );
    srv.finish_allowing(&[READ_FAILS_LINE]);
}

/// Under kTLS, the connection's first response went out with kTLS: a run where it silently
/// did not tests nothing.
#[track_caller]
fn assert_ktls_used(srv: &Nginx, name: &str) {
    if expect_kernel() && module_loaded() {
        let e = srv.entry(&format!("/small?case={name}&n=0"));
        assert_eq!(e.ktls_tx.as_deref(), Some("1"), "{name}: $ktls_tx");
    }
}
