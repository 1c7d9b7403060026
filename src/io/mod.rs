//! The ways bytes leave and arrive, on a TLS connection as [`connection`]
//! hands it out: through OpenSSL and straight to the
//! kTLS socket ([`ssl`]), through a pipe ([`splice`]), in threads of
//! nginx's pool ([`thread`]), file reads ([`pread`]), key updates
//! ([`key_update`]), receiving ([`receive`], [`userspace_rx`],
//! [`no_pad`]), the kernel's start-up probe ([`kernel`]), system calls
//! ([`sys`]), the worker's pipes ([`pipe`]) and what the module keeps per
//! connection ([`state`]).

pub mod connection;
pub mod kernel;
pub mod key_update;
pub mod no_pad;
pub mod pipe;
pub mod pread;
pub mod receive;
pub mod splice;
pub mod ssl;
pub mod state;
pub mod sys;
#[cfg_attr(not(ngx_feature = "threads"), path = "no_threads.rs")]
pub mod thread;
pub mod userspace_rx;
