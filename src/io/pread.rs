//! Reading parts of one file into the TLS buffer: one `preadv()` for each
//! run of parts that follow each other in the file.
//!
//! The same code runs on the event loop (without `aio threads`, or first
//! with `RWF_NOWAIT` to see whether the page cache has it all) and in a
//! thread of nginx's pool, so it touches nothing but the file and the
//! buffer's memory, and logs nothing: [`report`] logs on the event loop.

use core::ffi::c_int;

use nginx_sys::{ngx_file_t, ngx_log_t, NGX_LOG_ALERT, NGX_LOG_CRIT};

use crate::decide::plan::Fatal;
use crate::io::sys;

/// How many file parts may wait to be read; 16k of buffer holds at most a
/// few HTTP/2 frames, so more than this is a chain of tiny file buffers.
pub const MAX_PARTS: usize = 16;

/// A part of the file, to be read into the buffer at `at`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Part {
    pub offset: i64,
    pub at: usize,
    pub len: usize,
}

/// What reading a batch of parts gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte was read.
    Read,
    /// A run at `offset` gave `n` of `want` bytes: the file is shorter.
    Short { offset: i64, n: usize, want: usize },
    /// A run at `offset` failed with `err`.
    Failed { offset: i64, err: c_int },
}

/// Reads `parts` of file `fd` into the buffer at `base`, run by run, with
/// `preadv2()` `flags` (0, or `RWF_NOWAIT` to fail with EAGAIN rather than
/// wait for the disk).
///
/// # Safety
/// `fd` must be open, and every part must lie inside the buffer at `base`,
/// which nothing else touches during the call.
pub unsafe fn read_parts(fd: c_int, base: *mut u8, parts: &[Part], flags: c_int) -> Outcome {
    let mut first = 0;
    while first < parts.len() {
        let mut end = first + 1;
        while end < parts.len()
            && parts[end].offset == parts[end - 1].offset + parts[end - 1].len as i64
        {
            end += 1;
        }
        let run = &parts[first..end];
        let mut iov = [libc::iovec {
            iov_base: core::ptr::null_mut(),
            iov_len: 0,
        }; MAX_PARTS];
        for (v, part) in iov.iter_mut().zip(run) {
            // SAFETY: the caller guarantees the part lies inside the buffer.
            v.iov_base = unsafe { base.add(part.at) }.cast();
            v.iov_len = part.len;
        }
        let want = total(run);
        let offset = run[0].offset;
        // SAFETY: the iovecs point into the buffer; fd is open.
        let read = sys::restart_on_eintr(|| unsafe {
            libc::preadv2(fd, iov.as_ptr(), run.len() as c_int, offset, flags)
        });
        let n = match read {
            Ok(n) => n,
            Err(err) => return Outcome::Failed { offset, err },
        };
        if n != want {
            return Outcome::Short { offset, n, want };
        }
        first = end;
    }
    Outcome::Read
}

/// The total length of `parts`.
pub fn total(parts: &[Part]) -> usize {
    parts.iter().map(|p| p.len).sum()
}

/// Logs what went wrong, as nginx logs it: a failed read at crit
/// (`ngx_read_file()`), a short one at alert (the copy filter's "read only").
///
/// # Safety
/// `file` must be an open file, and `log` a live log.
pub unsafe fn report(
    log: *mut ngx_log_t,
    file: *const ngx_file_t,
    parts: &[Part],
    outcome: Outcome,
) -> Result<(), Fatal> {
    // SAFETY: the caller's promise.
    let name = || unsafe { sys::file_name(file) };
    debug!(
        log,
        "preadv: {:?}, @{} {} in {} parts",
        outcome,
        parts.first().map_or(0, |p| p.offset),
        total(parts),
        parts.len()
    );
    match outcome {
        Outcome::Read => Ok(()),
        Outcome::Failed { err, .. } => {
            log_error!(
                NGX_LOG_CRIT,
                log,
                "preadv() \"{}\" failed ({}: {})",
                name(),
                err,
                std::io::Error::from_raw_os_error(err)
            );
            Err(Fatal)
        }
        Outcome::Short { n, want, .. } => {
            log_error!(
                NGX_LOG_ALERT,
                log,
                "preadv() read only {} of {} from \"{}\"",
                n,
                want,
                name()
            );
            Err(Fatal)
        }
    }
}
