//! Whether this kernel can do TLS: the "tls" TCP upper-layer protocol.

use core::sync::atomic::{AtomicBool, Ordering};
use std::io;

/// `TLS_RX_EXPECT_NO_PAD` and `TLS_SET_RECORD_TYPE` (linux/tls.h), which
/// libc does not name.
pub const TLS_RX_EXPECT_NO_PAD: libc::c_int = 4;
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
/// The TLS record type of application data.
const RECORD_APPLICATION_DATA: u8 = 23;

/// Sets the option `name` at `level` of the socket `fd` to `value`;
/// whether the kernel took it (errno says why not).
pub fn set_option<T>(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: &T) -> bool {
    // SAFETY: value is a live T of the length given, which setsockopt()
    // only reads; a bad descriptor fails with EBADF.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            core::mem::size_of::<T>() as libc::socklen_t,
        ) == 0
    }
}

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
    // SAFETY: a fresh socket, closed below.
    let err = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Some(format!("socket() failed ({})", io::Error::last_os_error()));
        }
        let took = set_option(fd, libc::IPPROTO_TCP, libc::TCP_ULP, b"tls");
        let err = io::Error::last_os_error();
        libc::close(fd);
        if took {
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

/// Whether the kernel, told that a TLS 1.3 peer does not pad its records
/// (`TLS_RX_EXPECT_NO_PAD`), still reads padded records as sent.  Linux 6.1
/// and 6.12 do not: when one read decrypts a padded record after another,
/// the second's data comes out wrong (its type byte in place of its first
/// byte), or the socket fails with EBADMSG.  The probe queues two records
/// padded to 4096 bytes, as OpenSSL's block padding makes them, before the
/// receiving side gets its key, so that one read meets both.  A record is
/// padded by sending, with kTLS and the record type 0, its data followed by
/// the application-data type and zeros: the kernel appends the type 0, and
/// the receiver finds the application-data type before the zeros.
pub fn rx_no_pad_sound() -> bool {
    /// (fill byte, data bytes) of each record.
    const RECORDS: [(u8, usize); 2] = [(1, 200), (2, 1)];
    const PADDED_TO: usize = 4096;
    let Some(pair) = KtlsLoopback::open() else {
        return false;
    };
    let mut expected = Vec::new();
    for (fill, data) in RECORDS {
        let mut record = vec![fill; data];
        record.push(RECORD_APPLICATION_DATA);
        record.resize(PADDED_TO, 0);
        if !pair.send_record_of_type_zero(&record) {
            return false;
        }
        expected.resize(expected.len() + data, fill);
    }
    // On the wire: a header, the record, its type byte, the 16-byte tag.
    let wire = RECORDS.len() * (5 + PADDED_TO + 1 + 16);
    pair.wait_until_queued(wire) && pair.set_rx_key_expecting_no_pad() && pair.reads_back(&expected)
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
            let ulp = set_option(pair.client, libc::IPPROTO_TCP, libc::TCP_ULP, b"tls");
            (pair.server >= 0 && ulp && pair.set_tx_key()).then_some(pair)
        }
    }

    /// Gives the client a sending key (a second one is a rekey).
    pub fn set_tx_key(&self) -> bool {
        set_option(self.client, libc::SOL_TLS, libc::TLS_TX, &aes_gcm_128_key())
    }

    /// Gives the server the receiving key that matches the client's first
    /// sending key, and tells it that the client does not pad.
    fn set_rx_key_expecting_no_pad(&self) -> bool {
        let fd = self.server;
        let key = aes_gcm_128_key();
        // Keeps a probe from waiting.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        let on: libc::c_int = 1;
        set_option(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)
            && set_option(fd, libc::IPPROTO_TCP, libc::TCP_ULP, b"tls")
            && set_option(fd, libc::SOL_TLS, libc::TLS_RX, &key)
            && set_option(fd, libc::SOL_TLS, TLS_RX_EXPECT_NO_PAD, &on)
    }

    /// Waits, up to a second, until the server's socket holds `bytes`.
    fn wait_until_queued(&self, bytes: usize) -> bool {
        for _ in 0..1000 {
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            if unsafe { libc::ioctl(self.server, libc::FIONREAD, &mut queued) } != 0 {
                return false;
            }
            if usize::try_from(queued).is_ok_and(|q| q >= bytes) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }

    /// Whether the server reads exactly `expected`.
    fn reads_back(&self, expected: &[u8]) -> bool {
        let mut got = Vec::with_capacity(expected.len());
        let mut buf = vec![0u8; 32768];
        while got.len() < expected.len() {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::recv(self.server, buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n @ 1..) = usize::try_from(n) else {
                return false;
            };
            got.extend_from_slice(&buf[..n]);
        }
        got == expected
    }

    /// Sends `bytes` as one record whose inner type is 0 (TLS_SET_RECORD_TYPE).
    fn send_record_of_type_zero(&self, bytes: &[u8]) -> bool {
        // Room for one cmsghdr and its byte, 8-aligned.
        let mut control = [0u64; 4];
        // SAFETY: the message points at live buffers of the lengths given;
        // the control buffer holds one header and its byte.
        unsafe {
            let mut iov = libc::iovec {
                iov_base: bytes.as_ptr().cast_mut().cast(),
                iov_len: bytes.len(),
            };
            let mut msg: libc::msghdr = core::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(1) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_TLS;
            (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
            (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
            *libc::CMSG_DATA(cmsg) = 0;
            usize::try_from(libc::sendmsg(self.client, &msg, 0)) == Ok(bytes.len())
        }
    }
}

/// The made-up TLS 1.3 AES-128-GCM key (all zeros) both sides of a probe use.
fn aes_gcm_128_key() -> libc::tls12_crypto_info_aes_gcm_128 {
    // SAFETY: a plain C structure, for which zero bytes are a value.
    let mut key: libc::tls12_crypto_info_aes_gcm_128 = unsafe { core::mem::zeroed() };
    key.info.version = libc::TLS_1_3_VERSION;
    key.info.cipher_type = libc::TLS_CIPHER_AES_GCM_128;
    key
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
