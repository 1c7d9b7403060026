# shellcheck shell=bash
# scripts/nginx-tests: the results.  The per-file summaries, the comparison
# and the report are scripts/lib/nginx_tests_report.py's; this passes it the
# run's files and what the script knows.  Sourced by it, not run; uses its
# options and settings (the upper-case globals).

readonly REPORT_TOOL=$REPO/scripts/lib/nginx_tests_report.py

# Debian's python3 by path: inside scripts/ktls-vm PATH is the guest's.
report_tool() {
	/usr/bin/python3 "$REPORT_TOOL" "$@"
}

# Before the suite runs for an hour, not after: a release tree or a
# --no-install guest may lack python3.
check_report_tool() {
	[ -x /usr/bin/python3 ] || die "no /usr/bin/python3 here, which the report needs (Debian's python3)"
}

# $WORK/results/RUN.tsv: one line per test file of run $1 (then the files)
# from its TAP output, stderr and .meta.
summarize_run() {
	local run=$1
	shift
	report_tool summarize "$WORK/results/$run" "$@" >"$WORK/results/$run.tsv"
}

# $WORK/results/compared.tsv: the baseline's and the module's summaries with
# a verdict per file; $1, a recheck run's summaries, turns a WORSE file that
# the recheck passed into a flaky one.
compare_runs() {
	report_tool compare "$WORK/results/baseline.tsv" "$WORK/results/module.tsv" "$@" \
		>"$WORK/results/compared.tsv"
}

# WORSE_FILES: the files compared.tsv calls worse.
# (no process substitution here: the kTLS VM has no /dev/fd)
find_worse_files() {
	local list
	WORSE_FILES=()
	list=$(report_tool worse "$WORK/results/compared.tsv")
	# shellcheck disable=SC2034 # read by scripts/nginx-tests
	[ -z "$list" ] || mapfile -t WORSE_FILES <<<"$list"
}

# Writes the Markdown report to $1 and prints its table.
write_report() {
	local md=$1
	local where="host kernel (no kTLS: OpenSSL stays in userspace)"
	if [ "$INSIDE_VM" = 1 ]; then
		where="scripts/ktls-vm ($(uname -r), kernel TLS $(kernel_has_ktls && echo available || echo NOT available))"
	fi
	local -a debug_log=()
	if binary_has_debug_log; then
		debug_log=(--debug-log)
	fi
	report_tool report "$WORK/results" "$md" --label "$LABEL" \
		--nginx "$NGINX_BIN" --nginx-version "$NGINX_VERSION" \
		--module "$MODULE" --module-conf "$MODULE_CONF" \
		--suite "$CHECKOUT" --suite-revision "$(checkout_revision)" \
		--where "$where" --http-directives "$(http_directives)" \
		--jobs "$JOBS" --uid "$RUN_AS_UID" \
		--run-timeout "$RUN_TIMEOUT" --file-timeout "$FILE_TIMEOUT" "${debug_log[@]}"
}

save_results() {
	local dest=$REPO/target/nginx-tests/$LABEL
	mkdir -p "$REPO/target/nginx-tests"
	rm -rf "$dest"
	mkdir -p "$dest"
	cp -r "$WORK/results/." "$dest/"
	echo "$dest"
}
