//! A slow disk, for file I/O that misses the page cache: an ext4 filesystem on a loop device
//! (backed by a file in the guest's private tmpfs) under dm-delay, which holds every read for
//! a fixed time. Made as root under `scripts/ktls-vm` (the guest's kernel has loop, dm-delay
//! and ext4); [`SlowDisk::available`] says whether this run can make one.

use crate::config::expect_kernel;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted slow filesystem; unmounted and removed on drop.
pub struct SlowDisk {
    name: String,
    image: PathBuf,
    loop_dev: String,
    mount: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl SlowDisk {
    /// Under the kTLS guest, as root: the only place where the tests may make block devices.
    pub fn available() -> bool {
        // SAFETY: geteuid() has no preconditions.
        expect_kernel() && unsafe { libc::geteuid() } == 0
    }

    /// A `size_mb` filesystem whose reads each wait `delay_ms`.
    pub fn new(name: &str, size_mb: u64, delay_ms: u32) -> SlowDisk {
        assert!(
            Self::available(),
            "a slow disk needs root under scripts/ktls-vm"
        );
        // The guest's module loader (modules live outside /lib/modules there).
        let modprobe = fs::read_to_string("/proc/sys/kernel/modprobe").expect("modprobe path");
        run(modprobe.trim(), &["-a", "loop", "dm-mod", "dm-delay"]);
        let image = PathBuf::from(format!("/dev/shm/slow-{name}.img"));
        run(
            "truncate",
            &["-s", &format!("{size_mb}M"), &image.to_string_lossy()],
        );
        let loop_dev = run("losetup", &["-f", "--show", &image.to_string_lossy()]);
        let sectors = run("blockdev", &["--getsz", &loop_dev]);
        let dm = format!("slow-{name}");
        let table = format!("0 {sectors} delay {loop_dev} 0 {delay_ms}");
        // No udev in the guest: dmsetup makes the device node itself.
        run(
            "dmsetup",
            &["create", "--noudevsync", &dm, "--table", &table],
        );
        run("dmsetup", &["mknodes", &dm]);
        let dev = format!("/dev/mapper/{dm}");
        run("mkfs.ext4", &["-q", "-F", &dev]);
        let mount = PathBuf::from(format!("/run/slow-{name}"));
        fs::create_dir_all(&mount).expect("mount point");
        run("mount", &[&dev, &mount.to_string_lossy()]);
        run("chmod", &["755", &mount.to_string_lossy()]);
        SlowDisk {
            name: dm,
            image,
            loop_dev,
            mount,
        }
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Writes a file (world-readable, for nginx's workers) and makes sure it is on the disk.
    pub fn write(&self, rel: &str, content: &[u8]) -> PathBuf {
        let path = self.mount.join(rel);
        fs::write(&path, content).expect("write to the slow disk");
        path
    }

    /// Writes every dirty page and drops the page cache: the next reads go to the disk.
    pub fn drop_caches() {
        run("sync", &[]);
        fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches");
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        // Best effort: a failed test must not hide its own message behind a cleanup panic.
        let m = self.mount.to_string_lossy().into_owned();
        let i = self.image.to_string_lossy().into_owned();
        for (cmd, args) in [
            ("umount", vec![m.as_str()]),
            ("dmsetup", vec!["remove", self.name.as_str()]),
            ("losetup", vec!["-d", self.loop_dev.as_str()]),
            ("rm", vec!["-f", i.as_str()]),
        ] {
            let _ = Command::new(cmd).args(&args).status();
        }
    }
}
