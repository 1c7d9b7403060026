#!/usr/bin/env bash
# Runs inside a kTLS guest (scripts/ktls-vm) for scripts/test-package:
#
#   package-serve.sh ROOT
#
# ROOT is a Debian tree with nginx and libnginx-mod-http-ktls installed. Starts
# that tree's nginx (chroot), with the module loaded by the package's
# modules-enabled link, serving a 1 MiB file with kTLS; fetches it over
# HTTP/1.1 and HTTP/2 with the guest's curl, compares SHA-256, and checks
# tx=1 in the access log and the kernel's TlsTxSw. Exits non-zero on failure.
set -euo pipefail

readonly root=$1
# Inside ROOT: a tmpfs, since nginx's workers (www-data) cannot chmod on hostfs.
readonly work=/dev/shm/ktls-pkg
readonly port=8443

# shellcheck disable=SC2034 # read by log.sh
log_name=package-serve
# shellcheck source=scripts/lib/log.sh
. "$(dirname "${BASH_SOURCE[0]}")/log.sh"
# shellcheck source=scripts/lib/nginx-conf.sh
. "$(dirname "${BASH_SOURCE[0]}")/nginx-conf.sh"

mount_tree() {
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    mount -t tmpfs tmpfs "$root/dev/shm"
}

unmount_tree() {
    umount "$root/dev/shm" "$root/dev" "$root/proc" 2>/dev/null || true
}

write_site() {
    local w=$root$work
    mkdir -p "$w/html" "$w/tmp"
    head -c 1048576 /dev/urandom >"$w/html/1m.bin"
    echo ok >"$w/html/index.html"
    write_localhost_cert "$w/key.pem" "$w/cert.pem" 1
    chmod -R a+rX "$w"
    cat >"$w/nginx.conf" <<CONF
user www-data;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log info;
# What Debian's nginx.conf does: the package's link loads the module.
include /etc/nginx/modules-enabled/*.conf;
events {}
http {
    log_format ktls '"\$request" \$status \$body_bytes_sent proto=\$server_protocol tx=\$ktls_tx sendfile=\$ktls_sendfile_bytes splice=\$ktls_splice_bytes';
    access_log $work/access.log ktls;
$(nginx_temp_paths "$work/tmp")
    sendfile on;
    server {
        listen 127.0.0.1:$port ssl;
        http2 on;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_conf_command Options KTLS;
        ktls on;
        root $work/html;
    }
}
CONF
    # nginx 1.22 has no "http2 on;": there it is a listen parameter.
    if ! chroot "$root" nginx -t -c "$work/nginx.conf" >/dev/null 2>&1; then
        sed -i '/http2 on;/d; s/listen 127.0.0.1:\([0-9]*\) ssl;/listen 127.0.0.1:\1 ssl http2;/' \
            "$w/nginx.conf"
    fi
}

tx_sw() {
    awk '$1 == "TlsTxSw" { print $2 }' /proc/net/tls_stat
}

start_nginx() {
    chroot "$root" nginx -c "$work/nginx.conf" || die "nginx did not start: $(cat "$root$work/error.log")"
    local i
    for ((i = 0; i < 50; i++)); do
        curl -sk -o /dev/null "https://127.0.0.1:$port/" && return 0
        sleep 0.2
    done
    die "nginx does not answer on 127.0.0.1:$port after 10 s"
}

stop_nginx() {
    local pid i
    pid=$(cat "$root$work/nginx.pid" 2>/dev/null) || return 0
    kill -QUIT "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

fetch_and_compare() {
    local proto=$1 want got
    want=$(sha256sum <"$root$work/html/1m.bin" | cut -d' ' -f1)
    got=$(curl -sk --max-time 30 "--$proto" "https://127.0.0.1:$port/1m.bin" | sha256sum | cut -d' ' -f1)
    [[ $got == "$want" ]] || die "$proto: the body's SHA-256 differs from the file's"
    log "$proto: 1 MiB byte-exact (sha256 $want)"
}

check_access_log() {
    local log=$root$work/access.log
    cat "$log" >&2
    [[ $(grep -c '1m.bin.* 200 1048576 .*tx=1 ' "$log") -eq 2 ]] ||
        die "the access log does not show tx=1 for both 1 MiB responses"
}

main() {
    [[ -x $root/usr/sbin/nginx ]] || die "no nginx in $root"
    modprobe -q tls 2>/dev/null || true
    grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp || die "this guest kernel has no tls ULP"
    trap 'stop_nginx; unmount_tree' EXIT
    mount_tree
    write_site
    local before
    before=$(tx_sw)
    start_nginx
    log "nginx $(chroot "$root" dpkg-query -W -f="\${Version}" nginx), kernel $(uname -r), module $(chroot "$root" dpkg-query -W -f="\${Version}" libnginx-mod-http-ktls)"
    fetch_and_compare http1.1
    fetch_and_compare http2
    check_access_log
    grep 'ktls: ' "$root$work/error.log" >&2 || true
    log "TlsTxSw: $before -> $(tx_sw)"
    (($(tx_sw) > before)) || die "TlsTxSw did not rise"
    log "OK"
}

main "$@"
