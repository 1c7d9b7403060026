//! Writes to a TLS connection through OpenSSL, the way nginx does.
//!
//! One function per nginx function: [`write`] is `ngx_ssl_write()`,
//! [`write_early`] is `ngx_ssl_write_early()`, [`sendfile`] is
//! `ngx_ssl_sendfile()`, with the same debug lines, the same handler swaps
//! on WANT_READ / WANT_WRITE, the same `write_blocked` handling for 0-RTT,
//! and the same error levels.  nginx's helpers for these are `static`, so the
//! module has its own ([`restore_read_handler`], [`ssl_read_handler`],
//! [`clear_error`], [`connection_error`]); they work on the same fields of
//! `ngx_ssl_connection_t`, so nginx's read path and this write path hand
//! the saved handlers to each other as nginx's own functions do.

use core::ffi::{c_char, c_int, CStr};
use core::ptr;

use nginx_sys::{
    ngx_buf_t, ngx_connection_t, ngx_errno, ngx_event_t, ngx_handle_read_event, ngx_log_t,
    ngx_post_event, ngx_posted_events, ngx_set_errno, ngx_ssl_error, ngx_tcp_push, ERR_clear_error,
    ERR_peek_error, ERR_peek_last_error, SSL_CIPHER_get_name, SSL_get_current_cipher,
    SSL_get_error, SSL_get_key_update_type, SSL_get_options, SSL_get_version, SSL_is_init_finished,
    SSL_sendfile, SSL_write, SSL_write_early_data, ERR_REASON_MASK, NGX_LOG_ALERT, SSL_ERROR_SSL,
    SSL_ERROR_SYSCALL, SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE, SSL_ERROR_ZERO_RETURN,
    SSL_KEY_UPDATE_NONE, SSL_R_UNINITIALIZED,
};

use crate::decide::error_level::error_level;
use crate::decide::plan::{Fatal, Io};
use crate::io::connection::Connection;
use crate::io::sys;

/// `SSL_OP_ENABLE_KTLS` (`SSL_OP_BIT(3)`), a macro bindgen cannot translate.
pub const SSL_OP_ENABLE_KTLS: u64 = 1 << 3;

/// Whether `Options KTLS` is set on the connection.
pub fn ktls_asked(c: Connection) -> bool {
    // SAFETY: the handle's OpenSSL object is live.
    unsafe { SSL_get_options(c.ssl()) & SSL_OP_ENABLE_KTLS != 0 }
}

/// Whether OpenSSL was asked for kTLS (`Options KTLS`) and did not give it
/// for sending: the cipher, the protocol or an extension
/// (max_fragment_length, record padding) ruled it out.
pub fn ktls_refused(c: Connection) -> bool {
    ktls_asked(c) && !c.ktls_send()
}

/// "TLSv1.3/TLS_AES_256_GCM_SHA384" for log lines.
pub fn describe(c: Connection) -> String {
    let name = |p: *const c_char| {
        if p.is_null() {
            "(none)".into()
        } else {
            // SAFETY: OpenSSL's names are static NUL-terminated strings.
            unsafe { CStr::from_ptr(p) }.to_string_lossy()
        }
    };
    // SAFETY: the handle's OpenSSL object is live; the cipher, when set,
    // is one of OpenSSL's static tables.
    let (version, cipher) = unsafe {
        let cipher = SSL_get_current_cipher(c.ssl());
        let cipher = if cipher.is_null() {
            ptr::null()
        } else {
            SSL_CIPHER_get_name(cipher)
        };
        (SSL_get_version(c.ssl()), cipher)
    };
    format!("{}/{}", name(version), name(cipher))
}

/// Whether the kTLS socket may be written to directly now (`SSL_sendfile()`,
/// or `send()` of buffered bytes), going around OpenSSL's record layer.
///
/// It may not while OpenSSL has bytes of its own to write first, or they
/// could end up after (or inside, if a handshake message spans records) the
/// file's records.  From OpenSSL's source (3.0 to 3.5, `ssl/statem`,
/// `ssl/record/rec_layer_s3.c`): post-handshake messages the server writes
/// (TLS 1.3 NewSessionTicket, a KeyUpdate reply) are written by the state
/// machine, which keeps the connection "in init" until the whole message has
/// been flushed to the socket, so `SSL_is_init_finished()` is 0 while any
/// such write is unfinished — including during 0-RTT, where the tickets have
/// not been written yet.  A KeyUpdate that was requested but not started
/// shows in `SSL_get_key_update_type()`; `SSL_write()` would send it first.
/// A pending alert is flushed by `SSL_sendfile()` itself; the module
/// writes none of its own.  The remaining case, an application record that
/// `SSL_write()` left half-written (it must be retried with the same bytes),
/// is tracked per connection from `SSL_write()`'s results.
pub fn kernel_allowed(c: Connection) -> bool {
    if !c.ktls_send() {
        return false;
    }
    // SAFETY: the handle's OpenSSL object is live.
    let settled = unsafe {
        SSL_is_init_finished(c.ssl()) == 1
            && SSL_get_key_update_type(c.ssl()) == SSL_KEY_UPDATE_NONE
    };
    settled && c.state().is_some_and(|s| !s.ssl_write_pending.get())
}

/// Records whether an `SSL_write()` must be retried before anything else.
fn set_ssl_write_pending(c: Connection, pending: bool) {
    if let Some(state) = c.state() {
        state.ssl_write_pending.set(pending);
    }
}

/// `ngx_ssl_clear_error()`: errors left in OpenSSL's queue by someone else
/// would be blamed on this write.
fn clear_error(log: *mut ngx_log_t) {
    // SAFETY: OpenSSL's error queue is per thread; ngx_ssl_error() logs to
    // the live connection's log and pops one entry per call.
    unsafe {
        while ERR_peek_error() != 0 {
            ngx_ssl_error(
                NGX_LOG_ALERT as _,
                log,
                0,
                c"ignoring stale global SSL error".as_ptr().cast_mut(),
            );
        }
        ERR_clear_error();
    }
}

/// `ngx_ssl_connection_error()`: logs a failed operation at the level nginx
/// uses for that failure.
fn connection_error(c: Connection, sslerr: u32, err: i32, text: &CStr) {
    // SAFETY: ERR_peek_last_error() only reads this thread's error queue.
    let reason = unsafe { ERR_peek_last_error() & ERR_REASON_MASK as u64 } as u32;
    let level = error_level(sslerr, err, reason, c.log_error());
    // SAFETY: ngx_ssl_error() formats "%s" with a NUL-terminated string, to
    // the live connection's log.
    unsafe {
        ngx_ssl_error(
            level as _,
            c.log(),
            err,
            c"%s".as_ptr().cast_mut(),
            text.as_ptr() as *const c_char,
        );
    }
}

/// The read handler set while a write waits for the socket to become
/// readable (`ngx_ssl_read_handler()`): readability means the write can go on.
unsafe extern "C" fn ssl_read_handler(rev: *mut ngx_event_t) {
    // SAFETY: nginx calls event handlers with a live event whose data is
    // its connection, and that connection's write event.
    unsafe {
        let c = (*rev).data.cast::<ngx_connection_t>();
        debug!((*c).log, "SSL read handler");
        let wev = (*c).write;
        if let Some(handler) = (*wev).handler {
            handler(wev);
        }
    }
}

/// A write made progress: the read handler that a WANT_READ replaced gets its
/// event back, posted so that reading resumes.
fn restore_read_handler(c: Connection) -> Result<(), Fatal> {
    // SAFETY: the handle's c->ssl and read event are live; the event is
    // posted to the worker's queue, which outlives it.
    unsafe {
        let ssl = c.ngx_ssl();
        let Some(saved) = (*ssl).saved_read_handler else {
            return Ok(());
        };
        let rev = c.read_event();
        (*rev).handler = Some(saved);
        (*ssl).saved_read_handler = None;
        (*rev).set_ready(1);
        if ngx_handle_read_event(rev, 0) != 0 {
            return Err(Fatal);
        }
        ngx_post_event(rev, ptr::addr_of_mut!(ngx_posted_events));
    }
    Ok(())
}

/// The write needs the socket to become readable: wait for it, and run the
/// write handler when it is.
fn wait_readable(c: Connection) -> Result<Io, Fatal> {
    // SAFETY: as for restore_read_handler().
    unsafe {
        let rev = c.read_event();
        (*rev).set_ready(0);
        if ngx_handle_read_event(rev, 0) != 0 {
            return Err(Fatal);
        }
        // No timer: the write event's timer already bounds this wait.
        let ssl = c.ngx_ssl();
        if (*ssl).saved_read_handler.is_none() {
            (*ssl).saved_read_handler = (*rev).handler;
            (*rev).handler = Some(ssl_read_handler);
        }
    }
    Ok(Io::Again)
}

/// Which OpenSSL call failed, for [`write_error`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Write,
    WriteEarly,
    Sendfile,
}

/// `SSL_get_error()` for a write that returned `n`, corrected where nginx
/// corrects it, and the errno that goes with SSL_ERROR_SYSCALL; called
/// right after the failed write.
fn write_error(c: Connection, n: c_int, call: Call) -> (u32, i32) {
    // SAFETY: the handle's OpenSSL object is live; the error queue is this
    // thread's.
    let (mut sslerr, reason) = unsafe {
        (
            SSL_get_error(c.ssl(), n) as u32,
            (ERR_peek_error() & ERR_REASON_MASK as u64) as u32,
        )
    };
    if sslerr == SSL_ERROR_ZERO_RETURN && call != Call::WriteEarly {
        // OpenSSL says ZERO_RETURN for a write that failed after the
        // peer's close_notify (1.1.1, and sendfile in 3.x); it is a
        // system error.
        sslerr = SSL_ERROR_SYSCALL;
    }
    if call == Call::Sendfile
        && sslerr == SSL_ERROR_SSL
        && reason == SSL_R_UNINITIALIZED
        && ngx_errno() != 0
    {
        // OpenSSL before 3.4 reports a failed sendfile() (EPIPE and
        // others) as SSL_R_UNINITIALIZED; errno tells what happened.
        sslerr = SSL_ERROR_SYSCALL;
    }
    let err = if sslerr == SSL_ERROR_SYSCALL {
        ngx_errno()
    } else {
        0
    };
    debug!(c.log(), "SSL_get_error: {}", sslerr);
    (sslerr, err)
}

/// The write needs the socket to become writable: the read handler a
/// WANT_READ replaced gets its event back meanwhile.  On a kTLS socket,
/// whatever the write was (a sendfile, a splice, OpenSSL's own), the
/// segment a sendfile left corked is pushed first.
pub fn wait_writable(c: Connection) -> Result<Io, Fatal> {
    if c.ktls_send() {
        push_pending_frames(c);
    }
    restore_read_handler(c)?;
    c.set_write_ready(false);
    Ok(Io::Again)
}

/// The connection cannot be written to any more: no close_notify, and the
/// failure logged.
pub fn fail(c: Connection, sslerr: u32, err: i32, text: &CStr) -> Fatal {
    c.abandon();
    connection_error(c, sslerr, err, text);
    Fatal
}

/// The connection cannot be written to any more: no close_notify either.
pub fn abandon(c: Connection) -> Fatal {
    c.abandon();
    Fatal
}

/// `ngx_ssl_write()`: sends `data` as TLS application data.
pub fn write(c: Connection, data: &[u8]) -> Result<Io, Fatal> {
    if c.in_early() {
        return write_early(c, data);
    }

    clear_error(c.log());
    debug!(c.log(), "SSL to write: {}", data.len());

    let len = c_int::try_from(data.len()).unwrap_or(c_int::MAX);
    // SAFETY: the handle's OpenSSL object is live; data is readable for len
    // bytes.
    let n = unsafe { SSL_write(c.ssl(), data.as_ptr().cast(), len) };
    debug!(c.log(), "SSL_write: {}", n);
    // Without SSL_MODE_ENABLE_PARTIAL_WRITE a write either completes or
    // must be retried.
    set_ssl_write_pending(c, n <= 0);

    if n > 0 {
        restore_read_handler(c)?;
        c.add_sent(n as usize);
        return Ok(Io::Sent(n as usize));
    }

    let (sslerr, err) = write_error(c, n, Call::Write);

    match sslerr {
        SSL_ERROR_WANT_WRITE => wait_writable(c),
        SSL_ERROR_WANT_READ => {
            debug!(c.log(), "SSL_write: want read");
            wait_readable(c)
        }
        _ => Err(fail(c, sslerr, err, c"SSL_write() failed")),
    }
}

/// `ngx_ssl_write_early()`: sends `data` while the connection is still in
/// TLS 1.3 0-RTT.
///
/// While such a write is blocked, nginx's `ngx_ssl_recv_early()` does not
/// read (OpenSSL 1.1.1a fails it then): `write_blocked` says so, and the read
/// event posted when the write completes is what unlocks reading again.
fn write_early(c: Connection, data: &[u8]) -> Result<Io, Fatal> {
    clear_error(c.log());
    debug!(c.log(), "SSL to write: {}", data.len());

    let mut written = 0usize;
    // SAFETY: the handle's OpenSSL object is live; data is readable.
    let n =
        unsafe { SSL_write_early_data(c.ssl(), data.as_ptr().cast(), data.len(), &mut written) };
    debug!(c.log(), "SSL_write_early_data: {}, {}", n, written);
    set_ssl_write_pending(c, n <= 0);

    if n > 0 {
        restore_read_handler(c)?;
        if c.write_blocked() {
            c.set_write_blocked(false);
            // SAFETY: the handle's read event is live; the worker's queue
            // outlives it.
            unsafe { ngx_post_event(c.read_event(), ptr::addr_of_mut!(ngx_posted_events)) };
        }
        c.add_sent(written);
        return Ok(Io::Sent(written));
    }

    let (sslerr, err) = write_error(c, n, Call::WriteEarly);

    match sslerr {
        SSL_ERROR_WANT_WRITE => {
            debug!(c.log(), "SSL_write_early_data: want write");
            // OpenSSL 1.1.1a fails SSL_read_early_data() after a blocked
            // SSL_write_early_data(): reading waits.
            c.set_write_blocked(true);
            wait_writable(c)
        }
        SSL_ERROR_WANT_READ => {
            debug!(c.log(), "SSL_write_early_data: want read");
            wait_readable(c)
        }
        _ => Err(fail(c, sslerr, err, c"SSL_write_early_data() failed")),
    }
}

/// Sends plaintext to the kTLS socket, which encrypts it into application
/// data records as `SSL_write()` would; with `more` (`MSG_MORE`) the kernel
/// keeps the record open for the file data that the caller sends next.
/// Errors are logged as nginx's `ngx_unix_send()` logs them.  Only while
/// [`kernel_allowed`] holds.
pub fn write_kernel(c: Connection, data: &[u8], more: bool) -> Result<Io, Fatal> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    let sent = sys::restart_on_eintr(|| {
        // SAFETY: the handle's socket is open; data is readable.
        let n = unsafe { libc::send(c.fd(), data.as_ptr().cast(), data.len(), flags) };
        debug!(
            c.log(),
            "send: fd:{} {} of {}{}",
            c.fd(),
            n,
            data.len(),
            if more { " MSG_MORE" } else { "" }
        );
        n
    });

    match sent {
        Ok(n) if n > 0 => {
            // A short send means the socket is full, as in
            // ngx_unix_send(): the write event must wait for room, or
            // HTTP/2 would drop its send timer with bytes still held.
            if n < data.len() {
                kernel_full(c);
            }
            kernel_wrote(c, n)?;
            Ok(Io::Sent(n))
        }
        Ok(_) | Err(libc::EAGAIN) => {
            debug!(c.log(), "send() not ready");
            // The sendfile before may have left its last segment
            // corked, as it does when it runs out of space.
            kernel_full(c);
            Ok(Io::Again)
        }
        Err(err) => Err(fail(c, SSL_ERROR_SYSCALL, err, c"send() failed")),
    }
}

/// Makes TCP send what a `sendfile()` that ran out of socket space left
/// queued.
///
/// On a kTLS socket, `sendfile()` hands TCP the record's pages as "more to
/// follow", and when the socket buffer fills in the middle, the partial
/// segment stays corked: with a small `sndbuf` and a large MSS (loopback)
/// the socket then never becomes writable again, and the response stalls
/// until `send_timeout` (measured under kernel 6.1: nginx's own path stalls
/// on about half of 1 MiB responses with `sndbuf=16k`).  Clearing TCP_CORK
/// (`ngx_tcp_push()`), which nginx never sets on TLS connections, pushes the
/// queued segments and changes nothing else.
fn push_pending_frames(c: Connection) {
    // SAFETY: a setsockopt() on the handle's open socket.
    if unsafe { ngx_tcp_push(c.fd()) } == -1 {
        // Only a nudge: the write event and send_timeout still bound
        // the wait.
        debug!(c.log(), "setsockopt(!TCP_CORK) failed: {}", ngx_errno());
    }
}

/// The kTLS socket took less than it was offered: it is full.  The last
/// segment may be held back for what was to follow (`MSG_MORE`), and with a
/// small send buffer nothing else is in flight to make the socket writable
/// again, so it is pushed, as after a sendfile that ran out of space.
pub fn kernel_full(c: Connection) {
    push_pending_frames(c);
    c.set_write_ready(false);
}

/// `n` bytes went to the kTLS socket around OpenSSL: they count as sent,
/// and reading that a WANT_READ held up resumes, as after any write.
pub fn kernel_wrote(c: Connection, n: usize) -> Result<(), Fatal> {
    restore_read_handler(c)?;
    c.add_sent(n);
    Ok(())
}

/// `ngx_ssl_sendfile()`: sends `size` bytes of `file`'s file from its
/// current position with `SSL_sendfile()`.
///
/// # Safety
/// kTLS must send for `c`, and `file` must be a live buffer in a file.
pub unsafe fn sendfile(c: Connection, file: *const ngx_buf_t, size: usize) -> Result<Io, Fatal> {
    clear_error(c.log());
    // SAFETY: the caller's promise; the descriptor stays open while its
    // buffer is in the chain.
    let (pos, fd) = unsafe { ((*file).file_pos, (*(*file).file).fd) };
    debug!(c.log(), "SSL to sendfile: @{} {}", pos, size);

    ngx_set_errno(0);
    // Linux has no sendfile flags (FreeBSD's SF_NODISKIO is not here).
    // SAFETY: the handle's OpenSSL object is live and fd is open.
    let n = unsafe { SSL_sendfile(c.ssl(), fd, pos, size, 0) };
    debug!(c.log(), "SSL_sendfile: {}", n);

    if n > 0 {
        return sendfile_sent(c, n as usize);
    }

    if n == 0 {
        // SAFETY: as above.
        return Err(unsafe { sendfile_truncated(c, file, "SSL_sendfile") });
    }

    let (sslerr, err) = write_error(c, n as c_int, Call::Sendfile);

    match sslerr {
        SSL_ERROR_WANT_WRITE => wait_writable(c),
        SSL_ERROR_WANT_READ => {
            debug!(c.log(), "SSL_sendfile: want read");
            wait_readable(c)
        }
        _ => Err(fail(c, sslerr, err, c"SSL_sendfile() failed")),
    }
}

/// Counts bytes a sendfile sent on the connection.
pub fn sendfile_sent(c: Connection, n: usize) -> Result<Io, Fatal> {
    restore_read_handler(c)?;
    c.add_sent(n);
    if let Some(state) = c.state() {
        state.add_sendfile_bytes(n as u64);
    }
    Ok(Io::Sent(n))
}

/// A sendfile that sent nothing from `file`'s position: the file was
/// truncated under it, reported as nginx reports it for `call` (its
/// `SSL_sendfile()` path, or its thread path's `sendfile()`).
///
/// # Safety
/// `file` must be a live buffer in a file.
pub unsafe fn sendfile_truncated(c: Connection, file: *const ngx_buf_t, call: &str) -> Fatal {
    // SAFETY: the caller's promise.
    let (name, pos) = unsafe { (sys::file_name((*file).file), (*file).file_pos) };
    log_error!(
        NGX_LOG_ALERT,
        c.log(),
        "{}() reported that \"{}\" was truncated at {}",
        call,
        name,
        pos
    );
    Fatal
}
