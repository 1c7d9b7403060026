//! Log macros: nginx's levels over the connection's log.
//!
//! The debug lines use the event mask, as `ngx_event_openssl.c` does for the
//! same messages, so `debug_connection` and `error_log ... debug` show them in
//! the same places and with the same text.

/// `ngx_log_debug(NGX_LOG_DEBUG_EVENT, log, 0, ...)`.
macro_rules! debug {
    ( $log:expr, $($arg:tt)+ ) => {
        { ngx::ngx_log_debug!(mask: ngx::log::DebugMask::Event, $log, $($arg)+); }
    };
}

/// `ngx_log_error(level, log, 0, ...)`.
macro_rules! log_error {
    ( $level:expr, $log:expr, $($arg:tt)+ ) => {
        { ngx::ngx_log_error!($level, $log, $($arg)+); }
    };
}
