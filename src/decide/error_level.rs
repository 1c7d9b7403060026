//! The log level of a failed TLS write, as `ngx_ssl_connection_error()`
//! chooses it: a peer that went away or spoke bad TLS is the client's fault
//! and logged at the level the connection asks for (`info` for HTTP), the
//! rest is `crit`.

use nginx_sys::{
    ngx_connection_log_error_e_NGX_ERROR_ERR as NGX_ERROR_ERR,
    ngx_connection_log_error_e_NGX_ERROR_IGNORE_ECONNRESET as NGX_ERROR_IGNORE_ECONNRESET,
    ngx_connection_log_error_e_NGX_ERROR_INFO as NGX_ERROR_INFO, NGX_LOG_CRIT, NGX_LOG_ERR,
    NGX_LOG_INFO, SSL_ERROR_SSL, SSL_ERROR_SYSCALL,
};

/// errno values that mean the peer or the network dropped the connection.
const PEER_GONE: &[i32] = &[
    libc::ECONNRESET,
    libc::EPIPE,
    libc::ENOTCONN,
    libc::ETIMEDOUT,
    libc::ECONNREFUSED,
    libc::ENETDOWN,
    libc::ENETUNREACH,
    libc::EHOSTDOWN,
    libc::EHOSTUNREACH,
];

/// `SSL_R_*` reasons nginx counts as the client's handshake or protocol
/// failures.  Reason numbers are never reused across OpenSSL versions, so
/// the union of all versions' names is listed by number, sorted for
/// `binary_search()`.
const PEER_FAILURES: &[u32] = &[
    101, 102, 103, 108, 110, 111, 112, 115, 118, 122, 129, 133, 137, 145, 146, 149, 150, 151, 152,
    154, 155, 156, 159, 160, 182, 183, 186, 187, 193, 198, 213, 220, 226, 227, 234, 235, 244, 245,
    246, 252, 253, 256, 258, 266, 267, 270, 271, 281, 291, 292, 293, 298, 300, 306, 335, 336, 337,
    338, 339, 345, 373, 376, 377, 396, 409, 443, 1000, 1010, 1020, 1021, 1022, 1030, 1040, 1041,
    1042, 1043, 1044, 1045, 1046, 1047, 1048, 1049, 1050, 1051, 1060, 1070, 1071, 1080, 1090, 1100,
];

/// The level to log a failure at: `sslerr` from `SSL_get_error()`, `err` the
/// errno for SSL_ERROR_SYSCALL, `reason` of the last queued OpenSSL error,
/// `log_error` the connection's `c->log_error`.
pub fn error_level(sslerr: u32, err: i32, reason: u32, log_error: u32) -> u32 {
    let peer_fault = match sslerr {
        SSL_ERROR_SYSCALL => PEER_GONE.contains(&err),
        SSL_ERROR_SSL => PEER_FAILURES.binary_search(&reason).is_ok(),
        _ => false,
    };

    if !peer_fault {
        return NGX_LOG_CRIT;
    }

    match log_error {
        NGX_ERROR_IGNORE_ECONNRESET | NGX_ERROR_INFO => NGX_LOG_INFO,
        NGX_ERROR_ERR => NGX_LOG_ERR,
        _ => NGX_LOG_CRIT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nginx_sys::{
        ngx_connection_log_error_e_NGX_ERROR_ALERT as NGX_ERROR_ALERT, SSL_ERROR_WANT_WRITE,
        SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC, SSL_R_UNINITIALIZED,
    };

    #[test]
    fn reset_by_peer_is_info_for_http() {
        assert_eq!(
            error_level(SSL_ERROR_SYSCALL, libc::ECONNRESET, 0, NGX_ERROR_INFO),
            NGX_LOG_INFO
        );
        assert_eq!(
            error_level(SSL_ERROR_SYSCALL, libc::EPIPE, 0, NGX_ERROR_INFO),
            NGX_LOG_INFO
        );
        assert_eq!(
            error_level(SSL_ERROR_SYSCALL, libc::EPIPE, 0, NGX_ERROR_ERR),
            NGX_LOG_ERR
        );
        assert_eq!(
            error_level(SSL_ERROR_SYSCALL, libc::EPIPE, 0, NGX_ERROR_ALERT),
            NGX_LOG_CRIT
        );
    }

    #[test]
    fn local_failures_are_crit() {
        assert_eq!(
            error_level(SSL_ERROR_SYSCALL, libc::EIO, 0, NGX_ERROR_INFO),
            NGX_LOG_CRIT
        );
        assert_eq!(
            error_level(SSL_ERROR_SSL, 0, SSL_R_UNINITIALIZED, NGX_ERROR_INFO),
            NGX_LOG_CRIT
        );
        assert_eq!(
            error_level(SSL_ERROR_WANT_WRITE, 0, 0, NGX_ERROR_INFO),
            NGX_LOG_CRIT
        );
    }

    #[test]
    fn bad_records_from_the_peer_are_info() {
        assert_eq!(
            error_level(
                SSL_ERROR_SSL,
                0,
                SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC,
                NGX_ERROR_INFO
            ),
            NGX_LOG_INFO
        );
    }

    #[test]
    fn reason_list_is_sorted_and_unique() {
        assert!(PEER_FAILURES.windows(2).all(|w| w[0] < w[1]));
    }
}
