//! The send path's file I/O in a thread of nginx's pool (`aio threads`).
//!
//! With `aio threads`, the copy filter gives every file buffer a
//! `thread_handler`: it posts a task to the location's pool, blocks the
//! request until the task is done (`r->main->blocked`, `r->aio`), and then
//! runs the request's write handler again.  nginx's plain-TCP path posts its
//! `sendfile()` that way (`ngx_linux_sendfile_thread()`), with the task it
//! keeps in `c->sendfile_task`.  The module posts its two jobs with the same
//! handler and the same task slot:
//! - `sendfile()` of a file run to the kTLS socket, which is what
//!   `SSL_sendfile()` does once OpenSSL may be bypassed (checked before
//!   posting, and nothing of OpenSSL's runs until the task is done);
//! - `preadv()` of the parts queued for the TLS buffer, when `RWF_NOWAIT`
//!   found some of them missing from the page cache.
//!
//! While a task works the connection belongs to it: the send chain writes
//! nothing ([`busy`]), and during a sendfile `c->recv` answers "again" (an
//! `SSL_read()` could make OpenSSL write an alert or a KeyUpdate around the
//! thread's records), with the read event posted once the task is done.

use core::ffi::{c_int, c_void};
use core::mem::offset_of;
use core::ptr;

use nginx_sys::{
    ngx_buf_t, ngx_chain_t, ngx_connection_t, ngx_event_handler_pt, ngx_event_t, ngx_file_t,
    ngx_http_request_t, ngx_log_t, ngx_post_event, ngx_posted_events, ngx_recv_pt,
    ngx_thread_task_alloc, ngx_thread_task_t, u_char, NGX_AGAIN, NGX_LOG_ALERT, NGX_OK,
    NGX_SSL_BUFFERED, SSL_ERROR_SYSCALL,
};

use crate::plan::{Collected, Fatal, Io, Read};
use crate::pread::{self, Outcome, Part, MAX_PARTS};
use crate::ssl;

/// What the thread does.
#[derive(Clone, Copy)]
enum Job {
    /// `sendfile()` of `size` bytes of `fd` from `offset` to `socket`.
    Sendfile {
        socket: c_int,
        fd: c_int,
        offset: i64,
        size: usize,
    },
    /// `preadv()` of the first `nparts` of [`Work::parts`] of `fd` into
    /// the TLS buffer at `base`.
    Read {
        fd: c_int,
        base: *mut u8,
        nparts: usize,
    },
}

/// What the thread got.
#[derive(Clone, Copy, Debug)]
enum Finished {
    /// Bytes sent, or -1 with `err`.
    Sendfile {
        n: isize,
        err: c_int,
    },
    Read(Outcome),
}

/// The part of the context the thread touches, and nothing else does while
/// the task is active.
#[repr(C)]
struct Work {
    job: Job,
    parts: [Part; MAX_PARTS],
    finished: Option<Finished>,
}

/// Where the connection's task stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    /// No job, or its result was collected.
    Idle,
    /// A job is prepared and posted, or waits to be posted.
    Waiting,
    /// The thread is done; the result is not collected yet.
    Finished,
}

/// `task->ctx`: one per connection, in the connection's pool.
#[repr(C)]
struct Ctx {
    /// First, so that the thread's `data` is a `Work`.
    work: Work,
    c: *mut ngx_connection_t,
    /// The file whose request the poster blocked; for log lines.
    file: *mut ngx_file_t,
    /// For a sendfile: the chain's head buffer when it was posted.
    buf: *mut ngx_buf_t,
    stage: Stage,
    /// The completion handler the poster set (the copy filter's).
    next_handler: ngx_event_handler_pt,
    /// `c->recv` while a sendfile holds the connection (`Some` only then).
    saved_recv: ngx_recv_pt,
    /// A read was turned away while the sendfile ran.
    read_deferred: bool,
    /// An HTTP/2 stream whose bytes a thread reads into the buffer: its
    /// connection says so while the read runs (see [`read`]).
    stream: *mut ngx_connection_t,
}

/// Whether reads of `file` go to a thread: `aio threads` is on where its
/// buffer was made.
///
/// # Safety
/// `file` must be NULL or a live file.
pub unsafe fn offloads(file: *const ngx_file_t) -> bool {
    // SAFETY: forwarded from the caller.
    !file.is_null() && unsafe { (*file).thread_handler.is_some() }
}

/// The module's task on `c`, if it has one.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn task_of(c: *mut ngx_connection_t) -> Option<*mut ngx_thread_task_t> {
    // SAFETY: c->sendfile_task is NULL or a task from ngx_thread_task_alloc().
    unsafe {
        let task = (*c).sendfile_task;
        if task.is_null() {
            return None;
        }
        let ours = (*task).handler.map(|f| f as *const ()) == Some(run as *const ());
        ours.then_some(task)
    }
}

/// The connection's task, allocated on first use (as nginx allocates its
/// own, from the connection's pool).
///
/// # Safety
/// `c` must be a live connection.
unsafe fn task_for(c: *mut ngx_connection_t) -> Result<*mut ngx_thread_task_t, Fatal> {
    // SAFETY: the task and its context are written before use; the pool
    // outlives the connection's requests, and so every task it posts.
    unsafe {
        if let Some(task) = task_of(c) {
            return Ok(task);
        }
        if !(*c).sendfile_task.is_null() {
            // nginx keeps no task of its own on TLS connections.
            log_error!(
                NGX_LOG_ALERT,
                (*c).log,
                "ktls: the connection has a sendfile task that is not the module's"
            );
            return Err(Fatal);
        }
        let task = ngx_thread_task_alloc((*c).pool, core::mem::size_of::<Ctx>());
        if task.is_null() {
            return Err(Fatal);
        }
        (*task).ctx.cast::<Ctx>().write(Ctx {
            work: Work {
                job: Job::Sendfile {
                    socket: -1,
                    fd: -1,
                    offset: 0,
                    size: 0,
                },
                parts: [Part::default(); MAX_PARTS],
                finished: None,
            },
            c,
            file: ptr::null_mut(),
            buf: ptr::null_mut(),
            stage: Stage::Idle,
            next_handler: None,
            saved_recv: None,
            read_deferred: false,
            stream: ptr::null_mut(),
        });
        (*task).event.log = (*c).log;
        (*task).handler = Some(run);
        (*c).sendfile_task = task;
        Ok(task)
    }
}

/// The context of a task of the module's.
///
/// # Safety
/// `task` must be the module's task.
unsafe fn ctx(task: *mut ngx_thread_task_t) -> *mut Ctx {
    // SAFETY: task_for() placed a Ctx there.
    unsafe { (*task).ctx.cast::<Ctx>() }
}

/// The thread's side: runs the job, touching only the file, the socket and
/// the buffer, and records what it got.
unsafe extern "C" fn run(data: *mut c_void, _log: *mut ngx_log_t) {
    let work = data.cast::<Work>();
    // SAFETY: data is the task's Work, which nothing else touches while the
    // task is active; the job's descriptors and buffer are held open by the
    // request the poster blocked.
    unsafe {
        let finished = match (*work).job {
            Job::Sendfile {
                socket,
                fd,
                offset,
                size,
            } => {
                let mut off = offset;
                loop {
                    let n = libc::sendfile(socket, fd, &mut off, size);
                    let err = if n < 0 {
                        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
                    } else {
                        0
                    };
                    if err != libc::EINTR {
                        break Finished::Sendfile { n, err };
                    }
                }
            }
            Job::Read { fd, base, nparts } => {
                let parts = &*ptr::addr_of!((*work).parts);
                Finished::Read(pread::read_parts(fd, base, &parts[..nparts], 0))
            }
        };
        ptr::addr_of_mut!((*work).finished).write(Some(finished));
    }
}

/// The completion handler while a task of the module's is posted: the
/// connection is handed back, then the poster's handler runs (it unblocks
/// the request and runs its write handler, which calls the send chain).
unsafe extern "C" fn task_done(ev: *mut ngx_event_t) {
    // SAFETY: ev is the event inside the module's task.
    unsafe {
        let task = ev
            .byte_sub(offset_of!(ngx_thread_task_t, event))
            .cast::<ngx_thread_task_t>();
        let ctx = ctx(task);
        // On a timeout the poster only reports that the task takes long; the
        // thread still works and the connection stays its.
        if (*ev).timedout() == 0 {
            (*ctx).stage = Stage::Finished;
            release_stream(ctx);
            debug!(
                (*(*ctx).c).log,
                "ktls thread: task #{} done: {:?}",
                (*task).id,
                (*ctx).work.finished
            );
            release_reads((*ctx).c, ctx);
            resume_other_connection(ctx);
        }
        if let Some(next) = (*ctx).next_handler {
            next(ev);
        }
    }
}

/// When the task's file belongs to a request of another connection (an
/// HTTP/2 stream), the poster's completion handler resumes that request
/// only, and a stream with nothing more to send does not flush the TLS
/// connection's frames: the TLS connection's write event is posted, so that
/// its writer collects the task and goes on.  Posted before the completion
/// handler runs, so that a close there also removes it.
///
/// # Safety
/// `ctx` must be a finished task's context; its file's request is still
/// blocked, so live.
unsafe fn resume_other_connection(ctx: *mut Ctx) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let c = (*ctx).c;
        let r = (*(*ctx).file).thread_ctx.cast::<ngx_http_request_t>();
        if r.is_null() || (*r).connection == c || (*(*c).write).posted() != 0 {
            return;
        }
        debug!((*c).log, "ktls thread: resuming the connection's writer");
        ngx_post_event((*c).write, ptr::addr_of_mut!(ngx_posted_events));
    }
}

/// Posts the prepared job through the file's thread handler.  The poster
/// may decline without error (the request already waits for an operation of
/// its own); [`busy`] posts again.
///
/// # Safety
/// `c` must be a live TLS connection, `task` its task with a job prepared.
unsafe fn post(c: *mut ngx_connection_t, task: *mut ngx_thread_task_t) -> Result<(), Fatal> {
    // SAFETY: the file belongs to a live request of the connection.
    unsafe {
        let ctx = ctx(task);
        let file = (*ctx).file;
        let Some(thread_handler) = (*file).thread_handler else {
            return Err(Fatal);
        };
        // As in ngx_linux_sendfile_thread(): a write event while the task
        // runs means a full socket may have drained since.
        (*(*c).write).set_complete(0);
        (*ctx).work.finished = None;
        if thread_handler(task, file) != NGX_OK as isize {
            return Err(Fatal);
        }
        if (*task).event.active() == 0 {
            debug!(
                (*c).log,
                "ktls thread: not posted, the request waits for another operation"
            );
            return Ok(());
        }
        (*ctx).next_handler = (*task).event.handler;
        (*task).event.handler = Some(task_done);
        let sendfile = matches!((*ctx).work.job, Job::Sendfile { .. });
        if sendfile {
            hold_reads(c, ctx);
        }
        debug!(
            (*c).log,
            "ktls thread: task #{} posted: {}",
            (*task).id,
            if sendfile { "sendfile" } else { "read" }
        );
        Ok(())
    }
}

/// Whether a task works for the connection, without posting one again.
///
/// # Safety
/// `c` must be a live TLS connection.
pub unsafe fn working(c: *mut ngx_connection_t) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe { task_of(c).is_some_and(|task| (*ctx(task)).stage == Stage::Waiting) }
}

/// Whether a task works for the connection; one that the poster declined
/// is posted again.
///
/// # Safety
/// `c` must be a live TLS connection.
pub unsafe fn busy(c: *mut ngx_connection_t) -> Result<bool, Fatal> {
    // SAFETY: forwarded from the caller.
    unsafe {
        let Some(task) = task_of(c) else {
            return Ok(false);
        };
        if (*ctx(task)).stage != Stage::Waiting {
            return Ok(false);
        }
        if (*task).event.active() == 0 {
            post(c, task)?;
        }
        debug!((*c).log, "ktls thread: busy");
        Ok(true)
    }
}

/// Prepares a job on the connection's task and posts it.
///
/// # Safety
/// `c` must be a live TLS connection, `task` its task (from [`task_for`]),
/// `file` a live file of one of its requests with a thread handler.
unsafe fn start(
    c: *mut ngx_connection_t,
    task: *mut ngx_thread_task_t,
    file: *mut ngx_file_t,
    buf: *mut ngx_buf_t,
    job: Job,
) -> Result<(), Fatal> {
    // SAFETY: forwarded from the caller.
    unsafe {
        let ctx = ctx(task);
        (*ctx).work.job = job;
        (*ctx).file = file;
        (*ctx).buf = buf;
        (*ctx).stage = Stage::Waiting;
        let posted = post(c, task);
        if posted.is_err() {
            // The request fails; nothing is left for busy() to post again.
            (*ctx).stage = Stage::Idle;
        }
        posted
    }
}

/// Reads `parts` of `file` into the TLS buffer at `base`: at once if the
/// page cache has them all, otherwise in a thread.
///
/// # Safety
/// As for [`start`]; the parts lie inside the connection's TLS buffer.
pub unsafe fn read(
    c: *mut ngx_connection_t,
    file: *mut ngx_file_t,
    base: *mut u8,
    parts: &[Part],
) -> Result<Read, Fatal> {
    // SAFETY: forwarded from the caller.
    unsafe {
        let fd = (*file).fd;
        let outcome = pread::read_parts(fd, base, parts, libc::RWF_NOWAIT);
        if outcome == Outcome::Read {
            pread::report(c, file, parts, outcome)?;
            return Ok(Read::Done);
        }
        debug!(
            (*c).log,
            "ktls thread: not all in the page cache ({:?}), reading in a thread", outcome
        );
        let task = task_for(c)?;
        (&mut (*ctx(task)).work.parts)[..parts.len()].copy_from_slice(parts);
        let job = Job::Read {
            fd,
            base,
            nparts: parts.len(),
        };
        start(c, task, file, ptr::null_mut(), job)?;
        hold_stream(c, ctx(task), file);
        Ok(Read::Offloaded)
    }
}

/// Keeps the request whose file a thread reads from finishing until the
/// read is done.
///
/// Its file buffers are used up once their parts are queued, so to HTTP/2
/// its frames are sent, and the stream could be finalized while the thread
/// still reads: a blocked request that is finalized is never closed.  Its
/// stream connection is marked buffered meanwhile (`NGX_SSL_BUFFERED`, which
/// nginx never sets on a stream's connection), as the TLS connection itself
/// is for HTTP/1.x.
///
/// # Safety
/// `c` must be a live TLS connection, `ctx` its task's context, and `file`
/// the file the read is from, whose `thread_ctx` is its request (the copy
/// filter's, the cache's and upstream's thread handlers all set it so).
unsafe fn hold_stream(c: *mut ngx_connection_t, ctx: *mut Ctx, file: *mut ngx_file_t) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let r = (*file).thread_ctx.cast::<ngx_http_request_t>();
        if r.is_null() || (*r).connection == c {
            return;
        }
        let fc = (*r).connection;
        (*fc).set_buffered((*fc).buffered() | NGX_SSL_BUFFERED);
        (*ctx).stream = fc;
    }
}

/// Lets the stream held by [`hold_stream`] finish; its write handler runs
/// next (the poster's completion handler runs it), and sees the rest.
///
/// # Safety
/// `ctx` must be a task's context.
unsafe fn release_stream(ctx: *mut Ctx) {
    // SAFETY: the stream's request was blocked, so its connection is live.
    unsafe {
        let fc = core::mem::replace(&mut (*ctx).stream, ptr::null_mut());
        if !fc.is_null() {
            (*fc).set_buffered((*fc).buffered() & !NGX_SSL_BUFFERED);
        }
    }
}

/// Sends `size` bytes of the file run at buffer `b` in a thread.
///
/// # Safety
/// As for [`start`]; `b` is the chain's head, a buffer in a file, and
/// [`ssl::kernel_allowed`] holds.
pub unsafe fn sendfile(
    c: *mut ngx_connection_t,
    b: *mut ngx_buf_t,
    size: usize,
) -> Result<Io, Fatal> {
    // SAFETY: forwarded from the caller.
    unsafe {
        let file = (*b).file;
        debug!((*c).log, "SSL to sendfile: @{} {}", (*b).file_pos, size);
        let job = Job::Sendfile {
            socket: (*c).fd,
            fd: (*file).fd,
            offset: (*b).file_pos,
            size,
        };
        start(c, task_for(c)?, file, b, job)?;
        Ok(Io::Offloaded)
    }
}

/// Counts what a finished task did: a read's outcome is checked, a
/// sendfile's bytes are the head's (`ngx_linux_sendfile_thread()` on
/// completion).
///
/// # Safety
/// `c` must be a live TLS connection; `head` the chain the send path was
/// called with.
pub unsafe fn collect(
    c: *mut ngx_connection_t,
    head: *mut ngx_chain_t,
) -> Result<Collected, Fatal> {
    // SAFETY: forwarded from the caller; the context's file and buffer
    // belong to a request the poster kept alive until now.
    unsafe {
        let Some(task) = task_of(c) else {
            return Ok(Collected::Nothing);
        };
        let ctx = ctx(task);
        if (*ctx).stage != Stage::Finished {
            return Ok(Collected::Nothing);
        }
        (*ctx).stage = Stage::Idle;
        match ((*ctx).work.job, (*ctx).work.finished) {
            (Job::Read { nparts, .. }, Some(Finished::Read(outcome))) => {
                let parts = &(&(*ctx).work.parts)[..nparts];
                pread::report(c, (*ctx).file, parts, outcome)?;
                Ok(Collected::Nothing)
            }
            (Job::Sendfile { offset, size, .. }, Some(Finished::Sendfile { n, err })) => {
                collect_sendfile(c, ctx, head, offset, size, n, err)
            }
            (_, finished) => {
                log_error!(
                    NGX_LOG_ALERT,
                    (*c).log,
                    "ktls thread: task finished without a result ({:?})",
                    finished
                );
                Err(Fatal)
            }
        }
    }
}

/// The result of a thread's sendfile, as `ngx_ssl_sendfile()` treats
/// `SSL_sendfile()`'s.
///
/// # Safety
/// As for [`collect`].
unsafe fn collect_sendfile(
    c: *mut ngx_connection_t,
    ctx: *mut Ctx,
    head: *mut ngx_chain_t,
    offset: i64,
    size: usize,
    n: isize,
    err: c_int,
) -> Result<Collected, Fatal> {
    // SAFETY: forwarded from the caller.
    unsafe {
        debug!(
            (*c).log,
            "sendfile: {} (err: {}) of {} @{}", n, err, size, offset
        );
        if n < 0 {
            if err != libc::EAGAIN {
                return Err(ssl::fail(c, SSL_ERROR_SYSCALL, err, c"sendfile() failed"));
            }
            if (*(*c).write).complete() != 0 {
                // The socket was writable again before the task was done.
                return Ok(Collected::Nothing);
            }
            ssl::sendfile_wait_writable(c)?;
            return Ok(Collected::Again);
        }
        let b = (*ctx).buf;
        if head.is_null() || (*head).buf != b || (*b).file_pos != offset {
            log_error!(
                NGX_LOG_ALERT,
                (*c).log,
                "ktls thread: the chain changed while a thread sent from it"
            );
            return Err(Fatal);
        }
        if n == 0 {
            return Err(ssl::sendfile_truncated(c, b, "sendfile"));
        }
        debug!((*c).log, "SSL_sendfile: {}", n);
        ssl::sendfile_sent(c, n as usize)?;
        Ok(Collected::Sent(n as u64))
    }
}

/// Turns reads through OpenSSL away while the thread sends.
///
/// # Safety
/// `c` must be a live TLS connection and `ctx` its task's context.
unsafe fn hold_reads(c: *mut ngx_connection_t, ctx: *mut Ctx) {
    // SAFETY: forwarded from the caller.
    unsafe {
        (*ctx).saved_recv = (*c).recv;
        (*ctx).read_deferred = false;
        (*c).recv = Some(recv_held);
    }
}

/// `c->recv` while a thread sends: nothing is read now; the read event is
/// posted when the thread is done.
unsafe extern "C" fn recv_held(c: *mut ngx_connection_t, _buf: *mut u_char, _size: usize) -> isize {
    // SAFETY: nginx calls c->recv with a live connection; it is held only
    // while the module's task is posted.
    unsafe {
        if let Some(task) = task_of(c) {
            (*ctx(task)).read_deferred = true;
        }
        debug!(
            (*c).log,
            "ktls thread: read waits for the thread's sendfile"
        );
        (*(*c).read).set_ready(0);
    }
    NGX_AGAIN as isize
}

/// Gives reading back, and runs the read handler if a read was turned
/// away meanwhile (the data is there; no new event would say so).
///
/// # Safety
/// `c` must be a live TLS connection and `ctx` its task's context.
unsafe fn release_reads(c: *mut ngx_connection_t, ctx: *mut Ctx) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let Some(recv) = (*ctx).saved_recv.take() else {
            return;
        };
        (*c).recv = Some(recv);
        if (*ctx).read_deferred {
            let rev = (*c).read;
            (*rev).set_ready(1);
            ngx_post_event(rev, ptr::addr_of_mut!(ngx_posted_events));
        }
    }
}
