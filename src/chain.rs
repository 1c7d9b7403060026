//! The send-chain algorithm's view of an nginx chain and TLS connection.

use core::ffi::{c_char, CStr};

use nginx_sys::{
    ngx_buf_t, ngx_chain_coalesce_file, ngx_chain_t, ngx_chain_update_sent, ngx_connection_t,
    ngx_errno, ngx_file_t, NGX_LOG_ALERT, NGX_LOG_CRIT,
};

use crate::plan::{Chain, Fatal, Head, Io, Kind, Transport};
use crate::ssl;

/// How many file parts may wait to be read; 16k of buffer holds at most a
/// few HTTP/2 frames, so more than this is a chain of tiny file buffers.
const MAX_PARTS: usize = 16;

/// A part of a file waiting to be read into the TLS buffer at `at`.
#[derive(Clone, Copy)]
struct Part {
    file: *mut ngx_file_t,
    offset: i64,
    at: usize,
    len: usize,
}

impl Part {
    const NONE: Part = Part {
        file: core::ptr::null_mut(),
        offset: 0,
        at: 0,
        len: 0,
    };

    /// Whether this part comes right after `prev` in the same file.
    fn follows(&self, prev: &Part) -> bool {
        // SAFETY: queued parts point at open files.
        unsafe {
            (*self.file).fd == (*prev.file).fd && self.offset == prev.offset + prev.len as i64
        }
    }
}

/// Reads a run of parts that follow each other in one file with one
/// `preadv()`; a short read (the file shrank) is logged at alert, as the
/// copy filter logs it, and a failed one at crit, as `ngx_read_file()` does.
///
/// # Safety
/// The parts' files must be open and every part must lie inside `mem`.
unsafe fn read_run(c: *mut ngx_connection_t, run: &[Part], mem: &mut [u8]) -> Result<(), Fatal> {
    let mut iov = [libc::iovec {
        iov_base: core::ptr::null_mut(),
        iov_len: 0,
    }; MAX_PARTS];
    for (v, part) in iov.iter_mut().zip(run) {
        v.iov_base = mem[part.at..part.at + part.len].as_mut_ptr().cast();
        v.iov_len = part.len;
    }
    let total: usize = run.iter().map(|p| p.len).sum();
    let file = run[0].file;
    // SAFETY: the iovecs point into mem; the file is open.
    unsafe {
        let name = || CStr::from_ptr((*file).name.data as *const c_char).to_string_lossy();
        let n = loop {
            let n = libc::preadv(
                (*file).fd,
                iov.as_ptr(),
                run.len() as libc::c_int,
                run[0].offset,
            );
            if n >= 0 || ngx_errno() != libc::EINTR {
                break n;
            }
        };
        debug!(
            (*c).log,
            "preadv: {}, @{} {} in {} parts",
            n,
            run[0].offset,
            total,
            run.len()
        );
        if n < 0 {
            let err = ngx_errno();
            log_error!(
                NGX_LOG_CRIT,
                (*c).log,
                "preadv() \"{}\" failed ({})",
                name(),
                err
            );
            return Err(Fatal);
        }
        if n as usize != total {
            log_error!(
                NGX_LOG_ALERT,
                (*c).log,
                "preadv() read only {} of {} from \"{}\"",
                n,
                total,
                name()
            );
            return Err(Fatal);
        }
    }
    Ok(())
}

/// An `ngx_chain_t` being sent on connection `c`.
pub struct NgxChain {
    pub head: *mut ngx_chain_t,
    pub c: *mut ngx_connection_t,
    /// File parts waiting for finish_reads().
    parts: [Part; MAX_PARTS],
    nparts: usize,
}

impl NgxChain {
    pub fn new(head: *mut ngx_chain_t, c: *mut ngx_connection_t) -> Self {
        NgxChain {
            head,
            c,
            parts: [Part::NONE; MAX_PARTS],
            nparts: 0,
        }
    }

    /// The head buffer.
    ///
    /// # Safety
    /// The chain must not be empty.
    unsafe fn buf(&self) -> *mut ngx_buf_t {
        // SAFETY: every link of a chain passed to send_chain has a buffer.
        unsafe { (*self.head).buf }
    }

    /// Moves past the head once its bytes are all gone.
    fn next_if_done(&mut self, done: bool) {
        if done {
            // SAFETY: called with a non-empty chain.
            self.head = unsafe { (*self.head).next };
        }
    }
}

impl Chain for NgxChain {
    fn head(&self) -> Option<Head> {
        if self.head.is_null() {
            return None;
        }
        // SAFETY: the chain is not empty.
        let b = unsafe { &*self.buf() };
        let in_memory = b.temporary() != 0 || b.memory() != 0 || b.mmap() != 0;
        let in_file = b.in_file() != 0;
        let kind = if in_file {
            Kind::File { in_memory }
        } else if !in_memory && (b.flush() != 0 || b.last_buf() != 0 || b.sync() != 0) {
            Kind::Special
        } else {
            Kind::Memory
        };
        // ngx_buf_size(): the memory part when there is one.
        let size = if in_memory {
            (b.last as usize - b.pos as usize) as u64
        } else if in_file {
            (b.file_last - b.file_pos) as u64
        } else {
            0
        };
        Some(Head {
            kind,
            size,
            flush: b.flush() != 0 || b.last_buf() != 0,
        })
    }

    fn skip(&mut self) {
        self.next_if_done(true);
    }

    fn copy_memory(&mut self, dst: &mut [u8]) {
        // SAFETY: the plan asks for at most the head's size, which is in
        // memory at pos..last.
        let done = unsafe {
            debug!((*self.c).log, "SSL buf copy: {}", dst.len());
            let b = &mut *self.buf();
            core::ptr::copy_nonoverlapping(b.pos, dst.as_mut_ptr(), dst.len());
            b.pos = b.pos.add(dst.len());
            b.pos == b.last
        };
        self.next_if_done(done);
    }

    fn read_file(&mut self, mem: &mut [u8], at: usize, len: usize) -> Result<(), Fatal> {
        if self.nparts == MAX_PARTS {
            self.finish_reads(mem)?;
        }
        // SAFETY: the head is a file buffer whose file stays open while the
        // chain is being sent, which outlasts finish_reads().
        let done = unsafe {
            let b = &mut *self.buf();
            debug!((*self.c).log, "SSL buf read: @{} {}", b.file_pos, len);
            if len > 0 {
                self.parts[self.nparts] = Part {
                    file: b.file,
                    offset: b.file_pos,
                    at,
                    len,
                };
                self.nparts += 1;
            }
            b.file_pos += len as i64;
            b.file_pos == b.file_last
        };
        self.next_if_done(done);
        Ok(())
    }

    fn finish_reads(&mut self, mem: &mut [u8]) -> Result<(), Fatal> {
        let parts = &self.parts[..self.nparts];
        self.nparts = 0;
        let mut first = 0;
        while first < parts.len() {
            // A run of parts that follow each other in one file: one preadv().
            let mut end = first + 1;
            while end < parts.len() && parts[end].follows(&parts[end - 1]) {
                end += 1;
            }
            // SAFETY: the parts lie inside mem (the plan checked the room),
            // and their files are open while the chain is being sent.
            unsafe { read_run(self.c, &parts[first..end], mem)? };
            first = end;
        }
        Ok(())
    }

    fn file_run(&self, max: u64) -> u64 {
        let mut cl = self.head;
        // SAFETY: the head is a file buffer; coalescing only reads the chain.
        unsafe { ngx_chain_coalesce_file(&mut cl, max as i64) as u64 }
    }

    fn consume(&mut self, n: u64) {
        // SAFETY: n bytes from the head were just sent.
        self.head = unsafe { ngx_chain_update_sent(self.head, n as i64) };
    }
}

/// The TLS connection the chain goes to.
pub struct Tls {
    pub c: *mut ngx_connection_t,
}

impl Transport<NgxChain> for Tls {
    fn kernel_allowed(&mut self) -> bool {
        // SAFETY: the connection is a live TLS connection while its send
        // chain runs.
        unsafe { ssl::kernel_allowed(self.c) }
    }

    fn write(&mut self, data: &[u8]) -> Result<Io, Fatal> {
        // SAFETY: as above.
        unsafe { ssl::write(self.c, data) }
    }

    fn write_kernel(&mut self, data: &[u8], more: bool) -> Result<Io, Fatal> {
        // SAFETY: as above.
        unsafe { ssl::write_kernel(self.c, data, more) }
    }

    fn sendfile(&mut self, chain: &NgxChain, len: usize) -> Result<Io, Fatal> {
        // SAFETY: as above; the head is a file buffer.
        unsafe { ssl::sendfile(self.c, (*chain.head).buf, len) }
    }
}
