//! Every cipher kTLS supports in the kernel (AES-128-GCM, AES-256-GCM,
//! ChaCha20-Poly1305), for TLS 1.3 and TLS 1.2 (ECDHE-RSA, hence the RSA certificate), on both
//! send paths: negotiated as asked, every body byte-exact.

use nginx_ktls_tests::body::{assert_body, pseudo_random};
use nginx_ktls_tests::config::{expect_kernel, module_loaded};
use nginx_ktls_tests::h1::H1;
use nginx_ktls_tests::kernel::TlsStat;
use nginx_ktls_tests::logs::{Ktls, Sent};
use nginx_ktls_tests::nginx::Setup;
use nginx_ktls_tests::tls::{ClientOpts, TlsConn, TlsVersion};

const CIPHERS: [(TlsVersion, &str); 6] = [
    (TlsVersion::Tls13, "TLS_AES_128_GCM_SHA256"),
    (TlsVersion::Tls13, "TLS_AES_256_GCM_SHA384"),
    (TlsVersion::Tls13, "TLS_CHACHA20_POLY1305_SHA256"),
    (TlsVersion::Tls12, "ECDHE-RSA-AES128-GCM-SHA256"),
    (TlsVersion::Tls12, "ECDHE-RSA-AES256-GCM-SHA384"),
    (TlsVersion::Tls12, "ECDHE-RSA-CHACHA20-POLY1305"),
];

#[test]
fn every_ktls_cipher() {
    let sizes = [16385usize, 1 << 20];
    let files: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&s| pseudo_random(s as u64 + 60, s))
        .collect();
    let srv = Setup::new("ciphers")
        .file("small", files[0].clone())
        .file("large", files[1].clone())
        .start();
    let stat = TlsStat::snapshot();
    for ktls in Ktls::BOTH {
        for (version, cipher) in CIPHERS {
            let name = format!("{ktls:?}-{cipher}");
            let conn = TlsConn::connect(srv.port(ktls), &ClientOpts::new(version).cipher(cipher))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(conn.cipher(), cipher, "{name}: negotiated");
            let mut c = H1::new(conn);
            for (path, content) in ["small", "large"].iter().zip(&files) {
                let uri = format!("/{path}?case={name}");
                let r = c.get(&uri).unwrap_or_else(|e| panic!("{name} {uri}: {e}"));
                assert_eq!(r.status, 200, "{name} {uri}");
                assert_body(&format!("{name} {uri}"), content, &r.body);
                let e = srv.sent_entry(&format!("{name} {uri}"), ktls, &uri, Sent::Sendfile);
                assert_eq!(
                    (e.ssl_protocol.as_str(), e.ssl_cipher.as_str()),
                    (version.name(), cipher),
                    "{name}"
                );
            }
        }
    }
    stat.assert_tx_used("every_ktls_cipher");
    srv.finish();
}

/// A suite the kernel cannot take (AES-CBC): OpenSSL silently stays in userspace. The body is
/// still exact, `$ktls_tx` says "0", and under a kTLS kernel the module tells the operator,
/// once per worker, at notice level.
#[test]
fn cipher_without_ktls_is_reported() {
    let cipher = "ECDHE-RSA-AES128-SHA";
    let body = pseudo_random(80, 100_000);
    let srv = Setup::new("cbc")
        .server(&format!(
            "ssl_ciphers {cipher}:ECDHE-RSA-AES128-GCM-SHA256;"
        ))
        .http("error_log logs/notice.log notice;")
        .file("f", body.clone())
        .start();
    for n in 0..2 {
        let opts = ClientOpts::new(TlsVersion::Tls12).cipher(cipher);
        let mut c = H1::new(TlsConn::connect(srv.port(Ktls::On), &opts).expect("connect"));
        let uri = format!("/f?n={n}");
        let r = c.get(&uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!(r.status, 200, "{uri}");
        assert_body(&uri, &body, &r.body);
        let e = srv.entry(&uri);
        assert_eq!(e.ssl_cipher, cipher, "{uri}");
        if module_loaded() {
            assert_eq!(e.ktls_tx.as_deref(), Some("0"), "{uri}: $ktls_tx");
        }
    }
    let notices = std::fs::read_to_string(srv.prefix().join("logs/notice.log")).unwrap_or_default();
    let reported = notices
        .lines()
        .filter(|l| {
            l.contains("ktls: OpenSSL did not enable kernel TLS for TLSv1.2/ECDHE-RSA-AES128-SHA")
        })
        .count();
    let expected = usize::from(expect_kernel() && module_loaded());
    assert_eq!(reported, expected, "reports in notice.log:\n{notices}");
    srv.finish();
}
