#!/bin/bash
# PID 1 of the User-Mode Linux guest that scripts/ktls-vm boots.
#
# scripts/ktls-vm copies this file into its private run directory and boots
# `linux.uml ... init=<run dir>/init`; the root filesystem is the host's own "/"
# through hostfs, so every host path (the repo, the run directory) is visible
# here and writes to it are real host writes.
#
# The run directory holds what the host prepared:
#   vm.conf    bash assignments (declare -p): kmod_binary, modules_base,
#              guest_modules (besides tls), host_name, nofile_soft, nofile_hard, work_dir,
#              host_mounts (host directories to mount at the same path when the
#              root is a release tree rather than the host's "/"), command
#   env        the caller's environment, NUL-separated NAME=VALUE (env -0)
#   log.sh     scripts/lib/log.sh, for log
# and receives what the host reads back after the guest has halted:
#   stdout, stderr   the command's output (output is not streamed live)
#   status           the command's exit status; its absence means failure
#   init-error       why this init gave up before running the command
#   modprobe         the wrapper the kernel calls to load modules on demand
#
# No `set -e`: PID 1 must never just exit (the guest kernel would panic and the
# host would only see a crash); every failure ends in give_up(), which records the
# reason and halts.
set -uo pipefail

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
readonly run_dir=${0%/*}

# Set by vm.conf (declared here so that a missing one is an empty value).
kmod_binary='' modules_base='' host_name='' work_dir='' nofile_soft='' nofile_hard=''
guest_modules=() host_mounts=() command=()
# shellcheck source=/dev/null # written at run time by scripts/ktls-vm
source "$run_dir/vm.conf" || {
    echo "ktls-vm init: cannot read $run_dir/vm.conf" >"$run_dir/init-error"
    sync
    poweroff -f
}

# log.sh, copied beside this file by scripts/ktls-vm: the repository may not
# be mounted yet. Init's output is the guest console (console.log on the host).
# shellcheck disable=SC2034 # read by log.sh
log_name='ktls-vm init'
# shellcheck source=scripts/lib/log.sh
source "$run_dir/log.sh" || {
    echo "ktls-vm init: cannot read $run_dir/log.sh" >"$run_dir/init-error"
    sync
    poweroff -f
}

power_off() {
    # hostfs writes go through the guest page cache: flush them before the
    # machine disappears, or the host may read empty output files.
    sync
    # systemd's halt/poweroff with -f only calls reboot(2); no init system needed.
    poweroff -f >/dev/null 2>&1
    halt -f >/dev/null 2>&1
    # Last resort if neither binary works: the magic SysRq power-off.
    echo o >/proc/sysrq-trigger
    sleep 60
}

# Init's die: PID 1 must not exit, so it records the reason and halts.
give_up() {
    log "error: $*"
    printf '%s\n' "$*" >"$run_dir/init-error"
    power_off
}

mount_guest_filesystems() {
    # The host's /proc, /sys and /dev are visible through hostfs but describe
    # the host: mount the guest's own over them.
    mount -t proc -o nosuid,nodev,noexec proc /proc || give_up "cannot mount /proc"
    mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || give_up "cannot mount /sys"
    if ! grep -q '^[^ ]* /dev ' /proc/mounts; then
        mount -t devtmpfs -o nosuid devtmpfs /dev || give_up "cannot mount /dev"
    fi
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts ||
        give_up "cannot mount /dev/pts"
    # Private tmpfs for /run and /dev/shm: pid files, sockets and locks of the
    # guest must not clash with the host's (or another guest's). Not /tmp:
    # a tmpfs there would hide the host files that tests pass in.
    mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm || give_up "cannot mount /dev/shm"
    mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run || give_up "cannot mount /run"
    mkdir /run/lock && chmod 1777 /run/lock
    # A bare devtmpfs has no /dev/fd: bash process substitution needs it.
    ln -sfn /proc/self/fd /dev/fd
    ln -sfn /proc/self/fd/0 /dev/stdin
    ln -sfn /proc/self/fd/1 /dev/stdout
    ln -sfn /proc/self/fd/2 /dev/stderr
}

load_tls_modules() {
    # The UML modules are not under /lib/modules: the kernel's on-demand
    # loader (crypto-gcm(aes), tcp-ulp-tls, ...) must run modprobe -d too.
    if ! printf '#!/bin/bash\nexec -a modprobe %q -d %q "$@"\n' \
        "$kmod_binary" "$modules_base" >"$run_dir/modprobe" ||
        ! chmod 755 "$run_dir/modprobe"; then
        give_up "cannot write the modprobe wrapper"
    fi
    echo "$run_dir/modprobe" >/proc/sys/kernel/modprobe ||
        give_up "cannot set /proc/sys/kernel/modprobe"
    "$run_dir/modprobe" -a tls || give_up "modprobe tls failed"
    # The AEADs: modules in 6.1, built in or renamed in later kernels (7.x
    # has no ghash-generic or chacha_generic); kTLS needs them either way, and
    # --selftest checks every cipher.
    "$run_dir/modprobe" -a -q "${guest_modules[@]}" ||
        log "not all of ${guest_modules[*]} are modules in this kernel"
    local ulps
    ulps=$(cat /proc/sys/net/ipv4/tcp_available_ulp)
    [[ " $ulps " == *" tls "* ]] ||
        give_up "the tls ULP is missing after loading the modules (tcp_available_ulp: $ulps)"
}

bring_up_loopback() {
    ip link set lo up || give_up "cannot bring lo up"
    # Both addresses normally appear by themselves once lo is up; add them if not.
    ip -4 addr show dev lo | grep -q 'inet 127\.0\.0\.1/' ||
        ip addr add 127.0.0.1/8 dev lo || give_up "cannot add 127.0.0.1 to lo"
    ip -6 addr show dev lo | grep -q 'inet6 ::1/' ||
        ip addr add ::1/128 dev lo || give_up "cannot add ::1 to lo"
}

mount_host_dirs() {
    local dir
    for dir in "${host_mounts[@]}"; do
        mkdir -p "$dir" || give_up "cannot make $dir"
        grep -q "^[^ ]* $dir hostfs " /proc/mounts && continue
        # Kernels 6.x with the new mount API name the host path "hostfs=".
        mount -t hostfs -o "hostfs=$dir" none "$dir" || give_up "cannot mount the host's $dir"
    done
}

run_command() {
    cd -- "$work_dir" || give_up "cannot cd to $work_dir"
    local -a environment
    mapfile -d '' -t environment <"$run_dir/env" || give_up "cannot read $run_dir/env"
    # A login-like open-file limit as on the host, not the kernel default 1024.
    ulimit -Hn "$nofile_hard" 2>/dev/null
    ulimit -Sn "$nofile_soft" 2>/dev/null
    local status=0
    env -i "${environment[@]}" "${command[@]}" </dev/null \
        >"$run_dir/stdout" 2>"$run_dir/stderr" || status=$?
    # The guest booted for this command: its counters are the command's.
    cp /proc/net/tls_stat "$run_dir/tls_stat" 2>/dev/null || true
    # Write-then-rename: the host must never read a half-written status.
    if ! printf '%d\n' "$status" >"$run_dir/status.partial" ||
        ! mv -f "$run_dir/status.partial" "$run_dir/status"; then
        give_up "cannot write the exit status"
    fi
}

main() {
    mount_guest_filesystems
    echo "$host_name" >/proc/sys/kernel/hostname
    load_tls_modules
    bring_up_loopback
    mount_host_dirs
    run_command
    power_off
}

main
