//! `ktls_rx_no_pad on;`: tells the kernel that a TLS 1.3 connection's
//! client does not pad its records (`TLS_RX_EXPECT_NO_PAD`, Linux 6.0), so
//! that it may decrypt a record straight into the reader's buffer: without
//! it, TLS 1.3 hides a record's type and padding inside the encryption and
//! the kernel decrypts into a buffer of its own, then copies.  A record that
//! turns out padded, or not application data, is decrypted again the slow
//! way (the kernel counts `TlsRxNoPadViolation` and `TlsDecryptRetry`), so
//! a client that pads gets the same bytes at twice the decryption work;
//! where the kernel gets that wrong ([`kernel::rx_no_pad_sound`]), the
//! directive is ignored.

use core::ffi::c_int;
use core::sync::atomic::{AtomicBool, Ordering};
use std::io;

use nginx_sys::{ngx_cycle, ngx_log_t, NGX_LOG_WARN};

use crate::io::connection::Connection;

use crate::io::kernel::{self, TLS_RX_EXPECT_NO_PAD};

/// Whether connections of servers with `ktls_rx_no_pad on` get the option:
/// decided at configuration, inherited by the workers.
static HONOURED: AtomicBool = AtomicBool::new(false);

/// Whether this worker has said that its kernel refused the option.
static REFUSAL_LOGGED: AtomicBool = AtomicBool::new(false);

/// At configuration: `wanted` if a server with `ktls on` has
/// `ktls_rx_no_pad on` and the kernel has kTLS.  The option is honoured
/// where the kernel reads padded records right under it; otherwise one
/// warning on `log` says that it is ignored.
pub fn init(log: *mut ngx_log_t, wanted: bool) {
    let sound = wanted && kernel::rx_no_pad_sound();
    HONOURED.store(sound, Ordering::Relaxed);
    if wanted && !sound {
        log_error!(
            NGX_LOG_WARN,
            log,
            "ktls: \"ktls_rx_no_pad on\" is ignored: this kernel does not read a padded \
             TLS 1.3 record as sent under TLS_RX_EXPECT_NO_PAD"
        );
    }
}

/// Tells the kernel that the client of `c`, whose receiving the kernel
/// decrypts, does not pad, where the option is honoured.  A kernel that
/// refuses it decrypts as before; the worker says so once.
pub fn expect_no_pad(c: Connection) {
    if !HONOURED.load(Ordering::Relaxed) {
        debug!(c.log(), "ktls_rx_no_pad: ignored on this kernel");
        return;
    }
    let on: c_int = 1;
    if kernel::set_option(c.fd(), libc::SOL_TLS, TLS_RX_EXPECT_NO_PAD, &on) {
        debug!(c.log(), "ktls_rx_no_pad: TLS_RX_EXPECT_NO_PAD set");
        return;
    }
    let err = io::Error::last_os_error();
    debug!(c.log(), "ktls_rx_no_pad: setsockopt() failed: {err}");
    if !REFUSAL_LOGGED.swap(true, Ordering::Relaxed) {
        // SAFETY: a worker's cycle lives as long as the worker.
        let log = unsafe { (*ngx_cycle).log };
        log_error!(
            NGX_LOG_WARN,
            log,
            "ktls: setsockopt(TLS_RX_EXPECT_NO_PAD) failed ({err}), \"ktls_rx_no_pad\" \
             is ignored: the kernel decrypts TLS 1.3 records into its own buffer"
        );
    }
}
