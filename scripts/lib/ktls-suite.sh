# The end-to-end suite under kernel TLS (scripts/ktls-vm), per Debian
# release and nginx binary. Sourced, not run; uses the caller's log, die
# and REPO.

# The e2e test executables, built on the host (the kTLS runs execute the
# same binaries under User-Mode Linux, in any release's userland).
e2e_binaries() {
    cargo test --release -p nginx-ktls-tests --features debian-module --no-run \
        --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p'
}

# Runs every binary of the suite under RELEASE's kernel and userland with
# NGINX (a path inside the guest) and MODULE, one binary a guest, writing
# each binary's output and a summary line per binary to LOG. DEBIAN_MODULE
# is what the debian_module test loads into the release's /usr/sbin/nginx.
# Fails when any binary fails; KTLS_EXPECT_KERNEL makes a run without kTLS
# fail.
run_suite_under_ktls() {
    local release=$1 nginx=$2 module=$3 debian_module=$4 log=$5
    local bin name started rc failed=0
    shift 5
    : >"$log"
    for bin in "$@"; do
        name=$(basename "$bin")
        name=${name%-*}
        started=$SECONDS
        rc=0
        KTLS_EXPECT_KERNEL=1 KTLS_NGINX="$nginx" KTLS_MODULE="$module" \
            KTLS_DEBIAN_MODULE="$debian_module" \
            "$REPO/scripts/ktls-vm" --release "$release" "$bin" --test-threads=1 \
            >"$log.$name" 2>&1 || rc=$?
        summarize_binary_run "$release" "$name" "$rc" "$((SECONDS - started))" \
            "$log.$name" >>"$log"
        if ((rc != 0)); then
            failed=1
            tail -n 60 "$log.$name" >>"$log"
        fi
    done
    return "$failed"
}

# One line: release, binary, verdict, seconds, libtest's counts and the
# kTLS sockets the guest opened (scripts/ktls-vm's report).
summarize_binary_run() {
    local release=$1 name=$2 rc=$3 seconds=$4 out=$5 counts sockets
    counts=$(grep -ho 'test result: .*; [0-9]* failed' "$out" | tail -n 1 | sed 's/test result: //')
    sockets=$(sed -n 's/^ktls-vm: guest kTLS sockets ([a-z]*): //p' "$out" | tail -n 1)
    printf '%-8s %-18s %-4s %4ss  %s; kTLS: %s\n' "$release" "$name" \
        "$( ((rc == 0)) && echo ok || echo FAIL)" "$seconds" "${counts:-no result}" \
        "${sockets:-not reported}"
}
