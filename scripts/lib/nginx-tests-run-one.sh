# shellcheck shell=bash
# scripts/nginx-tests: what prove runs for each test file. Sourced by it, not run;
# uses its options and settings (the upper-case globals).

###############################################################################
# Running one test file: what prove runs for every .t file (--exec).
# Runs as the unprivileged user; its settings come from NGXT_* variables.

# A directive that nginx refuses to see twice in one block ("sendfile",
# "ktls": "is duplicate"), or one whose second appearance silently changes its
# meaning ("ssl_protocols" adds up the protocols of both lines, so a test that
# wants TLSv1.2 only would get TLSv1.3 too), is left out for a test file that
# sets it anywhere itself.  "*ssl_conf_command" lines add up, and one in a
# server{} replaces the http{} ones, so they are always safe.
# $1: the test file; $2: directives, one a line.  Adds the kept ones to
# SAFE_DIRECTIVES and the names of the others to DROPPED.
keep_directives_safe_for_test_file() {
	local test=$1 line name
	while IFS= read -r line; do
		[ -n "$line" ] || continue
		name=${line%% *}
		case $name in
		*ssl_conf_command) ;;
		*)
			if grep -Eq "^[[:space:]]*${name}[[:space:]]" "$test"; then
				DROPPED+="${DROPPED:+,}$name"
				continue
			fi
			;;
		esac
		SAFE_DIRECTIVES+="${SAFE_DIRECTIVES:+ }$line"
	done <<<"$2"
}

# Counts debug-log lines across every log the test's nginx wrote.  The
# patterns are anchored at the connection number ("*12 SSL_sendfile: ..."),
# so that other lines that quote them do not count.
count_in_logs() {
	local dir=$1 pattern=$2
	{ grep -rhoE --include='*.log' -e "\*[0-9]+ $pattern" "$dir" 2>/dev/null || true; } |
		wc -l
}

keep_logs_of_failed_file() {
	local tmp=$1 dest=$2 log rel
	mkdir -p "$dest"
	# (no process substitution here: the kTLS VM has no /dev/fd)
	find "$tmp" -name '*.log' -type f 2>/dev/null |
		while IFS= read -r log; do
			rel=${log#"$tmp"/}
			rel=${rel//\//_}
			# Debug logs of large responses run to tens of megabytes.
			tail -c 2000000 "$log" >"$dest/$rel" || true
		done
}

run_one_test_file() {
	local test=$1 name tmp tap err rc=0 child
	name=$(basename "$test")
	tmp=$NGXT_TMP/${name%.t}
	tap=$NGXT_RESULTS/$name.tap
	err=$NGXT_RESULTS/$name.err
	rm -rf "$tmp"
	mkdir -p "$tmp"

	SAFE_DIRECTIVES=
	DROPPED=
	keep_directives_safe_for_test_file "$test" "$NGXT_HTTP_DIRECTIVES"
	keep_directives_safe_for_test_file "$test" "${NGXT_MODULE_DIRECTIVES:-}"
	# The harness's own debug-log option: TEST_NGINX_LEAVE keeps the test's
	# directory (and so its error.log, always written at "debug" level) so
	# that SSL_sendfile calls can be counted below; removed afterwards.
	export TMPDIR=$tmp TEST_NGINX_LEAVE=1
	export TEST_NGINX_GLOBALS_HTTP=$SAFE_DIRECTIVES

	# In the background so that a TERM from prove's timeout can be passed
	# on: timeout(1) then ends the test, its nginx and its daemons, which
	# share the test's process group.
	timeout -k 10 "$NGXT_FILE_TIMEOUT" perl "$test" >"$tap" 2>"$err" &
	child=$!
	trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
	wait "$child" || rc=$?
	if kill -0 "$child" 2>/dev/null; then
		wait "$child" || rc=$?
	fi
	trap - TERM INT
	if [ "$rc" = 124 ]; then
		echo "# nginx-tests: killed after ${NGXT_FILE_TIMEOUT}s" >>"$tap"
	fi

	printf 'rc\t%s\nsendfile\t%s\nktls_send\t%s\ndropped\t%s\n' \
		"$rc" \
		"$(count_in_logs "$tmp" 'SSL_sendfile: ')" \
		"$(count_in_logs "$tmp" 'BIO_get_ktls_send\(\): 1')" \
		"$DROPPED" >"$NGXT_RESULTS/$name.meta"

	if [ "$rc" != 0 ] || grep -q '^not ok' "$tap"; then
		keep_logs_of_failed_file "$tmp" "$NGXT_RESULTS/$name.logs"
	fi
	rm -rf "$tmp"

	cat "$tap"
	exit "$rc"
}

