//! Passes the nginx build's configuration to the compiler as `cfg` values.
//!
//! `nginx-sys` exports what the nginx tree we build against was configured with
//! (`DEP_NGINX_*`); the module's code depends on some of it (HTTP/2 adds
//! `r->stream`), so it becomes `cfg(ngx_feature = "...")`.

use std::env;

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES_CHECK");
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_feature, values({}))",
        env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or_else(|_| "any()".to_string())
    );
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    let features = env::var("DEP_NGINX_FEATURES").unwrap_or_default();
    for feature in features.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
    }
    if !features.split(',').any(|f| f.trim() == "http_ssl") {
        // Without http_ssl there is no TLS connection to take over.
        println!("cargo::warning=nginx was configured without http_ssl_module");
    }
}
