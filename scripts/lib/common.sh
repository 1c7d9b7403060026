# shellcheck shell=bash
# Shared by the scripts in scripts/: package installation and the build.
# Sourced, not run.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Where the scripts put what they build: the nginx binary and the module.
KTLS_OUT="$REPO/target/ktls"
# Debug logging is what operators use to check the send path, so the
# vendored nginx is always built with it; WebDAV, as in Debian's nginx, gives
# the upload tests a way to store what nginx received.
export NGX_CONFIGURE_ARGS="${NGX_CONFIGURE_ARGS:---with-debug --with-http_dav_module}"

# shellcheck source=scripts/lib/log.sh
. "$REPO/scripts/lib/log.sh"

# Installs the Debian packages that are not installed yet.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    if [ -z "${KTLS_APT_UPDATED:-}" ]; then
        timeout 600 apt-get update -qq || die "apt-get update failed"
        export KTLS_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# What building nginx and the module needs: a C toolchain and the headers
# of the libraries nginx links (system OpenSSL, PCRE2, zlib), libclang for
# bindgen.
ensure_build_deps() {
    command -v cargo >/dev/null || die "cargo is required (rustup's toolchain, Rust >= 1.81)"
    ensure_packages build-essential pkg-config libclang-dev libssl-dev libpcre2-dev zlib1g-dev \
        openssl ca-certificates python3
}

# Builds nginx 1.28 (nginx-src crate, NGX_CONFIGURE_ARGS) and the module against
# it, once; copies both to target/ktls/.
build_vendored() {
    ensure_build_deps
    log "building nginx and the module (cargo build --release --features vendored)"
    local ngx_out
    ngx_out=$(cd "$REPO" && cargo_build_vendored --release --features vendored) ||
        die "build failed"
    install_vendored_build "$ngx_out/objs" "$REPO/target/release" "$KTLS_OUT"
}

# Runs cargo build with ARGS and prints the out dir of the nginx-sys build
# that this build linked: target/ holds one per feature set and flags (lint
# and tests build others), and the newest of them need not be this one.
cargo_build_vendored() {
    local messages
    messages=$(cargo build "$@" --quiet --message-format=json-render-diagnostics) || return
    printf '%s\n' "$messages" | python3 -c '
import json, sys
dirs = [m["out_dir"] for m in map(json.loads, sys.stdin)
        if m.get("reason") == "build-script-executed"
        and "#nginx-sys@" in m["package_id"]]
sys.exit(print(dirs[-1]) if dirs else "cargo reported no nginx-sys build")'
}

# Copies the nginx built in OBJS and the module in cargo's RELEASE_DIR
# (target/release, or target/TRIPLE/release) to OUT.
install_vendored_build() {
    local objs=$1 release_dir=$2 out=$3
    [ -x "$objs/nginx" ] || die "the vendored nginx binary was not built in $objs"
    mkdir -p "$out"
    install -m 0755 "$objs/nginx" "$out/nginx"
    install -m 0755 "$release_dir/libngx_http_ktls_module.so" "$out/ngx_http_ktls_module.so"
}

# The nginx-src crate's nginx tree, which the vendored build compiles.
vendored_nginx_source() {
    cargo metadata --format-version 1 --features vendored --quiet | python3 -c '
import json, os, sys
dirs = [os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"]
        if p["name"] == "nginx-src"]
sys.exit(print(os.path.join(dirs[0], "nginx")) if dirs else "no nginx-src crate")'
}

# Clippy, -D warnings, over the module as a build of nginx without thread
# pools compiles it (no --with-threads: the vendored build always has them).
# Bindgen needs a configured tree, not a built one: configure runs once, in
# target/no-threads/.
lint_without_threads() {
    local dir="$REPO/target/no-threads" src
    if [ ! -f "$dir/nginx/objs/ngx_auto_config.h" ]; then
        src=$(vendored_nginx_source) || die "cannot find the nginx-src crate"
        rm -rf "$dir" && mkdir -p "$dir"
        cp -r "$src" "$dir/nginx"
        (cd "$dir/nginx" && auto/configure --with-compat --with-http_ssl_module \
            --with-http_v2_module --add-dynamic-module="$REPO" >configure.log 2>&1) ||
            die "configure without threads failed: see $dir/nginx/configure.log"
    fi
    grep -q NGX_THREADS "$dir/nginx/objs/ngx_auto_config.h" &&
        die "$dir/nginx was configured with thread pools"
    NGINX_SOURCE_DIR="$dir/nginx" NGINX_BUILD_DIR="$dir/nginx/objs" \
        cargo clippy --release --lib --no-default-features --target-dir "$dir/cargo" --quiet \
        -- -D warnings
}

# Installs Debian's nginx without starting it: a package's service start
# would take port 80 and outlive the script.
ensure_debian_nginx() {
    if ! dpkg-query -W -f='${Status}' nginx 2>/dev/null | grep -q "install ok installed"; then
        local policy=/usr/sbin/policy-rc.d restore=
        [ -e "$policy" ] && restore=$(mktemp) && cp -p "$policy" "$restore"
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy"
        ensure_packages nginx
        if [ -n "$restore" ]; then mv "$restore" "$policy"; else rm -f "$policy"; fi
    fi
    ensure_packages nginx-dev
}

# Builds the module for Debian's /usr/sbin/nginx with nginx's own build
# system: Debian's configure flags (nginx-dev's conf_flags) give the same
# module signature, and --add-dynamic-module exercises ./config.
build_debian_module() {
    ensure_build_deps
    ensure_debian_nginx
    local tree="$REPO/target/debian/nginx" out="$KTLS_OUT/debian"
    if [ ! -f "$tree/objs/Makefile" ]; then
        log "configuring Debian's nginx $(dpkg-query -W -f='${Version}' nginx-dev) with the module"
        rm -rf "$tree" && mkdir -p "$(dirname "$tree")"
        cp -r /usr/share/nginx/src "$tree"
        # shellcheck disable=SC1091
        (cd "$tree" && . ./conf_flags &&
            ./configure "${NGX_CONF_FLAGS[@]}" --add-dynamic-module="$REPO" >configure.log 2>&1) ||
            die "configure failed: see $tree/configure.log"
    fi
    log "building the module for Debian's nginx (make modules)"
    (cd "$tree" && make -f objs/Makefile modules >make.log 2>&1) ||
        { tail -n 30 "$tree/make.log" >&2; die "make modules failed"; }
    mkdir -p "$out"
    install -m 0644 "$tree/objs/ngx_http_ktls_module.so" "$out/ngx_http_ktls_module.so"
}

# Whether release R's User-Mode Linux kernel runs a process on this host.
# Without scripts/lib/uml-xstate-pad.c, which scripts/ktls-vm preloads,
# Debian 12's (6.1) and 13's (6.12) would not on a host whose CPUs have
# AMX: init dies with SIGSEGV when UML restores its first FPU state.
uml_boots() {
    KTLS_VM_TIMEOUT=60 "$REPO/scripts/ktls-vm" --release "$1" /bin/true >/dev/null 2>&1
}

# The kTLS lanes, one a row: its name, the Debian release whose User-Mode
# Linux kernel and userland it runs under, the nginx it runs and the module
# that nginx loads (vendored: the nginx 1.28 build of target/ktls/;
# debian: the release's /usr/sbin/nginx and the module built for it;
# sanitize: the sanitizer build of scripts/lib/sanitize.sh), and whether
# sanitizer reports fail it. The sanitizer build runs only under sid's
# kernel, the one kTLS kernel here whose processes have the 47-bit address
# space that ASan's shadow memory needs (Debian 12's and 13's UML give theirs
# 39 bits). Every lane runs unless KTLS_LANES names the ones to run
# (KTLS_LANES="sid trixie"); a lane that cannot run fails, one left out on
# request is said so.
readonly ktls_lane_table="
sid-sanitize       sid       sanitize  sanitize  yes
bookworm-vendored  bookworm  vendored  vendored  no
bookworm-debian    bookworm  debian    debian    no
trixie             trixie    debian    debian    no
sid                sid       debian    debian    no
"

# The lanes' names, in the table's order, as one line.
ktls_lane_names() {
    local lane names=()
    while read -r lane _; do
        [[ -z $lane ]] || names+=("$lane")
    done <<<"$ktls_lane_table"
    echo "${names[*]}"
}

all_ktls_lanes=$(ktls_lane_names)
readonly all_ktls_lanes

# LANE's row without its name: release, nginx, module, sanitizer. Fails for
# a name that is not a lane.
ktls_lane_row() {
    local lane row
    while read -r lane row; do
        [[ $lane == "$1" ]] && echo "$row" && return 0
    done <<<"$ktls_lane_table"
    return 1
}

# Dies unless every name in KTLS_LANES is a lane.
check_ktls_lanes() {
    local lane
    for lane in ${KTLS_LANES:-}; do
        ktls_lane_row "$lane" >/dev/null ||
            die "KTLS_LANES: no lane $lane (lanes: $all_ktls_lanes)"
    done
}

# Whether LANE runs (KTLS_LANES unset or naming it).
ktls_lane_wanted() {
    [[ -z ${KTLS_LANES:-} || " $KTLS_LANES " == *" $1 "* ]]
}

# Whether release R has a lane that runs.
ktls_release_wanted() {
    local lane release
    for lane in $all_ktls_lanes; do
        read -r release _ <<<"$(ktls_lane_row "$lane")"
        [[ $release == "$1" ]] && ktls_lane_wanted "$lane" && return 0
    done
    return 1
}
