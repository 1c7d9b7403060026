# shellcheck shell=bash
# shellcheck disable=SC2154 # repo_root is the caller's
# Debian release trees for scripts/ktls-vm --release: a userland of that
# release (debootstrap, minbase) with what the tests need, and that release's
# User-Mode Linux kernel, patched to run on this host. Sourced, not run; uses
# the caller's log and die, and repo_root.
#
# A tree lives in target/releases/RELEASE/: root/ (the userland, the guest's
# "/"), linux.uml (the kernel with its loader and libraries taken from root/)
# and .complete once both are usable. Delete the directory to make it anew.

readonly release_packages=(nginx nginx-dev user-mode-linux curl nghttp2-client dmsetup e2fsprogs nodejs)
readonly release_base_packages=kmod,iproute2,procps,openssl,ca-certificates

# What a tree needs on the host: debootstrap to make it, patchelf for its
# kernel (linked against a newer glibc than the host's).
ensure_release_tools() {
    command -v debootstrap >/dev/null && command -v patchelf >/dev/null && return 0
    log "installing debootstrap and patchelf"
    { apt-get install -y -q debootstrap patchelf || { apt-get update -q &&
        apt-get install -y -q debootstrap patchelf; }; } >/dev/null 2>&1 ||
        die "cannot install debootstrap and patchelf"
}

release_dir() {
    echo "$repo_root/target/releases/$1"
}

# The Debian mirror this host's apt uses (its package lists name no other).
host_debian_mirror() {
    local mirror
    mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [[ -n $mirror ]] ||
        mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
    [[ -n $mirror ]] || die "no Debian mirror in this host's apt sources"
    echo "$mirror"
}

# Installs PACKAGES inside the tree ROOT. A policy-rc.d keeps package
# scripts from starting services: nginx would bind the host's port 80.
# Mount points at or under DIR, deepest first.
mounts_under() {
    local dir
    dir=$(readlink -f -- "$1")
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

# Removes the tree DIR.  A run that was killed inside a chroot leaves /proc,
# /dev or the bind-mounted repository mounted in it, and `rm -rf` would go
# through those mounts: they are unmounted first, and DIR stays if one will
# not go.
remove_tree() {
    local dir=$1 m
    [[ -e $dir ]] || return 0
    while IFS= read -r m; do
        log "unmounting $m, left by an earlier run"
        umount "$m" || umount -l "$m" || die "cannot unmount $m"
    done < <(mounts_under "$dir")
    [[ -z $(mounts_under "$dir") ]] || die "$dir still has mounts in it; not removing it"
    rm -rf --one-file-system -- "$dir"
}

install_in_release_tree() {
    local root=$1
    shift
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc" || die "cannot mount proc in $root"
    local rc=0
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "$@" >"$root.apt.log" 2>&1 || rc=$?
    umount "$root/proc"
    ((rc == 0)) || { tail -n 20 "$root.apt.log" >&2; die "apt-get install in $root failed"; }
}

# The packages of a release tree that are installed in ROOT already.
installed_in_release_tree() {
    local root=$1
    shift
    # dpkg-query fails when one of them is unknown to it.
    { dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Package} ${Status}\n' "$@" 2>/dev/null ||
        true; } | awk '$NF == "installed" { print $1 }'
}

# The release's linux.uml, with the loader and libraries of the tree at its
# final place ROOT (its glibc is newer than the host's), and `modprobe -d /`
# finding its modules.
prepare_release_kernel() {
    local root=$1 out=$2 kver
    kver=$(find "$root/usr/lib/uml/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n 1)
    [[ -n $kver && -f $root/usr/lib/uml/modules/$kver/kernel/net/tls/tls.ko ]] ||
        die "the release's user-mode-linux ships no tls.ko"
    mkdir -p "$root/usr/lib/modules"
    ln -sfn "/usr/lib/uml/modules/$kver" "$root/usr/lib/modules/$kver"
    install -m 755 "$root/usr/bin/linux.uml" "$out"
    patchelf --set-interpreter "$root/lib64/ld-linux-x86-64.so.2" \
        --set-rpath "$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu" "$out" ||
        die "patchelf $out failed"
}

make_release_tree() {
    local release=$1 dir staging
    dir=$(release_dir "$release")
    staging=$dir/.staging
    remove_tree "$staging"
    mkdir -p "$staging"
    log "making the $release tree in $dir (debootstrap, once)"
    debootstrap --variant=minbase --include="$release_base_packages" "$release" \
        "$staging/root" "$(host_debian_mirror)" >"$staging/debootstrap.log" 2>&1 ||
        { tail -n 20 "$staging/debootstrap.log" >&2; die "debootstrap $release failed"; }
    install_in_release_tree "$staging/root" "${release_packages[@]}"
    remove_tree "$dir/root"
    rm -f "$dir/linux.uml"
    mv "$staging/root" "$dir/root"
    remove_tree "$staging"
    prepare_release_kernel "$dir/root" "$dir/linux.uml"
    touch "$dir/.complete"
}

# Installs those of PACKAGES that the tree of RELEASE lacks (making the tree
# first if there is none).
ensure_in_release_tree() {
    ensure_release_tree "$1"
    add_missing_to_release_tree "$@"
}

# Installs those of PACKAGES that the existing tree of RELEASE lacks, under
# the tree's lock: another run may be making or extending it at the same
# time.
add_missing_to_release_tree() {
    local release=$1 dir lock_fd
    shift
    dir=$(release_dir "$release")
    local -a missing=()
    mapfile -t missing < <(comm -23 <(printf '%s\n' "$@" | sort -u) \
        <(installed_in_release_tree "$dir/root" "$@" | sort -u))
    ((${#missing[@]} > 0)) || return 0
    exec {lock_fd}>"$dir/.lock"
    flock -w 1200 "$lock_fd" || die "timed out waiting for $dir/.lock"
    log "installing ${missing[*]} in the $release tree"
    install_in_release_tree "$dir/root" "${missing[@]}"
    exec {lock_fd}>&-
}

# Makes the tree of RELEASE once, and adds what the tests need that an
# older tree lacks.
ensure_release_tree() {
    local release=$1 dir lock_fd
    dir=$(release_dir "$release")
    if [[ -e $dir/.complete ]]; then
        add_missing_to_release_tree "$release" "${release_packages[@]}"
        return 0
    fi
    ensure_release_tools
    mkdir -p "$dir"
    exec {lock_fd}>"$dir/.lock"
    # Concurrent first runs: one makes the tree, the others wait for it.
    flock -w 1200 "$lock_fd" || die "timed out waiting for $dir/.lock"
    [[ -e $dir/.complete ]] || make_release_tree "$release"
    exec {lock_fd}>&-
}
