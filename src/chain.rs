//! The send-chain algorithm's view of an nginx chain and TLS connection.

use core::ffi::{c_char, CStr};

use nginx_sys::{
    ngx_buf_t, ngx_chain_coalesce_file, ngx_chain_t, ngx_chain_update_sent, ngx_connection_t,
    ngx_read_file, NGX_LOG_ALERT,
};

use crate::plan::{Chain, Fatal, Head, Io, Kind, Transport};
use crate::ssl;

/// An `ngx_chain_t` being sent on connection `c`.
pub struct NgxChain {
    pub head: *mut ngx_chain_t,
    pub c: *mut ngx_connection_t,
}

impl NgxChain {
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

    fn read_file(&mut self, dst: &mut [u8]) -> Result<(), Fatal> {
        // SAFETY: the head is a file buffer whose file stays open while it
        // is in the chain; dst is valid for dst.len() bytes.
        let done = unsafe {
            let b = &mut *self.buf();
            debug!((*self.c).log, "SSL buf read: @{} {}", b.file_pos, dst.len());
            if !dst.is_empty() {
                let n = ngx_read_file(b.file, dst.as_mut_ptr(), dst.len(), b.file_pos);
                if n != dst.len() as isize {
                    if n >= 0 {
                        // The error the copy filter logs for the same fault.
                        let name = CStr::from_ptr((*b.file).name.data as *const c_char);
                        log_error!(
                            NGX_LOG_ALERT,
                            (*self.c).log,
                            "pread() read only {} of {} from \"{}\"",
                            n,
                            dst.len(),
                            name.to_string_lossy()
                        );
                    }
                    // A failed pread() was logged by ngx_read_file().
                    return Err(Fatal);
                }
            }
            b.file_pos += dst.len() as i64;
            b.file_pos == b.file_last
        };
        self.next_if_done(done);
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
