//! `$ktls_tx`, `$ktls_rx`, `$ktls_sendfile_bytes` and `$ktls_splice_bytes`.

use core::fmt::Write;

use nginx_sys::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t,
    ngx_pnalloc, ngx_str_t, ngx_uint_t, NGX_HTTP_VAR_NOCACHEABLE,
};
use ngx::core::Status;
use ngx::ngx_string;

use crate::io::connection::Connection;
use crate::io::state;

type Getter = unsafe extern "C" fn(
    *mut ngx_http_request_t,
    *mut ngx_http_variable_value_t,
    usize,
) -> ngx_int_t;

/// Adds the module's variables; from `preconfiguration`.
///
/// # Safety
/// `cf` must be the configuration being parsed.
pub unsafe fn add(cf: *mut ngx_conf_t) -> Result<(), Status> {
    let vars: [(ngx_str_t, Getter); 4] = [
        (ngx_string!("ktls_tx"), ktls_tx),
        (ngx_string!("ktls_rx"), ktls_rx),
        (ngx_string!("ktls_sendfile_bytes"), ktls_sendfile_bytes),
        (ngx_string!("ktls_splice_bytes"), ktls_splice_bytes),
    ];
    for (mut name, get) in vars {
        // SAFETY: nginx copies the name; the returned variable lives in the
        // configuration's pool.
        unsafe {
            let var = ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t);
            if var.is_null() {
                return Err(Status::NGX_ERROR);
            }
            (*var).get_handler = Some(get);
        }
    }
    Ok(())
}

/// Sets `v` to a string that outlives the request.
fn set_static(v: &mut ngx_http_variable_value_t, value: &'static [u8]) {
    set_found(v, value.as_ptr().cast_mut(), value.len());
}

/// Sets `v` to the `len` bytes at `data`, which outlive the request.
fn set_found(v: &mut ngx_http_variable_value_t, data: *mut u8, len: usize) {
    v.set_len(len as u32);
    v.set_valid(1);
    v.set_no_cacheable(0);
    v.set_not_found(0);
    v.data = data;
}

/// "1" or "0" from whether the request's TLS connection has kTLS in the
/// direction `active` checks; "0" on a plain connection.
///
/// # Safety
/// `r` and `v` are what nginx passes to a variable handler.
unsafe fn flag(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    active: fn(Connection<'_>) -> bool,
) -> ngx_int_t {
    // SAFETY: a request's connection is live while its variables are read;
    // HTTP/2 stream connections share the TLS connection's c->ssl.
    let c = unsafe { Connection::from_raw((*r).connection) };
    let on = c.is_some_and(active);
    // SAFETY: nginx passes the variable's value to fill in.
    set_static(unsafe { &mut *v }, if on { b"1" } else { b"0" });
    Status::NGX_OK.into()
}

unsafe extern "C" fn ktls_tx(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: called by nginx as a variable handler.
    unsafe { flag(r, v, |c| c.ktls_send()) }
}

unsafe extern "C" fn ktls_rx(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: called by nginx as a variable handler.
    unsafe { flag(r, v, |c| c.ktls_recv()) }
}

/// Bytes the module has sent with `SSL_sendfile()` on this connection; not
/// found ("-" in logs) where the module does not drive the connection, since
/// what nginx's own path sent is not known.
unsafe extern "C" fn ktls_sendfile_bytes(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: as in flag().
    unsafe { counter(r, v, |s| s.sendfile_bytes.get()) }
}

/// File bytes the module has spliced from the page cache towards the socket
/// on this connection; not found as for `$ktls_sendfile_bytes`.
unsafe extern "C" fn ktls_splice_bytes(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: as in flag().
    unsafe { counter(r, v, |s| s.splice_bytes.get()) }
}

/// Sets `v` to a counter of the connection's state, in decimal.
///
/// # Safety
/// As for a variable's get handler.
unsafe fn counter(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    value: fn(&state::ConnState) -> u64,
) -> ngx_int_t {
    // SAFETY: as in flag(); the value is allocated in the request's pool.
    unsafe {
        let v = &mut *v;
        let state = Connection::from_raw((*r).connection).and_then(Connection::state);
        let Some(state) = state else {
            v.set_not_found(1);
            return Status::NGX_OK.into();
        };

        let mut text = DecimalBuf::default();
        let _ = write!(text, "{}", value(state));
        let len = text.len;
        let data = ngx_pnalloc((*r).pool, len).cast::<u8>();
        if data.is_null() {
            return Status::NGX_ERROR.into();
        }
        core::ptr::copy_nonoverlapping(text.bytes.as_ptr(), data, len);
        set_found(v, data, len);
    }
    Status::NGX_OK.into()
}

/// Room for a u64 in decimal, without allocating.
#[derive(Default)]
struct DecimalBuf {
    bytes: [u8; 20],
    len: usize,
}

impl Write for DecimalBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        self.bytes
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
