# shellcheck shell=bash
# A slow disk for the stall benchmark: ext4 on a loop device (a file on the
# guest's tmpfs) under dm-delay, which holds every read for DELAY ms. Root
# only, under scripts/ktls-vm (the guest kernel has loop, dm-delay, ext4).
# Sourced, not run; uses log/die from common.sh.

# make_slow_disk NAME SIZE_MB DELAY_MS MOUNTPOINT
make_slow_disk() {
    local name=$1 size=$2 delay=$3 mnt=$4 dev sectors modprobe
    # The guest's module loader: its modules live outside /lib/modules.
    modprobe=$(cat /proc/sys/kernel/modprobe)
    "$modprobe" -a loop dm-mod dm-delay || die "cannot load loop and dm-delay"
    truncate -s "${size}M" "/dev/shm/$name.img"
    dev=$(losetup -f --show "/dev/shm/$name.img") || die "losetup failed"
    sectors=$(blockdev --getsz "$dev")
    # No udev in the guest: dmsetup makes the node itself.
    dmsetup create --noudevsync "$name" --table "0 $sectors delay $dev 0 $delay" ||
        die "dmsetup create failed"
    dmsetup mknodes "$name"
    mkfs.ext4 -q -F "/dev/mapper/$name" || die "mkfs.ext4 failed"
    mkdir -p "$mnt"
    mount "/dev/mapper/$name" "$mnt" || die "mount failed"
    chmod 755 "$mnt"
}

# remove_slow_disk NAME MOUNTPOINT: whatever of it exists.
remove_slow_disk() {
    local name=$1 mnt=$2 dev
    dev=$(losetup -j "/dev/shm/$name.img" -O NAME -n 2>/dev/null || true)
    umount "$mnt" 2>/dev/null || true
    dmsetup remove "$name" 2>/dev/null || true
    if [[ -n $dev ]]; then losetup -d "$dev" || true; fi
    rm -f "/dev/shm/$name.img"
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}
