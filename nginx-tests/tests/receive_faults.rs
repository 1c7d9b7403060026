//! What a client does wrong while nginx reads a connection whose receiving half is kernel TLS:
//! an alert (a warning user_canceled followed by close_notify, a fatal internal_error), a
//! record torn by a FIN or by a reset, a forged record. Each is committed between HTTP/1.1
//! requests, in the middle of a request body and on an idle HTTP/2 connection, against the
//! module's path and nginx's own path with kTLS receiving, and each must log what nginx logs
//! for the same client under userspace TLS, line for line and level for level: the client
//! costs its connection and nothing else.

use nginx_ktls_tests::body::pseudo_random;
use nginx_ktls_tests::config::{expect_kernel, module_loaded, skipped};
use nginx_ktls_tests::h1::H1;
use nginx_ktls_tests::h2::H2;
use nginx_ktls_tests::logs::{level_at_info_or_above, Ktls};
use nginx_ktls_tests::nginx::{Nginx, Setup};
use nginx_ktls_tests::tls::{ClientOpts, TlsConn, TlsVersion, RECORD_APPLICATION_DATA};
use std::io::Read;
use std::time::{Duration, Instant};

const PAGE: &[u8] = b"a small page\n";
/// What a request body announces; the client sends `BODY_SENT` of it before its fault.
const BODY_LENGTH: usize = 64 << 10;
const BODY_SENT: usize = 20000;

/// A location that reads request bodies (the mirror module reads one before the content
/// phase) into memory, and the page.
const LOCATIONS: &str = "location / { }\n\
                         location /up { client_body_buffer_size 128k; mirror /mirror; }\n\
                         location = /mirror { internal; return 204; }";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    UserCanceledThenClose,
    FatalAlert,
    TornRecordThenFin,
    TornRecordThenReset,
    ForgedRecord,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::UserCanceledThenClose,
        Fault::FatalAlert,
        Fault::TornRecordThenFin,
        Fault::TornRecordThenReset,
        Fault::ForgedRecord,
    ];

    /// An alert is a record with the session's keys, which the client can send only through
    /// its own kTLS.
    fn sends_alert(self) -> bool {
        matches!(self, Fault::UserCanceledThenClose | Fault::FatalAlert)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    BetweenRequests,
    InRequestBody,
    IdleHttp2,
}

impl Phase {
    const ALL: [Phase; 3] = [
        Phase::BetweenRequests,
        Phase::InRequestBody,
        Phase::IdleHttp2,
    ];
}

/// The header of an application-data record of `length` bytes.
fn record_header(length: u16) -> Vec<u8> {
    let mut h = vec![RECORD_APPLICATION_DATA, 3, 3];
    h.extend_from_slice(&length.to_be_bytes());
    h
}

/// The first 10 bytes of a 100-byte record.
fn torn_record() -> Vec<u8> {
    let mut torn = record_header(100);
    torn.extend_from_slice(&[0; 10]);
    torn
}

/// Connects, brings the connection to `phase` and returns it with the URI of its request.
fn open(
    srv: &Nginx,
    ktls: Ktls,
    version: TlsVersion,
    phase: Phase,
    fault: Fault,
) -> (TlsConn, String) {
    let mut opts = ClientOpts::new(version);
    if fault.sends_alert() {
        opts = opts.kernel_tls();
    }
    if phase == Phase::IdleHttp2 {
        opts = opts.h2();
    }
    let name = format!("{ktls:?}-{}-{phase:?}-{fault:?}", version.name());
    let mut conn = TlsConn::connect(srv.port(ktls), &opts).expect("connect");
    match phase {
        Phase::BetweenRequests => {
            let uri = format!("/page?case={name}");
            let mut h1 = H1::new(conn);
            let got = h1.get(&uri).expect("GET");
            assert_eq!((got.status, got.body.as_slice()), (200, PAGE), "{name}");
            (h1.conn, uri)
        }
        Phase::InRequestBody => {
            let uri = format!("/up?case={name}");
            let head = format!(
                "POST {uri} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {BODY_LENGTH}\r\n\r\n"
            );
            conn.send(head.as_bytes()).expect("request head");
            conn.send(&pseudo_random(7, BODY_SENT))
                .expect("part of the body");
            wait_logged(srv, &format!("http request line: \"POST {uri} HTTP/1.1\""));
            (conn, uri)
        }
        Phase::IdleHttp2 => {
            let uri = format!("/page?case={name}");
            let got = H2::open(&mut conn)
                .and_then(|mut h2| h2.get(&[&uri]))
                .expect("GET");
            assert_eq!(
                (got[0].status, got[0].body.as_slice()),
                (200, PAGE),
                "{name}"
            );
            (conn, uri)
        }
    }
}

/// Commits `fault` and, unless it ends in a reset, reads what the server sends until it
/// closes, so that the client's close does not race with what nginx does about the fault.
fn commit(mut conn: TlsConn, fault: Fault) {
    match fault {
        Fault::UserCanceledThenClose => {
            conn.send_alert(1, 90).expect("user_canceled");
            conn.stream.shutdown().expect("close_notify");
        }
        Fault::FatalAlert => conn.send_alert(2, 80).expect("internal_error"),
        Fault::TornRecordThenFin => {
            conn.send_raw(&torn_record()).expect("a torn record");
            conn.fin().expect("FIN");
        }
        Fault::TornRecordThenReset => {
            conn.send_raw(&torn_record()).expect("a torn record");
            return conn.reset().expect("reset");
        }
        Fault::ForgedRecord => {
            let mut forged = record_header(48);
            forged.extend_from_slice(&pseudo_random(48, 48));
            conn.send_raw(&forged).expect("a forged record");
        }
    }
    let mut rest = Vec::new();
    // The server's reset after its own close is an end here too.
    let _ = conn.stream.get_mut().read_to_end(&mut rest);
}

/// Waits (bounded) until the error log has `needle`.
fn wait_logged(srv: &Nginx, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !srv.error_log().contains(needle) {
        assert!(Instant::now() < deadline, "not logged after 20 s: {needle}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lines nginx logged for `connection` at `info` and above, once it closed it, as
/// `[level] message`, the message without its context (client, server, request).
fn lines_at_info_and_above(srv: &Nginx, connection: u64) -> Vec<String> {
    srv.wait_closed(connection);
    let tag = format!(": *{connection} ");
    srv.error_log()
        .lines()
        .filter_map(|l| {
            let level = level_at_info_or_above(l)?;
            let (_, message) = l.split_once(&tag)?;
            let message = message.split(", client: ").next().unwrap_or(message);
            Some(format!("[{level}] {}", last_openssl_error(message)))
        })
        .collect()
}

/// `message` with only the last entry of the OpenSSL error queue it shows, the reason
/// nginx chose the level by: where the record was decrypted (a provider in userspace, the
/// kernel) adds entries of its own before it.
fn last_openssl_error(message: &str) -> String {
    let Some(open) = message.find("(SSL: ").map(|i| i + "(SSL: ".len()) else {
        return message.to_string();
    };
    let close = message[open..]
        .find(')')
        .map_or(message.len(), |i| open + i);
    match message[open..close].rsplit_once(" error:") {
        Some((_, last)) => format!("{}error:{last}{}", &message[..open], &message[close..]),
        None => message.to_string(),
    }
}

fn above_info(lines: &[String]) -> bool {
    lines.iter().any(|l| !l.starts_with("[info] "))
}

/// Whether `got` says what `expected` says, line for line, each at the same level or at info:
/// lower than an nginx that logs a client's fault above info under userspace TLS is better.
fn logged_as(got: &[String], expected: &[String]) -> bool {
    let demoted = |l: &str| match l.split_once("] ") {
        Some((_, message)) => format!("[info] {message}"),
        None => l.to_string(),
    };
    got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|(g, e)| g == e || *g == demoted(e))
}

/// What one connection with `fault` in `phase` got logged, and its `$ktls_rx`.
fn logged_for(
    srv: &Nginx,
    ktls: Ktls,
    version: TlsVersion,
    phase: Phase,
    fault: Fault,
) -> (Vec<String>, Option<String>) {
    let (conn, uri) = open(srv, ktls, version, phase, fault);
    commit(conn, fault);
    let entry = srv.entry(&uri);
    let mut lines = lines_at_info_and_above(srv, entry.connection);
    // The URI names the server and the case; what nginx says about the fault is the rest.
    for l in &mut lines {
        *l = l.replace(&uri, "URI");
    }
    (lines, entry.ktls_rx)
}

#[test]
fn client_faults_under_kernel_receiving_log_as_under_userspace_tls() {
    let userspace = Setup::new("rxf-user")
        .http2()
        .server(&format!("ssl_conf_command Options -KTLS;\n{LOCATIONS}"))
        .file("page", PAGE.to_vec())
        .start();
    let rx = if module_loaded() { "ktls_rx on;\n" } else { "" };
    let kernel = Setup::new("rxf-kernel")
        .http2()
        .server(&format!("{rx}{LOCATIONS}"))
        .file("page", PAGE.to_vec())
        .start();
    let openssl_tls13_rx = openssl::version::number() >= 0x3020_0000;
    let mut differences = Vec::new();
    for fault in Fault::ALL {
        if fault.sends_alert() && !expect_kernel() {
            skipped(&format!(
                "{fault:?}: the client sends alerts through its own kTLS"
            ));
            continue;
        }
        for phase in Phase::ALL {
            for version in TlsVersion::BOTH {
                let (expected, _) = logged_for(&userspace, Ktls::Off, version, phase, fault);
                eprintln!("{} {phase:?} {fault:?}: {expected:?}", version.name());
                if above_info(&expected) {
                    skipped(&format!(
                        "{} {phase:?} {fault:?}: nginx logs it above info under userspace \
                         TLS too",
                        version.name()
                    ));
                }
                for ktls in Ktls::BOTH {
                    let (got, ktls_rx) = logged_for(&kernel, ktls, version, phase, fault);
                    let case = format!("{ktls:?} {} {phase:?} {fault:?}", version.name());
                    let kernel_receives =
                        expect_kernel() && (version == TlsVersion::Tls12 || openssl_tls13_rx);
                    if module_loaded() {
                        assert_eq!(
                            ktls_rx.as_deref(),
                            Some(if kernel_receives { "1" } else { "0" }),
                            "{case}: $ktls_rx"
                        );
                    }
                    if !logged_as(&got, &expected) {
                        differences.push(format!(
                            "{case}:\n  userspace TLS: {expected:?}\n  here:          {got:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        differences.is_empty(),
        "logged otherwise than under userspace TLS:\n{}",
        differences.join("\n")
    );
    let nginx_own_crit = [
        "SSL routines::record layer failure)",
        "SSL routines::decryption failed or bad record mac)",
    ];
    userspace.finish_allowing(&nginx_own_crit);
    kernel.finish_allowing(&nginx_own_crit);
}
