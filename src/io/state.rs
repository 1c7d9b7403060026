//! What the module keeps per TLS connection, attached to the OpenSSL object,
//! and per server context, the server's configuration.
//!
//! nginx's connection has no slot for a module; the `SSL` object has
//! ex_data slots, lives exactly as long as the TLS connection, and is shared
//! by HTTP/2's stream connections, so `$ktls_sendfile_bytes` reads the same
//! counter from any request on the connection.

use core::cell::{Cell, RefCell};
use core::ffi::c_int;
use core::ptr;
use core::sync::atomic::{AtomicI32, Ordering};

use crate::decide::conf::ServerConf;
use crate::io::pipe::Pipe;
use nginx_sys::{
    ngx_palloc, ngx_pool_t, CRYPTO_get_ex_new_index, SSL_CTX_get_ex_data, SSL_CTX_set_ex_data,
    SSL_get_SSL_CTX, SSL_get_ex_data, SSL_set_ex_data, CRYPTO_EX_INDEX_SSL,
    CRYPTO_EX_INDEX_SSL_CTX, SSL, SSL_CTX,
};

/// Per-connection state.  HTTP/2 streams share it, and nginx runs one
/// handler at a time on a connection, so it changes through cells.
pub struct ConnState {
    /// Bytes sent with `SSL_sendfile()` so far.
    pub sendfile_bytes: Cell<u64>,
    /// An `SSL_write()` is waiting to be retried: OpenSSL holds part of a
    /// record, so nothing may go to the kTLS socket around it.
    pub ssl_write_pending: Cell<bool>,
    /// `ktls_sendfile_min_size` of the server that took the connection over.
    pub sendfile_min: u64,
    /// The connection was ended rather than written with a stale key.
    pub stale_key: Cell<bool>,
    /// File bytes spliced into the connection's pipe so far.
    pub splice_bytes: Cell<u64>,
    /// The pipe the connection holds, with bytes for the socket in it.
    pub pipe: RefCell<Option<Pipe>>,
    /// The connection's pool gives the pipe back when it is destroyed.
    pub pipe_cleanup: Cell<bool>,
    /// Short file runs may go through a pipe (`ktls_splice`); cleared when
    /// a file cannot be spliced, and the connection reads files instead.
    pub splice: Cell<bool>,
}

static EX_INDEX: AtomicI32 = AtomicI32::new(-1);
/// The SSL_CTX slot that holds the configuration of a server with `ktls on`.
static CTX_EX_INDEX: AtomicI32 = AtomicI32::new(-1);

/// Reserves the ex_data slots; once per process, at configuration time.
pub fn init() -> Result<(), ()> {
    for (slot, class) in [
        (&EX_INDEX, CRYPTO_EX_INDEX_SSL),
        (&CTX_EX_INDEX, CRYPTO_EX_INDEX_SSL_CTX),
    ] {
        if slot.load(Ordering::Relaxed) >= 0 {
            continue;
        }
        // SAFETY: SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL) (or the
        // SSL_CTX one) is this call; no callbacks, since what the slots hold
        // lives in nginx's pools.
        let index = unsafe {
            CRYPTO_get_ex_new_index(class as c_int, 0, ptr::null_mut(), None, None, None)
        };
        if index < 0 {
            return Err(());
        }
        slot.store(index, Ordering::Relaxed);
    }
    Ok(())
}

/// Records on a server's context the server's configuration when it has
/// `ktls on`, nothing otherwise.
///
/// # Safety
/// `ctx` must be a server's SSL context, at configuration time; `conf`
/// lives as long as the configuration (nginx's pools).
pub unsafe fn set_server_conf(ctx: *mut SSL_CTX, conf: Option<&ServerConf>) -> Result<(), ()> {
    let data = conf.map_or(ptr::null_mut(), |c| ptr::from_ref(c).cast_mut().cast());
    // SAFETY: the slot was reserved in init(); ctx is live.
    let set = unsafe { SSL_CTX_set_ex_data(ctx, CTX_EX_INDEX.load(Ordering::Relaxed), data) };
    if set == 1 {
        Ok(())
    } else {
        Err(())
    }
}

/// The configuration of the server whose context `ssl` has now (SNI may
/// have changed it), if that server has `ktls on`.
///
/// # Safety
/// `ssl` must be a live OpenSSL connection.
pub unsafe fn server_conf<'a>(ssl: *const SSL) -> Option<&'a ServerConf> {
    let index = CTX_EX_INDEX.load(Ordering::Relaxed);
    if index < 0 {
        return None;
    }
    // SAFETY: the slot holds NULL or a ServerConf of the configuration
    // that made the context (set_server_conf()), which outlives it.
    unsafe {
        let ctx = SSL_get_SSL_CTX(ssl);
        if ctx.is_null() {
            return None;
        }
        SSL_CTX_get_ex_data(ctx, index)
            .cast::<ServerConf>()
            .as_ref()
    }
}

/// The state of `ssl`, if the module has taken the connection over; through
/// [`Connection::state`](crate::io::connection::Connection::state).
///
/// # Safety
/// `ssl` must be a live OpenSSL connection for all of `'a`.
pub unsafe fn get<'a>(ssl: *mut SSL) -> Option<&'a ConnState> {
    let index = EX_INDEX.load(Ordering::Relaxed);
    if index < 0 {
        return None;
    }
    // SAFETY: the slot holds NULL or a ConnState from attach(), which lives
    // in the connection's pool, destroyed after the SSL object is freed.
    unsafe { SSL_get_ex_data(ssl, index).cast::<ConnState>().as_ref() }
}

/// Gives `ssl` a fresh state allocated from `pool`.  `ssl_write_pending`
/// is what is known of bytes nginx's own path left in the TLS buffer: they
/// may be an `SSL_write()` to retry.
///
/// # Safety
/// `ssl` must be a live OpenSSL connection and `pool` its connection's pool.
pub unsafe fn attach(
    ssl: *mut SSL,
    pool: *mut ngx_pool_t,
    sendfile_min: u64,
    splice: bool,
    ssl_write_pending: bool,
) -> Result<(), ()> {
    let index = EX_INDEX.load(Ordering::Relaxed);
    // SAFETY: ngx_palloc() returns memory aligned for any type, written
    // before it is published; ConnState needs no drop (pool memory; the
    // pipe is given back by a pool cleanup).
    unsafe {
        let state = ngx_palloc(pool, core::mem::size_of::<ConnState>()).cast::<ConnState>();
        if index < 0 || state.is_null() {
            return Err(());
        }
        state.write(ConnState {
            sendfile_bytes: Cell::new(0),
            ssl_write_pending: Cell::new(ssl_write_pending),
            sendfile_min,
            stale_key: Cell::new(false),
            splice_bytes: Cell::new(0),
            pipe: RefCell::new(None),
            pipe_cleanup: Cell::new(false),
            splice: Cell::new(splice),
        });
        if SSL_set_ex_data(ssl, index, state.cast()) != 1 {
            return Err(());
        }
    }
    Ok(())
}

impl ConnState {
    /// Counts bytes sent with `SSL_sendfile()`.
    pub fn add_sendfile_bytes(&self, n: u64) {
        self.sendfile_bytes.set(self.sendfile_bytes.get() + n);
    }

    /// Counts file bytes spliced into the connection's pipe.
    pub fn add_splice_bytes(&self, n: u64) {
        self.splice_bytes.set(self.splice_bytes.get() + n);
    }
}
