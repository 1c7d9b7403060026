//! File data through a pipe to the kTLS socket: `splice()` from the page
//! cache, with the memory bytes around it written into the same pipe.
//!
//! From Linux 6.5 on, a splice into a kTLS socket with `SPLICE_F_MORE`
//! leaves the TLS record open for what follows, so small file parts (HTTP/2
//! DATA frames) share full records without being copied through userspace;
//! `sendfile()` ends a record at every call.  Whether this kernel does so
//! is probed once at start-up ([`init`]).
//!
//! The pipes are the worker's ([`crate::io::pipe`]).

use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use nginx_sys::{
    ngx_buf_t, ngx_log_t, ngx_pool_cleanup_add, NGX_LOG_CRIT, NGX_LOG_NOTICE, SSL_ERROR_SYSCALL,
};

use crate::decide::plan::{Fatal, Io, Piped};
use crate::io::connection::Connection;
use crate::io::pipe::{self, Pipe};
use crate::io::state::ConnState;
use crate::io::{kernel, ssl, sys};

/// What the start-up probe found; workers inherit it.
static KEEPS_RECORDS_OPEN: AtomicBool = AtomicBool::new(false);

/// Probes, once at configuration time after the kernel check, whether a
/// splice into a kTLS socket keeps the record open with `SPLICE_F_MORE`,
/// and says on `log` which path short file data takes.
pub fn init(log: *mut ngx_log_t) {
    if !kernel::available() {
        KEEPS_RECORDS_OPEN.store(false, Ordering::Relaxed);
        return;
    }
    let keeps = probe_keeps_records_open();
    KEEPS_RECORDS_OPEN.store(keeps, Ordering::Relaxed);
    if keeps {
        log_error!(
            NGX_LOG_NOTICE,
            log,
            "ktls: splice() keeps kernel TLS records open on this kernel: file data \
             shorter than ktls_sendfile_min_size goes to the socket through a pipe, \
             without a copy"
        );
    } else {
        log_error!(
            NGX_LOG_NOTICE,
            log,
            "ktls: splice() ends a kernel TLS record at every call on this kernel \
             (before Linux 6.5): file data shorter than ktls_sendfile_min_size is read \
             into the TLS buffer"
        );
    }
}

/// Whether this kernel's kTLS takes `SPLICE_F_MORE` as `MSG_MORE`: two
/// parts spliced from a file through a pipe, the first with the flag, must
/// come out as one record.
fn probe_keeps_records_open() -> bool {
    const PART: usize = 4096;
    let Some(pair) = kernel::KtlsLoopback::open() else {
        return false;
    };
    let Some(pipe) = Pipe::open() else {
        return false;
    };
    // SAFETY: descriptors made here and closed below; the buffers are
    // sized for the calls.
    let keeps = unsafe {
        let file = libc::memfd_create(c"ktls-splice-probe".as_ptr(), libc::MFD_CLOEXEC);
        let data = [0x5a_u8; 2 * PART];
        let spliced = file >= 0
            && libc::write(file, data.as_ptr().cast(), data.len()) == data.len() as isize
            && (0..2).all(|i| {
                let mut off = (i * PART) as libc::loff_t;
                let more = if i == 0 { libc::SPLICE_F_MORE } else { 0 };
                libc::splice(file, &mut off, pipe.write, ptr::null_mut(), PART, 0) == PART as isize
                    && libc::splice(
                        pipe.read,
                        ptr::null_mut(),
                        pair.client,
                        ptr::null_mut(),
                        PART,
                        more,
                    ) == PART as isize
            });
        if file >= 0 {
            libc::close(file);
        }
        spliced && first_record_len(pair.server) == Some(2 * PART + 17)
    };
    pipe.close();
    keeps
}

/// The length field of the first TLS record the peer receives, waiting at
/// most a second for it.
fn first_record_len(fd: c_int) -> Option<usize> {
    let mut header = [0u8; 5];
    let mut got = 0;
    while got < header.len() {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd; the read stays inside header.
        let n = unsafe {
            if libc::poll(&mut pfd, 1, 1000) != 1 {
                return None;
            }
            libc::read(fd, header[got..].as_mut_ptr().cast(), header.len() - got)
        };
        if n <= 0 {
            return None;
        }
        got += n as usize;
    }
    Some(usize::from(u16::from_be_bytes([header[3], header[4]])))
}

/// Whether file data may go through pipes on this kernel.
pub fn enabled() -> bool {
    KEEPS_RECORDS_OPEN.load(Ordering::Relaxed)
}

/// Whether the connection holds a pipe, taken from the worker's if it had
/// none; not when every pipe is in use (the caller reads into the buffer
/// instead) or the connection does not splice.
pub fn hold_pipe(c: Connection) -> bool {
    let Some(state) = c.state() else {
        return false;
    };
    if !state.splice.get() {
        return false;
    }
    let mut pipe = state.pipe.borrow_mut();
    if pipe.is_none() {
        if !state.pipe_cleanup.get() && !add_cleanup(c, state) {
            return false;
        }
        *pipe = pipe::take();
        if pipe.is_some() {
            debug!(c.log(), "splice: pipe taken");
        }
    }
    pipe.is_some()
}

/// Bytes waiting in the connection's pipe.
pub fn pending(c: Connection) -> usize {
    c.state()
        .and_then(|s| s.pipe.borrow().as_ref().map(|p| p.pending))
        .unwrap_or(0)
}

/// Runs `f` on the pipe the connection holds; `None` if it holds none.
/// Unlike [`hold_pipe`], never takes one.
fn with_held<R>(c: Connection, f: impl FnOnce(&mut Pipe) -> R) -> Option<R> {
    let state = c.state()?;
    let mut pipe = state.pipe.borrow_mut();
    pipe.as_mut().map(f)
}

/// Gives the connection's pipe back to the worker if it is empty, so that
/// idle connections hold none.
pub fn release_if_empty(c: Connection) {
    let Some(state) = c.state() else {
        return;
    };
    let mut pipe = state.pipe.borrow_mut();
    if pipe.as_ref().is_some_and(|p| p.pending == 0) {
        pipe::give_back(pipe.take());
        debug!(c.log(), "splice: pipe given back");
    }
}

/// Makes the end of the connection give its pipe back.
fn add_cleanup(c: Connection, state: &ConnState) -> bool {
    // SAFETY: the pool is the live connection's; the cleanup runs when it
    // is destroyed, before the pool's memory (which holds the state) is
    // freed.
    unsafe {
        let cln = ngx_pool_cleanup_add(c.pool(), 0);
        if cln.is_null() {
            return false;
        }
        (*cln).handler = Some(connection_ends);
        (*cln).data = ptr::from_ref(state).cast_mut().cast();
    }
    state.pipe_cleanup.set(true);
    true
}

unsafe extern "C" fn connection_ends(data: *mut c_void) {
    // SAFETY: data is the connection's state, still in its pool, and no
    // handler of the connection runs while its pool is destroyed.
    let state = unsafe { &*data.cast::<ConnState>() };
    pipe::give_back(state.pipe.borrow_mut().take());
}

/// Writes memory bytes into the pipe.
pub fn fill_memory(c: Connection, data: &[u8]) -> Result<Io, Fatal> {
    let written = with_held(c, |pipe| {
        let written = sys::restart_on_eintr(|| {
            // SAFETY: the pipe's descriptor is open; data is readable.
            let n = unsafe { libc::write(pipe.write, data.as_ptr().cast(), data.len()) };
            debug!(c.log(), "splice: pipe write {}: {}", data.len(), n);
            n
        });
        if let Ok(n) = written {
            pipe.pending += n;
        }
        written
    });
    match written {
        None => Ok(Io::Again),
        Some(Ok(n)) if n > 0 => Ok(Io::Sent(n)),
        Some(Ok(_) | Err(libc::EAGAIN)) => Ok(Io::Again),
        Some(Err(err)) => Err(ssl::fail(
            c,
            SSL_ERROR_SYSCALL,
            err,
            c"write() to pipe failed",
        )),
    }
}

/// Splices up to `len` bytes of `file`'s file, from its position, into the
/// pipe.
///
/// # Safety
/// `file` must be a live buffer in a file that stays open while its buffer
/// is in the chain.
pub unsafe fn fill_file(c: Connection, file: *const ngx_buf_t, len: usize) -> Result<Piped, Fatal> {
    // SAFETY: the caller's promise.
    let (mut off, fd) = unsafe { ((*file).file_pos, (*(*file).file).fd) };
    let outcome = with_held(c, |pipe| {
        debug!(c.log(), "splice to pipe: @{} {}", off, len);
        let spliced = sys::restart_on_eintr(|| {
            // SAFETY: both descriptors are open; off is the file's offset.
            let n = unsafe {
                libc::splice(
                    fd,
                    &mut off,
                    pipe.write,
                    ptr::null_mut(),
                    len,
                    libc::SPLICE_F_NONBLOCK,
                )
            };
            debug!(c.log(), "splice: {}", n);
            n
        });
        if let Ok(n) = spliced {
            pipe.pending += n;
        }
        (spliced, pipe.pending)
    });
    let Some((spliced, pending)) = outcome else {
        return Ok(Piped::Refused);
    };
    match spliced {
        // SAFETY: the caller's promise.
        Ok(0) => Err(unsafe { ssl::sendfile_truncated(c, file, "splice") }),
        Ok(n) => {
            if let Some(state) = c.state() {
                state.add_splice_bytes(n as u64);
            }
            Ok(Piped::Moved(n))
        }
        // Only a full pipe says "again"; an empty one that did would
        // never be drained, so the part is read instead.
        Err(libc::EAGAIN) if pending > 0 => Ok(Piped::Full),
        Err(libc::EAGAIN) => Ok(Piped::Refused),
        Err(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
            // The file system cannot splice: this connection reads
            // into the buffer from now on.
            debug!(c.log(), "splice: refused, reading instead");
            if let Some(state) = c.state() {
                state.splice.set(false);
            }
            Ok(Piped::Refused)
        }
        Err(err) => {
            log_error!(
                NGX_LOG_CRIT,
                c.log(),
                "splice() \"{}\" failed ({}: {})",
                // SAFETY: the caller's promise.
                unsafe { sys::file_name((*file).file) },
                err,
                std::io::Error::from_raw_os_error(err)
            );
            Err(ssl::abandon(c))
        }
    }
}

/// Splices the pipe's bytes to the kTLS socket, with `SPLICE_F_MORE` when
/// `more` is set; only while kTLS sends for the connection.
pub fn drain(c: Connection, more: bool) -> Result<Io, Fatal> {
    let flags = libc::SPLICE_F_NONBLOCK | if more { libc::SPLICE_F_MORE } else { 0 };
    let outcome = with_held(c, |pipe| {
        let offered = pipe.pending;
        let spliced = sys::restart_on_eintr(|| {
            // SAFETY: the pipe's descriptor and the handle's socket are
            // open.
            let n = unsafe {
                libc::splice(
                    pipe.read,
                    ptr::null_mut(),
                    c.fd(),
                    ptr::null_mut(),
                    offered,
                    flags,
                )
            };
            debug!(
                c.log(),
                "splice to socket: fd:{} {} of {}{}",
                c.fd(),
                n,
                offered,
                if more { " SPLICE_F_MORE" } else { "" }
            );
            n
        });
        if let Ok(n) = spliced {
            pipe.pending -= n;
        }
        (spliced, offered)
    });
    let Some((spliced, offered)) = outcome else {
        return Ok(Io::Again);
    };
    match spliced {
        Ok(n) if n > 0 => {
            if n < offered {
                ssl::kernel_full(c);
            }
            ssl::kernel_wrote(c, n)?;
            Ok(Io::Sent(n))
        }
        Err(libc::EAGAIN) => {
            debug!(c.log(), "splice() not ready");
            ssl::wait_writable(c)
        }
        // A pipe with bytes in it never reads as empty.
        Ok(_) => Err(ssl::fail(
            c,
            SSL_ERROR_SYSCALL,
            libc::EPIPE,
            c"splice() failed",
        )),
        Err(err) => Err(ssl::fail(c, SSL_ERROR_SYSCALL, err, c"splice() failed")),
    }
}
