//! ngx_http_ktls_module: a send path for nginx's TLS connections that uses
//! kernel TLS.
//!
//! On HTTP connections over TLS it replaces nginx's `ngx_ssl_send_chain()`:
//! file buffers go out with `SSL_sendfile()` when kTLS sends for the
//! connection and OpenSSL has nothing of its own pending, memory buffers with
//! `SSL_write()` (`SSL_write_early_data()` in 0-RTT).  The decisions live in
//! [`plan`], free of FFI; [`ssl`], [`chain`] and [`takeover`] are the thin
//! layer that talks to nginx and OpenSSL.  Where the kernel also decrypts
//! what a connection receives, [`receive`] reads it after nginx's TLS
//! shutdown (lingering close), record by record ([`record`] decides), and
//! [`userspace_rx`] keeps receiving in userspace where `ktls_rx` says so.

mod conf;
mod error_level;
mod plan;
mod record;
mod rekey;

// The layer that talks to nginx and OpenSSL.  Unit tests run without nginx,
// whose symbols it needs, so it is built for the module only.
#[cfg(not(test))]
#[macro_use]
mod log;

#[cfg(not(test))]
mod chain;
#[cfg(not(test))]
mod kernel;
#[cfg(not(test))]
mod key_update;
#[cfg(not(test))]
mod module;
#[cfg(not(test))]
mod no_pad;
#[cfg(not(test))]
mod pread;
#[cfg(not(test))]
mod receive;
#[cfg(not(test))]
mod splice;
#[cfg(not(test))]
mod ssl;
#[cfg(not(test))]
mod state;
#[cfg(not(test))]
mod takeover;
#[cfg(all(not(test), ngx_feature = "threads"))]
mod thread;
#[cfg(not(test))]
mod userspace_rx;
#[cfg(not(test))]
mod variables;

#[cfg(not(test))]
pub use module::ngx_http_ktls_module;
