//! Installs the module's send functions on TLS connections, and those
//! functions themselves (`c->send_chain`, `c->send`).

use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use nginx_sys::{
    ngx_buf_t, ngx_chain_t, ngx_connection_t, ngx_http_request_t, ngx_pagesize, ngx_pcalloc,
    ngx_ssl_send_chain, ngx_ssl_write, off_t, u_char, NGX_AGAIN, NGX_ERROR, NGX_LOG_NOTICE,
    NGX_SSL_BUFFERED,
};

use crate::decide::conf::ServerConf;
use crate::decide::plan::{self, Fatal, Io, SendBuf};
use crate::io::{kernel, key_update, splice, ssl, state};
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
    // SAFETY: the request, its connection and c->ssl are live.
    unsafe {
        let c = transport_connection(r);
        let ssl = (*c).ssl;
        // Only nginx's own buffered TLS send path is replaced: not QUIC,
        // not a connection already taken over, not an unbuffered one.
        if ssl.is_null()
            || (*c).send_chain.map(|f| f as *const ()) != Some(ngx_ssl_send_chain as *const ())
            || (*ssl).buffer() == 0
        {
            return;
        }

        // Bytes nginx's path left buffered may be half-offered to OpenSSL
        // (HTTP/2's first frames go out before any response).
        let buf = (*ssl).buf;
        let buffered = !buf.is_null() && (*buf).pos < (*buf).last;
        if !buf.is_null() && !(*buf).start.is_null() {
            // nginx allocated it uninitialised: what follows the buffered
            // bytes becomes initialised before Rust sees it as bytes.
            let last = (*buf).last;
            ptr::write_bytes(last, 0, (*buf).end.offset_from(last) as usize);
        }
        let sendfile_min = conf.sendfile_min as u64;
        let splice = conf.splice == 1;
        if state::attach((*ssl).connection, (*c).pool, sendfile_min, splice, buffered).is_err() {
            // Nothing is lost: nginx's own path stays in place.
            debug!(
                (*c).log,
                "ktls: no memory for connection state, not taking over"
            );
            return;
        }

        (*c).send_chain = Some(send_chain);
        if (*c).send.map(|f| f as *const ()) == Some(ngx_ssl_write as *const ()) {
            (*c).send = Some(send);
        }

        debug!(
            (*c).log,
            "ktls: send chain taken over, BIO_get_ktls_send(): {}",
            ssl::ktls_send((*ssl).connection) as u8
        );

        if kernel::available() && ssl::ktls_refused((*ssl).connection) {
            report_ktls_refused(c);
        }
    }
}

/// Whether this worker has said that OpenSSL refused kTLS.
static REFUSED_REPORTED: AtomicBool = AtomicBool::new(false);

/// Says once per worker that a connection asked OpenSSL for kTLS on a
/// kernel that has it, and did not get it: otherwise that fallback is
/// silent, and only `$ktls_tx` would show it.
///
/// # Safety
/// `c` must be a live TLS connection.
unsafe fn report_ktls_refused(c: *mut ngx_connection_t) {
    if REFUSED_REPORTED.swap(true, Ordering::Relaxed) {
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        log_error!(
            NGX_LOG_NOTICE,
            (*c).log,
            "ktls: OpenSSL did not enable kernel TLS for {} although \"ssl_conf_command \
             Options KTLS\" is set (kTLS takes AES-GCM, and ChaCha20-Poly1305 on Linux \
             5.11+, without max_fragment_length or record padding); $ktls_tx shows which \
             connections use it; reported once per worker",
            ssl::describe((*(*c).ssl).connection)
        );
    }
}

/// Whether a thread task works for `c` (`aio threads`).
///
/// # Safety
/// `c` must be a live TLS connection.
unsafe fn task_working(c: *mut ngx_connection_t) -> bool {
    #[cfg(ngx_feature = "threads")]
    // SAFETY: forwarded from the caller.
    return unsafe { crate::io::thread::working(c) };
    #[cfg(not(ngx_feature = "threads"))]
    false
}

/// `c->send` on a taken-over connection: one `SSL_write()`.
unsafe extern "C" fn send(c: *mut ngx_connection_t, buf: *mut u_char, size: usize) -> isize {
    if size == 0 {
        return 0;
    }
    #[cfg(ngx_feature = "threads")]
    // SAFETY: nginx passes a live TLS connection.
    match unsafe { crate::io::thread::busy(c) } {
        Ok(false) => {}
        Ok(true) => return NGX_AGAIN as isize,
        Err(Fatal) => return NGX_ERROR as isize,
    }
    // SAFETY: nginx passes a live TLS connection.
    if unsafe { key_update::check(c) }.is_err() {
        return NGX_ERROR as isize;
    }
    // Bytes in the pipe were sent before these.
    // SAFETY: as above.
    match unsafe { drain_pipe(c) } {
        Ok(true) => {}
        Ok(false) => return NGX_AGAIN as isize,
        Err(Fatal) => return NGX_ERROR as isize,
    }
    // SAFETY: nginx passes a live TLS connection and size readable bytes.
    match unsafe { ssl::write(c, core::slice::from_raw_parts(buf, size)) } {
        Ok(Io::Sent(n)) => n as isize,
        Ok(Io::Again | Io::Offloaded) => NGX_AGAIN as isize,
        Err(Fatal) => NGX_ERROR as isize,
    }
}

/// Sends what the connection's pipe holds; whether it is empty now.
///
/// # Safety
/// `c` must be a live TLS connection.
unsafe fn drain_pipe(c: *mut ngx_connection_t) -> Result<bool, Fatal> {
    // SAFETY: forwarded from the caller.
    unsafe {
        let ssl = (*(*c).ssl).connection;
        if splice::pending(ssl) > 0 {
            splice::drain(c, false)?;
        }
        Ok(splice::pending(ssl) == 0)
    }
}

/// `c->send_chain` on a taken-over connection (`ngx_ssl_send_chain()`).
unsafe extern "C" fn send_chain(
    c: *mut ngx_connection_t,
    in_: *mut ngx_chain_t,
    limit: off_t,
) -> *mut ngx_chain_t {
    // SAFETY: nginx passes a live TLS connection and chain; the TLS buffer
    // is the connection's, allocated from its pool as nginx does.
    unsafe {
        // While a thread task works nothing is written, and the connection
        // must not end under it: the next call checks.
        if !task_working(c) && key_update::check(c).is_err() {
            return CHAIN_ERROR;
        }
        let ssl = (*c).ssl;
        let size = (*ssl).buffer_size;

        let mut b = (*ssl).buf;
        if b.is_null() {
            b = ngx_pcalloc((*c).pool, core::mem::size_of::<ngx_buf_t>()).cast::<ngx_buf_t>();
            if b.is_null() {
                return CHAIN_ERROR;
            }
            (*b).set_temporary(1);
            (*ssl).buf = b;
        }
        if (*b).start.is_null() {
            // First use, or ngx_ssl_free_buffer() released it while the
            // connection idled.  Zeroed: the buffer is handed to Rust as
            // initialised bytes.
            let start = ngx_pcalloc((*c).pool, size).cast::<u_char>();
            if start.is_null() {
                return CHAIN_ERROR;
            }
            (*b).start = start;
            (*b).pos = start;
            (*b).last = start;
            (*b).end = start.add(size);
        }

        let start = (*b).start;
        #[cfg(ngx_feature = "threads")]
        crate::io::thread::land(c, start);
        let mut buf = SendBuf {
            mem: core::slice::from_raw_parts_mut(start, (*b).end.offset_from(start) as usize),
            pos: (*b).pos.offset_from(start) as usize,
            last: (*b).last.offset_from(start) as usize,
            flush: (*b).flush() != 0,
        };
        let mut chain = NgxChain::new(in_, c);
        let limit = plan::effective_limit(limit, ngx_pagesize as u64);

        let sendfile_min = state::get((*ssl).connection).map_or(0, |s| s.sendfile_min);
        let result = plan::send_chain(&mut chain, &mut buf, &mut Tls { c }, limit, sendfile_min);

        (*b).pos = start.add(buf.pos);
        (*b).last = start.add(buf.last);
        (*b).set_flush(buf.flush as u32);
        splice::release_if_empty(c);

        match result {
            Ok(true) => (*c).set_buffered((*c).buffered() | NGX_SSL_BUFFERED),
            Ok(false) => (*c).set_buffered((*c).buffered() & !NGX_SSL_BUFFERED),
            Err(Fatal) => return CHAIN_ERROR,
        }

        chain.head
    }
}
