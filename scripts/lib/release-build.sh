# shellcheck shell=bash
# Builds the module for a Debian release's own nginx inside that release's
# tree (scripts/lib/release-tree.sh), with nginx's build system and the
# release's configure flags (nginx-dev's conf_flags), as build_debian_module
# does for this host's release. Sourced, not run; needs common.sh and
# release-tree.sh.

readonly release_build_packages=(build-essential pkg-config libclang-dev libssl-dev
    libpcre2-dev zlib1g-dev)

# The host directories the build uses, at the same paths inside the tree: the
# repository (sources and output) and the Rust toolchain with its crates.
readonly release_cargo_home=${CARGO_HOME:-$HOME/.cargo}
readonly release_build_dirs=("$REPO" "$release_cargo_home" "${RUSTUP_HOME:-$HOME/.rustup}")

mount_build_dirs() {
    local root=$1 dir
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    for dir in "${release_build_dirs[@]}"; do
        mkdir -p "$root$dir"
        mount --bind "$dir" "$root$dir"
    done
}

unmount_build_dirs() {
    local root=$1 dir
    for dir in "${release_build_dirs[@]}"; do
        umount "$root$dir" 2>/dev/null || true
    done
    umount "$root/dev" 2>/dev/null || true
    umount "$root/proc" 2>/dev/null || true
}

install_release_build_deps() {
    local root=$1
    [[ -e $root/.build-deps ]] && return 0
    log "installing build tools in $root"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${release_build_packages[@]}" >"$root.build-apt.log" 2>&1 ||
        { tail -n 20 "$root.build-apt.log" >&2; die "apt-get install of build tools failed"; }
    touch "$root/.build-deps"
}

# Runs nginx's configure (once) and make modules inside the tree.
run_release_build() {
    local root=$1 tree=$2
    local script="set -e; export PATH=$release_cargo_home/bin:\$PATH
        if [ ! -f $tree/objs/Makefile ]; then
            rm -rf $tree; mkdir -p ${tree%/*}; cp -r /usr/share/nginx/src $tree
            cd $tree; . ./conf_flags
            ./configure \"\${NGX_CONF_FLAGS[@]}\" --add-dynamic-module=$REPO >configure.log 2>&1
        fi
        cd $tree; make -f objs/Makefile modules >make.log 2>&1"
    chroot "$root" env HOME="$HOME" CARGO_HOME="$release_cargo_home" \
        RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" bash -c "$script"
}

# build_release_module RELEASE: target/ktls/debian-RELEASE/ngx_http_ktls_module.so
build_release_module() {
    local release=$1 root tree out rc=0
    ensure_release_tree "$release"
    root=$(release_dir "$release")/root
    tree=$REPO/target/debian-$release/nginx
    out=$KTLS_OUT/debian-$release
    install_release_build_deps "$root"
    # shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
    log "building the module for $release's nginx $(chroot "$root" dpkg-query -W -f='${Version}' nginx-dev)"
    mount_build_dirs "$root"
    run_release_build "$root" "$tree" || rc=$?
    unmount_build_dirs "$root"
    if ((rc != 0)); then
        tail -n 30 "$tree/make.log" "$tree/configure.log" 2>/dev/null >&2
        die "the $release build failed"
    fi
    mkdir -p "$out"
    install -m 0644 "$tree/objs/ngx_http_ktls_module.so" "$out/ngx_http_ktls_module.so"
}
