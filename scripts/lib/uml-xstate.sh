# shellcheck shell=bash
# The correction that lets Debian 12's and 13's User-Mode Linux (6.1, 6.12)
# run on hosts whose CPUs have a larger XSAVE area than UML was built for
# (AMX: 11008 bytes against UML's 2696): uml-xstate-pad.c, preloaded into
# linux.uml by scripts/ktls-vm. Sourced, not run; uses the caller's log
# and die.

xstate_src_dir=$(dirname "${BASH_SOURCE[0]}")
readonly xstate_src_dir

# Builds uml-xstate-pad.so into DIR (once, and again when its source
# changes) and prints its path.
ensure_xstate_pad() {
    local dir=$1 so=$1/uml-xstate-pad.so src=$xstate_src_dir/uml-xstate-pad.c
    if [[ ! -s $so || $src -nt $so ]]; then
        command -v gcc >/dev/null || die "gcc is needed to build $so"
        mkdir -p "$dir"
        gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$so.tmp.$$" "$src" -ldl ||
            die "building $so failed"
        mv "$so.tmp.$$" "$so"
    fi
    echo "$so"
}

# Shows, on this host, both halves of what UML meets on a host with AMX: a
# PTRACE_SETREGSET of NT_X86_XSTATE shorter than the host's XSAVE area
# fails with EFAULT, and with uml-xstate-pad.so preloaded it succeeds and
# sets the state. Builds into DIR.
check_xstate_pad() {
    local dir=$1 so check=$1/uml-xstate-pad-check
    so=$(ensure_xstate_pad "$dir")
    gcc -O2 -Wall -Wextra -Werror -o "$check" "$xstate_src_dir/uml-xstate-pad-check.c" ||
        die "building $check failed"
    local rc=0
    "$check" short || rc=$?
    if ((rc == 3)); then
        log "this CPU's XSAVE area holds no more than the legacy state: UML needs no correction"
        return 0
    fi
    ((rc == 0)) || die "a short NT_X86_XSTATE SETREGSET did not fail with EFAULT here"
    LD_PRELOAD=$so "$check" padded || die "uml-xstate-pad.so did not correct a short SETREGSET"
}
