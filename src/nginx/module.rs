//! The module's definition: its directive, configuration hooks and the
//! start-up check.

use core::ptr;

use nginx_sys::{
    ngx_command_t, ngx_conf_enum_t, ngx_conf_set_enum_slot, ngx_conf_set_flag_slot,
    ngx_conf_set_size_slot, ngx_conf_t, ngx_cycle_t, ngx_http_core_main_conf_t,
    ngx_http_core_srv_conf_t, ngx_http_module_t, ngx_http_output_header_filter_pt,
    ngx_http_request_t, ngx_http_ssl_module, ngx_http_ssl_srv_conf_t, ngx_http_top_header_filter,
    ngx_int_t, ngx_module_t, ngx_str_t, ngx_uint_t, SSL_CTX_get_options, NGX_CONF_FLAG,
    NGX_CONF_TAKE1, NGX_ERROR, NGX_HTTP_MAIN_CONF, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF,
    NGX_HTTP_SRV_CONF_OFFSET, NGX_LOG_EMERG, NGX_LOG_WARN, NGX_OK, SSL_CTX,
};
use ngx::core::Status;
use ngx::http::{HttpModule, HttpModuleMainConf, HttpModuleServerConf, NgxHttpCoreModule};
use ngx::ngx_string;

// Linked for its libssl: the module calls the same shared OpenSSL as nginx.
use openssl_sys as _;

use crate::decide::conf::{KtlsRx, ServerConf};
use crate::io::ssl::SSL_OP_ENABLE_KTLS;
use crate::{
    io::{kernel, key_update, no_pad, receive, splice, state},
    nginx::{takeover, variables},
};

/// The module's type, for the `ngx` crate's configuration helpers.
pub struct HttpKtlsModule;

/// `ktls on | off;`, `ktls_sendfile_min_size size;`, `ktls_splice on |
/// off;`, `ktls_rx on | off | auto;` and `ktls_rx_no_pad on | off;` in
/// http and server;
/// nginx's own parsers give the usual `nginx -t` errors for a bad value or a
/// wrong context.
static mut COMMANDS: [ngx_command_t; 6] = [
    server_flag(
        ngx_string!("ktls"),
        core::mem::offset_of!(ServerConf, enable),
    ),
    ngx_command_t {
        name: ngx_string!("ktls_sendfile_min_size"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(ngx_conf_set_size_slot),
        conf: NGX_HTTP_SRV_CONF_OFFSET as ngx_uint_t,
        offset: core::mem::offset_of!(ServerConf, sendfile_min),
        post: ptr::null_mut(),
    },
    server_flag(
        ngx_string!("ktls_splice"),
        core::mem::offset_of!(ServerConf, splice),
    ),
    ngx_command_t {
        name: ngx_string!("ktls_rx"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(ngx_conf_set_enum_slot),
        conf: NGX_HTTP_SRV_CONF_OFFSET as ngx_uint_t,
        offset: core::mem::offset_of!(ServerConf, rx),
        // SAFETY: the value table is only read by nginx's configuration parser.
        post: unsafe { ptr::addr_of_mut!(KTLS_RX_VALUES[0]) }.cast(),
    },
    server_flag(
        ngx_string!("ktls_rx_no_pad"),
        core::mem::offset_of!(ServerConf, rx_no_pad),
    ),
    ngx_command_t::empty(),
];

/// A directive `name on | off;` of http and server, stored at `offset` of
/// [`ServerConf`] by nginx's own flag parser.
const fn server_flag(name: ngx_str_t, offset: usize) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_CONF_FLAG) as ngx_uint_t,
        set: Some(ngx_conf_set_flag_slot),
        conf: NGX_HTTP_SRV_CONF_OFFSET as ngx_uint_t,
        offset,
        post: ptr::null_mut(),
    }
}

/// The values of `ktls_rx`, for `ngx_conf_set_enum_slot()`.
static mut KTLS_RX_VALUES: [ngx_conf_enum_t; 4] = [
    ngx_conf_enum_t {
        name: ngx_string!("off"),
        value: KtlsRx::Off as ngx_uint_t,
    },
    ngx_conf_enum_t {
        name: ngx_string!("on"),
        value: KtlsRx::On as ngx_uint_t,
    },
    ngx_conf_enum_t {
        name: ngx_string!("auto"),
        value: KtlsRx::Auto as ngx_uint_t,
    },
    ngx_conf_enum_t {
        name: ngx_str_t {
            len: 0,
            data: ptr::null_mut(),
        },
        value: 0,
    },
];

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(HttpKtlsModule::preconfiguration),
    postconfiguration: Some(HttpKtlsModule::postconfiguration),
    create_main_conf: None,
    init_main_conf: None,
    create_srv_conf: Some(HttpKtlsModule::create_srv_conf),
    merge_srv_conf: Some(HttpKtlsModule::merge_srv_conf),
    create_loc_conf: None,
    merge_loc_conf: None,
};

#[cfg(feature = "export-modules")]
ngx::ngx_modules!(ngx_http_ktls_module);

/// The module, as nginx's `load_module` finds it.
#[used]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_ktls_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(MODULE_CTX).cast_mut().cast(),
    // SAFETY: the command table is only read by nginx's configuration parser.
    commands: unsafe { ptr::addr_of_mut!(COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    init_process: Some(init_process),
    ..ngx_module_t::default()
};

// SAFETY: the server configuration type is the one create_srv_conf makes.
unsafe impl HttpModuleServerConf for HttpKtlsModule {
    type ServerConf = ServerConf;
}

impl HttpModule for HttpKtlsModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: nginx writes the module's indexes before any request.
        unsafe { &*ptr::addr_of!(ngx_http_ktls_module) }
    }

    unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: nginx passes the configuration being parsed.
        match unsafe { variables::add(cf) } {
            Ok(()) => Status::NGX_OK.into(),
            Err(status) => status.into(),
        }
    }

    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        if state::init().is_err() {
            // SAFETY: cf is the configuration being parsed.
            unsafe {
                log_error!(
                    NGX_LOG_EMERG,
                    (*cf).log,
                    "ktls: SSL_get_ex_new_index() failed"
                )
            };
            return Status::NGX_ERROR.into();
        }

        // SAFETY: filters are chained at configuration time, single-threaded.
        unsafe {
            NEXT_HEADER_FILTER = ngx_http_top_header_filter;
            ngx_http_top_header_filter = Some(header_filter);
        }

        // SAFETY: cf is the configuration being parsed.
        unsafe { warn_if_kernel_lacks_tls(cf) };
        key_update::init();
        // SAFETY: cf is the configuration being parsed.
        splice::init(unsafe { (*cf).log });
        // SAFETY: as above.
        if unsafe { watch_ktls_handshakes(cf) }.is_err() {
            return Status::NGX_ERROR.into();
        }
        Status::NGX_OK.into()
    }
}

/// The header filter after ours.
static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;

/// Runs before the first byte of every response: the first response on a
/// TLS connection of a server with `ktls on` takes the connection over.
unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls header filters with a live request; the next
    // filter was set in postconfiguration.
    unsafe {
        if let Some(conf) = HttpKtlsModule::server_conf(&*r).filter(|conf| conf.enable == 1) {
            takeover::take_over(r, conf);
        }
        match NEXT_HEADER_FILTER {
            Some(next) => next(r),
            None => NGX_ERROR as ngx_int_t,
        }
    }
}

/// Each worker, before its first connection.
unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the worker's cycle.
    unsafe { receive::init_process(cycle) };
    NGX_OK as ngx_int_t
}

/// Has the handshakes of the servers with OpenSSL's KTLS option report to
/// [`receive`]: where those with `ktls on` are to decrypt in the kernel
/// (`ktls_rx`), and which ended with kTLS receiving.
///
/// # Safety
/// As for [`warn_if_kernel_lacks_tls`].
unsafe fn watch_ktls_handshakes(cf: *mut ngx_conf_t) -> Result<(), ()> {
    receive::reset();
    let kernel_rekeys = key_update::kernel_rekeys();
    // Without kTLS in the kernel there is nothing to keep out of it.
    let kernel_tls = kernel::available();
    let mut no_pad = false;
    // SAFETY: forwarded from the caller.
    unsafe {
        for (ctx, conf) in server_contexts(cf) {
            if SSL_CTX_get_options(ctx) & SSL_OP_ENABLE_KTLS == 0 {
                continue;
            }
            let ours = ((*conf).enable == 1).then_some(&*conf);
            no_pad |= ours.is_some_and(|c| c.rx_no_pad == 1);
            let refuses = kernel_tls
                && ours.is_some_and(|c| KtlsRx::from_conf(c.rx).may_refuse(kernel_rekeys));
            if receive::watch_handshakes(ctx, ours, refuses).is_err() {
                log_error!(
                    NGX_LOG_EMERG,
                    (*cf).log,
                    "ktls: SSL_CTX_set_ex_data() failed"
                );
                return Err(());
            }
        }
        no_pad::init((*cf).log, kernel_tls && no_pad);
    }
    Ok(())
}

/// One warning at start (and `nginx -t`) when a server asks OpenSSL for kTLS
/// (`ssl_conf_command Options KTLS;`) that this kernel cannot give: OpenSSL
/// would silently stay in userspace.
///
/// # Safety
/// `cf` must be the http block's configuration, after servers were merged.
unsafe fn warn_if_kernel_lacks_tls(cf: *mut ngx_conf_t) {
    // SAFETY: after merging, every server's ssl configuration is final.
    unsafe {
        if !any_server_wants_ktls(cf) {
            return;
        }
        let missing = kernel::tls_ulp_missing();
        kernel::set_available(missing.is_none());
        if let Some(why) = missing {
            log_error!(
                NGX_LOG_WARN,
                (*cf).log,
                "ktls: \"ssl_conf_command Options KTLS\" is set, but kernel TLS is not \
                 available: {why}; TLS stays in userspace and SSL_sendfile() is not used"
            );
        }
    }
}

/// Whether any server's SSL context has OpenSSL's KTLS option on.
///
/// # Safety
/// As for [`warn_if_kernel_lacks_tls`].
unsafe fn any_server_wants_ktls(cf: *mut ngx_conf_t) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe {
        server_contexts(cf)
            .iter()
            .any(|&(ctx, _)| SSL_CTX_get_options(ctx) & SSL_OP_ENABLE_KTLS != 0)
    }
}

/// Every server's SSL context, with the server's configuration of this
/// module; servers without TLS are left out.
///
/// # Safety
/// As for [`warn_if_kernel_lacks_tls`].
unsafe fn server_contexts(cf: *mut ngx_conf_t) -> Vec<(*mut SSL_CTX, *const ServerConf)> {
    // SAFETY: the core main configuration lists every server's context.
    unsafe {
        let Some(cmcf) = NgxHttpCoreModule::main_conf(&*cf) else {
            return Vec::new();
        };
        let cmcf: &ngx_http_core_main_conf_t = cmcf;
        let servers = cmcf.servers.elts as *const *mut ngx_http_core_srv_conf_t;
        (0..cmcf.servers.nelts)
            .filter_map(|i| {
                let srv_conf = (*(**servers.add(i)).ctx).srv_conf;
                let sscf =
                    *srv_conf.add(ngx_http_ssl_module.ctx_index) as *const ngx_http_ssl_srv_conf_t;
                let conf = *srv_conf.add(HttpKtlsModule::module().ctx_index) as *const ServerConf;
                let ctx = (*sscf).ssl.ctx.cast::<SSL_CTX>();
                (!ctx.is_null()).then_some((ctx, conf))
            })
            .collect()
    }
}
