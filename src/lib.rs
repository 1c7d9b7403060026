//! ngx_http_ktls_module: a send path for nginx's TLS connections that uses
//! kernel TLS.
//!
//! On HTTP connections over TLS it replaces nginx's `ngx_ssl_send_chain()`:
//! file buffers go out with `SSL_sendfile()` when kTLS sends for the
//! connection and OpenSSL has nothing of its own pending, memory buffers with
//! `SSL_write()` (`SSL_write_early_data()` in 0-RTT).  Where the kernel also
//! decrypts what a connection receives, the module reads it after nginx's
//! TLS shutdown (lingering close), record by record.
//!
//! Three layers, one folder each:
//! - [`decide`]: what to send next, in what way and how much, and the other
//!   decisions, free of FFI, driven by unit tests without nginx;
//! - `nginx`: the module, its directives and variables, and the hooks that
//!   take a connection over and hand its chain to the decisions;
//! - `io`: the ways bytes leave and arrive (OpenSSL, direct writes to the
//!   kTLS socket, splice and its pipes, threads, file reads, key updates,
//!   receiving) and the start-up probes of the kernel.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod decide;

// The layers that talk to nginx, OpenSSL and the kernel.  Unit tests run
// without nginx, whose symbols they need, so they are built for the module
// only; `nginx` comes first for its log macros.
#[cfg(not(test))]
#[macro_use]
mod nginx;
#[cfg(not(test))]
mod io;

#[cfg(not(test))]
pub use nginx::module::ngx_http_ktls_module;
