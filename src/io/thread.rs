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
//! nothing ([`busy`]) and the socket counts as not writable, and during a
//! sendfile `c->recv` answers "again" (an `SSL_read()` could make OpenSSL
//! write an alert or a KeyUpdate around the thread's records), with the
//! read event posted once the task is done.
//!
//! nginx's HTTP/2 code can free a stream whose request is blocked (a stream
//! closed while frames were queued is closed again by a write event, and a
//! connection that ends zeroes the queue), and then the connection, while
//! a task still works for it.  So a task owns what the thread touches: it
//! is allocated outside nginx's pools, the thread works on its own copies
//! of the descriptors, reads go to the task's own buffer (copied into the
//! TLS buffer by [`land`]), and pool cleanups on the connection and on the
//! request tell the completion handler what has gone: the poster's handler
//! runs only while its request lives, the connection is touched only while
//! it lives, and the last of the two to end frees the task.

use core::ffi::{c_int, c_void};
use core::mem::offset_of;
use core::ptr;

use nginx_sys::{
    ngx_buf_t, ngx_chain_t, ngx_connection_t, ngx_cycle, ngx_errno, ngx_event_handler_pt,
    ngx_event_t, ngx_event_timer_rbtree, ngx_file_t, ngx_http_request_t, ngx_log_t,
    ngx_pool_cleanup_add, ngx_pool_t, ngx_post_event, ngx_posted_events, ngx_rbtree_delete,
    ngx_recv_pt, ngx_thread_task_t, u_char, NGX_AGAIN, NGX_LOG_ALERT, NGX_LOG_INFO, NGX_OK,
    NGX_SSL_BUFFERED, SSL_ERROR_SYSCALL,
};

use crate::decide::plan::{Collected, Fatal, Io, Read};
use crate::io::connection::Connection;
use crate::io::pread::{self, Outcome, Part, MAX_PARTS};
use crate::io::{ssl, sys};

/// What the thread does, on descriptors of its own that it closes when
/// done.
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
    /// the task's buffer at `base`.
    Read {
        fd: c_int,
        base: *mut u8,
        nparts: usize,
    },
}

impl Job {
    /// The job with the thread's own copies of its descriptors, or the
    /// error of `dup()`.
    fn with_own_descriptors(self) -> Result<Job, c_int> {
        Ok(match self {
            Job::Sendfile {
                socket,
                fd,
                offset,
                size,
            } => {
                let socket = dup(socket)?;
                let fd = dup(fd).inspect_err(|_| close(socket))?;
                Job::Sendfile {
                    socket,
                    fd,
                    offset,
                    size,
                }
            }
            Job::Read { fd, base, nparts } => Job::Read {
                fd: dup(fd)?,
                base,
                nparts,
            },
        })
    }

    /// Closes what [`Job::with_own_descriptors`] opened.
    fn close_descriptors(&self) {
        match *self {
            Job::Sendfile { socket, fd, .. } => {
                close(socket);
                close(fd);
            }
            Job::Read { fd, .. } => close(fd),
        }
    }
}

fn dup(fd: c_int) -> Result<c_int, c_int> {
    // SAFETY: F_DUPFD_CLOEXEC touches only the descriptor table.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(ngx_errno());
    }
    Ok(copy)
}

fn close(fd: c_int) {
    // SAFETY: fd is a copy that only its job uses.
    unsafe { libc::close(fd) };
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

/// The connection's task and its context, in memory of the module's own.
#[repr(C)]
struct Task {
    task: ngx_thread_task_t,
    ctx: Ctx,
}

/// `task->ctx`.
#[repr(C)]
struct Ctx {
    /// First, so that the thread's `data` is a `Work`.
    work: Work,
    /// NULL once the connection's pool is destroyed.
    c: *mut ngx_connection_t,
    /// The file whose request the poster blocked, while `guard` is armed.
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
    /// The file's request is not the connection's own (an HTTP/2 stream).
    other_connection: bool,
    /// The cleanup on the pool of the file's request, armed while `file`
    /// and `buf` are in use; NULL when there is none or the pool is gone.
    guard: *mut Guard,
    /// The file's request ended while the task held its file.
    request_gone: bool,
    /// What a finished read gave, judged while its file was still known.
    read_result: Result<(), Fatal>,
    /// Where a read job's parts go; copied into the TLS buffer by [`land`].
    scratch: Vec<u8>,
}

/// A pool cleanup's data: tells `task` that the pool it was added to is
/// destroyed, while armed.
struct Guard {
    task: *mut Task,
    armed: bool,
}

/// A file whose reads go to a thread: `aio threads` is on where its buffer
/// was made.
#[derive(Clone, Copy)]
pub struct Offloader {
    file: *mut ngx_file_t,
    fd: c_int,
}

/// The file's [`Offloader`], if reads of it go to a thread.
///
/// # Safety
/// `file` must be NULL or a live file.
pub unsafe fn offloader(file: *mut ngx_file_t) -> Option<Offloader> {
    // SAFETY: forwarded from the caller.
    unsafe {
        if file.is_null() || (*file).thread_handler.is_none() {
            return None;
        }
        Some(Offloader {
            file,
            fd: (*file).fd,
        })
    }
}

/// The module's task on `c`, if it has one.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn task_of(c: *mut ngx_connection_t) -> Option<*mut Task> {
    // SAFETY: c->sendfile_task is NULL or a task; the module's tasks are
    // the first field of a Task.
    unsafe {
        let task = (*c).sendfile_task;
        if task.is_null() {
            return None;
        }
        let ours = (*task).handler.map(|f| f as *const ()) == Some(run as *const ());
        ours.then_some(task.cast::<Task>())
    }
}

/// The connection's task, allocated on first use.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn task_for(c: *mut ngx_connection_t) -> Result<*mut Task, Fatal> {
    // SAFETY: the task is written whole before use; the cleanup, added
    // first, hands it over when the connection's pool is destroyed.
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
        let cln = ngx_pool_cleanup_add((*c).pool, 0);
        if cln.is_null() {
            return Err(Fatal);
        }
        let task = Box::into_raw(Box::new(Task {
            // SAFETY: a zeroed ngx_thread_task_t is what
            // ngx_thread_task_alloc() gives.
            task: core::mem::zeroed(),
            ctx: Ctx {
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
                other_connection: false,
                guard: ptr::null_mut(),
                request_gone: false,
                read_result: Ok(()),
                scratch: Vec::new(),
            },
        }));
        (*task).task.ctx = ptr::addr_of_mut!((*task).ctx).cast();
        (*task).task.event.log = (*c).log;
        (*task).task.handler = Some(run);
        (*cln).handler = Some(connection_closed);
        (*cln).data = task.cast();
        (*c).sendfile_task = ptr::addr_of_mut!((*task).task);
        Ok(task)
    }
}

/// The context of a task of the module's.
///
/// # Safety
/// `task` must be the module's task.
unsafe fn ctx(task: *mut Task) -> *mut Ctx {
    // SAFETY: forwarded from the caller.
    unsafe { ptr::addr_of_mut!((*task).ctx) }
}

/// The connection's pool is destroyed: the task forgets the connection,
/// and is freed now, or by its completion handler if a thread has it.
unsafe extern "C" fn connection_closed(data: *mut c_void) {
    let task = data.cast::<Task>();
    // SAFETY: data is the Task of the cleanup added by task_for(); it is
    // freed only here or by task_done() once this ran.
    unsafe {
        let ctx = ctx(task);
        (*ctx).c = ptr::null_mut();
        (*ctx).saved_recv = None;
        (*ctx).stream = ptr::null_mut();
        // The connection's log goes with its pool.
        (*task).task.event.log = (*ngx_cycle).log;
        // The poster's handler will not run: its timer goes too.
        del_timer(ptr::addr_of_mut!((*task).task.event));
        if (*task).task.event.active() == 0 {
            free_task(task);
        }
    }
}

/// Frees a task no thread has, disarming the guard of a request that
/// outlives it.
///
/// # Safety
/// `task` must be the module's task, not posted, its connection gone.
unsafe fn free_task(task: *mut Task) {
    // SAFETY: forwarded from the caller.
    unsafe {
        detach(ctx(task));
        drop(Box::from_raw(task));
    }
}

/// `ngx_del_timer()`, where a timer is set.
///
/// # Safety
/// `ev` must be a live event.
unsafe fn del_timer(ev: *mut ngx_event_t) {
    // SAFETY: a set timer is a node of the event loop's timer tree.
    unsafe {
        if (*ev).timer_set() != 0 {
            ngx_rbtree_delete(
                ptr::addr_of_mut!(ngx_event_timer_rbtree),
                ptr::addr_of_mut!((*ev).timer),
            );
            (*ev).set_timer_set(0);
            (*ev).timer.left = ptr::null_mut();
            (*ev).timer.right = ptr::null_mut();
            (*ev).timer.parent = ptr::null_mut();
        }
    }
}

/// Makes `file` (of a live request) the task's, arming a cleanup on its
/// request's pool so that the task learns when the request is freed.
///
/// # Safety
/// `task` must be the module's task on live connection `c`, not posted;
/// `file` a live file of a live request.
unsafe fn attach(
    c: *mut ngx_connection_t,
    task: *mut Task,
    file: *mut ngx_file_t,
) -> Result<(), Fatal> {
    // SAFETY: forwarded from the caller; the thread handlers that set
    // thread_handler also set thread_ctx to the request.
    unsafe {
        let ctx = ctx(task);
        detach(ctx);
        let r = (*file).thread_ctx.cast::<ngx_http_request_t>();
        if r.is_null() {
            log_error!(
                NGX_LOG_ALERT,
                (*c).log,
                "ktls thread: a file with a thread handler and no request"
            );
            return Err(Fatal);
        }
        let guard = guard_on((*r).pool, task).ok_or(Fatal)?;
        (*guard).armed = true;
        (*ctx).guard = guard;
        (*ctx).file = file;
        (*ctx).request_gone = false;
        (*ctx).other_connection = (*r).connection != c;
        Ok(())
    }
}

/// The task lets go of its file and buffer (the thread uses neither).
///
/// # Safety
/// `ctx` must be a task's context.
unsafe fn detach(ctx: *mut Ctx) {
    // SAFETY: an armed guard's pool is live.
    unsafe {
        let guard = core::mem::replace(&mut (*ctx).guard, ptr::null_mut());
        if !guard.is_null() {
            (*guard).armed = false;
        }
        (*ctx).file = ptr::null_mut();
        (*ctx).buf = ptr::null_mut();
    }
}

/// The task's guard on `pool`: the one added before (a request posts many
/// tasks), or a new one.
///
/// # Safety
/// `pool` must be a live pool, `task` the module's task.
unsafe fn guard_on(pool: *mut ngx_pool_t, task: *mut Task) -> Option<*mut Guard> {
    // SAFETY: the pool's cleanups are a list of live entries; a Guard is
    // the data of every cleanup whose handler is request_ended.
    unsafe {
        let mut cln = (*pool).cleanup;
        while !cln.is_null() {
            if (*cln).handler.map(|f| f as *const ()) == Some(request_ended as *const ())
                && (*(*cln).data.cast::<Guard>()).task == task
            {
                return Some((*cln).data.cast());
            }
            cln = (*cln).next;
        }
        let cln = ngx_pool_cleanup_add(pool, core::mem::size_of::<Guard>());
        if cln.is_null() {
            return None;
        }
        let guard = (*cln).data.cast::<Guard>();
        guard.write(Guard { task, armed: false });
        (*cln).handler = Some(request_ended);
        Some(guard)
    }
}

/// A request's pool is destroyed: if the task still holds its file, it
/// must not touch the file, the buffer, the stream or the poster's
/// handler again.
unsafe extern "C" fn request_ended(data: *mut c_void) {
    let guard = data.cast::<Guard>();
    // SAFETY: an armed guard's task is live (freeing a task disarms it).
    unsafe {
        if !(*guard).armed {
            return;
        }
        let task = (*guard).task;
        let ctx = ctx(task);
        // The armed guard is the task's own.
        detach(ctx);
        (*ctx).stream = ptr::null_mut();
        (*ctx).request_gone = true;
        // The poster's handler, which deletes its timer, will not run.
        del_timer(ptr::addr_of_mut!((*task).task.event));
    }
}

/// The thread's side: runs the job, touching only its own descriptors and
/// the task's buffer, and records what it got.
unsafe extern "C" fn run(data: *mut c_void, _log: *mut ngx_log_t) {
    let work = data.cast::<Work>();
    // SAFETY: data is the task's Work, which nothing else touches while the
    // task is active; the job's descriptors are its own.
    unsafe {
        let job = (*work).job;
        let finished = match job {
            Job::Sendfile {
                socket,
                fd,
                offset,
                size,
            } => {
                let mut off = offset;
                match sys::restart_on_eintr(|| libc::sendfile(socket, fd, &mut off, size)) {
                    Ok(n) => Finished::Sendfile {
                        n: n as isize,
                        err: 0,
                    },
                    Err(err) => Finished::Sendfile { n: -1, err },
                }
            }
            Job::Read { fd, base, nparts } => {
                let parts = &*ptr::addr_of!((*work).parts);
                Finished::Read(pread::read_parts(fd, base, &parts[..nparts], 0))
            }
        };
        job.close_descriptors();
        ptr::addr_of_mut!((*work).finished).write(Some(finished));
    }
}

/// The completion handler while a task of the module's is posted: the
/// connection is handed back, then the poster's handler runs (it unblocks
/// the request and runs its write handler, which calls the send chain).
unsafe extern "C" fn task_done(ev: *mut ngx_event_t) {
    // SAFETY: ev is the event inside the module's task; what the task
    // refers to is used only while the cleanups say it lives.
    unsafe {
        let task = ev
            .byte_sub(offset_of!(Task, task) + offset_of!(ngx_thread_task_t, event))
            .cast::<Task>();
        let ctx = ctx(task);
        // On a timeout the poster only reports that the task takes long; the
        // thread still works and the connection stays its.
        if (*ev).timedout() != 0 {
            if let Some(next) = (*ctx).next_handler {
                next(ev);
            }
            return;
        }
        (*ctx).stage = Stage::Finished;
        let c = (*ctx).c;
        if c.is_null() {
            free_task(task);
            return;
        }
        debug!(
            (*c).log,
            "ktls thread: task #{} done: {:?}",
            (*task).task.id,
            (*ctx).work.finished
        );
        release_reads(c, ctx);
        release_writes(c);
        if (*ctx).request_gone {
            finish_without_request(c, ctx);
            return;
        }
        if let (Job::Read { nparts, .. }, Some(Finished::Read(outcome))) =
            ((*ctx).work.job, (*ctx).work.finished)
        {
            let parts = &(&(*ctx).work.parts)[..nparts];
            (*ctx).read_result = pread::report((*c).log, (*ctx).file, parts, outcome);
        }
        release_stream(ctx);
        if (*ctx).other_connection {
            resume_writer(c);
        }
        if let Some(next) = (*ctx).next_handler {
            next(ev);
        }
    }
}

/// A task whose request was freed meanwhile (an HTTP/2 stream, with the
/// connection going on): the poster's handler is not run, since its
/// request is gone, and the connection's writer collects the result.
///
/// # Safety
/// `c` must be the task's live connection, `ctx` its finished context.
unsafe fn finish_without_request(c: *mut ngx_connection_t, ctx: *mut Ctx) {
    // SAFETY: forwarded from the caller.
    unsafe {
        debug!(
            (*c).log,
            "ktls thread: the task's request ended while the thread worked"
        );
        if let Some(Finished::Read(outcome)) = (*ctx).work.finished {
            // The bytes belong to a frame already in the TLS buffer.
            if outcome != Outcome::Read {
                log_error!(
                    NGX_LOG_INFO,
                    (*c).log,
                    "ktls thread: a read for an ended stream failed: {:?}",
                    outcome
                );
            }
            (*ctx).read_result = if outcome == Outcome::Read {
                Ok(())
            } else {
                Err(Fatal)
            };
        }
        resume_writer(c);
    }
}

/// Posts the connection's write event, so that its writer collects the
/// task and goes on: the poster's completion handler resumes the stream's
/// request only, and a stream with nothing more to send does not flush the
/// TLS connection's frames.  Posted before that handler runs, so that a
/// close there also removes it.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn resume_writer(c: *mut ngx_connection_t) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if (*(*c).write).posted() != 0 {
            return;
        }
        debug!((*c).log, "ktls thread: resuming the connection's writer");
        ngx_post_event((*c).write, ptr::addr_of_mut!(ngx_posted_events));
    }
}

/// Posts the prepared job through the file's thread handler, with the
/// thread's own descriptors.  The poster may decline without error (the
/// request already waits for an operation of its own); [`busy`] posts
/// again.
///
/// # Safety
/// `task` must be the connection's task with a job prepared and its file
/// attached.
unsafe fn post(c: Connection, task: *mut Task) -> Result<(), Fatal> {
    // SAFETY: the file belongs to a live request (the guard is armed).
    unsafe {
        let ctx = ctx(task);
        let file = (*ctx).file;
        let Some(thread_handler) = (*file).thread_handler else {
            return Err(Fatal);
        };
        let job = (*ctx).work.job;
        let own = match job.with_own_descriptors() {
            Ok(own) => own,
            Err(err) => {
                return Err(ssl::fail(c, SSL_ERROR_SYSCALL, err, c"dup() failed"));
            }
        };
        // As in ngx_linux_sendfile_thread(): a write event while the task
        // runs means a full socket may have drained since.
        (*c.write_event()).set_complete(0);
        (*ctx).work.finished = None;
        (*ctx).work.job = own;
        let nt = ptr::addr_of_mut!((*task).task);
        let rc = thread_handler(nt, file);
        if rc != NGX_OK as isize || (*nt).event.active() == 0 {
            own.close_descriptors();
            (*ctx).work.job = job;
            if rc != NGX_OK as isize {
                return Err(Fatal);
            }
            debug!(
                c.log(),
                "ktls thread: not posted, the request waits for another operation"
            );
            return Ok(());
        }
        (*ctx).next_handler = (*nt).event.handler;
        (*nt).event.handler = Some(task_done);
        hold_writes(c);
        let sendfile = matches!(job, Job::Sendfile { .. });
        if sendfile {
            hold_reads(c.as_ptr(), ctx);
        }
        debug!(
            c.log(),
            "ktls thread: task #{} posted: {}",
            (*nt).id,
            if sendfile { "sendfile" } else { "read" }
        );
        Ok(())
    }
}

/// Whether a task works for the connection, without posting one again.
pub fn working(c: Connection) -> bool {
    // SAFETY: the handle's connection is live; its task, if any, lives as
    // long as the connection's pool.
    unsafe { task_of(c.as_ptr()).is_some_and(|task| (*ctx(task)).stage == Stage::Waiting) }
}

/// Whether a task works for the connection; one that the poster declined
/// is posted again.
pub fn busy(c: Connection) -> Result<bool, Fatal> {
    // SAFETY: as for working(); a posted task's file belongs to a request
    // that lives while the task's guard is armed.
    unsafe {
        let Some(task) = task_of(c.as_ptr()) else {
            return Ok(false);
        };
        let ctx = ctx(task);
        if (*ctx).stage != Stage::Waiting {
            return Ok(false);
        }
        if (*task).task.event.active() == 0 {
            if (*ctx).request_gone {
                // Declined, and its request ended since: the frame it was
                // for is gone with the stream.
                debug!(
                    c.log(),
                    "ktls thread: the request of an unposted task ended"
                );
                (*ctx).stage = Stage::Idle;
                return Err(Fatal);
            }
            post(c, task)?;
        }
        if (*task).task.event.active() != 0 {
            // A write event during the task made the socket ready again.
            hold_writes(c);
        }
        debug!(c.log(), "ktls thread: busy");
        Ok(true)
    }
}

/// Prepares a job on the connection's task and posts it.
///
/// # Safety
/// `task` must be the connection's task (from [`task_for`]), `file` a live
/// file of one of its requests with a thread handler.
unsafe fn start(
    c: Connection,
    task: *mut Task,
    file: *mut ngx_file_t,
    buf: *mut ngx_buf_t,
    job: Job,
) -> Result<(), Fatal> {
    // SAFETY: forwarded from the caller.
    unsafe {
        let ctx = ctx(task);
        attach(c.as_ptr(), task, file)?;
        (*ctx).work.job = job;
        (*ctx).buf = buf;
        (*ctx).read_result = Ok(());
        (*ctx).stage = Stage::Waiting;
        let posted = post(c, task);
        if posted.is_err() {
            // The request fails; nothing is left for busy() to post again.
            (*ctx).stage = Stage::Idle;
            detach(ctx);
        }
        posted
    }
}

impl Offloader {
    /// Reads `parts` of the file into the TLS buffer at `base`: at once if
    /// the page cache has them all, otherwise in a thread, into the task's
    /// buffer at the same places ([`land`] copies them over).
    ///
    /// # Safety
    /// As for [`start`], with the file of a request of `c`; the parts lie
    /// inside the connection's TLS buffer.
    pub unsafe fn read(self, c: Connection, base: *mut u8, parts: &[Part]) -> Result<Read, Fatal> {
        // SAFETY: forwarded from the caller.
        unsafe {
            let (file, fd) = (self.file, self.fd);
            let outcome = pread::read_parts(fd, base, parts, libc::RWF_NOWAIT);
            if outcome == Outcome::Read {
                pread::report(c.log(), file, parts, outcome)?;
                return Ok(Read::Done);
            }
            debug!(
                c.log(),
                "ktls thread: not all in the page cache ({:?}), reading in a thread", outcome
            );
            let task = task_for(c.as_ptr())?;
            let ctx = ctx(task);
            let end = parts.iter().map(|p| p.at + p.len).max().unwrap_or(0);
            if (*ctx).scratch.len() < end {
                (*ctx).scratch.resize(end, 0);
            }
            (&mut (*ctx).work.parts)[..parts.len()].copy_from_slice(parts);
            let job = Job::Read {
                fd,
                base: (*ctx).scratch.as_mut_ptr(),
                nparts: parts.len(),
            };
            start(c, task, file, ptr::null_mut(), job)?;
            hold_stream(ctx, file);
            Ok(Read::Offloaded)
        }
    }

    /// Sends `size` bytes of the file run at buffer `b`, a buffer in this
    /// file, in a thread.
    ///
    /// # Safety
    /// As for [`start`]; `b` is the chain's head, and
    /// [`ssl::kernel_allowed`] holds.
    pub unsafe fn sendfile(
        self,
        c: Connection,
        b: *mut ngx_buf_t,
        size: usize,
    ) -> Result<Io, Fatal> {
        // SAFETY: forwarded from the caller.
        unsafe {
            debug!(c.log(), "SSL to sendfile: @{} {}", (*b).file_pos, size);
            let job = Job::Sendfile {
                socket: c.fd(),
                fd: self.fd,
                offset: (*b).file_pos,
                size,
            };
            start(c, task_for(c.as_ptr())?, self.file, b, job)?;
            Ok(Io::Offloaded)
        }
    }

    /// Whether `len` bytes of the file from `offset` are in the page cache,
    /// so that splicing them cannot wait for the disk (pages on their way
    /// in count: such a splice waits only for that read).
    pub fn cached(self, offset: i64, len: usize) -> bool {
        page_cached(self.fd, offset, len)
    }
}

/// `cachestat()` (Linux 6.5, the same number on every architecture); the
/// `libc` crate does not name it everywhere.
const SYS_CACHESTAT: libc::c_long = 451;

/// Whether every page of `len` bytes of `fd` from `offset` is in the page
/// cache.  Pages on their way in count as there.
fn page_cached(fd: c_int, offset: i64, len: usize) -> bool {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // SAFETY: sysconf() has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let Ok(offset) = u64::try_from(offset) else {
        return false;
    };
    if len == 0 {
        return true;
    }
    let range = Range {
        off: offset,
        len: len as u64,
    };
    let mut stat = Stat::default();
    // SAFETY: both structures are laid out as the kernel's.
    let rc = unsafe { libc::syscall(SYS_CACHESTAT, fd, &range, &mut stat, 0) };
    let pages = (offset + len as u64).div_ceil(page) - offset / page;
    rc == 0 && stat.nr_cache >= pages
}

/// Copies what a finished read got into the TLS buffer at `base`, where
/// the plan left room for it; before the send chain looks at the buffer.
///
/// # Safety
/// `base` must be the connection's TLS buffer with room for the parts,
/// which nothing else refers to during the call.
pub unsafe fn land(c: Connection, base: *mut u8) {
    // SAFETY: forwarded from the caller; the parts lie inside both buffers.
    unsafe {
        let Some(task) = task_of(c.as_ptr()) else {
            return;
        };
        let ctx = ctx(task);
        if (*ctx).stage != Stage::Finished {
            return;
        }
        if let Job::Read { nparts, .. } = (*ctx).work.job {
            for part in &(&(*ctx).work.parts)[..nparts] {
                ptr::copy_nonoverlapping(
                    (*ctx).scratch.as_ptr().add(part.at),
                    base.add(part.at),
                    part.len,
                );
            }
        }
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
/// `ctx` must be a task's context with `file` attached ([`attach`]): its
/// `thread_ctx` is a live request.
unsafe fn hold_stream(ctx: *mut Ctx, file: *mut ngx_file_t) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if !(*ctx).other_connection {
            return;
        }
        let r = (*file).thread_ctx.cast::<ngx_http_request_t>();
        let fc = (*r).connection;
        (*fc).set_buffered((*fc).buffered() | NGX_SSL_BUFFERED);
        (*ctx).stream = fc;
    }
}

/// Lets the stream held by [`hold_stream`] finish; its write handler runs
/// next (the poster's completion handler runs it), and sees the rest.
///
/// # Safety
/// `ctx` must be a task's context whose request lives.
unsafe fn release_stream(ctx: *mut Ctx) {
    // SAFETY: the stream's request lives, so its connection does.
    unsafe {
        let fc = core::mem::replace(&mut (*ctx).stream, ptr::null_mut());
        if !fc.is_null() {
            (*fc).set_buffered((*fc).buffered() & !NGX_SSL_BUFFERED);
        }
    }
}

/// Counts what a finished task did: a read's outcome is checked, a
/// sendfile's bytes are the head's (`ngx_linux_sendfile_thread()` on
/// completion).
///
/// # Safety
/// `head` must be the chain the send path was called with.
pub unsafe fn collect(c: Connection, head: *mut ngx_chain_t) -> Result<Collected, Fatal> {
    // SAFETY: forwarded from the caller; the context's buffer belongs to a
    // request that lives while its guard is armed.
    unsafe {
        let Some(task) = task_of(c.as_ptr()) else {
            return Ok(Collected::Nothing);
        };
        let ctx = ctx(task);
        if (*ctx).stage != Stage::Finished {
            return Ok(Collected::Nothing);
        }
        (*ctx).stage = Stage::Idle;
        let collected = match ((*ctx).work.job, (*ctx).work.finished) {
            (Job::Read { .. }, Some(Finished::Read(_))) => {
                (*ctx).read_result.map(|()| Collected::Nothing)
            }
            (Job::Sendfile { .. }, Some(Finished::Sendfile { .. })) if (*ctx).request_gone => {
                // Its frame went with the stream, part of it on the wire.
                log_error!(
                    NGX_LOG_INFO,
                    c.log(),
                    "ktls thread: the stream ended while a thread sent its frame"
                );
                Err(Fatal)
            }
            (Job::Sendfile { offset, size, .. }, Some(Finished::Sendfile { n, err })) => {
                collect_sendfile(c, ctx, head, offset, size, n, err)
            }
            (_, finished) => {
                log_error!(
                    NGX_LOG_ALERT,
                    c.log(),
                    "ktls thread: task finished without a result ({:?})",
                    finished
                );
                Err(Fatal)
            }
        };
        detach(ctx);
        collected
    }
}
/// The result of a thread's sendfile, as `ngx_ssl_sendfile()` treats
/// `SSL_sendfile()`'s.
///
/// # Safety
/// As for [`collect`].
unsafe fn collect_sendfile(
    c: Connection,
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
            c.log(),
            "sendfile: {} (err: {}) of {} @{}", n, err, size, offset
        );
        if n < 0 {
            if err != libc::EAGAIN {
                return Err(ssl::fail(c, SSL_ERROR_SYSCALL, err, c"sendfile() failed"));
            }
            if (*c.write_event()).complete() != 0 {
                // The socket was writable again before the task was done.
                return Ok(Collected::Nothing);
            }
            ssl::wait_writable(c)?;
            return Ok(Collected::Again);
        }
        let b = (*ctx).buf;
        if head.is_null() || (*head).buf != b || (*b).file_pos != offset {
            log_error!(
                NGX_LOG_ALERT,
                c.log(),
                "ktls thread: the chain changed while a thread sent from it"
            );
            return Err(Fatal);
        }
        if n == 0 {
            return Err(ssl::sendfile_truncated(c, b, "sendfile"));
        }
        debug!(c.log(), "SSL_sendfile: {}", n);
        ssl::sendfile_sent(c, n as usize)?;
        Ok(Collected::Sent(n as u64))
    }
}

/// Says that the connection cannot be written to while the task works, as
/// a send that leaves bytes buffered says by clearing `wev->ready`.  HTTP/2
/// takes a ready socket after a send for one that took everything: with
/// no stream left it would idle the connection and free the TLS buffer
/// (`ngx_ssl_free_buffer()`) under the bytes that wait for the task.  Only
/// a posted task holds writes: a declined one is posted again by the next
/// send, which a socket that is not ready would not reach.
fn hold_writes(c: Connection) {
    c.set_write_ready(false);
}

/// The task is done: the connection may be written to again; whether the
/// socket takes bytes, the next write finds out.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn release_writes(c: *mut ngx_connection_t) {
    // SAFETY: forwarded from the caller.
    unsafe { (*(*c).write).set_ready(1) };
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
