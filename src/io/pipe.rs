//! The worker's pipes for splicing file data to kTLS sockets.
//!
//! Pipes belong to the worker: at most [`MAX_PIPES`] exist, a connection
//! holds one only while it has bytes in it (or while its send chain runs),
//! and gives it back empty.  A connection that ends with bytes in its pipe
//! closes that pipe.

use core::cell::RefCell;
use core::ffi::c_int;

/// Pipes one worker may have open.
pub const MAX_PIPES: usize = 16;

/// The capacity asked for each pipe (the kernel's default `pipe-max-size`):
/// every memory part and every file page takes a slot of the pipe, so a
/// small pipe would be drained to the socket every few HTTP/2 frames.
const PIPE_SIZE: c_int = 1 << 20;

/// A pipe and the bytes waiting in it.
pub struct Pipe {
    pub read: c_int,
    pub write: c_int,
    pub pending: usize,
}

impl Pipe {
    /// A new non-blocking pipe, as large as the kernel lets it be.
    pub fn open() -> Option<Pipe> {
        let mut fds = [0 as c_int; 2];
        // SAFETY: pipe2() writes two descriptors into fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // A refusal (the user's pipe pages are used up) leaves the default
        // size, which still works.
        // SAFETY: fcntl() on the descriptor just made.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Some(Pipe {
            read: fds[0],
            write: fds[1],
            pending: 0,
        })
    }

    pub fn close(self) {
        // SAFETY: the pipe owns its descriptors, and is consumed.
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

/// The worker's pipes not held by any connection, and how many exist.
struct Pool {
    idle: Vec<Pipe>,
    open: usize,
}

thread_local! {
    // Only the event loop touches pipes: threads of `aio threads` never do.
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { idle: Vec::new(), open: 0 }) };
}

/// A pipe for a connection: an idle one, or a new one while the worker has
/// fewer than [`MAX_PIPES`].
pub fn take() -> Option<Pipe> {
    POOL.with_borrow_mut(|pool| {
        if let Some(pipe) = pool.idle.pop() {
            return Some(pipe);
        }
        if pool.open == MAX_PIPES {
            return None;
        }
        let pipe = Pipe::open()?;
        pool.open += 1;
        Some(pipe)
    })
}

/// An empty pipe goes back to the worker; one with bytes in it is closed,
/// since nothing may read those bytes any more.
pub fn give_back(pipe: Option<Pipe>) {
    let Some(pipe) = pipe else { return };
    POOL.with_borrow_mut(|pool| {
        if pipe.pending == 0 {
            pool.idle.push(pipe);
        } else {
            pool.open -= 1;
            pipe.close();
        }
    });
}
