//! A TLS connection as the send path sees it: nginx's `ngx_connection_t`
//! with its `ngx_ssl_connection_t` and OpenSSL object, behind one unsafe
//! constructor and safe methods for what the send path reads and sets.
//!
//! nginx owns the connection and runs one event handler at a time on it, so
//! a handle is a shared reference for the length of one call from nginx
//! (`'a`); what the module keeps per connection is borrowed from it for as
//! long, and changes through cells, so two borrows may overlap.

use core::marker::PhantomData;
use core::ptr::NonNull;

use core::ffi::c_int;

use nginx_sys::{
    ngx_connection_t, ngx_event_t, ngx_log_t, ngx_pool_t, ngx_socket_t, ngx_ssl_connection_t,
    BIO_ctrl, SSL_get_rbio, SSL_get_wbio, SSL_version, BIO, BIO_CTRL_GET_KTLS_RECV,
    BIO_CTRL_GET_KTLS_SEND, NGX_SSL_BUFFERED, SSL, TLS1_3_VERSION,
};

use crate::decide::conf::ServerConf;
use crate::io::state::{self, ConnState};

/// A live TLS connection of nginx's, for the length of one call from nginx.
#[derive(Clone, Copy)]
pub struct Connection<'a> {
    c: NonNull<ngx_connection_t>,
    live: PhantomData<&'a ngx_connection_t>,
}

impl<'a> Connection<'a> {
    /// The handle of `c`, or `None` for a connection without TLS.
    ///
    /// # Safety
    /// `c` must be a live connection of nginx's, with its `ssl` (when set)
    /// and its read and write events live, for all of `'a`; the caller runs
    /// in the connection's worker thread, which alone touches it meanwhile.
    pub unsafe fn from_raw(c: *mut ngx_connection_t) -> Option<Self> {
        let c = NonNull::new(c)?;
        // SAFETY: c is a live connection, by the caller's promise.
        if unsafe { c.as_ref() }.ssl.is_null() {
            return None;
        }
        Some(Connection {
            c,
            live: PhantomData,
        })
    }

    /// nginx's connection, for nginx functions that take it.
    pub fn as_ptr(self) -> *mut ngx_connection_t {
        self.c.as_ptr()
    }

    /// The connection, for one read of its fields: no reference to it is
    /// kept, since nginx changes it between the module's reads.
    fn fields(&self) -> &ngx_connection_t {
        // SAFETY: live for 'a (from_raw()); the reference ends with the
        // caller's expression, before any write through the handle.
        unsafe { &*self.c.as_ptr() }
    }

    /// nginx's TLS state of the connection.
    pub fn ngx_ssl(self) -> *mut ngx_ssl_connection_t {
        self.fields().ssl
    }

    /// The connection's OpenSSL object.
    pub fn ssl(self) -> *mut SSL {
        // SAFETY: c->ssl is set and live (from_raw()).
        unsafe { (*self.ngx_ssl()).connection }
    }

    /// The connection's log.
    pub fn log(self) -> *mut ngx_log_t {
        self.fields().log
    }

    /// The connection's socket.
    pub fn fd(self) -> ngx_socket_t {
        self.fields().fd
    }

    /// The connection's pool.
    pub fn pool(self) -> *mut ngx_pool_t {
        self.fields().pool
    }

    /// The connection's read event.
    pub fn read_event(self) -> *mut ngx_event_t {
        self.fields().read
    }

    /// The connection's write event.
    pub fn write_event(self) -> *mut ngx_event_t {
        self.fields().write
    }

    /// `c->log_error`, the level nginx logs this connection's I/O errors at.
    pub fn log_error(self) -> u32 {
        self.fields().log_error()
    }

    /// Counts `n` bytes as sent (`c->sent`).
    pub fn add_sent(self, n: usize) {
        // SAFETY: live for 'a, and touched only by this thread meanwhile.
        unsafe { (*self.c.as_ptr()).sent += n as i64 };
    }

    /// Marks the write event ready or not, as nginx's send functions do.
    pub fn set_write_ready(self, ready: bool) {
        // SAFETY: the write event is live (from_raw()).
        unsafe { (*self.write_event()).set_ready(ready as u32) };
    }

    /// Whether the connection is still in TLS 1.3 0-RTT.
    pub fn in_early(self) -> bool {
        // SAFETY: c->ssl is live (from_raw()).
        unsafe { (*self.ngx_ssl()).in_early() != 0 }
    }

    /// Whether a blocked early-data write holds reading up (`write_blocked`).
    pub fn write_blocked(self) -> bool {
        // SAFETY: c->ssl is live (from_raw()).
        unsafe { (*self.ngx_ssl()).write_blocked() != 0 }
    }

    /// Sets or clears `write_blocked`.
    pub fn set_write_blocked(self, blocked: bool) {
        // SAFETY: c->ssl is live (from_raw()).
        unsafe { (*self.ngx_ssl()).set_write_blocked(blocked as u32) };
    }

    /// The connection cannot be written to any more: no close_notify is
    /// sent or waited for, and the write event says so.
    pub fn abandon(self) {
        // SAFETY: c->ssl and the write event are live (from_raw()).
        unsafe {
            let ssl = self.ngx_ssl();
            (*ssl).set_no_wait_shutdown(1);
            (*ssl).set_no_send_shutdown(1);
            (*self.write_event()).set_error(1);
        }
    }

    /// Whether kTLS encrypts what the connection sends
    /// (`BIO_get_ktls_send()`).
    pub fn ktls_send(self) -> bool {
        // SAFETY: the handle's OpenSSL object is live.
        bio_uses_ktls(unsafe { SSL_get_wbio(self.ssl()) }, BIO_CTRL_GET_KTLS_SEND)
    }

    /// Whether kTLS decrypts what the connection receives
    /// (`BIO_get_ktls_recv()`).
    pub fn ktls_recv(self) -> bool {
        // SAFETY: the handle's OpenSSL object is live.
        bio_uses_ktls(unsafe { SSL_get_rbio(self.ssl()) }, BIO_CTRL_GET_KTLS_RECV)
    }

    /// Marks the connection as holding bytes of its own in the TLS buffer
    /// (`NGX_SSL_BUFFERED`), or clears that.
    pub fn set_ssl_buffered(self, buffered: bool) {
        // SAFETY: live for 'a, and touched only by this thread meanwhile.
        unsafe {
            let c = self.c.as_ptr();
            let flags = (*c).buffered();
            (*c).set_buffered(if buffered {
                flags | NGX_SSL_BUFFERED
            } else {
                flags & !NGX_SSL_BUFFERED
            });
        }
    }

    /// Gives the connection the module's state, allocated from its pool;
    /// `ssl_write_pending` is what is known of bytes nginx's own path left
    /// in the TLS buffer.
    pub fn attach_state(self, sendfile_min: u64, splice: bool, ssl_write_pending: bool) -> bool {
        // SAFETY: the OpenSSL object and the pool are the live connection's.
        unsafe {
            state::attach(
                self.ssl(),
                self.pool(),
                sendfile_min,
                splice,
                ssl_write_pending,
            )
        }
        .is_ok()
    }

    /// Whether the connection speaks TLS 1.3.
    pub fn tls13(self) -> bool {
        // SAFETY: the handle's OpenSSL object is live.
        unsafe { SSL_version(self.ssl()) == TLS1_3_VERSION as c_int }
    }

    /// Whether nginx has seen the connection's first handshake through.
    pub fn handshaked(self) -> bool {
        // SAFETY: c->ssl is live (from_raw()).
        unsafe { (*self.ngx_ssl()).handshaked() != 0 }
    }

    /// The configuration of the server whose context the connection has now
    /// (SNI may have changed it), if that server has `ktls on`.
    pub fn server_conf(self) -> Option<&'a ServerConf> {
        // SAFETY: the handle's OpenSSL object is live.
        unsafe { state::server_conf(self.ssl()) }
    }

    /// What the module keeps for the connection, if it took it over.
    pub fn state(self) -> Option<&'a ConnState> {
        // SAFETY: the OpenSSL object is live for 'a, and the state lives in
        // the connection's pool, which outlives it.
        unsafe { state::get(self.ssl()) }
    }
}

/// `BIO_get_ktls_send()` or `BIO_get_ktls_recv()` (`cmd`) on `bio`, a BIO of
/// a live OpenSSL object; a NULL BIO (no socket attached) answers 0.
fn bio_uses_ktls(bio: *mut BIO, cmd: u32) -> bool {
    // SAFETY: the two macros are this BIO_ctrl() call, which takes NULL.
    unsafe { BIO_ctrl(bio, cmd as c_int, 0, core::ptr::null_mut()) == 1 }
}
