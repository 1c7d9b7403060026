//! The nginx side: the module and its directives ([`module`]), its
//! variables, the header filter that takes a TLS connection over and the
//! send functions it installs ([`takeover`]), the chain as the decisions see
//! it ([`chain`]).

#[macro_use]
mod log;

pub mod chain;
pub mod module;
pub mod takeover;
pub mod variables;
