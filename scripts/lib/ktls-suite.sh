# shellcheck shell=bash
# shellcheck disable=SC2154 # all_ktls_lanes and san_out come from common.sh and sanitize.sh, sourced first
# The end-to-end suite under kernel TLS (scripts/ktls-vm), per Debian
# lane of the table in common.sh (ktls_lane_table). Sourced, not run, after
# common.sh and sanitize.sh; uses KTLS_NGINX, KTLS_MODULE and
# KTLS_DEBIAN_MODULE of the vendored and Debian 12 builds.

# Where the kTLS runs write their output, one file per run and binary.
test_logs=$REPO/target/test-logs

# The suite under kTLS, every lane at once: a guest spends most of its
# time waiting (on timers, slow disks, slow readers), not computing, so
# the lanes share the two cores well; KTLS_LANE_JOBS (default: all) caps
# how many run at a time. A lane goes on when one of its binaries failed.
run_ktls_lanes() {
    local rc=0 lane jobs=${KTLS_LANE_JOBS:-5} running=0
    check_ktls_lanes
    [[ $jobs =~ ^[1-9][0-9]*$ ]] || die "KTLS_LANE_JOBS must be a positive number"
    mkdir -p "$test_logs"
    if sanitizer_lane_wanted; then build_sanitized; fi
    for lane in $all_ktls_lanes; do
        if ((running == jobs)); then
            wait -n || rc=1
            running=$((running - 1))
        fi
        run_lane "$lane" "$@" &
        running=$((running + 1))
    done
    while ((running > 0)); do
        wait -n || rc=1
        running=$((running - 1))
    done
    for lane in $all_ktls_lanes; do cat "$test_logs/$lane"; done
    say_which_lanes_ran
    return "$rc"
}

# Whether a lane that runs is of the sanitizer build.
sanitizer_lane_wanted() {
    local lane sanitizer
    for lane in $all_ktls_lanes; do
        read -r _ _ _ sanitizer <<<"$(ktls_lane_row "$lane")"
        [[ $sanitizer == yes ]] && ktls_lane_wanted "$lane" && return 0
    done
    return 1
}

say_which_lanes_ran() {
    local lane ran=() left=()
    for lane in $all_ktls_lanes; do
        if ktls_lane_wanted "$lane"; then ran+=("$lane"); else left+=("$lane"); fi
    done
    log "kTLS lanes run: ${ran[*]:-none}; left out on request (KTLS_LANES): ${left[*]:-none}"
}

# The nginx of the table's column NGINX (ktls_lane_table in common.sh).
lane_nginx() {
    case $1 in
    vendored) echo "$KTLS_NGINX" ;;
    debian) echo /usr/sbin/nginx ;;
    sanitize) echo "$san_out/nginx" ;;
    *) die "no nginx $1 in the lane table" ;;
    esac
}

# The module built for RELEASE's own nginx: what its /usr/sbin/nginx loads,
# and what the debian_module test loads in every lane of that release.
release_debian_module() {
    if [[ $1 == bookworm ]]; then
        echo "$KTLS_DEBIAN_MODULE"
    else
        echo "$KTLS_OUT/debian-$1/ngx_http_ktls_module.so"
    fi
}

# The module of the table's column MODULE, for a lane under RELEASE.
lane_module() {
    case $1 in
    vendored) echo "$KTLS_MODULE" ;;
    debian) release_debian_module "$2" ;;
    sanitize) echo "$san_out/ngx_http_ktls_module.so" ;;
    *) die "no module $1 in the lane table" ;;
    esac
}

# One lane, as its row of the table says.
run_lane() {
    local lane=$1 row release nginx module sanitizer debian_module
    shift
    row=$(ktls_lane_row "$lane") || die "no lane $lane"
    read -r release nginx module sanitizer <<<"$row"
    nginx=$(lane_nginx "$nginx")
    module=$(lane_module "$module" "$release")
    debian_module=$(release_debian_module "$release")
    if [[ $sanitizer == yes ]]; then
        run_sanitizer_lane "$lane" "$release" "$nginx" "$module" "$debian_module" "$@"
    else
        run_suite_under_ktls "$release" "$nginx" "$module" "$debian_module" "$test_logs/$lane" "$@"
    fi
}

# run_sanitizer_lane LANE RELEASE NGINX MODULE DEBIAN_MODULE BINARIES...: the
# suite against the sanitizer build; a sanitizer report fails the lane and
# is appended to its log.
run_sanitizer_lane() {
    local lane=$1 log=$test_logs/$1 rc=0
    shift
    (
        start_sanitizer_reports "$log.reports"
        run_suite_under_ktls "$1" "$2" "$3" "$4" "$log" "${@:5}"
    ) || rc=1
    ktls_lane_wanted "$lane" || return "$rc"
    if ! check_sanitizer_reports "$log.reports" >>"$log" 2>&1; then
        printf '%-17s FAIL: sanitizer reports in %s\n' "$lane" "${log#"$REPO"/}.reports" >>"$log"
        rc=1
    fi
    return "$rc"
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
# each binary's output (with each test's time: libtest's --report-time,
# which takes RUSTC_BOOTSTRAP) and a summary line per binary to LOG. DEBIAN_MODULE
# is what the debian_module test loads into the release's /usr/sbin/nginx.
# Fails when any binary fails, or when the release's kernel does not boot
# here; KTLS_EXPECT_KERNEL makes a run without kTLS fail. A lane (LOG's
# name) that KTLS_LANES leaves out is not run. glibc fills freed memory
# with a pattern (MALLOC_PERTURB_), so that what touches memory after it
# was freed reads garbage rather than what was there, in the lanes whose
# nginx has no ASan.
run_suite_under_ktls() {
    local release=$1 nginx=$2 module=$3 debian_module=$4 log=$5 lane
    local bin name started rc failed=0
    shift 5
    lane=$(basename "$log")
    : >"$log"
    if ! ktls_lane_wanted "$lane"; then
        printf '%-17s left out on request (KTLS_LANES=%s): %s\n' "$lane" "$KTLS_LANES" "$nginx" >"$log"
        return 0
    fi
    if ! uml_boots "$release"; then
        log "$release's UML kernel does not boot on this host: lane $lane ($nginx) cannot run"
        printf '%-17s FAIL: its UML kernel (%s) does not boot on this host (uml_boots)\n' \
            "$lane" "$release" >"$log"
        return 1
    fi
    for bin in "$@"; do
        name=$(basename "$bin")
        name=${name%-*}
        started=$SECONDS
        rc=0
        MALLOC_PERTURB_=165 KTLS_EXPECT_KERNEL=1 KTLS_NGINX="$nginx" KTLS_MODULE="$module" \
            KTLS_DEBIAN_MODULE="$debian_module" RUSTC_BOOTSTRAP=1 \
            "$REPO/scripts/ktls-vm" --release "$release" "$bin" --test-threads=1 \
            -Z unstable-options --report-time >"$log.$name" 2>&1 || rc=$?
        summarize_binary_run "$lane" "$name" "$rc" "$((SECONDS - started))" \
            "$log.$name" >>"$log"
        if ((rc != 0)); then
            failed=1
            failure_excerpt "$log.$name" >>"$log"
        fi
    done
    return "$failed"
}

# Why a binary failed, kept short for CI's view of the lane log: each
# panic with the lines of its message, the known nginx bugs reported, the
# non-debug error.log lines the failing test printed, then the last lines.
failure_excerpt() {
    local out=$1
    awk '/KNOWN NGINX BUG/ { print; next }
        /panicked at/ { n = 8 }
        /^---- .*non-debug error.log lines/ { m = 31 }
        n > 0 { print; n--; next }
        m > 0 { print; m--; next }' "$out" | head -n 120
    echo "---- last lines of ${out##*/} ----"
    tail -n 15 "$out"
}

# One line: lane, binary, verdict, seconds, libtest's counts and the kTLS
# sockets the guest opened (scripts/ktls-vm's report).
summarize_binary_run() {
    local lane=$1 name=$2 rc=$3 seconds=$4 out=$5 counts sockets
    counts=$(grep -ho 'test result: .*; [0-9]* failed' "$out" | tail -n 1 | sed 's/test result: //')
    sockets=$(sed -n 's/^ktls-vm: guest kTLS sockets ([a-z]*): //p' "$out" | tail -n 1)
    printf '%-17s %-18s %-4s %4ss  %s; kTLS: %s\n' "$lane" "$name" \
        "$( ((rc == 0)) && echo ok || echo FAIL)" "$seconds" "${counts:-no result}" \
        "${sockets:-not reported}"
}
