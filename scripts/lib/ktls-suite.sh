# The end-to-end suite under kernel TLS (scripts/ktls-vm), per Debian
# release and nginx binary. Sourced, not run; uses the caller's log, die,
# REPO, KTLS_OUT and the KTLS_NGINX, KTLS_MODULE and KTLS_DEBIAN_MODULE of
# the vendored and Debian 12 builds.

# Where the kTLS runs write their output, one file per run and binary.
test_logs=$REPO/target/test-logs

# The suite under kTLS, in two lanes at once (the machine has two cores),
# each run going on when one before it failed: bookworm with the vendored
# nginx 1.28, then trixie's own nginx; bookworm's own nginx 1.22, then
# sid's. Each Debian nginx loads the module built for it.
run_ktls_lanes() {
    local rc=0 lane_a
    check_ktls_lanes
    mkdir -p "$test_logs"
    ktls_lane_vendored_then_trixie "$@" &
    lane_a=$!
    ktls_lane_bookworm_then_sid "$@" || rc=1
    wait "$lane_a" || rc=1
    cat "$test_logs"/{bookworm-vendored,bookworm-debian,trixie,sid}
    say_which_lanes_ran
    return "$rc"
}

say_which_lanes_ran() {
    local lane ran=() left=()
    for lane in $all_ktls_lanes; do
        if ktls_lane_wanted "$lane"; then ran+=("$lane"); else left+=("$lane"); fi
    done
    log "kTLS lanes run: ${ran[*]:-none}; left out on request (KTLS_LANES): ${left[*]:-none}"
}

ktls_lane_vendored_then_trixie() {
    local rc=0
    run_suite_under_ktls bookworm "$KTLS_NGINX" "$KTLS_MODULE" "$KTLS_DEBIAN_MODULE" \
        "$test_logs/bookworm-vendored" "$@" || rc=1
    run_release_suite trixie "$@" || rc=1
    return "$rc"
}

ktls_lane_bookworm_then_sid() {
    local rc=0
    run_suite_under_ktls bookworm /usr/sbin/nginx "$KTLS_DEBIAN_MODULE" "$KTLS_DEBIAN_MODULE" \
        "$test_logs/bookworm-debian" "$@" || rc=1
    run_release_suite sid "$@" || rc=1
    return "$rc"
}

# The suite under release R's kernel with R's own nginx and its module.
run_release_suite() {
    local release=$1 module
    shift
    module=$KTLS_OUT/debian-$release/ngx_http_ktls_module.so
    run_suite_under_ktls "$release" /usr/sbin/nginx "$module" "$module" "$test_logs/$release" "$@"
}

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
# Fails when any binary fails, or when the release's kernel does not boot
# here; KTLS_EXPECT_KERNEL makes a run without kTLS fail. A lane (LOG's
# name) that KTLS_LANES leaves out is not run. glibc fills freed memory
# with a pattern (MALLOC_PERTURB_), so that what touches memory after it
# was freed reads garbage rather than what was there: the sanitizer build
# cannot run under User-Mode Linux.
run_suite_under_ktls() {
    local release=$1 nginx=$2 module=$3 debian_module=$4 log=$5
    local bin name started rc failed=0
    shift 5
    : >"$log"
    if ! ktls_lane_wanted "$(basename "$log")"; then
        printf '%-8s left out on request (KTLS_LANES=%s): %s\n' "$release" "$KTLS_LANES" "$nginx" >"$log"
        return 0
    fi
    if ! uml_boots "$release"; then
        log "$release's UML kernel does not boot on this host: its lane ($nginx) cannot run"
        printf '%-8s FAIL: its UML kernel does not boot on this host (uml_boots)\n' "$release" >"$log"
        return 1
    fi
    for bin in "$@"; do
        name=$(basename "$bin")
        name=${name%-*}
        started=$SECONDS
        rc=0
        MALLOC_PERTURB_=165 KTLS_EXPECT_KERNEL=1 KTLS_NGINX="$nginx" KTLS_MODULE="$module" \
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
