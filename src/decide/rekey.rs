//! Whether a kTLS connection may still write after TLS 1.3 moved its sending
//! key on (a KeyUpdate of the server's own, usually one the client asked
//! for with `update_requested`).
//!
//! The kernel encrypts with the key it was given.  When OpenSSL sends a
//! KeyUpdate, every later record must use the next key; if the kernel
//! cannot take it, what it would send the client cannot decrypt.  OpenSSL
//! before 3.2 never hands the kernel the new key (it derives it for its own
//! record layer and carries on); 3.2 and later hand it over, which the
//! kernel accepts from Linux 6.14 on, and otherwise fail the connection.

/// Who can give a kTLS socket the next sending key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rekey {
    /// OpenSSL installs a new kTLS key after a KeyUpdate (3.2 and later).
    pub openssl: bool,
    /// The kernel takes a second TLS 1.3 key on a socket (Linux 6.14+).
    pub kernel: bool,
}

/// Why nothing more may be written on a connection, if so: kTLS sends for
/// it, OpenSSL has a KeyUpdate of its own to send, and the new key cannot
/// reach the kernel.
pub fn stale_key_cause(rekey: Rekey, ktls_tx: bool, own_update: bool) -> Option<&'static str> {
    if !ktls_tx || !own_update {
        return None;
    }
    if !rekey.openssl {
        return Some("OpenSSL before 3.2 does not give kernel TLS the new key");
    }
    if !rekey.kernel {
        return Some("this kernel cannot change a kTLS key (Linux 6.14 and later can)");
    }
    None
}

/// [`stale_key_cause`] for a connection that receives in userspace while
/// kTLS sends (`ktls_rx`): OpenSSL was told to keep later keys to itself,
/// so a new sending key never reaches the kernel.
pub fn userspace_keys_cause(ktls_tx: bool, own_update: bool) -> Option<&'static str> {
    (ktls_tx && own_update).then_some(
        "it receives in userspace (ktls_rx), where OpenSSL keeps new keys from the kernel",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Rekey = Rekey {
        openssl: true,
        kernel: true,
    };

    #[test]
    fn writes_on_without_a_key_update_of_its_own() {
        for openssl in [false, true] {
            for kernel in [false, true] {
                assert_eq!(
                    stale_key_cause(Rekey { openssl, kernel }, true, false),
                    None
                );
            }
        }
    }

    #[test]
    fn userspace_tls_rekeys_itself() {
        let none = Rekey {
            openssl: false,
            kernel: false,
        };
        assert_eq!(stale_key_cause(none, false, true), None);
    }

    #[test]
    fn stops_where_the_new_key_cannot_reach_the_kernel() {
        let old_openssl = Rekey {
            openssl: false,
            kernel: true,
        };
        let old_kernel = Rekey {
            openssl: true,
            kernel: false,
        };
        assert!(stale_key_cause(old_openssl, true, true)
            .is_some_and(|why| why.contains("OpenSSL before 3.2")));
        assert!(
            stale_key_cause(old_kernel, true, true).is_some_and(|why| why.contains("Linux 6.14"))
        );
        assert_eq!(stale_key_cause(BOTH, true, true), None);
    }

    #[test]
    fn userspace_receiving_keeps_every_new_sending_key() {
        assert!(userspace_keys_cause(true, true).is_some_and(|why| why.contains("ktls_rx")));
        assert_eq!(userspace_keys_cause(true, false), None);
        assert_eq!(userspace_keys_cause(false, true), None);
    }
}
