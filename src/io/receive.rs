//! Reading a connection that kernel TLS decrypts, after nginx's TLS
//! shutdown (the decisions are [`crate::decide::record`]'s).
//!
//! `ngx_ssl_shutdown()` leaves the connection with `c->recv = ngx_recv`,
//! and HTTP/1 and HTTP/2 lingering close drain it through that: a plain
//! `recv()`, which on a kTLS socket fails with EIO at the client's
//! close_notify and logs an alert.  `ngx_recv` is `ngx_io.recv`, read at
//! that moment, so each worker puts [`recv`] there: for connections whose
//! handshake ended with kTLS receiving on a server with `ktls on` it reads
//! records with their types, every other connection goes to nginx's own
//! function untouched.  The handshake's end is seen in the SSL context's
//! info callback, chained after nginx's; by the time lingering close reads,
//! HTTP/2 has freed the SSL object, so the connection is remembered by its
//! slot and serial number.

use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use nginx_sys::{
    ngx_connection_error, ngx_connection_t, ngx_cycle, ngx_cycle_t, ngx_io, ngx_recv_pt,
    ngx_ssl_connection_index, u_char, SSL_CTX_get_info_callback, SSL_CTX_set_info_callback,
    SSL_get_ex_data, NGX_AGAIN, NGX_ERROR, SSL, SSL_CB_HANDSHAKE_DONE, SSL_CB_HANDSHAKE_START,
    SSL_CTX,
};

use crate::decide::conf::ServerConf;
use crate::decide::record::{self, Drained, ReadFailure};
use crate::io::connection::Connection;
use crate::io::{kernel, no_pad, state, userspace_rx};

/// `TLS_GET_RECORD_TYPE` (linux/tls.h): the control message that carries a
/// received record's content type.
const TLS_GET_RECORD_TYPE: c_int = 2;

type InfoCallback = unsafe extern "C" fn(*const SSL, c_int, c_int);

/// nginx's info callback, which ours calls first.
static mut NGINX_INFO_CALLBACK: Option<InfoCallback> = None;

/// Whether a server of the running configuration with `ktls on` reports
/// its handshakes.
static WATCHING: AtomicBool = AtomicBool::new(false);

/// Whether some such server's `ktls_rx` keeps a protocol out of the kernel:
/// every connection then reads through [`userspace_rx`]'s filter.
static FILTERING: AtomicBool = AtomicBool::new(false);

/// nginx's `ngx_io.recv`, which every other connection keeps.
static mut NGINX_RECV: ngx_recv_pt = None;

/// Per connection slot, the serial number (plus one) of the connection
/// there whose handshake ended with kTLS receiving; 0 for none.
static RECORD_READERS: OnceLock<Box<[AtomicU64]>> = OnceLock::new();

/// Starts a configuration: no context reports handshakes yet.
pub fn reset() {
    WATCHING.store(false, Ordering::Relaxed);
    FILTERING.store(false, Ordering::Relaxed);
}

/// Makes the handshakes of `ctx` (a server with OpenSSL's KTLS option)
/// report to the module: `conf` is the server's configuration if it has
/// `ktls on`, and `filters` whether its `ktls_rx` may keep a connection's
/// receiving out of the kernel.
///
/// # Safety
/// `ctx` must be a server's SSL context, at configuration time; `conf`
/// lives as long as the configuration.
pub unsafe fn watch_handshakes(
    ctx: *mut SSL_CTX,
    conf: Option<&ServerConf>,
    filters: bool,
) -> Result<(), ()> {
    // SAFETY: forwarded from the caller.
    unsafe { state::set_server_conf(ctx, conf)? };
    if filters {
        userspace_rx::init()?;
        FILTERING.store(true, Ordering::Relaxed);
    }
    if conf.is_some() {
        WATCHING.store(true, Ordering::Relaxed);
    }
    // SAFETY: configuration is single-threaded; the callback is nginx's
    // ngx_ssl_info_callback(), the same for every context it made.
    unsafe {
        let current = SSL_CTX_get_info_callback(ctx);
        let ours = info_callback as InfoCallback;
        if current.map(|f| f as usize) != Some(ours as usize) {
            NGINX_INFO_CALLBACK = current;
            SSL_CTX_set_info_callback(ctx, Some(ours));
        }
    }
    Ok(())
}

/// nginx's info callback, then: at the start of a connection's first
/// handshake, the filter of `ktls_rx` where one is needed; at its end,
/// whether kTLS receives for it, on servers with `ktls on`.
unsafe extern "C" fn info_callback(ssl: *const SSL, where_: c_int, ret: c_int) {
    // SAFETY: OpenSSL passes a live SSL; nginx keeps its connection in the
    // ex_data slot from ngx_ssl_create_connection() on, and runs the
    // callback inside a handler of that connection.
    let c = unsafe {
        if let Some(nginx) = NGINX_INFO_CALLBACK {
            nginx(ssl, where_, ret);
        }
        let c = SSL_get_ex_data(ssl, ngx_ssl_connection_index).cast::<ngx_connection_t>();
        Connection::from_raw(c)
    };
    // TLS 1.3 reports post-handshake messages as handshakes too: only the
    // first one, before nginx marks the connection handshaked.
    let Some(c) = c.filter(|c| !c.handshaked()) else {
        return;
    };
    if where_ & SSL_CB_HANDSHAKE_START as c_int != 0 && FILTERING.load(Ordering::Relaxed) {
        userspace_rx::install(c);
    }
    if where_ & SSL_CB_HANDSHAKE_DONE as c_int == 0 {
        return;
    }
    let Some(conf) = c.server_conf() else {
        return;
    };
    let receives = c.ktls_recv();
    debug!(
        c.log(),
        "ktls: handshake done, BIO_get_ktls_recv(): {}", receives as u8
    );
    if receives {
        // SAFETY: the connection is one of the cycle's, live.
        unsafe { remember_reader(c.as_ptr()) };
        if conf.expects_no_pad(c.tls13()) {
            no_pad::expect_no_pad(c);
        }
    } else if FILTERING.load(Ordering::Relaxed) && c.ktls_send() {
        userspace_rx::keep_key_updates_in_userspace(c);
    }
}

/// In a worker: where nginx's TLS connections will read with `ngx_recv`
/// after shutdown, reads records instead on those that need it.
///
/// # Safety
/// `cycle` must be the worker's cycle, in init_process.
pub unsafe fn init_process(cycle: *mut ngx_cycle_t) {
    if !WATCHING.load(Ordering::Relaxed) || !kernel::available() {
        return;
    }
    // SAFETY: init_process runs before any connection, after the event
    // module set ngx_io.
    unsafe {
        let slots = (0..(*cycle).connection_n)
            .map(|_| AtomicU64::new(0))
            .collect();
        if RECORD_READERS.set(slots).is_err() {
            return;
        }
        NGINX_RECV = ngx_io.recv;
        ngx_io.recv = Some(recv);
    }
}

/// The slot of `c` in the worker's connections.
///
/// # Safety
/// `c` must be one of the cycle's connections.
unsafe fn slot(c: *mut ngx_connection_t) -> Option<&'static AtomicU64> {
    let slots = RECORD_READERS.get()?;
    // SAFETY: connections are elements of ngx_cycle->connections.
    let index = unsafe { c.offset_from((*ngx_cycle).connections) };
    usize::try_from(index).ok().and_then(|i| slots.get(i))
}

/// # Safety
/// `c` must be a live connection of the cycle.
unsafe fn remember_reader(c: *mut ngx_connection_t) {
    // SAFETY: forwarded from the caller.
    if let Some(slot) = unsafe { slot(c) } {
        // SAFETY: as above.
        slot.store(unsafe { (*c).number } + 1, Ordering::Relaxed);
    }
}

/// # Safety
/// `c` must be a live connection of the cycle.
unsafe fn reads_records(c: *mut ngx_connection_t) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe { slot(c).is_some_and(|s| s.load(Ordering::Relaxed) == (*c).number + 1) }
}

/// `ngx_io.recv` in a worker.
unsafe extern "C" fn recv(c: *mut ngx_connection_t, buf: *mut u_char, size: usize) -> isize {
    // SAFETY: nginx passes a live connection and a buffer of size bytes;
    // NGINX_RECV was set before this was installed.
    unsafe {
        if reads_records(c) {
            return recv_records(c, buf, size);
        }
        match NGINX_RECV {
            Some(nginx) => nginx(c, buf, size),
            None => NGX_ERROR as isize,
        }
    }
}

/// One read of a kTLS connection after shutdown, as `ngx_unix_recv()`
/// would return it: bytes of application data, 0 at the end of the
/// stream, NGX_AGAIN or NGX_ERROR.
///
/// # Safety
/// As for [`recv`].
unsafe fn recv_records(c: *mut ngx_connection_t, buf: *mut u_char, size: usize) -> isize {
    // SAFETY: forwarded from the caller.
    unsafe {
        let rev = (*c).read;
        loop {
            let (n, record_type) = match recv_record(c, buf, size) {
                Ok(read) => read,
                Err(errno) => match record::read_failure(errno) {
                    ReadFailure::Retry => continue,
                    ReadFailure::Again => {
                        (*rev).set_ready(0);
                        return NGX_AGAIN as isize;
                    }
                    ReadFailure::Undecryptable(why) => {
                        debug!((*c).log, "ktls recv: {why}: end of stream");
                        return end_of_stream(c);
                    }
                    ReadFailure::Socket => {
                        (*rev).set_ready(0);
                        (*rev).set_error(1);
                        ngx_connection_error(c, errno, c"recv() failed".as_ptr().cast_mut());
                        return NGX_ERROR as isize;
                    }
                },
            };
            debug!((*c).log, "recv: fd:{} {} of {}", (*c).fd, n, size);
            if n == 0 {
                return end_of_stream(c);
            }
            let body = core::slice::from_raw_parts(buf, n);
            match record::drained_record(record_type, body) {
                // Records of one type end a read: more may be queued, so
                // the event stays ready until a read finds nothing.
                Drained::Data => return n as isize,
                Drained::Skip => {
                    debug!((*c).log, "ktls recv: record type {record_type} skipped");
                }
                Drained::CloseNotify => {
                    debug!((*c).log, "ktls recv: close_notify");
                    return end_of_stream(c);
                }
                Drained::Alert(level, description) => {
                    debug!(
                        (*c).log,
                        "ktls recv: alert {description} (level {level}): end of stream"
                    );
                    return end_of_stream(c);
                }
            }
        }
    }
}

/// # Safety
/// `c` must be a live connection.
unsafe fn end_of_stream(c: *mut ngx_connection_t) -> isize {
    // SAFETY: forwarded from the caller.
    unsafe {
        let rev = (*c).read;
        (*rev).set_ready(0);
        (*rev).set_eof(1);
    }
    0
}

/// One `recvmsg()` with room for the record type: the bytes read and the
/// type of their record, or the errno.
///
/// # Safety
/// `c` must be a live connection and `buf` hold `size` writable bytes.
unsafe fn recv_record(
    c: *mut ngx_connection_t,
    buf: *mut u_char,
    size: usize,
) -> Result<(usize, u8), i32> {
    // Room for one cmsghdr and its byte, 8-aligned as the kernel writes it.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.cast::<c_void>(),
        iov_len: size,
    };
    // SAFETY: msghdr is plain data; every pointer in it outlives the call.
    unsafe {
        let mut msg: libc::msghdr = core::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast::<c_void>();
        msg.msg_controllen = core::mem::size_of_val(&control);
        let n = libc::recvmsg((*c).fd, &mut msg, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok((n as usize, record_type(&msg)))
    }
}

/// The record type the kernel attached to a read; application data when
/// it attached none (it always does on a kTLS socket).
fn record_type(msg: &libc::msghdr) -> u8 {
    // SAFETY: the control buffer was filled by recvmsg(); CMSG_* walk it
    // within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_TLS && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE {
                return ptr::read(libc::CMSG_DATA(cmsg));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    record::CONTENT_APPLICATION_DATA
}
