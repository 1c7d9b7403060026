//! End-to-end test harness for the nginx ktls module.
//!
//! The integration tests in `tests/` start real nginx binaries (see [`config`]) in a private
//! work dir, talk to them with the clients in [`tls`], [`h1`] and [`h2`], and check every body
//! byte for byte, plus the module's access-log variables and debug-log lines ([`logs`]) and,
//! under a kernel with kTLS, `/proc/net/tls_stat` ([`kernel`]).

pub mod body;
pub mod cases;
pub mod cert;
pub mod config;
pub mod h1;
pub mod h2;
pub mod kernel;
pub mod logs;
pub mod nginx;
pub mod slow_disk;
pub mod tls;
pub mod workdir;
