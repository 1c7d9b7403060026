//! The `ktls` directive.

use core::ptr;

use nginx_sys::{
    ngx_command_t, ngx_conf_set_flag_slot, ngx_flag_t, ngx_uint_t, NGX_CONF_FLAG,
    NGX_HTTP_MAIN_CONF, NGX_HTTP_SRV_CONF, NGX_HTTP_SRV_CONF_OFFSET,
};
use ngx::http::{Merge, MergeConfigError};
use ngx::ngx_string;

/// Per-server configuration.
#[derive(Debug)]
pub struct ServerConf {
    /// `ktls on | off;`: whether the module takes over this server's TLS
    /// connections.
    pub enable: ngx_flag_t,
}

/// `NGX_CONF_UNSET` for an `ngx_flag_t`.
const UNSET: ngx_flag_t = -1;

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

/// `ktls on | off;` in http and server; nginx's own flag parser gives the
/// usual `nginx -t` errors for a bad value or a wrong context.
pub static mut COMMANDS: [ngx_command_t; 2] = [
    ngx_command_t {
        name: ngx_string!("ktls"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_FLAG) as ngx_uint_t,
        set: Some(ngx_conf_set_flag_slot),
        conf: NGX_HTTP_SRV_CONF_OFFSET as ngx_uint_t,
        offset: core::mem::offset_of!(ServerConf, enable),
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

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
