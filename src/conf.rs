//! The `ktls` directive.

use nginx_sys::ngx_flag_t;
use ngx::http::{Merge, MergeConfigError};

/// Per-server configuration.
#[derive(Debug)]
pub struct ServerConf {
    /// `ktls on | off;`: whether the module takes over this server's TLS
    /// connections.
    pub enable: ngx_flag_t,
}

/// `NGX_CONF_UNSET` for an `ngx_flag_t`.
pub const UNSET: ngx_flag_t = -1;

impl Default for ServerConf {
    fn default() -> Self {
        ServerConf { enable: UNSET }
    }
}

impl Merge for ServerConf {
    fn merge(&mut self, prev: &ServerConf) -> Result<(), MergeConfigError> {
        if self.enable == UNSET {
            self.enable = if prev.enable == UNSET { 1 } else { prev.enable };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(enable: ngx_flag_t) -> ServerConf {
        ServerConf { enable }
    }

    #[test]
    fn defaults_to_on() {
        let mut c = conf(UNSET);
        c.merge(&conf(UNSET)).unwrap();
        assert_eq!(c.enable, 1);
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
