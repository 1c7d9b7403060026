//! TLS 1.3 KeyUpdate on kTLS connections: finding out whether OpenSSL has
//! moved its sending key on, and ending the connection before a record
//! with the old key goes out (the decision is [`crate::rekey`]'s).
//!
//! A KeyUpdate the client requests makes OpenSSL send one of its own,
//! either inside nginx's `SSL_read()` or at the start of the next
//! `SSL_write()`.  The second case shows in `SSL_get_key_update_type()`
//! before the write; the first leaves no trace in OpenSSL's API, so on the
//! OpenSSL releases that need it a message callback notes every KeyUpdate
//! the connection sends.

use core::ffi::{c_int, c_ulong, c_void};
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nginx_sys::{
    ngx_connection_t, OpenSSL_version_num, SSL_CTX_set_msg_callback, SSL_get_ex_data,
    SSL_get_key_update_type, SSL_set_ex_data, NGX_LOG_INFO, SSL, SSL_CTX, SSL_KEY_UPDATE_NONE,
};

use crate::plan::Fatal;
use crate::rekey::{self, Rekey};
use crate::{kernel, ssl, state};

/// `SSL3_RT_HANDSHAKE` and `SSL3_MT_KEY_UPDATE`.
const RT_HANDSHAKE: c_int = 22;
const MT_KEY_UPDATE: u8 = 24;

/// The first OpenSSL release whose record layer gives kTLS the new key.
const OPENSSL_REKEYS_KTLS: c_ulong = 0x3020_0000;

/// What the per-connection slot holds (as a pointer-sized integer).
const SENT: usize = 1;
const CLOSED: usize = 2;

static EX_INDEX: AtomicI32 = AtomicI32::new(-1);
static OPENSSL_REKEYS: AtomicBool = AtomicBool::new(false);
static KERNEL_REKEYS: AtomicBool = AtomicBool::new(false);

/// Finds out once per configuration who can rekey a kTLS socket, and
/// reserves the slot where a connection's own KeyUpdate is noted.
pub fn init() -> Result<(), ()> {
    // SAFETY: a version query.
    let openssl = unsafe { OpenSSL_version_num() } >= OPENSSL_REKEYS_KTLS;
    OPENSSL_REKEYS.store(openssl, Ordering::Relaxed);
    KERNEL_REKEYS.store(
        kernel::available() && kernel::tx_rekey_supported(),
        Ordering::Relaxed,
    );
    if EX_INDEX.load(Ordering::Relaxed) < 0 {
        EX_INDEX.store(state::new_ex_index()?, Ordering::Relaxed);
    }
    Ok(())
}

fn capabilities() -> Rekey {
    Rekey {
        openssl: OPENSSL_REKEYS.load(Ordering::Relaxed),
        kernel: KERNEL_REKEYS.load(Ordering::Relaxed),
    }
}

/// Has the connections of `ctx` note the KeyUpdates they send, where
/// nothing else would tell (OpenSSL before 3.2).  Set on the context, so it
/// covers what happens before the module takes a connection over.
///
/// # Safety
/// `ctx` must be a live SSL_CTX, at configuration time.
pub unsafe fn watch(ctx: *mut SSL_CTX) {
    if !capabilities().openssl {
        // SAFETY: forwarded from the caller.
        unsafe { SSL_CTX_set_msg_callback(ctx, Some(on_message)) };
    }
}

/// OpenSSL's message callback: notes an outgoing KeyUpdate.
unsafe extern "C" fn on_message(
    write_p: c_int,
    _version: c_int,
    content_type: c_int,
    buf: *const c_void,
    len: usize,
    ssl: *mut SSL,
    _arg: *mut c_void,
) {
    if write_p != 1 || content_type != RT_HANDSHAKE || len == 0 {
        return;
    }
    // SAFETY: OpenSSL passes the message it wrote, len > 0 bytes.
    if unsafe { *buf.cast::<u8>() } != MT_KEY_UPDATE {
        return;
    }
    // SAFETY: a live connection, inside one of its own calls.
    unsafe {
        if slot(ssl) == 0 {
            set_slot(ssl, SENT);
        }
    }
}

/// # Safety
/// `ssl` must be a live OpenSSL connection.
unsafe fn slot(ssl: *mut SSL) -> usize {
    let index = EX_INDEX.load(Ordering::Relaxed);
    if index < 0 {
        return 0;
    }
    // SAFETY: forwarded from the caller.
    unsafe { SSL_get_ex_data(ssl, index) as usize }
}

/// # Safety
/// `ssl` must be a live OpenSSL connection.
unsafe fn set_slot(ssl: *mut SSL, value: usize) {
    let index = EX_INDEX.load(Ordering::Relaxed);
    if index >= 0 {
        // SAFETY: forwarded from the caller; an integer, never dereferenced.
        unsafe { SSL_set_ex_data(ssl, index, value as *mut c_void) };
    }
}

/// Before anything is written on `c`: ends the connection, with one `info`
/// line, if what would be written would use a sending key the peer has
/// moved on from.
///
/// # Safety
/// `c` must be a live TLS connection.
pub unsafe fn check(c: *mut ngx_connection_t) -> Result<(), Fatal> {
    // SAFETY: the caller guarantees a live TLS connection.
    unsafe {
        let ssl = (*(*c).ssl).connection;
        let noted = slot(ssl);
        if noted == CLOSED {
            return Err(Fatal);
        }
        let pending = SSL_get_key_update_type(ssl) != SSL_KEY_UPDATE_NONE as c_int;
        if noted == 0 && !pending {
            return Ok(());
        }
        let Some(cause) = rekey::stale_key_cause(capabilities(), ssl::ktls_send(ssl), true) else {
            debug!((*c).log, "ktls: KeyUpdate, the kernel has the new key");
            return Ok(());
        };
        set_slot(ssl, CLOSED);
        log_error!(
            NGX_LOG_INFO,
            (*c).log,
            "ktls: closing connection after a TLS 1.3 KeyUpdate {}: {cause}; nothing is sent \
             with the old key",
            if pending {
                "that OpenSSL is to send"
            } else {
                "that OpenSSL sent"
            }
        );
        Err(ssl::abandon(c))
    }
}
