//! What a read of a kernel-TLS socket after nginx's TLS shutdown means.
//!
//! Once nginx has sent its close_notify it reads the connection only to
//! drain it (lingering close), with a plain `recv()`. With kTLS receiving,
//! the kernel hands up one record type at a time and a plain `recv()` fails
//! with EIO at a record that is not application data, such as the client's
//! own close_notify. Read with `recvmsg()` and the record type, each record
//! gets the meaning userspace TLS would give it: data is drained, the
//! client's alert ends the stream, a post-handshake message is skipped.

/// TLS record content types (RFC 8446, 5.1).
pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_APPLICATION_DATA: u8 = 23;

/// The alert that ends a stream cleanly.
const ALERT_CLOSE_NOTIFY: u8 = 0;

/// What to do with one record read after shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Application data: hand it to nginx, which discards it.
    Data,
    /// Not data (a KeyUpdate, a NewSessionTicket, a ChangeCipherSpec):
    /// read past it.
    Skip,
    /// The client's close_notify: end of stream.
    CloseNotify,
    /// Another alert (level, description): the client is closing too.
    Alert(u8, u8),
}

/// The meaning of a record of `record_type` whose first bytes are `body`.
pub fn drained_record(record_type: u8, body: &[u8]) -> Drained {
    match record_type {
        CONTENT_APPLICATION_DATA => Drained::Data,
        CONTENT_ALERT => match body {
            [_, ALERT_CLOSE_NOTIFY, ..] => Drained::CloseNotify,
            [level, description, ..] => Drained::Alert(*level, *description),
            // A short alert is the kernel's to refuse; what gets here ends
            // the stream like any alert.
            _ => Drained::Alert(0, 0),
        },
        _ => Drained::Skip,
    }
}

/// What a failed read after shutdown means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFailure {
    /// Interrupted: read again.
    Retry,
    /// Nothing to read now.
    Again,
    /// The record cannot be read by the kernel (the reason, for the debug
    /// log): with nginx's close_notify sent nothing more is wanted from
    /// the client, so the stream ends here, as for a client that closed.
    Undecryptable(&'static str),
    /// A socket error, logged as nginx logs a failed `recv()`.
    Socket,
}

/// The meaning of `errno` from `recvmsg()` on a kTLS socket.
pub fn read_failure(errno: i32) -> ReadFailure {
    match errno {
        libc::EINTR => ReadFailure::Retry,
        libc::EAGAIN => ReadFailure::Again,
        libc::EBADMSG => ReadFailure::Undecryptable("a record failed authentication"),
        libc::EMSGSIZE => ReadFailure::Undecryptable("a record is too long"),
        libc::EKEYEXPIRED => ReadFailure::Undecryptable("the client changed its key (KeyUpdate)"),
        libc::EINVAL => ReadFailure::Undecryptable("a record is malformed"),
        _ => ReadFailure::Socket,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_data_is_drained() {
        assert_eq!(drained_record(23, b"GET / HTTP/1.1"), Drained::Data);
        assert_eq!(drained_record(23, b""), Drained::Data);
    }

    #[test]
    fn close_notify_ends_the_stream_at_either_level() {
        assert_eq!(drained_record(21, &[1, 0]), Drained::CloseNotify);
        assert_eq!(drained_record(21, &[2, 0]), Drained::CloseNotify);
    }

    #[test]
    fn other_alerts_end_the_stream_with_their_description() {
        // user_canceled (warning), then a fatal internal_error.
        assert_eq!(drained_record(21, &[1, 90]), Drained::Alert(1, 90));
        assert_eq!(drained_record(21, &[2, 80]), Drained::Alert(2, 80));
        assert_eq!(drained_record(21, &[2]), Drained::Alert(0, 0));
    }

    #[test]
    fn handshake_and_change_cipher_spec_records_are_skipped() {
        // A KeyUpdate: handshake type 24, length 1, update_requested.
        assert_eq!(drained_record(22, &[24, 0, 0, 1, 1]), Drained::Skip);
        assert_eq!(drained_record(20, &[1]), Drained::Skip);
    }

    #[test]
    fn record_faults_end_the_stream_and_socket_faults_are_errors() {
        assert_eq!(read_failure(libc::EINTR), ReadFailure::Retry);
        assert_eq!(read_failure(libc::EAGAIN), ReadFailure::Again);
        for errno in [
            libc::EBADMSG,
            libc::EMSGSIZE,
            libc::EKEYEXPIRED,
            libc::EINVAL,
        ] {
            assert!(matches!(read_failure(errno), ReadFailure::Undecryptable(_)));
        }
        for errno in [libc::ECONNRESET, libc::EIO, libc::ETIMEDOUT] {
            assert_eq!(read_failure(errno), ReadFailure::Socket);
        }
    }
}
