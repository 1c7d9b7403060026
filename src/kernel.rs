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

/// Whether the kernel lets a kTLS socket take a second TLS 1.3 sending key
/// (Linux 6.14 and later; before, the second key is refused with EBUSY).
/// Tried on a loopback connection of its own with a made-up key; any
/// failure before the second key answers "no".
pub fn tx_rekey_supported() -> bool {
    // SAFETY: descriptors made and closed here; the socket calls get
    // properly sized structures.
    unsafe {
        let listener = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let client = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let supported = listener >= 0 && client >= 0 && rekey_on(listener, client);
        for fd in [listener, client] {
            if fd >= 0 {
                libc::close(fd);
            }
        }
        supported
    }
}

/// # Safety
/// `listener` and `client` must be fresh TCP sockets.
unsafe fn rekey_on(listener: libc::c_int, client: libc::c_int) -> bool {
    // SAFETY: forwarded from the caller; sizes are those of the structures.
    unsafe {
        let mut addr: libc::sockaddr_in = core::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let mut len = core::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let sa = ptr_of(&mut addr);
        if libc::bind(listener, sa, len) != 0
            || libc::listen(listener, 1) != 0
            || libc::getsockname(listener, sa, &mut len) != 0
            || libc::connect(client, sa, len) != 0
            || libc::setsockopt(
                client,
                libc::IPPROTO_TCP,
                libc::TCP_ULP,
                b"tls".as_ptr().cast(),
                3,
            ) != 0
        {
            return false;
        }
        let mut key: libc::tls12_crypto_info_aes_gcm_128 = core::mem::zeroed();
        key.info.version = libc::TLS_1_3_VERSION;
        key.info.cipher_type = libc::TLS_CIPHER_AES_GCM_128;
        let set_key = || {
            libc::setsockopt(
                client,
                libc::SOL_TLS,
                libc::TLS_TX,
                core::ptr::addr_of!(key).cast(),
                core::mem::size_of_val(&key) as libc::socklen_t,
            ) == 0
        };
        set_key() && set_key()
    }
}

fn ptr_of(addr: &mut libc::sockaddr_in) -> *mut libc::sockaddr {
    (addr as *mut libc::sockaddr_in).cast()
}
