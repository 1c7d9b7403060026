# shellcheck shell=bash
# The one log, warn and die of every script. Sourced, not run.
#
# A script whose lines are read inside another's output (ktls-vm, measure,
# nginx-tests, package-serve) sets log_name first, so that its lines say
# whose they are: "NAME: message", "NAME: error: message"; without it,
# "==> message" and "error: message". die exits with die_status (default 1).

log() {
    if [[ -n ${log_name:-} ]]; then
        printf '%s: %s\n' "$log_name" "$*" >&2
    else
        printf '==> %s\n' "$*" >&2
    fi
}

warn() { log "warning: $*"; }

die() {
    if [[ -n ${log_name:-} ]]; then
        printf '%s: error: %s\n' "$log_name" "$*" >&2
    else
        printf 'error: %s\n' "$*" >&2
    fi
    exit "${die_status:-1}"
}
