//! Which binaries the suite runs and what kind of run this is, from the environment.
//!
//! - `KTLS_NGINX`: the nginx binary (default `<workspace>/target/ktls/nginx`).
//! - `KTLS_MODULE`: the module `.so` (default `<workspace>/target/ktls/ngx_http_ktls_module.so`),
//!   or `none` to run stock nginx without it, which tests the harness itself.
//! - `KTLS_EXPECT_KERNEL=1`: the run is under a kernel with kTLS (`scripts/ktls-vm`); the tests
//!   then assert that kTLS was really used instead of accepting a silent userspace fallback.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The nginx binary and module under test, and what the binary was built with.
#[derive(Debug)]
pub struct Binaries {
    pub nginx: PathBuf,
    /// `None` when `KTLS_MODULE=none`.
    pub module: Option<PathBuf>,
    /// `(major, minor, patch)` from `nginx -v`.
    pub version: (u32, u32, u32),
}

impl Binaries {
    /// nginx 1.25.1 moved HTTP/2 from a `listen` parameter to the `http2` directive.
    pub fn has_http2_directive(&self) -> bool {
        self.version >= (1, 25, 1)
    }
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("nginx-tests is a workspace member")
}

/// Resolved once per test process; panics with a clear message when a binary is missing, so a
/// run without the binaries fails rather than passing vacuously.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let nginx = env::var_os("KTLS_NGINX")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target/ktls/nginx"));
        let module = match env::var("KTLS_MODULE") {
            Ok(v) if v == "none" => None,
            Ok(v) => Some(PathBuf::from(v)),
            Err(_) => Some(workspace().join("target/ktls/ngx_http_ktls_module.so")),
        };
        assert!(
            nginx.is_file(),
            "nginx binary {} does not exist (set KTLS_NGINX)",
            nginx.display()
        );
        if let Some(m) = &module {
            assert!(
                m.is_file(),
                "module {} does not exist (set KTLS_MODULE, or KTLS_MODULE=none for stock nginx)",
                m.display()
            );
        }
        let out = Command::new(&nginx)
            .arg("-V")
            .output()
            .expect("run nginx -V");
        let text = String::from_utf8_lossy(&out.stderr);
        // The takeover line and the SSL_sendfile() lines the tests look for are debug lines.
        assert!(
            text.contains("--with-debug"),
            "{} was not built --with-debug:\n{text}",
            nginx.display()
        );
        let version = parse_version(&text).unwrap_or_else(|| panic!("no version in: {text}"));
        Binaries {
            nginx,
            module,
            version,
        }
    })
}

fn parse_version(v_output: &str) -> Option<(u32, u32, u32)> {
    let rest = v_output.split("nginx/").nth(1)?;
    let mut parts = rest
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// True when the module is loaded, i.e. its directive and variables exist.
pub fn module_loaded() -> bool {
    binaries().module.is_some()
}

/// True under `scripts/ktls-vm` (`KTLS_EXPECT_KERNEL=1`).
pub fn expect_kernel() -> bool {
    env::var("KTLS_EXPECT_KERNEL").is_ok_and(|v| v == "1")
}

/// Reports, on stderr, an assertion this run cannot make; shown with `-- --nocapture` and in
/// the output of a failing test.
pub fn skipped(what: &str) {
    eprintln!("SKIPPED ASSERTION: {what}");
}

/// Bodies for the large cases: under UML system calls are slow (35-50 MB/s), so the cases that
/// repeat a large transfer many times use `host` bytes on the host and `kernel` bytes there.
pub fn size_for_run(host: usize, kernel: usize) -> usize {
    if expect_kernel() {
        kernel
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn version_from_v_output() {
        assert_eq!(
            parse_version("nginx version: nginx/1.22.1\nbuilt by"),
            Some((1, 22, 1))
        );
        assert_eq!(
            parse_version("nginx version: nginx/1.28.3 (x)"),
            Some((1, 28, 3))
        );
        assert_eq!(parse_version("no version"), None);
    }
}
