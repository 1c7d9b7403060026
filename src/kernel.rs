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
    KtlsLoopback::open().is_some_and(|pair| pair.set_tx_key())
}

/// A loopback TCP connection of the module's own whose client side sends
/// with kTLS (TLS 1.3, AES-128-GCM, a made-up key), for probing what the
/// kernel does; closed when dropped.
pub struct KtlsLoopback {
    listener: libc::c_int,
    /// The kTLS side.
    pub client: libc::c_int,
    /// The peer, which sees the TLS records as bytes.
    pub server: libc::c_int,
}

impl KtlsLoopback {
    /// Connects, and gives the client its first sending key.
    pub fn open() -> Option<KtlsLoopback> {
        // SAFETY: descriptors made here and owned by the value (closed on
        // drop); the socket calls get properly sized structures.
        unsafe {
            let mut pair = KtlsLoopback {
                listener: libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0),
                client: libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0),
                server: -1,
            };
            if pair.listener < 0 || pair.client < 0 {
                return None;
            }
            let mut addr: libc::sockaddr_in = core::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let mut len = core::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let sa = ptr_of(&mut addr);
            if libc::bind(pair.listener, sa, len) != 0
                || libc::listen(pair.listener, 1) != 0
                || libc::getsockname(pair.listener, sa, &mut len) != 0
                || libc::connect(pair.client, sa, len) != 0
            {
                return None;
            }
            pair.server = libc::accept4(
                pair.listener,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            );
            let ulp = libc::setsockopt(
                pair.client,
                libc::IPPROTO_TCP,
                libc::TCP_ULP,
                b"tls".as_ptr().cast(),
                3,
            );
            (pair.server >= 0 && ulp == 0 && pair.set_tx_key()).then_some(pair)
        }
    }

    /// Gives the client a sending key (a second one is a rekey).
    pub fn set_tx_key(&self) -> bool {
        // SAFETY: the key structure is fully initialised and sized.
        unsafe {
            let mut key: libc::tls12_crypto_info_aes_gcm_128 = core::mem::zeroed();
            key.info.version = libc::TLS_1_3_VERSION;
            key.info.cipher_type = libc::TLS_CIPHER_AES_GCM_128;
            libc::setsockopt(
                self.client,
                libc::SOL_TLS,
                libc::TLS_TX,
                core::ptr::addr_of!(key).cast(),
                core::mem::size_of_val(&key) as libc::socklen_t,
            ) == 0
        }
    }
}

impl Drop for KtlsLoopback {
    fn drop(&mut self) {
        for fd in [self.listener, self.client, self.server] {
            if fd >= 0 {
                // SAFETY: the value owns its descriptors.
                unsafe { libc::close(fd) };
            }
        }
    }
}

fn ptr_of(addr: &mut libc::sockaddr_in) -> *mut libc::sockaddr {
    (addr as *mut libc::sockaddr_in).cast()
}
