//! The send-chain algorithm's view of an nginx chain and TLS connection.

use nginx_sys::{
    ngx_buf_t, ngx_chain_coalesce_file, ngx_chain_t, ngx_chain_update_sent, ngx_file_t,
};

use crate::decide::plan::{Chain, Collected, Fatal, Head, Io, Kind, Piped, Read, Transport};
use crate::io::connection::Connection;
use crate::io::pread::{self, Part, MAX_PARTS};
use crate::io::{splice, ssl, thread};

/// An `ngx_chain_t` being sent on connection `c`.
pub struct NgxChain<'a> {
    pub head: *mut ngx_chain_t,
    c: Connection<'a>,
    /// File parts waiting for finish_reads(), all of `file`: a batch is one
    /// file, so that a thread reading it holds only that file's request.
    file: *mut ngx_file_t,
    parts: [Part; MAX_PARTS],
    nparts: usize,
}

impl<'a> NgxChain<'a> {
    pub fn new(head: *mut ngx_chain_t, c: Connection<'a>) -> Self {
        NgxChain {
            head,
            c,
            file: core::ptr::null_mut(),
            parts: [Part::default(); MAX_PARTS],
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

impl Chain for NgxChain<'_> {
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
        debug!(self.c.log(), "SSL buf copy: {}", dst.len());
        // SAFETY: the plan asks for at most the head's size, which is in
        // memory at pos..last.
        let done = unsafe {
            let b = &mut *self.buf();
            core::ptr::copy_nonoverlapping(b.pos, dst.as_mut_ptr(), dst.len());
            b.pos = b.pos.add(dst.len());
            b.pos == b.last
        };
        self.next_if_done(done);
    }

    fn read_file(&mut self, mem: &mut [u8], at: usize, len: usize) -> Result<Read, Fatal> {
        // SAFETY: the head is a file buffer whose file stays open while the
        // chain is being sent, which outlasts finish_reads().
        let file = unsafe { (*self.buf()).file };
        let batch_ends = self.nparts == MAX_PARTS || (self.nparts > 0 && file != self.file);
        if batch_ends && self.finish_reads(mem)? == Read::Offloaded {
            return Ok(Read::Offloaded);
        }
        // SAFETY: as above.
        let done = unsafe {
            let b = &mut *self.buf();
            debug!(self.c.log(), "SSL buf read: @{} {}", b.file_pos, len);
            if len > 0 {
                self.file = file;
                self.parts[self.nparts] = Part {
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
        Ok(Read::Done)
    }

    fn finish_reads(&mut self, mem: &mut [u8]) -> Result<Read, Fatal> {
        let parts = &self.parts[..self.nparts];
        self.nparts = 0;
        if parts.is_empty() {
            return Ok(Read::Done);
        }
        let base = mem.as_mut_ptr();
        // SAFETY: the parts lie inside mem (the plan checked the room), and
        // the file is open while the chain is being sent.
        unsafe {
            if let Some(offloader) = thread::offloader(self.file) {
                return offloader.read(self.c, base, parts);
            }
            let outcome = pread::read_parts((*self.file).fd, base, parts, 0);
            pread::report(self.c.log(), self.file, parts, outcome)?;
        }
        Ok(Read::Done)
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
pub struct Tls<'a> {
    pub c: Connection<'a>,
}

impl<'a> Transport<NgxChain<'a>> for Tls<'a> {
    fn busy(&mut self) -> Result<bool, Fatal> {
        thread::busy(self.c)
    }

    fn collect(&mut self, chain: &NgxChain) -> Result<Collected, Fatal> {
        // SAFETY: the chain is the one the send path was called with.
        unsafe { thread::collect(self.c, chain.head) }
    }

    fn kernel_allowed(&mut self) -> bool {
        ssl::kernel_allowed(self.c)
    }

    fn write(&mut self, data: &[u8]) -> Result<Io, Fatal> {
        ssl::write(self.c, data)
    }

    fn write_kernel(&mut self, data: &[u8], more: bool) -> Result<Io, Fatal> {
        ssl::write_kernel(self.c, data, more)
    }

    fn sendfile(&mut self, chain: &NgxChain, len: usize) -> Result<Io, Fatal> {
        // SAFETY: the plan sends a file run from the head, a file buffer of
        // the chain the send path was called with, and only while
        // kernel_allowed() holds.
        unsafe {
            let b = (*chain.head).buf;
            if let Some(offloader) = thread::offloader((*b).file) {
                return offloader.sendfile(self.c, b, len);
            }
            ssl::sendfile(self.c, b, len)
        }
    }

    fn pipe_ready(&mut self, chain: &NgxChain, len: usize) -> bool {
        if !splice::enabled() {
            return false;
        }
        // SAFETY: the plan pipes a file run from the head, a file buffer.
        let (file, pos) = unsafe {
            let b = (*chain.head).buf;
            ((*b).file, (*b).file_pos)
        };
        // SAFETY: the file buffer's file is open while the chain is sent.
        let offloader = unsafe { thread::offloader(file) };
        // A disk read belongs in a thread: that goes through the buffer.
        if offloader.is_some_and(|o| !o.cached(pos, len)) {
            debug!(
                self.c.log(),
                "splice: @{} {} not in the page cache", pos, len
            );
            return false;
        }
        splice::hold_pipe(self.c)
    }

    fn piped(&self) -> usize {
        splice::pending(self.c)
    }

    fn pipe_memory(&mut self, data: &[u8]) -> Result<Io, Fatal> {
        splice::fill_memory(self.c, data)
    }

    fn pipe_file(&mut self, chain: &NgxChain, len: usize) -> Result<Piped, Fatal> {
        // SAFETY: the plan pipes a file run from the head, a file buffer of
        // the chain the send path was called with.
        unsafe { splice::fill_file(self.c, (*chain.head).buf, len) }
    }

    fn drain_pipe(&mut self, more: bool) -> Result<Io, Fatal> {
        splice::drain(self.c, more)
    }
}
