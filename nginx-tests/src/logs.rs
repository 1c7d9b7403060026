//! The access log (with the module's variables) and the error/debug log.

use crate::config::{expect_kernel, module_loaded, skipped};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// The `log_format` every test server uses: tab-separated so that no field needs quoting.
/// Without the module its variables do not exist, and the four fields are a literal `-`.
pub fn log_format() -> String {
    let ktls = if module_loaded() {
        "$ktls_tx\t$ktls_rx\t$ktls_sendfile_bytes\t$ktls_splice_bytes"
    } else {
        "-\t-\t-\t-"
    };
    format!(
        "log_format ktls '$connection\t$connection_requests\t$request_uri\t$status\t\
         $body_bytes_sent\t$ssl_protocol\t$ssl_cipher\t$ssl_session_reused\t$ssl_early_data\t\
         {ktls}\t$server_port\t$server_protocol';"
    )
}

/// One access log line in [`log_format`].
#[derive(Clone, Debug)]
pub struct AccessEntry {
    pub connection: u64,
    pub connection_requests: u64,
    pub uri: String,
    pub status: u16,
    pub body_bytes_sent: u64,
    pub ssl_protocol: String,
    pub ssl_cipher: String,
    /// `r` or `.`
    pub ssl_session_reused: String,
    /// `1` when the request came in 0-RTT, `-` otherwise.
    pub ssl_early_data: String,
    /// `$ktls_tx`, `$ktls_rx`; `None` without the module.
    pub ktls_tx: Option<String>,
    pub ktls_rx: Option<String>,
    /// `$ktls_sendfile_bytes`; `None` without the module, or when the variable is not found
    /// (logged as `-`), which the module does on connections it did not take over.
    pub ktls_sendfile_bytes: Option<u64>,
    /// `$ktls_splice_bytes`, as `ktls_sendfile_bytes`.
    pub ktls_splice_bytes: Option<u64>,
    pub server_port: u16,
    pub server_protocol: String,
}

impl AccessEntry {
    fn parse(line: &str) -> Option<AccessEntry> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 15 {
            return None;
        }
        let opt = |s: &str| (s != "-" || module_loaded()).then(|| s.to_string());
        let count = |s: &str| -> Option<Option<u64>> {
            if s == "-" {
                Some(None)
            } else {
                s.parse().ok().map(Some)
            }
        };
        Some(AccessEntry {
            connection: f[0].parse().ok()?,
            connection_requests: f[1].parse().ok()?,
            uri: f[2].to_string(),
            status: f[3].parse().ok()?,
            body_bytes_sent: f[4].parse().ok()?,
            ssl_protocol: f[5].to_string(),
            ssl_cipher: f[6].to_string(),
            ssl_session_reused: f[7].to_string(),
            ssl_early_data: f[8].to_string(),
            ktls_tx: opt(f[9]),
            ktls_rx: opt(f[10]),
            ktls_sendfile_bytes: count(f[11])?,
            ktls_splice_bytes: count(f[12])?,
            server_port: f[13].parse().ok()?,
            server_protocol: f[14].to_string(),
        })
    }
}

pub fn read_access_log(path: &Path) -> Vec<AccessEntry> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| AccessEntry::parse(l).unwrap_or_else(|| panic!("bad access log line: {l:?}")))
        .collect()
}

/// Waits (bounded) for the access log line of `uri`: nginx writes it when it finalizes the
/// request, which can be a moment after the client has read the last byte.
pub fn wait_access_entry(path: &Path, uri: &str) -> AccessEntry {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(e) = read_access_log(path)
            .into_iter()
            .rev()
            .find(|e| e.uri == uri)
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {uri} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The message part of one connection's debug lines: `... [debug] PID#TID: *N message`.
pub fn connection_lines(error_log: &str, connection: u64) -> Vec<String> {
    let tag = format!(": *{connection} ");
    error_log
        .lines()
        .filter_map(|l| l.split_once(&tag).map(|(_, msg)| msg.to_string()))
        .collect()
}

/// The level of an error-log line (`DATE TIME [level] PID#TID: ...`) when it is `info` or
/// above; `None` for debug lines and anything else.
pub fn level_at_info_or_above(line: &str) -> Option<&'static str> {
    let (_, rest) = line.split_once(" [")?;
    let (level, _) = rest.split_once("] ")?;
    ["emerg", "alert", "crit", "error", "warn", "notice", "info"]
        .into_iter()
        .find(|&l| l == level)
}

/// The debug line the module logs once when it takes over a connection's send chain.
pub const TAKEOVER: &str = "ktls: send chain taken over";

/// Which send path a test server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ktls {
    /// `ktls on;` (without the module: the same stock nginx, for parity only).
    On,
    /// `ktls off;`: nginx's own C send path.
    Off,
}

impl Ktls {
    pub const BOTH: [Ktls; 2] = [Ktls::On, Ktls::Off];
}

/// What a response's bytes are expected to go out with under kTLS on a taken-over connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Only memory: nothing for SSL_sendfile().
    Memory,
    /// File data that must go out with SSL_sendfile() (at least once on the connection so far).
    Sendfile,
    /// File data the module reads into its buffer on purpose: runs shorter than
    /// `ktls_sendfile_min_size` (default one TLS record, 16 KiB; every sendfile() ends a record),
    /// such as HTTP/2's default 8 KiB DATA frames, and anything sent in 0-RTT. kTLS use is
    /// still asserted, SSL_sendfile() is not.
    MayCopy,
}

impl Sent {
    /// For a static file of `size` bytes sent whole in one piece.
    pub fn for_file(size: usize) -> Sent {
        match size {
            0 => Sent::Memory,
            1..16384 => Sent::MayCopy,
            _ => Sent::Sendfile,
        }
    }
}

/// Checks the send path of one connection that served file responses, from its debug lines and
/// access log line:
/// - with the module, `ktls on` takes the connection over and `ktls off` does not;
/// - on a kernel without kTLS (the host) `$ktls_tx` is 0 and nothing goes out with SSL_sendfile();
/// - under `KTLS_EXPECT_KERNEL`, `$ktls_tx` is 1, and with `ktls on` and [`Sent::Sendfile`]
///   SSL_sendfile() sent bytes:
///   a run where kTLS silently was not used fails here.
#[track_caller]
pub fn assert_send_path(what: &str, ktls: Ktls, error_log: &str, entry: &AccessEntry, sent: Sent) {
    let lines = connection_lines(error_log, entry.connection);
    assert!(
        !lines.is_empty(),
        "{what}: no debug lines for connection *{}",
        entry.connection
    );
    let taken = lines.iter().any(|l| l.contains(TAKEOVER));
    if !module_loaded() {
        skipped(&format!(
            "{what}: takeover line and $ktls_* variables (KTLS_MODULE=none)"
        ));
        if expect_kernel() && sent != Sent::Memory {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("BIO_get_ktls_send(): 1")),
                "{what}: kTLS expected but connection *{} has no BIO_get_ktls_send(): 1",
                entry.connection
            );
        }
        return;
    }
    match ktls {
        Ktls::On => assert!(
            taken,
            "{what}: no \"{TAKEOVER}\" for connection *{}",
            entry.connection
        ),
        Ktls::Off => assert!(
            !taken,
            "{what}: \"{TAKEOVER}\" with ktls off (*{})",
            entry.connection
        ),
    }
    let tx = entry.ktls_tx.as_deref().expect("module variables");
    let sf = match ktls {
        Ktls::On => entry.ktls_sendfile_bytes.unwrap_or_else(|| {
            panic!("{what}: $ktls_sendfile_bytes not found on a taken-over connection")
        }),
        // Not the module's connection: nothing of its own to count.
        Ktls::Off => entry.ktls_sendfile_bytes.unwrap_or(0),
    };
    if expect_kernel() {
        assert_eq!(tx, "1", "{what}: $ktls_tx under a kTLS kernel: {entry:?}");
        if ktls == Ktls::On && sent == Sent::Sendfile {
            assert!(
                sf > 0,
                "{what}: no bytes went out with SSL_sendfile(): {entry:?}"
            );
            assert!(
                lines.iter().any(|l| l.starts_with("SSL_sendfile: ")),
                "{what}: no SSL_sendfile: debug line for *{}",
                entry.connection
            );
        }
    } else if !crate::kernel::tls_ulp_available() {
        assert_eq!(
            tx, "0",
            "{what}: $ktls_tx on a kernel without kTLS: {entry:?}"
        );
        assert_eq!(
            sf, 0,
            "{what}: $ktls_sendfile_bytes without kTLS: {entry:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::connection_lines;

    #[test]
    fn debug_lines_of_one_connection() {
        let log = "2021/10/18 21:34:48 [debug] 529189#0: *2 SSL_sendfile: 45056\n\
                   2021/10/18 21:34:48 [debug] 529189#0: *12 SSL_sendfile: 1\n\
                   2021/10/18 21:34:48 [debug] 529189#0: timer delta: 8\n";
        assert_eq!(
            connection_lines(log, 2),
            vec!["SSL_sendfile: 45056".to_string()]
        );
        assert_eq!(
            connection_lines(log, 12),
            vec!["SSL_sendfile: 1".to_string()]
        );
    }
}
