# shellcheck shell=bash
# scripts/nginx-tests: the results: per-file summaries, the comparison and the report. Sourced by it, not run;
# uses its options and settings (the upper-case globals).

###############################################################################
# Results

# One line per test file from its TAP output and .meta, tab separated:
# file status tests passed skipped todo failed failing-numbers reason
# sendfile-calls ktls-connections dropped-directives
summarize_run() {
	local run=$1 f
	local results=$WORK/results/$run
	for f in "${@:2}"; do
		summarize_test_file "$results" "$f"
	done
}

summarize_test_file() {
	local results=$1 f=$2
	local tap=$results/$f.tap meta=$results/$f.meta
	local rc=none sendfile=0 ktls=0 dropped=
	if [ -f "$meta" ]; then
		rc=$(awk -F'\t' '$1 == "rc" { print $2 }' "$meta")
		sendfile=$(awk -F'\t' '$1 == "sendfile" { print $2 }' "$meta")
		ktls=$(awk -F'\t' '$1 == "ktls_send" { print $2 }' "$meta")
		dropped=$(awk -F'\t' '$1 == "dropped" { print $2 }' "$meta")
	fi
	[ -f "$tap" ] || tap=/dev/null
	# What a test that died says last on stderr ("Can't start nginx ...").
	local last_words=
	if [ -s "$results/$f.err" ]; then
		last_words=$(grep -v '^[[:space:]]*$' "$results/$f.err" | tail -n 1 | cut -c1-80)
	fi
	awk -v file="$f" -v rc="$rc" -v sendfile="$sendfile" -v ktls="$ktls" \
		-v dropped="$dropped" -v last_words="$last_words" '
		BEGIN { planned = -1 }
		/^1\.\.[0-9]+/ {
			planned = substr($1, 4) + 0
			if (planned == 0) {
				reason = $0
				sub(/^1\.\.0[ \t]*(#[ \t]*[Ss][Kk][Ii][Pp][ \t]*)?/, "", reason)
			}
			next
		}
		/^ok/ {
			seen++
			if ($0 ~ /^ok [0-9]+ # [Ss][Kk][Ii][Pp]/) skipped++; else passed++
			next
		}
		/^not ok/ {
			seen++
			if ($0 ~ /#[ \t]*TODO/) todo++
			else { failed++; bad = bad (bad == "" ? "" : ",") $3 }
			next
		}
		/^Bail out!/ { bail = $0 }
		/^# nginx-tests: killed/ { killed = 1 }
		END {
			if (rc == "none") { status = "failed"; reason = "not run" }
			else if (planned == 0) status = "skipped"
			else {
				if (planned > seen) {
					# died early: the tests that never ran count as failed
					for (n = seen + 1; n <= planned; n++)
						bad = bad (bad == "" ? "" : ",") n
					failed += planned - seen
				}
				if (planned < 0) {
					bad = bad (bad == "" ? "" : ",") "0"
					failed++
					reason = "died: " last_words
				}
				status = (failed > 0 || rc != 0) ? "failed" : "ok"
				if (status == "failed" && bad == "") bad = "0"
				if (killed) reason = "killed by timeout"
				else if (bail != "") reason = bail
				else if (status == "failed" && rc != 0 && reason == "")
					reason = "exit " rc
			}
			tests = planned > 0 ? planned : seen
			if (tests < seen) tests = seen
			gsub(/[\t|]/, " ", reason)
			printf "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%d\t%d\t%s\n",
				file, status, tests, passed, skipped, todo, failed,
				(bad == "" ? "-" : bad), (reason == "" ? "-" : reason),
				sendfile, ktls, (dropped == "" ? "-" : dropped)
		}' "$tap"
}

# Joins the baseline and module summaries and adds a verdict per file:
# WORSE when the module's run fails a test the baseline passed or ends in a
# lower state (ok > skipped > failed), better for the opposite, else same.
# A module summary of a recheck run replaces the first one where given.
compare_runs() {
	local base=$1 mod=$2 recheck=${3:-/dev/null}
	awk -F'\t' -v OFS='\t' '
		function rank(s) { return s == "ok" ? 2 : s == "skipped" ? 1 : 0 }
		function worse(b, m,    nb, nm, i, set, bs, ms) {
			if (rank(m[2]) < rank(b[2])) return 1
			if (m[2] == "skipped" || b[2] == "skipped") return 0
			nb = split(b[8], bs, ","); nm = split(m[8], ms, ",")
			delete set
			for (i = 1; i <= nb; i++) set[bs[i]] = 1
			for (i = 1; i <= nm; i++)
				if (ms[i] != "-" && !(ms[i] in set)) return 1
			return 0
		}
		function better(b, m) {
			if (rank(m[2]) > rank(b[2])) return 1
			return b[2] != "skipped" && m[7] < b[7]
		}
		FILENAME == ARGV[1] { base[$1] = $0; next }
		FILENAME == ARGV[2] { mod[$1] = $0; order[++n] = $1; next }
		{ recheck[$1] = $0 }
		END {
			for (i = 1; i <= n; i++) {
				f = order[i]
				split(base[f], b, "\t"); split(mod[f], m, "\t")
				v = worse(b, m) ? "WORSE" : better(b, m) ? "better" : "same"
				if (v == "WORSE" && (f in recheck)) {
					split(recheck[f], r, "\t")
					if (!worse(b, r)) v = "flaky"
				}
				print base[f], mod[f], v
			}
		}' "$base" "$mod" "$recheck"
}

# "ok 24/24", "ok 20/24, 4 skipped", "failed 22/24: #3,#7 (exit 2)",
# "skipped: no http_v3 available"
describe_result() {
	local status=$1 tests=$2 passed=$3 skipped=$4 todo=$5 failed=$6 bad=$7 reason=$8
	if [ "$status" = skipped ]; then
		echo "skipped: $reason"
		return
	fi
	if [ "$status" = failed ] && [ "$tests" = 0 ]; then
		echo "failed ($reason)"
		return
	fi
	local s="$status $passed/$tests"
	[ "$skipped" = 0 ] || s+=", $skipped skipped"
	[ "$todo" = 0 ] || s+=", $todo todo"
	if [ "$failed" != 0 ]; then
		if [ ${#bad} -gt 30 ]; then
			bad="${bad:0:27}..."
		fi
		s+=", failed #${bad//,/,#}"
	fi
	[ "$reason" = - ] || s+=" ($reason)"
	echo "$s"
}

totals_line() {
	awk -F'\t' -v off="$1" '
		{ files++; st[$(off + 2)]++; tests += $(off + 3); passed += $(off + 4)
		  skipped += $(off + 5); todo += $(off + 6); failed += $(off + 7)
		  if ($(off + 10) > 0) sf++
		  if ($(off + 11) > 0) kt++ }
		END {
			printf "%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", files,
				st["ok"], st["skipped"], st["failed"], tests, passed,
				skipped, todo, failed, kt, sf
		}' "$2"
}

write_report() {
	local compared=$1 md=$2
	local -a b m
	local line verdict rows=() worse=0 flaky=0 better=0

	while IFS= read -r line; do
		IFS=$'\t' read -r -a b <<<"$line"
		m=("${b[@]:12:12}")
		verdict=${b[24]}
		case $verdict in
		WORSE) worse=$((worse + 1)) ;;
		flaky) flaky=$((flaky + 1)) ;;
		better) better=$((better + 1)) ;;
		esac
		rows+=("${b[0]}"$'\t'"$(describe_result "${b[@]:1:8}")"$'\t'"$(describe_result "${m[@]:1:8}")"$'\t'"$verdict"$'\t'"${b[9]} / ${m[9]}"$'\t'"${b[10]} / ${m[10]}"$'\t'"${m[11]}")
	done <"$compared"

	local tb tm
	tb=$(totals_line 0 "$compared")
	tm=$(totals_line 12 "$compared")

	local debug_note=
	binary_has_debug_log || debug_note=" (binary built without --with-debug: no debug log, counts are 0)"
	local where="host kernel (no kTLS: OpenSSL stays in userspace)"
	if [ "$INSIDE_VM" = 1 ]; then
		where="scripts/ktls-vm ($(uname -r), kernel TLS $(kernel_has_ktls && echo available || echo NOT available))"
	fi

	{
		echo "# nginx-tests: $LABEL"
		echo
		echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
		echo "- nginx: \`$NGINX_BIN\` ($NGINX_VERSION)"
		echo "- module: \`$MODULE\`, with \`${MODULE_CONF:-(no directives)}\`"
		echo "- suite: \`$CHECKOUT\` revision $(checkout_revision), plus nginx-tests/perl/*.t"
		echo "- where: $where"
		echo "- TEST_NGINX_GLOBALS_HTTP (both runs; a directive a test sets itself is left out for it):"
		echo "  \`$(http_directives | tr '\n' ' ')\`; with the module also \`${MODULE_CONF:-}\`"
		echo "- prove -j$JOBS as uid $RUN_AS_UID; limits ${RUN_TIMEOUT}s a run, ${FILE_TIMEOUT}s a file"
		echo "- kTLS TX sockets opened (/proc/net/tls_stat): baseline $(cat "$WORK/results/baseline.tls-tx"), module $(cat "$WORK/results/module.tls-tx")"
		echo
		echo "## Totals"
		echo
		echo "| run | files | ok | skipped | failed | tests | passed | skipped | todo | failed | files with kTLS TX | files with SSL_sendfile |"
		echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
		echo "| baseline | ${tb//$'\t'/ | } |"
		echo "| module | ${tm//$'\t'/ | } |"
		echo
		echo "Verdicts: $worse worse, $flaky flaky (worse once, not on a re-run), $better better."
		echo "kTLS TX: files whose debug log has \`BIO_get_ktls_send(): 1\`; SSL_sendfile: files whose debug log has \`SSL_sendfile:\`$debug_note."
		echo
		echo "## Files"
		echo
		echo "| file | baseline | with module | verdict | SSL_sendfile lines (baseline / module) | kTLS TX handshakes | directives left out |"
		echo "|---|---|---|---|---|---|---|"
		local r
		for r in "${rows[@]}"; do
			echo "| ${r//$'\t'/ | } |"
		done
	} >"$md"

	print_report_to_terminal "$tb" "$tm" "${rows[@]}"

	# shellcheck disable=SC2034 # read by scripts/nginx-tests
	WORSE_COUNT=$worse
}

print_report_to_terminal() {
	local tb=$1 tm=$2
	shift 2
	local r f base mod verdict sendfile
	printf '%-38s %-44s %-44s %-7s %s\n' file baseline "with module" verdict "SSL_sendfile b/m"
	for r in "$@"; do
		IFS=$'\t' read -r f base mod verdict sendfile _ _ <<<"$r"
		printf '%-38s %-44.44s %-44.44s %-7s %s\n' "$f" "$base" "$mod" "$verdict" "$sendfile"
	done
	echo
	local -a t
	for r in baseline module; do
		if [ "$r" = baseline ]; then IFS=$'\t' read -r -a t <<<"$tb"; else IFS=$'\t' read -r -a t <<<"$tm"; fi
		printf '%-8s files %s (ok %s, skipped %s, failed %s); tests %s: passed %s, skipped %s, todo %s, failed %s; files with kTLS TX %s, with SSL_sendfile %s\n' \
			"$r" "${t[@]}"
	done
}

save_results() {
	local dest=$REPO/target/nginx-tests/$LABEL
	mkdir -p "$REPO/target/nginx-tests"
	rm -rf "$dest"
	mkdir -p "$dest"
	cp -r "$WORK/results/." "$dest/"
	echo "$dest"
}

