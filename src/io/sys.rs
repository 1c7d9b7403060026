//! System calls as every path of the module makes them.

use core::ffi::{c_char, c_int, CStr};
use std::borrow::Cow;

use nginx_sys::{ngx_errno, ngx_file_t};

/// Makes `call`, a system call that returns a count or -1 with `errno`,
/// again for as long as a signal interrupts it (`EINTR`): the count, or the
/// error it failed with.
pub fn restart_on_eintr(mut call: impl FnMut() -> isize) -> Result<usize, c_int> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = ngx_errno();
        if err != libc::EINTR {
            return Err(err);
        }
    }
}

/// The name of an nginx file, for log lines.
///
/// # Safety
/// `file` must be a live `ngx_file_t`; nginx ends file names in NUL.
pub unsafe fn file_name<'a>(file: *const ngx_file_t) -> Cow<'a, str> {
    // SAFETY: forwarded from the caller.
    unsafe { CStr::from_ptr((*file).name.data as *const c_char) }.to_string_lossy()
}
