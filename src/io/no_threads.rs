//! The thread module of a build of nginx without thread pools: no file is
//! read in a thread, so no task ever works for a connection.

use nginx_sys::{ngx_buf_t, ngx_chain_t, ngx_file_t};

use crate::decide::plan::{Collected, Fatal, Io, Read};
use crate::io::connection::Connection;
use crate::io::pread::Part;

/// A file whose reads go to a thread: none without thread pools.
#[derive(Clone, Copy)]
pub enum Offloader {}

/// No file's reads go to a thread.
///
/// # Safety
/// None here; the threaded build's `file` must be NULL or a live file.
pub unsafe fn offloader(_file: *mut ngx_file_t) -> Option<Offloader> {
    None
}

impl Offloader {
    /// # Safety
    /// Never called: there is no offloader.
    pub unsafe fn read(
        self,
        _c: Connection,
        _base: *mut u8,
        _parts: &[Part],
    ) -> Result<Read, Fatal> {
        match self {}
    }

    /// # Safety
    /// Never called: there is no offloader.
    pub unsafe fn sendfile(
        self,
        _c: Connection,
        _b: *mut ngx_buf_t,
        _size: usize,
    ) -> Result<Io, Fatal> {
        match self {}
    }

    pub fn cached(self, _offset: i64, _len: usize) -> bool {
        match self {}
    }
}

/// No task works for the connection.
pub fn working(_c: Connection) -> bool {
    false
}

/// No task works for the connection.
pub fn busy(_c: Connection) -> Result<bool, Fatal> {
    Ok(false)
}

/// No task finished: nothing to count.
///
/// # Safety
/// None here; the threaded build's `head` must be the chain being sent.
pub unsafe fn collect(_c: Connection, _head: *mut ngx_chain_t) -> Result<Collected, Fatal> {
    Ok(Collected::Nothing)
}

/// No read finished: nothing to copy.
///
/// # Safety
/// None here; the threaded build's `base` must be the TLS buffer.
pub unsafe fn land(_c: Connection, _base: *mut u8) {}
