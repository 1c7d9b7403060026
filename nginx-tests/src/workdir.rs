//! A private directory per nginx instance, under /dev/shm.
//!
//! /dev/shm because under User-Mode Linux non-root processes (the nginx workers) cannot chmod on
//! hostfs, and a tmpfs keeps 64 MiB test files off the disk. `KTLS_TEST_DIR` overrides the base
//! dir; `KTLS_KEEP=1` keeps the dirs after the test for inspection.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates `<base>/<name>-<pid>-<n>`, mode 0755 all the way so that workers running as
    /// `nobody` can read the files in it.
    pub fn new(name: &str) -> WorkDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::var_os("KTLS_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/dev/shm/nginx-ktls-tests"));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{name}-{}-{n}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).expect("remove stale work dir");
        }
        fs::create_dir_all(&path).expect("create work dir");
        let dir = WorkDir { path };
        dir.chmod_path(&base);
        dir.chmod_path(&dir.path);
        dir
    }

    fn chmod_path(&self, p: &Path) {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod work dir");
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a subdirectory (mode 0755) and returns its path.
    pub fn subdir(&self, rel: &str) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).expect("create subdir");
        self.chmod_path(&p);
        p
    }

    /// Writes a file (mode 0644) relative to the work dir.
    pub fn write(&self, rel: &str, content: &[u8]) -> PathBuf {
        let p = self.path.join(rel);
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod file");
        p
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("KTLS_KEEP").is_some() {
            eprintln!("KTLS_KEEP: kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
