# shellcheck shell=bash
# scripts/nginx-tests: installing what the suite needs, and preparing and running it under prove. Sourced by it, not run;
# uses its options and settings (the upper-case globals).

###############################################################################
# Prerequisites

install_prerequisites() {
	local -a wanted=("${SUITE_PACKAGES[@]}")
	if [ "$DEBIAN" = 1 ]; then
		wanted+=("${DEBIAN_PACKAGES[@]}")
	fi

	if in_other_release_tree; then
		install_prerequisites_in_release_tree "${wanted[@]}"
		return
	fi

	local -a missing=()
	local p
	for p in "${wanted[@]}"; do
		if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
			grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
	if [ ${#missing[@]} -eq 0 ]; then
		return
	fi
	if [ "$(id -u)" != 0 ]; then
		log "not root, cannot install: ${missing[*]} (tests that need them will skip)"
		return
	fi

	log "installing ${missing[*]}"
	# memcached, uwsgi and nginx come with services that Debian's maintainer
	# scripts start on installation (nginx on port 80); the suite starts its
	# own daemons, so tell invoke-rc.d not to start anything.
	local policy=/usr/sbin/policy-rc.d made_policy=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		made_policy=1
	fi
	local rc=0
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1 || rc=$?
	if [ "$rc" != 0 ]; then
		# Usually stale package lists on a fresh machine.
		rc=0
		apt-get update -q >>"$WORK/apt.log" 2>&1 &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				--no-install-recommends "${missing[@]}" \
				>>"$WORK/apt.log" 2>&1 || rc=$?
	fi
	if [ "$made_policy" = 1 ]; then
		rm -f "$policy"
	fi
	if [ "$rc" != 0 ]; then
		tail -n 20 "$WORK/apt.log" >&2
		die "apt-get install failed"
	fi
}

# The same in the release tree the guest boots from, with perl itself (a
# minbase tree has only perl-base).
install_prerequisites_in_release_tree() {
	local root have p
	root=$(release_dir "$RELEASE")/root
	have=" $(installed_in_release_tree "$root" perl "$@" | tr '\n' ' ') "
	local -a missing=()
	for p in perl "$@"; do
		[[ $have == *" $p "* ]] || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return
	log "installing in the $RELEASE tree: ${missing[*]}"
	install_in_release_tree "$root" "${missing[@]}"
}

###############################################################################
# Preparing and running the suite

# A scratch copy of the checkout plus the new tests: the user's checkout is
# never written to.  It lives in the work directory (a private tmpfs inside
# the kTLS VM, where the unprivileged user cannot chmod files on hostfs).
prepare_suite_copy() {
	SUITE=$WORK/suite
	mkdir -p "$SUITE"
	tar -C "$CHECKOUT" --exclude=.git -cf - . | tar -C "$SUITE" -xf -
	local t
	for t in "$REPO"/nginx-tests/perl/*.t; do
		[ -e "$t" ] || continue
		cp "$t" "$SUITE/"
	done
	chmod -R a+rX "$SUITE"
}

is_tls_test_file() {
	local name=$1 p
	# shellcheck disable=SC2053 # patterns on purpose
	[[ $name == $KTLS_EXCLUDE_PATTERN ]] && return 1
	for p in "${KTLS_FILE_PATTERNS[@]}"; do
		# shellcheck disable=SC2053
		[[ $name == $p ]] && return 0
	done
	for p in "${KTLS_EXTRA_FILES[@]}"; do
		[ "$name" = "$p" ] && return 0
	done
	return 1
}

select_test_files() {
	FILES=()
	local arg f matched
	if [ ${#TEST_ARGS[@]} -gt 0 ]; then
		for arg in "${TEST_ARGS[@]}"; do
			arg=$(basename "$arg")
			matched=0
			for f in "$SUITE"/$arg; do
				[ -f "$f" ] || continue
				FILES+=("$(basename "$f")")
				matched=1
			done
			[ "$matched" = 1 ] || die "no test file $arg in the checkout or nginx-tests/perl"
		done
	else
		for f in "$SUITE"/*.t; do
			f=$(basename "$f")
			if [ "$KTLS" = 1 ] && [ "$ALL" = 0 ] && ! is_tls_test_file "$f"; then
				continue
			fi
			FILES+=("$f")
		done
	fi
	[ ${#FILES[@]} -gt 0 ] || die "no test files selected"
	mapfile -t FILES <<<"$(printf '%s\n' "${FILES[@]}" | sort -u)"
}

# Runs prove over FILES, writing <file>.tap/.err/.meta into the results dir
# of the run.  $1: run name (baseline, module, module-recheck); $2: 1 to load
# the module; $3: prove jobs; then the files.
run_suite() {
	local run=$1 with_module=$2 jobs=$3
	shift 3
	local results=$WORK/results/$run tmp=$WORK/tmp/$run
	mkdir -p "$results" "$tmp"
	chown "$RUN_AS_UID:$RUN_AS_GID" "$results" "$tmp"

	local -a env=(
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
		HOME="$tmp" LANG=C.UTF-8
		TEST_NGINX_BINARY="$NGINX_BIN"
		NGXT_RESULTS="$results" NGXT_TMP="$tmp"
		NGXT_FILE_TIMEOUT="$FILE_TIMEOUT"
		NGXT_HTTP_DIRECTIVES="$(http_directives)"
	)
	if [ -n "$MODULES_DIR" ]; then
		env+=(TEST_NGINX_MODULES="$MODULES_DIR")
	fi
	if [ "$with_module" = 1 ]; then
		env+=(TEST_NGINX_GLOBALS="load_module $MODULE;"
			TEST_NGINX_KTLS_MODULE="$MODULE"
			NGXT_MODULE_DIRECTIVES="$(module_directives)")
	fi
	if kernel_has_ktls; then
		env+=(TEST_NGINX_KTLS_KERNEL=1)
	fi

	local tls_before
	tls_before=$(tls_tx_sockets)
	log "$run: $# test files, prove -j$jobs, limit ${RUN_TIMEOUT}s, live log $WORK/results/$run.prove.log"
	local rc=0
	# shellcheck disable=SC2086 # RUN_AS is a command and its options
	(cd "$SUITE" && env -i "${env[@]}" $RUN_AS \
		timeout -k 30 "$RUN_TIMEOUT" \
		prove -j"$jobs" --exec "$SELF __run-one" "$@") \
		>"$WORK/results/$run.prove.log" 2>&1 || rc=$?
	tail -n 4 "$WORK/results/$run.prove.log" | sed "s/^/  $run: /" >&2
	if [ "$rc" = 124 ]; then
		log "$run: prove was stopped after ${RUN_TIMEOUT}s"
	fi
	echo $(($(tls_tx_sockets) - tls_before)) >"$WORK/results/$run.tls-tx"
}

kernel_has_ktls() {
	[ -r /proc/net/tls_stat ]
}

# Kernel TLS TX sockets set up so far (counts connections, not bytes).
tls_tx_sockets() {
	if kernel_has_ktls; then
		awk '$1 == "TlsTxSw" || $1 == "TlsTxDevice" { n += $2 } END { print n + 0 }' \
			/proc/net/tls_stat
	else
		echo 0
	fi
}

# The tests must not run as root: nginx's workers (user nobody) cannot read
# the harness's temporary directories otherwise.
choose_unprivileged_user() {
	if [ "$(id -u)" = 0 ]; then
		RUN_AS_UID=$(id -u nobody)
		RUN_AS_GID=$(id -g nobody)
		RUN_AS="setpriv --reuid=$RUN_AS_UID --regid=$RUN_AS_GID --clear-groups"
	else
		RUN_AS_UID=$(id -u)
		RUN_AS_GID=$(id -g)
		RUN_AS=
	fi
}

check_readable_by_test_user() {
	local f
	for f in "$NGINX_BIN" "$MODULE" "$SUITE/lib/Test/Nginx.pm"; do
		# shellcheck disable=SC2086 # RUN_AS is a command and its options
		$RUN_AS test -r "$f" || die "$f is not readable by uid $RUN_AS_UID"
	done
}

