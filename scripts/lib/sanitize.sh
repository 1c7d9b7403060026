# shellcheck shell=bash
# The sanitizer build and its reports, shared by scripts/test-sanitize (the
# suite on this host) and the kTLS lane that runs the suite against it
# (scripts/lib/ktls-suite.sh). Sourced after common.sh.
#
# nginx 1.28 (nginx-src crate) is built with AddressSanitizer,
# UndefinedBehaviorSanitizer and per-allocation pools (NGX_DEBUG_PALLOC, so
# that every pool allocation is a heap block of its own and an overrun of
# one is caught); the module's own code and the crates it is built from are
# instrumented by rustc's AddressSanitizer (see build_sanitized).

readonly san_target=$REPO/target/sanitize
readonly san_out=$KTLS_OUT/sanitize
readonly san_rust_target=x86_64-unknown-linux-gnu

# nginx's core passes NULL with a length of 0 to memcpy() (ngx_pstrdup()
# and others), and on x86 reads HTTP/2 frame fields at any address
# (NGX_HAVE_NONALIGNED): defined in practice and not what this run looks
# for, so the nonnull and alignment checks are left out.
readonly san_cflags="-fsanitize=address,undefined -fno-sanitize=nonnull-attribute,alignment \
-fno-omit-frame-pointer -DNGX_DEBUG_PALLOC=1 -O1 -g"
readonly san_ldflags="-fsanitize=address,undefined"

# Builds the sanitizer nginx and the module against it into
# target/ktls/sanitize/. Stable rustc takes -Zsanitizer only with
# RUSTC_BOOTSTRAP; without rust-src the standard library stays
# uninstrumented, so the module's code, ngx, nginx-sys, openssl-sys and libc
# are checked, std's own code (Vec, String) is not, though its allocations
# are ASan's. The explicit --target keeps the flag off build scripts. The
# module's calls resolve to the ASan runtime nginx links (GCC's libasan,
# the same interface version as rustc's LLVM).
build_sanitized() {
    ensure_build_deps
    log "building nginx with ASan+UBSan and the module with rustc's ASan"
    local ngx_out
    ngx_out=$(RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR="$san_target" \
        NGX_CFLAGS="$san_cflags" NGX_LDFLAGS="$san_ldflags" \
        cargo_build_vendored --release --features vendored --target "$san_rust_target") ||
        die "sanitizer build failed"
    install_vendored_build "$ngx_out/objs" "$san_target/$san_rust_target/release" "$san_out"
}

# Empties DIR for the reports of a run and exports the sanitizer settings
# for every process it starts. Reports go to files (one per process), which
# nginx cannot swallow: its workers' stderr is the error log, which each
# test removes. Workers run as nobody: they must be able to write there.
# Leaks are not checked: nginx frees its cycle's memory by exiting. A
# report that went to nginx's error log instead (UBSan set up lazily in a
# worker writes to stderr) is copied into DIR by the test harness
# (KTLS_SANITIZER_REPORTS) before the test's work dir goes.
start_sanitizer_reports() {
    local dir=$1
    rm -rf "$dir" && mkdir -p "$dir" && chmod 1777 "$dir"
    export KTLS_SANITIZER_REPORTS=$dir
    export ASAN_OPTIONS="log_path=$dir/asan:detect_leaks=0:detect_stack_use_after_return=1"
    export UBSAN_OPTIONS="log_path=$dir/ubsan:print_stacktrace=1"
}

# Fails (returns 1) when any process wrote a report into DIR, and prints
# the start of each.
check_sanitizer_reports() {
    local dir=$1 files
    files=$(find "$dir" -maxdepth 1 \( -name 'asan.*' -o -name 'ubsan.*' -o -name 'sanitizer.*' \))
    if [ -z "$files" ]; then
        log "no sanitizer reports"
        return 0
    fi
    # shellcheck disable=SC2086 # one name per line, no spaces
    head -n 40 $files >&2
    log "sanitizer reports: $(echo "$files" | wc -l) (in ${dir#"$REPO"/})"
    return 1
}
