//! Receiving in userspace on a connection that sends through the kernel
//! (`ktls_rx`; the decision is [`crate::decide::conf::KtlsRx`]'s).
//!
//! OpenSSL turns kTLS on for receiving by asking the connection's read BIO
//! (`BIO_CTRL_SET_KTLS`) and goes on in userspace when the BIO says no.  A
//! filter BIO in front of the socket's, put there at the start of the
//! handshake, passes everything through but that request, which it refuses
//! where the server's `ktls_rx` keeps the connection's protocol out of the
//! kernel.  It decides when the key comes, once SNI has chosen the server
//! and the protocol is known.  Sending keeps the socket BIO (the write BIO)
//! and kTLS.

use core::ffi::{c_char, c_int, c_long, c_void};
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use nginx_sys::{
    ngx_connection_t, ngx_ssl_connection_index, BIO_clear_flags, BIO_copy_next_retry, BIO_ctrl,
    BIO_get_data, BIO_get_new_index, BIO_meth_new, BIO_meth_set_ctrl, BIO_meth_set_read,
    BIO_meth_set_write, BIO_method_type, BIO_new, BIO_next, BIO_push, BIO_read, BIO_set_data,
    BIO_set_init, BIO_up_ref, BIO_write, SSL_clear_options, SSL_get_ex_data, SSL_get_rbio,
    SSL_set0_rbio, SSL_version, BIO, BIO_FLAGS_RWS, BIO_FLAGS_SHOULD_RETRY, BIO_METHOD,
    BIO_TYPE_FILTER, SSL, TLS1_3_VERSION,
};

use crate::decide::conf::KtlsRx;
use crate::io::connection::Connection;
use crate::io::ssl::SSL_OP_ENABLE_KTLS;
use crate::io::{key_update, state};

/// `BIO_CTRL_SET_KTLS` (OpenSSL's internal/bio.h, the same from 3.0 to
/// 3.6): `num` is 1 for the sending key, 0 for the receiving one.
const BIO_CTRL_SET_KTLS: c_int = 72;

/// The filter's method, made once per process at configuration time.
static METHOD: AtomicPtr<BIO_METHOD> = AtomicPtr::new(ptr::null_mut());
/// Its BIO type.
static FILTER_TYPE: AtomicI32 = AtomicI32::new(-1);

/// Makes the filter's method; at configuration time.
pub fn init() -> Result<(), ()> {
    if !METHOD.load(Ordering::Relaxed).is_null() {
        return Ok(());
    }
    // SAFETY: a new method with plain functions of ours; it lives as long as
    // the process.
    unsafe {
        let index = BIO_get_new_index();
        if index < 0 {
            return Err(());
        }
        let filter_type = index | BIO_TYPE_FILTER as c_int;
        let method = BIO_meth_new(filter_type, c"ktls_rx".as_ptr());
        if method.is_null() {
            return Err(());
        }
        FILTER_TYPE.store(filter_type, Ordering::Relaxed);
        BIO_meth_set_read(method, Some(read));
        BIO_meth_set_write(method, Some(write));
        BIO_meth_set_ctrl(method, Some(ctrl));
        METHOD.store(method, Ordering::Relaxed);
    }
    Ok(())
}

/// Puts the filter in front of the socket BIO the connection reads from, at
/// the start of its first handshake.  Where no filter can be made the
/// connection goes on as OpenSSL sets it up.
pub fn install(c: Connection) {
    let method = METHOD.load(Ordering::Relaxed);
    if method.is_null() {
        return;
    }
    let ssl = c.ssl();
    // SAFETY: the handle's OpenSSL object is live; the new BIO takes a
    // reference to the socket BIO and SSL_set0_rbio() gives up the SSL's
    // own read reference to it, so the write BIO (the same socket BIO)
    // keeps its own.
    unsafe {
        let socket = SSL_get_rbio(ssl);
        if socket.is_null() || BIO_method_type(socket) == FILTER_TYPE.load(Ordering::Relaxed) {
            return;
        }
        let filter = BIO_new(method);
        if filter.is_null() {
            debug!(c.log(), "ktls_rx: BIO_new() failed, OpenSSL decides");
            return;
        }
        BIO_set_data(filter, ssl.cast::<c_void>());
        BIO_set_init(filter, 1);
        BIO_up_ref(socket);
        BIO_push(filter, socket);
        SSL_set0_rbio(ssl, filter);
    }
    debug!(c.log(), "ktls_rx: read BIO filter in front of the socket");
}

/// Whether the connection of `ssl` is to decrypt in userspace: its server
/// has `ktls on` and a `ktls_rx` that keeps its protocol out of the kernel.
///
/// # Safety
/// `ssl` must be a live OpenSSL connection.
unsafe fn receives_in_userspace(ssl: *mut SSL) -> bool {
    // SAFETY: ssl is live; nginx keeps its connection in the ex_data slot.
    unsafe {
        let Some(rx) = userspace_by_conf(ssl) else {
            return false;
        };
        let tls13 = SSL_version(ssl) == TLS1_3_VERSION as c_int;
        let c = SSL_get_ex_data(ssl, ngx_ssl_connection_index).cast::<ngx_connection_t>();
        if !c.is_null() {
            debug!(
                (*c).log,
                "ktls_rx: {rx:?}: receiving {} in userspace",
                if tls13 { "TLSv1.3" } else { "TLSv1.2" }
            );
        }
        true
    }
}

/// The `ktls_rx` that keeps the connection of `ssl` receiving in userspace,
/// if its server's does.
///
/// # Safety
/// `ssl` must be a live OpenSSL connection.
unsafe fn userspace_by_conf(ssl: *mut SSL) -> Option<KtlsRx> {
    // SAFETY: forwarded from the caller.
    unsafe {
        let rx = KtlsRx::from_conf(state::server_conf(ssl)?.rx);
        let tls13 = SSL_version(ssl) == TLS1_3_VERSION as c_int;
        (!rx.kernel_receives(tls13, key_update::kernel_rekeys())).then_some(rx)
    }
}

/// At the end of the handshake of a connection that sends with kTLS and
/// receives in userspace: no later record layer of OpenSSL's may try kTLS.
/// OpenSSL 3.2 to 3.6, when kTLS is refused for a new receiving key (a
/// client's KeyUpdate), fall back to their own record layer but lose what
/// the old one had read past the KeyUpdate.  Without `Options KTLS` they
/// take their own layer at once; a new sending key could then not reach
/// the kernel, which [`crate::io::key_update`] checks before every write.
pub fn keep_key_updates_in_userspace(c: Connection) {
    // SAFETY: the handle's OpenSSL object is live.
    if unsafe { userspace_by_conf(c.ssl()) }.is_none() {
        return;
    }
    // SAFETY: as above.
    unsafe { SSL_clear_options(c.ssl(), SSL_OP_ENABLE_KTLS) };
    debug!(
        c.log(),
        "ktls_rx: KTLS option cleared, later keys stay in userspace"
    );
}

/// Runs `io` on the socket BIO behind the filter `b` and gives `b` its
/// retry flags.
///
/// # Safety
/// `b` must be a live filter BIO.
unsafe fn pass_on(b: *mut BIO, io: impl FnOnce(*mut BIO) -> c_int) -> c_int {
    // SAFETY: forwarded from the caller; the next BIO lives as long as the
    // filter holds its reference.
    unsafe {
        let next = BIO_next(b);
        if next.is_null() {
            return 0;
        }
        let n = io(next);
        BIO_clear_flags(b, (BIO_FLAGS_RWS | BIO_FLAGS_SHOULD_RETRY) as c_int);
        BIO_copy_next_retry(b);
        n
    }
}

unsafe extern "C" fn read(b: *mut BIO, out: *mut c_char, len: c_int) -> c_int {
    // SAFETY: OpenSSL passes the filter and a buffer of len bytes.
    unsafe { pass_on(b, |next| BIO_read(next, out.cast::<c_void>(), len)) }
}

unsafe extern "C" fn write(b: *mut BIO, data: *const c_char, len: c_int) -> c_int {
    // SAFETY: OpenSSL passes the filter and len bytes of data.
    unsafe { pass_on(b, |next| BIO_write(next, data.cast::<c_void>(), len)) }
}

unsafe extern "C" fn ctrl(b: *mut BIO, cmd: c_int, num: c_long, arg: *mut c_void) -> c_long {
    // SAFETY: as for read(); the filter's data is the SSL that owns it.
    unsafe {
        if cmd == BIO_CTRL_SET_KTLS && num == 0 && receives_in_userspace(BIO_get_data(b).cast()) {
            return 0;
        }
        let next = BIO_next(b);
        if next.is_null() {
            return 0;
        }
        BIO_ctrl(next, cmd, num, arg)
    }
}
