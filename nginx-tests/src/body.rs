//! Deterministic test content and byte-exact body comparison.

use openssl::sha::sha256;
use std::fmt::Write;

/// `len` pseudo-random bytes from `seed` (xorshift64*): the same seed always gives the same
/// bytes, and neighbouring offsets differ, so a shifted, repeated or dropped block is detected.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    sha256(data).iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Panics unless `got` is exactly `expected`, with lengths, sha256 and the first differing
/// offset in the message (printing megabytes of body would help nobody).
#[track_caller]
pub fn assert_body(what: &str, expected: &[u8], got: &[u8]) {
    if expected == got {
        return;
    }
    let first_diff = expected.iter().zip(got).position(|(a, b)| a != b);
    panic!(
        "{what}: body differs: expected {} bytes sha256 {}, got {} bytes sha256 {}, first \
         difference at {}",
        expected.len(),
        sha256_hex(expected),
        got.len(),
        sha256_hex(got),
        first_diff.map_or_else(
            || "the end of the shorter one".to_string(),
            |o| o.to_string()
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        assert_eq!(pseudo_random(7, 1000), pseudo_random(7, 1000));
        assert_ne!(pseudo_random(7, 1000), pseudo_random(8, 1000));
        assert_eq!(pseudo_random(7, 13), pseudo_random(7, 1000)[..13]);
        assert!(pseudo_random(1, 0).is_empty());
    }

    #[test]
    #[should_panic(expected = "first difference at 2")]
    fn mismatch_reports_offset() {
        assert_body("x", b"abcd", b"abXd");
    }
}
