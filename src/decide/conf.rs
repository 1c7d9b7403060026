//! The module's directives.

use nginx_sys::{ngx_flag_t, ngx_uint_t};
use ngx::http::{Merge, MergeConfigError};

/// Per-server configuration.
#[derive(Debug)]
pub struct ServerConf {
    /// `ktls on | off;`: whether the module takes over this server's TLS
    /// connections.
    pub enable: ngx_flag_t,
    /// `ktls_sendfile_min_size size;`: runs of file data shorter than this
    /// are read into the TLS buffer rather than sent with `SSL_sendfile()`.
    pub sendfile_min: usize,
    /// `ktls_splice on | off;`: whether those runs go through a pipe where
    /// the kernel keeps TLS records open across splices.
    pub splice: ngx_flag_t,
    /// `ktls_rx on | off | auto;`: where this server's connections decrypt
    /// what they receive ([`KtlsRx`]).
    pub rx: ngx_uint_t,
    /// `ktls_rx_no_pad on | off;`: whether the kernel is told that TLS 1.3
    /// clients do not pad their records.
    pub rx_no_pad: ngx_flag_t,
}

/// Where a server's kTLS connections decrypt what they receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KtlsRx {
    /// In userspace, OpenSSL's own record layer.
    Off = 0,
    /// In the kernel wherever OpenSSL sets it up.
    On = 1,
    /// In the kernel, but for TLS 1.3 where the kernel cannot take the new
    /// receiving key of a client's KeyUpdate (before Linux 6.14): there a
    /// KeyUpdate would end the connection, and userspace follows it.
    Auto = 2,
}

impl KtlsRx {
    /// The value `ngx_conf_set_enum_slot()` stored.
    pub fn from_conf(value: ngx_uint_t) -> KtlsRx {
        match value {
            0 => KtlsRx::Off,
            1 => KtlsRx::On,
            _ => KtlsRx::Auto,
        }
    }

    /// Whether the kernel is to decrypt what a connection receives, for its
    /// protocol (`tls13`) and whether the kernel takes new TLS 1.3 keys.
    pub fn kernel_receives(self, tls13: bool, kernel_rekeys: bool) -> bool {
        match self {
            KtlsRx::Off => false,
            KtlsRx::On => true,
            KtlsRx::Auto => !tls13 || kernel_rekeys,
        }
    }

    /// Whether some connection would be kept from kernel receiving.
    pub fn may_refuse(self, kernel_rekeys: bool) -> bool {
        !(self.kernel_receives(true, kernel_rekeys) && self.kernel_receives(false, kernel_rekeys))
    }
}

impl ServerConf {
    /// Whether a connection whose kernel decrypts what it receives is to
    /// tell the kernel that its records are not padded: only TLS 1.3 pads
    /// inside the encryption, and only where `ktls_rx_no_pad` is on.
    pub fn expects_no_pad(&self, tls13: bool) -> bool {
        self.rx_no_pad == 1 && tls13
    }
}

/// `NGX_CONF_UNSET` for an `ngx_flag_t`.
pub const UNSET: ngx_flag_t = -1;
/// `NGX_CONF_UNSET_UINT`.
pub const UNSET_UINT: ngx_uint_t = ngx_uint_t::MAX;
/// `NGX_CONF_UNSET_SIZE`.
pub const UNSET_SIZE: usize = usize::MAX;
/// The default `ktls_sendfile_min_size`: one full TLS record.  Shorter runs
/// (HTTP/2's 8k DATA frames, small files) are packed into full records
/// through the buffer; a sendfile() of its own would end a record early.
pub const DEFAULT_SENDFILE_MIN: usize = 16384;

impl Default for ServerConf {
    fn default() -> Self {
        ServerConf {
            enable: UNSET,
            sendfile_min: UNSET_SIZE,
            splice: UNSET,
            rx: UNSET_UINT,
            rx_no_pad: UNSET,
        }
    }
}

impl Merge for ServerConf {
    fn merge(&mut self, prev: &ServerConf) -> Result<(), MergeConfigError> {
        merge_value(&mut self.enable, prev.enable, UNSET, 1);
        merge_value(&mut self.splice, prev.splice, UNSET, 1);
        merge_value(&mut self.rx_no_pad, prev.rx_no_pad, UNSET, 0);
        merge_value(
            &mut self.rx,
            prev.rx,
            UNSET_UINT,
            KtlsRx::Auto as ngx_uint_t,
        );
        merge_value(
            &mut self.sendfile_min,
            prev.sendfile_min,
            UNSET_SIZE,
            DEFAULT_SENDFILE_MIN,
        );
        Ok(())
    }
}

/// nginx's `ngx_conf_merge_*_value()`: an unset value takes the enclosing
/// level's, or `default` where that is unset too.
fn merge_value<T: PartialEq + Copy>(value: &mut T, prev: T, unset: T, default: T) {
    if *value == unset {
        *value = if prev == unset { default } else { prev };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(enable: ngx_flag_t) -> ServerConf {
        ServerConf {
            enable,
            sendfile_min: UNSET_SIZE,
            splice: UNSET,
            rx: UNSET_UINT,
            rx_no_pad: UNSET,
        }
    }

    #[test]
    fn defaults_to_on() {
        let mut c = conf(UNSET);
        c.merge(&conf(UNSET)).unwrap();
        assert_eq!(c.enable, 1);
        assert_eq!(c.sendfile_min, DEFAULT_SENDFILE_MIN);
        assert_eq!(c.splice, 1);
        assert_eq!(KtlsRx::from_conf(c.rx), KtlsRx::Auto);
        assert_eq!(c.rx_no_pad, 0);
    }

    #[test]
    fn sendfile_min_is_inherited() {
        let mut c = conf(UNSET);
        c.merge(&ServerConf {
            enable: UNSET,
            sendfile_min: 0,
            splice: 0,
            rx: KtlsRx::Off as ngx_uint_t,
            rx_no_pad: 1,
        })
        .unwrap();
        assert_eq!(c.sendfile_min, 0);
        assert_eq!(c.splice, 0);
        assert_eq!(KtlsRx::from_conf(c.rx), KtlsRx::Off);
        assert_eq!(c.rx_no_pad, 1);
    }

    #[test]
    fn no_pad_is_for_tls13_where_asked() {
        let mut c = conf(1);
        c.merge(&conf(UNSET)).unwrap();
        assert!(!c.expects_no_pad(true));
        c.rx_no_pad = 1;
        assert!(c.expects_no_pad(true));
        assert!(!c.expects_no_pad(false));
    }

    #[test]
    fn server_inherits_http() {
        let mut c = conf(UNSET);
        c.merge(&conf(0)).unwrap();
        assert_eq!(c.enable, 0);
    }

    #[test]
    fn server_overrides_http() {
        let mut c = conf(1);
        c.merge(&conf(0)).unwrap();
        assert_eq!(c.enable, 1);
    }

    #[test]
    fn auto_keeps_tls13_out_of_a_kernel_that_cannot_rekey() {
        assert!(KtlsRx::Auto.kernel_receives(false, false));
        assert!(!KtlsRx::Auto.kernel_receives(true, false));
        assert!(KtlsRx::Auto.kernel_receives(true, true));
        assert!(KtlsRx::Auto.may_refuse(false));
        assert!(!KtlsRx::Auto.may_refuse(true));
    }

    #[test]
    fn on_and_off_ignore_the_protocol() {
        for (tls13, rekeys) in [(false, false), (true, false), (true, true)] {
            assert!(KtlsRx::On.kernel_receives(tls13, rekeys));
            assert!(!KtlsRx::Off.kernel_receives(tls13, rekeys));
        }
        assert!(KtlsRx::Off.may_refuse(true));
        assert!(!KtlsRx::On.may_refuse(false));
    }
}
