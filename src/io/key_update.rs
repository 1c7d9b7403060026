//! TLS 1.3 KeyUpdate on kTLS connections: ending the connection before a
//! record with the old key goes out (the decision is [`crate::decide::rekey`]'s).
//!
//! A KeyUpdate the client sends with `update_requested` makes OpenSSL queue
//! one of its own, which the next `SSL_write()` sends before its data; the
//! queued update shows in `SSL_get_key_update_type()`.  Every write of the
//! module is checked against it first, so where the kernel cannot take the
//! new key nothing is written after the client asked for one.

use core::ffi::{c_int, c_ulong};
use core::sync::atomic::{AtomicBool, Ordering};

use nginx_sys::{OpenSSL_version_num, SSL_get_key_update_type, NGX_LOG_INFO, SSL_KEY_UPDATE_NONE};

use crate::decide::plan::Fatal;
use crate::decide::rekey::{self, Rekey};
use crate::io::connection::Connection;
use crate::io::{kernel, ssl};

/// The first OpenSSL release whose record layer gives kTLS the new key.
const OPENSSL_REKEYS_KTLS: c_ulong = 0x3020_0000;

static OPENSSL_REKEYS: AtomicBool = AtomicBool::new(false);
static KERNEL_REKEYS: AtomicBool = AtomicBool::new(false);

/// Finds out who can rekey a kTLS socket; at configuration time, after the
/// kernel check (workers inherit the answer).
pub fn init() {
    // SAFETY: a version query.
    let openssl = unsafe { OpenSSL_version_num() } >= OPENSSL_REKEYS_KTLS;
    OPENSSL_REKEYS.store(openssl, Ordering::Relaxed);
    KERNEL_REKEYS.store(
        kernel::available() && kernel::tx_rekey_supported(),
        Ordering::Relaxed,
    );
}

/// Whether the kernel takes new TLS 1.3 keys on a kTLS socket (Linux 6.14
/// and later, for sending and receiving alike).
pub fn kernel_rekeys() -> bool {
    KERNEL_REKEYS.load(Ordering::Relaxed)
}

fn capabilities() -> Rekey {
    Rekey {
        openssl: OPENSSL_REKEYS.load(Ordering::Relaxed),
        kernel: KERNEL_REKEYS.load(Ordering::Relaxed),
    }
}

/// Before anything is written on a taken-over `c`: ends the connection,
/// with one `info` line, if what would be written would go out with a
/// sending key the client was told is retired.
pub fn check(c: Connection) -> Result<(), Fatal> {
    // SAFETY: the handle's OpenSSL object is live.
    if unsafe { SSL_get_key_update_type(c.ssl()) } == SSL_KEY_UPDATE_NONE as c_int {
        return Ok(());
    }
    let Some(state) = c.state() else {
        return Ok(());
    };
    if state.stale_key.get() {
        return Err(Fatal);
    }
    let ktls_tx = c.ktls_send();
    // Without `Options KTLS` after the handshake (userspace_rx) OpenSSL
    // keeps new keys to itself.
    let cause = if ssl::ktls_asked(c) {
        rekey::stale_key_cause(capabilities(), ktls_tx, true)
    } else {
        rekey::userspace_keys_cause(ktls_tx, true)
    };
    let Some(cause) = cause else {
        debug!(
            c.log(),
            "ktls: KeyUpdate queued, the kernel takes the new key"
        );
        return Ok(());
    };
    state.stale_key.set(true);
    log_error!(
        NGX_LOG_INFO,
        c.log(),
        "ktls: closing connection: the client asked for a TLS 1.3 KeyUpdate, and {cause}; \
         nothing is sent with the old key"
    );
    Err(ssl::abandon(c))
}
