//! Whether this kernel can do TLS: the "tls" TCP upper-layer protocol.

use core::sync::atomic::{AtomicBool, Ordering};
use std::io;

/// What the start-up check found; workers inherit it.
static AVAILABLE: AtomicBool = AtomicBool::new(false);

/// Records the start-up check's result.
pub fn set_available(available: bool) {
    AVAILABLE.store(available, Ordering::Relaxed);
}

/// Whether the start-up check found kTLS in the kernel.
pub fn available() -> bool {
    AVAILABLE.load(Ordering::Relaxed)
}

/// Why kTLS cannot be used here, if it cannot.
pub fn tls_ulp_missing() -> Option<String> {
    // Setting the ULP on an unconnected socket tells "no such ULP" (ENOENT,
    // after the kernel tried to load the tls module) from "exists, but the
    // socket is not connected" (ENOTCONN), without touching any connection.
    // SAFETY: a fresh socket, closed below; setsockopt() reads 3 bytes.
    let err = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Some(format!("socket() failed ({})", io::Error::last_os_error()));
        }
        let rc = libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            b"tls".as_ptr().cast(),
            3,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc == 0 {
            return None;
        }
        err
    };

    match err.raw_os_error() {
        Some(libc::ENOTCONN) | Some(libc::EEXIST) => None,
        Some(libc::ENOENT) => Some(
            "the kernel has no \"tls\" TCP ULP (CONFIG_TLS is not set, or the tls module is \
             not loaded: modprobe tls)"
                .to_string(),
        ),
        _ => Some(format!("setsockopt(TCP_ULP, \"tls\") failed ({err})")),
    }
}
