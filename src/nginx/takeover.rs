//! Installs the module's send functions on TLS connections, and those
//! functions themselves (`c->send_chain`, `c->send`).

use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use nginx_sys::{
    ngx_buf_t, ngx_chain_t, ngx_connection_t, ngx_http_request_t, ngx_pagesize, ngx_pcalloc,
    ngx_ssl_send_chain, ngx_ssl_write, off_t, u_char, NGX_AGAIN, NGX_ERROR, NGX_LOG_ALERT,
    NGX_LOG_NOTICE,
};

use crate::decide::conf::ServerConf;
use crate::decide::plan::{self, Fatal, Io, SendBuf};
use crate::io::connection::Connection;
use crate::io::{kernel, key_update, splice, ssl, thread};
use crate::nginx::chain::{NgxChain, Tls};

/// `NGX_CHAIN_ERROR`.
const CHAIN_ERROR: *mut ngx_chain_t = NGX_ERROR as isize as *mut ngx_chain_t;

/// The connection that carries `r`'s bytes: the request's own, or for
/// HTTP/2 the TLS connection under the stream.
///
/// # Safety
/// `r` must be a live request.
unsafe fn transport_connection(r: *mut ngx_http_request_t) -> *mut ngx_connection_t {
    // SAFETY: a stream's h2 connection outlives its requests.
    unsafe {
        #[cfg(ngx_feature = "http_v2")]
        if !(*r).stream.is_null() {
            return (*(*(*r).stream).connection).connection;
        }
        (*r).connection
    }
}

/// Replaces nginx's TLS send functions on `r`'s connection with ours, if
/// the connection still uses nginx's own; `conf` is the configuration of
/// the request's server, which has `ktls on`.
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn take_over(r: *mut ngx_http_request_t, conf: &ServerConf) {
    // SAFETY: the request and its transport connection are live while the
    // header filter runs on it.
    let Some(c) = (unsafe { Connection::from_raw(transport_connection(r)) }) else {
        return;
    };
    let raw = c.as_ptr();
    // Only nginx's own buffered TLS send path is replaced: not QUIC, not a
    // connection already taken over, not an unbuffered one.
    // SAFETY: the connection and its c->ssl are live (from_raw()).
    let (nginx_sends, buffered_tls) = unsafe {
        (
            (*raw).send_chain.map(|f| f as *const ()) == Some(ngx_ssl_send_chain as *const ()),
            (*c.ngx_ssl()).buffer() != 0,
        )
    };
    if !nginx_sends || !buffered_tls {
        return;
    }
    // SAFETY: as above.
    let buffered = unsafe { zero_buffer_tail(c) };
    let sendfile_min = conf.sendfile_min as u64;
    let splice = conf.splice == 1;
    if !c.attach_state(sendfile_min, splice, buffered) {
        // Nothing is lost: nginx's own path stays in place.
        debug!(
            c.log(),
            "ktls: no memory for connection state, not taking over"
        );
        return;
    }

    // SAFETY: as above; nginx calls these only from the connection's
    // handlers, after this one.
    unsafe {
        (*raw).send_chain = Some(send_chain);
        if (*raw).send.map(|f| f as *const ()) == Some(ngx_ssl_write as *const ()) {
            (*raw).send = Some(send);
        }
    }

    debug!(
        c.log(),
        "ktls: send chain taken over, BIO_get_ktls_send(): {}",
        c.ktls_send() as u8
    );

    if kernel::available() && ssl::ktls_refused(c) {
        report_ktls_refused(c);
    }
}

/// Whether nginx's own path left bytes in the TLS buffer, which may be
/// half-offered to OpenSSL (HTTP/2's first frames go out before any
/// response).  nginx allocated the buffer uninitialised: what follows the
/// buffered bytes is zeroed before Rust sees it as bytes.
///
/// # Safety
/// `c->ssl->buf`, when set, must be the connection's TLS buffer.
unsafe fn zero_buffer_tail(c: Connection) -> bool {
    // SAFETY: the caller's promise; start..end is the buffer's memory.
    unsafe {
        let buf = (*c.ngx_ssl()).buf;
        if buf.is_null() {
            return false;
        }
        if !(*buf).start.is_null() {
            let last = (*buf).last;
            ptr::write_bytes(last, 0, (*buf).end.offset_from(last) as usize);
        }
        (*buf).pos < (*buf).last
    }
}

/// Whether this worker has said that OpenSSL refused kTLS.
static REFUSED_REPORTED: AtomicBool = AtomicBool::new(false);

/// Says once per worker that a connection asked OpenSSL for kTLS on a
/// kernel that has it, and did not get it: otherwise that fallback is
/// silent, and only `$ktls_tx` would show it.
fn report_ktls_refused(c: Connection) {
    if REFUSED_REPORTED.swap(true, Ordering::Relaxed) {
        return;
    }
    log_error!(
        NGX_LOG_NOTICE,
        c.log(),
        "ktls: OpenSSL did not enable kernel TLS for {} although \"ssl_conf_command \
         Options KTLS\" is set (kTLS takes AES-GCM, and ChaCha20-Poly1305 on Linux \
         5.11+, without max_fragment_length or record padding); $ktls_tx shows which \
         connections use it; reported once per worker",
        ssl::describe(c)
    );
}

/// `c->send` on a taken-over connection: one `SSL_write()`.
unsafe extern "C" fn send(c: *mut ngx_connection_t, buf: *mut u_char, size: usize) -> isize {
    if size == 0 {
        return 0;
    }
    // SAFETY: nginx passes a live TLS connection, in its handler.
    let Some(c) = (unsafe { Connection::from_raw(c) }) else {
        return NGX_ERROR as isize;
    };
    // SAFETY: nginx passes size readable bytes.
    let data = unsafe { core::slice::from_raw_parts(buf, size) };
    match send_memory(c, data) {
        Ok(Io::Sent(n)) => n as isize,
        Ok(Io::Again | Io::Offloaded) => NGX_AGAIN as isize,
        Err(Fatal) => NGX_ERROR as isize,
    }
}

/// What `c->send` does: nothing while a thread works, nothing with a
/// stale key, and the pipe's bytes first, which were sent before these.
fn send_memory(c: Connection, data: &[u8]) -> Result<Io, Fatal> {
    if thread::busy(c)? {
        return Ok(Io::Again);
    }
    key_update::check(c)?;
    if !drain_pipe(c)? {
        return Ok(Io::Again);
    }
    ssl::write(c, data)
}

/// Sends what the connection's pipe holds; whether it is empty now.
fn drain_pipe(c: Connection) -> Result<bool, Fatal> {
    if splice::pending(c) > 0 {
        splice::drain(c, false)?;
    }
    Ok(splice::pending(c) == 0)
}

/// `c->send_chain` on a taken-over connection (`ngx_ssl_send_chain()`).
unsafe extern "C" fn send_chain(
    c: *mut ngx_connection_t,
    in_: *mut ngx_chain_t,
    limit: off_t,
) -> *mut ngx_chain_t {
    // SAFETY: nginx passes a live TLS connection, in its handler.
    let Some(c) = (unsafe { Connection::from_raw(c) }) else {
        return CHAIN_ERROR;
    };
    // While a thread task works nothing is written, and the connection
    // must not end under it: the next call checks.
    if !thread::working(c) && key_update::check(c).is_err() {
        return CHAIN_ERROR;
    }
    // SAFETY: the TLS buffer is the connection's, allocated from its pool
    // as nginx does.
    let Some(b) = (unsafe { tls_buffer(c) }) else {
        return CHAIN_ERROR;
    };
    // SAFETY: nginx passes a live chain; the buffer is the connection's,
    // initialised start..end, and nothing else refers to it meanwhile.
    unsafe { send_buffered(c, b, in_, limit) }
}

/// The connection's TLS buffer, allocated on first use as nginx's
/// `ngx_ssl_send_chain()` allocates it.
///
/// # Safety
/// `c->ssl->buf`, when set, must be the connection's TLS buffer.
unsafe fn tls_buffer(c: Connection) -> Option<*mut ngx_buf_t> {
    // SAFETY: the caller's promise; the allocations are the connection's
    // pool's.
    unsafe {
        let ssl = c.ngx_ssl();
        let size = (*ssl).buffer_size;
        let mut b = (*ssl).buf;
        if b.is_null() {
            b = ngx_pcalloc(c.pool(), core::mem::size_of::<ngx_buf_t>()).cast::<ngx_buf_t>();
            if b.is_null() {
                return None;
            }
            (*b).set_temporary(1);
            (*ssl).buf = b;
        }
        if (*b).start.is_null() {
            // ngx_ssl_free_buffer() keeps pos and last: apart, they say
            // that bytes were freed before they were sent.
            if (*b).pos != (*b).last {
                log_error!(
                    NGX_LOG_ALERT,
                    c.log(),
                    "ktls: the TLS buffer was freed with {} bytes unsent",
                    (*b).last.offset_from((*b).pos)
                );
                return None;
            }
            // First use, or ngx_ssl_free_buffer() released it while the
            // connection idled.  Zeroed: the buffer is handed to Rust as
            // initialised bytes.
            let start = ngx_pcalloc(c.pool(), size).cast::<u_char>();
            if start.is_null() {
                return None;
            }
            (*b).start = start;
            (*b).pos = start;
            (*b).last = start;
            (*b).end = start.add(size);
        }
        Some(b)
    }
}

/// Runs the plan over `in_` with the TLS buffer `b`, and gives nginx the
/// rest of the chain.
///
/// # Safety
/// `in_` must be a live chain, `b` the connection's TLS buffer, initialised
/// from start to end, which nothing else refers to during the call.
unsafe fn send_buffered(
    c: Connection,
    b: *mut ngx_buf_t,
    in_: *mut ngx_chain_t,
    limit: off_t,
) -> *mut ngx_chain_t {
    // SAFETY: the caller's promise.
    unsafe {
        let start = (*b).start;
        thread::land(c, start);
        let mut buf = SendBuf {
            mem: core::slice::from_raw_parts_mut(start, (*b).end.offset_from(start) as usize),
            pos: (*b).pos.offset_from(start) as usize,
            last: (*b).last.offset_from(start) as usize,
            flush: (*b).flush() != 0,
        };
        let mut chain = NgxChain::new(in_, c);
        let limit = plan::effective_limit(limit, ngx_pagesize as u64);

        let sendfile_min = c.state().map_or(0, |s| s.sendfile_min);
        let result = plan::send_chain(&mut chain, &mut buf, &mut Tls { c }, limit, sendfile_min);

        (*b).pos = start.add(buf.pos);
        (*b).last = start.add(buf.last);
        (*b).set_flush(buf.flush as u32);
        splice::release_if_empty(c);

        match result {
            Ok(buffered) => c.set_ssl_buffered(buffered),
            Err(Fatal) => return CHAIN_ERROR,
        }

        chain.head
    }
}
