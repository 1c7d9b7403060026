//! The decisions, free of nginx and OpenSSL: the send-chain algorithm
//! ([`plan`]), what a received record is ([`record`]), whether a key update
//! may go on ([`rekey`]), at which level a fault is logged ([`error_level`])
//! and the configuration's values ([`conf`]).

pub mod conf;
pub mod error_level;
pub mod plan;
pub mod record;
pub mod rekey;
