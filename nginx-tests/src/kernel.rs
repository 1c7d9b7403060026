//! Kernel-side evidence of kTLS: `/proc/net/tls_stat`, which exists once `tls.ko` is loaded
//! (so only under `scripts/ktls-vm`). It counts sockets, not bytes.

use crate::config::expect_kernel;
use std::collections::HashMap;
use std::fs;

/// Whether the running kernel is `major.minor` or later.
pub fn at_least(major: u32, minor: u32) -> bool {
    version() >= (major, minor)
}

/// Whether the running kernel is of the `major.minor` series (any patch level).
pub fn series(major: u32, minor: u32) -> bool {
    version() == (major, minor)
}

/// The running kernel's (major, minor).
fn version() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether this kernel offers the `tls` TCP ULP right now (it lists only loaded ULPs).
pub fn tls_ulp_available() -> bool {
    fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_ok_and(|s| s.split_whitespace().any(|u| u == "tls"))
}

fn read_tls_stat() -> Option<HashMap<String, u64>> {
    let text = fs::read_to_string("/proc/net/tls_stat").ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.parse().ok()?))
            })
            .collect(),
    )
}

/// A `/proc/net/tls_stat` snapshot taken before a test's transfers, checked after them.
pub struct TlsStat {
    before: Option<HashMap<String, u64>>,
}

impl TlsStat {
    /// Under `KTLS_EXPECT_KERNEL` the file must exist: its absence means no kTLS kernel.
    pub fn snapshot() -> TlsStat {
        let before = read_tls_stat();
        assert!(
            before.is_some() || !expect_kernel(),
            "KTLS_EXPECT_KERNEL=1 but /proc/net/tls_stat does not exist (tls.ko not loaded?)"
        );
        TlsStat { before }
    }

    /// How much the counter `name` rose since the snapshot (0 where there is no kTLS).
    pub fn rise(&self, name: &str) -> u64 {
        let (Some(before), Some(after)) = (self.before.as_ref(), read_tls_stat()) else {
            return 0;
        };
        let get = |m: &HashMap<String, u64>| m.get(name).copied().unwrap_or(0);
        get(&after).saturating_sub(get(before))
    }

    /// Under `KTLS_EXPECT_KERNEL`: software kTLS TX sockets were opened since the snapshot
    /// (tests run in parallel, so only "rose" can be asserted), and no record ever failed to
    /// decrypt. Elsewhere a no-op: there is nothing to count.
    #[track_caller]
    pub fn assert_tx_used(&self, what: &str) {
        if !expect_kernel() {
            return;
        }
        let before = self.before.as_ref().expect("checked in snapshot");
        let after = read_tls_stat().expect("/proc/net/tls_stat vanished");
        let get = |m: &HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        assert!(
            get(&after, "TlsTxSw") > get(before, "TlsTxSw"),
            "{what}: TlsTxSw did not rise ({} -> {}): kTLS was not used",
            get(before, "TlsTxSw"),
            get(&after, "TlsTxSw")
        );
        assert_eq!(
            get(&after, "TlsDecryptError"),
            0,
            "{what}: TlsDecryptError in tls_stat"
        );
    }
}
