# shellcheck shell=bash
# Pieces of nginx configuration and setup that the scripts' own nginx
# instances share (scripts/run, its demo, the benchmark, the package test).
# Sourced, not run.

# The temp paths of an http{} block, under DIR, indented for it. nginx's
# defaults are in its build prefix, which a test nginx cannot write to (and a
# worker, nobody, cannot chmod on the kTLS guest's hostfs).
nginx_temp_paths() {
    local dir=$1 kind
    for kind in client_body proxy fastcgi uwsgi scgi; do
        printf '    %s_temp_path %s/%s;\n' "$kind" "$dir" "$kind"
    done
}

# A self-signed RSA certificate for localhost, valid for DAYS: KEY and CERT.
write_localhost_cert() {
    local key=$1 cert=$2 days=$3
    openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj /CN=localhost \
        -keyout "$key" -out "$cert" 2>/dev/null
}
