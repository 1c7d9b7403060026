//! The module's directives.

use nginx_sys::ngx_flag_t;
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
}

/// `NGX_CONF_UNSET` for an `ngx_flag_t`.
pub const UNSET: ngx_flag_t = -1;
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
        }
    }
}

impl Merge for ServerConf {
    fn merge(&mut self, prev: &ServerConf) -> Result<(), MergeConfigError> {
        if self.enable == UNSET {
            self.enable = if prev.enable == UNSET { 1 } else { prev.enable };
        }
        if self.splice == UNSET {
            self.splice = if prev.splice == UNSET { 1 } else { prev.splice };
        }
        if self.sendfile_min == UNSET_SIZE {
            self.sendfile_min = if prev.sendfile_min == UNSET_SIZE {
                DEFAULT_SENDFILE_MIN
            } else {
                prev.sendfile_min
            };
        }
        Ok(())
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
        }
    }

    #[test]
    fn defaults_to_on() {
        let mut c = conf(UNSET);
        c.merge(&conf(UNSET)).unwrap();
        assert_eq!(c.enable, 1);
        assert_eq!(c.sendfile_min, DEFAULT_SENDFILE_MIN);
        assert_eq!(c.splice, 1);
    }

    #[test]
    fn sendfile_min_is_inherited() {
        let mut c = conf(UNSET);
        c.merge(&ServerConf {
            enable: UNSET,
            sendfile_min: 0,
            splice: 0,
        })
        .unwrap();
        assert_eq!(c.sendfile_min, 0);
        assert_eq!(c.splice, 0);
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
}
