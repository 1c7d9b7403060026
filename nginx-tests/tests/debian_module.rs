//! The module built for Debian's nginx package loads into `/usr/sbin/nginx`.
//!
//! Compiled only with `--features debian-module`; then `KTLS_DEBIAN_MODULE` must name the
//! module (`KTLS_DEBIAN_NGINX` the binary, default `/usr/sbin/nginx`).

use nginx_ktls_tests::cert;
use nginx_ktls_tests::nginx::config_test;
use nginx_ktls_tests::workdir::WorkDir;
use std::path::PathBuf;

#[test]
fn loads_into_debian_nginx() {
    let module = PathBuf::from(
        std::env::var_os("KTLS_DEBIAN_MODULE")
            .expect("KTLS_DEBIAN_MODULE must name the Debian build of the module"),
    );
    let nginx = std::env::var_os("KTLS_DEBIAN_NGINX")
        .map_or_else(|| PathBuf::from("/usr/sbin/nginx"), PathBuf::from);
    assert!(module.is_file(), "{} does not exist", module.display());
    assert!(nginx.is_file(), "{} does not exist", nginx.display());
    let dir = WorkDir::new("debian-module");
    let c = cert::localhost();
    let crt = dir.write("cert.pem", &c.cert);
    let key = dir.write("key.pem", &c.key);
    let p = dir.path().display().to_string();
    let conf = format!(
        "load_module {module};\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ }}\n\
         http {{\n    sendfile on;\n    ssl_conf_command Options KTLS;\n    ktls on;\n\
         \x20   access_log {p}/logs/access.log;\n\
         \x20   server {{\n        listen 127.0.0.1:9 ssl;\n        ssl_certificate {crt};\n\
         \x20       ssl_certificate_key {key};\n        ktls off;\n    }}\n}}\n",
        module = module.display(),
        crt = crt.display(),
        key = key.display(),
    );
    let t = config_test(&nginx, dir, &conf);
    assert!(
        t.status.success(),
        "{} -t failed:\n{}\n{conf}",
        nginx.display(),
        t.stderr
    );
    assert!(t.stderr.contains("test is successful"), "{}", t.stderr);
    assert!(!t.stderr.contains("[emerg]"), "{}", t.stderr);
}
