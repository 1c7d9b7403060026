//! The matrix each test runs: both send paths, both TLS versions (or 1.3 only).

use crate::logs::Ktls;
use crate::tls::{ClientOpts, TlsVersion};

#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub ktls: Ktls,
    pub version: TlsVersion,
}

impl Case {
    /// `ktls on` and `ktls off`, each over TLS 1.2 and 1.3.
    pub fn all() -> Vec<Case> {
        Self::with_versions(&TlsVersion::BOTH)
    }

    /// `ktls on` and `ktls off` over TLS 1.3 (early data exists only there).
    pub fn tls13() -> Vec<Case> {
        Self::with_versions(&[TlsVersion::Tls13])
    }

    fn with_versions(versions: &[TlsVersion]) -> Vec<Case> {
        Ktls::BOTH
            .iter()
            .flat_map(|&ktls| versions.iter().map(move |&version| Case { ktls, version }))
            .collect()
    }

    /// Short, URI-safe: used in messages and as `?case=` to make URIs unique in the access log.
    pub fn name(&self) -> String {
        let k = match self.ktls {
            Ktls::On => "on",
            Ktls::Off => "off",
        };
        format!("{k}-{}", self.version.name())
    }

    pub fn opts(&self) -> ClientOpts {
        ClientOpts::new(self.version)
    }
}

/// Runs `f` for every case, all of them even when one fails, then fails naming each case that
/// did: a failure with `ktls on` only, or `ktls off` only, is a finding in itself.
#[track_caller]
pub fn each(cases: Vec<Case>, f: impl Fn(Case)) {
    let failed: Vec<String> = cases
        .into_iter()
        .filter(|&case| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(case))).is_err())
        .map(|case| case.name())
        .collect();
    assert!(
        failed.is_empty(),
        "failed cases (messages above): {failed:?}"
    );
}

/// A bug of nginx's own send path under kTLS, named as in `patches/README.md`, and whether
/// the running kernel shows it.
#[derive(Clone, Copy, Debug)]
pub struct KnownBug {
    pub name: &'static str,
    pub on_this_kernel: bool,
}

/// `SSL_sendfile()` stalls with a small sndbuf: for good on 6.1. From 6.12 on (6.12 and 7.2
/// measured) the kernel pushes the corked segment itself after about 200 ms, so nginx's path
/// completes, slowly, and must.
pub fn small_sndbuf_stall() -> KnownBug {
    KnownBug {
        name: "SSL_sendfile() stalls with a small sndbuf",
        on_this_kernel: !crate::kernel::at_least(6, 12),
    }
}

/// After its TLS shutdown nginx drains the connection with a plain `recv()`, which on a socket
/// that kTLS decrypts fails with EIO at the client's close_notify: an `[alert]`. Any kTLS
/// kernel, where OpenSSL turned kTLS on for receiving.
pub fn recv_eio_after_shutdown() -> KnownBug {
    KnownBug {
        name: "recv() fails with EIO at the client's close_notify after shutdown",
        on_this_kernel: true,
    }
}

/// Like [`each`], for cases where nginx's own send path is known to fail under kTLS on some
/// kernels: under `KTLS_EXPECT_KERNEL` on a kernel that shows `bug`, a `ktls off` failure is
/// reported as that known bug, not fatal; the module's cases, and every case elsewhere, must
/// pass.
#[track_caller]
pub fn each_known_nginx_bug(cases: Vec<Case>, bug: KnownBug, f: impl Fn(Case)) {
    let mut failed = Vec::new();
    for case in cases {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(case))).is_ok() {
            continue;
        }
        if crate::config::expect_kernel() && bug.on_this_kernel && matches!(case.ktls, Ktls::Off) {
            eprintln!(
                "KNOWN NGINX BUG ({}, patches/README.md): {} failed",
                bug.name,
                case.name()
            );
        } else {
            failed.push(case.name());
        }
    }
    assert!(
        failed.is_empty(),
        "failed cases (messages above): {failed:?}"
    );
}
