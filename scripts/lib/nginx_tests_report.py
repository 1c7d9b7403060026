#!/usr/bin/python3
"""The results of scripts/nginx-tests: per-file summaries, the comparison of
the two runs and the report.  Run by scripts/nginx-tests, not by hand:

    nginx_tests_report.py summarize RESULTS_DIR FILE...     > RUN.tsv
    nginx_tests_report.py compare BASELINE.tsv MODULE.tsv [RECHECK.tsv]
                                                            > compared.tsv
    nginx_tests_report.py worse COMPARED.tsv                (one file a line)
    nginx_tests_report.py report RESULTS_DIR MARKDOWN --label ... (see --help)

A summary has one line per test file, tab separated (the columns of
SUMMARY_FIELDS); "-" stands for an empty field.  A line of compared.tsv is
the baseline's summary, the module's and the verdict.
"""

import argparse
import datetime
import os
import re
import sys

SUMMARY_FIELDS = ["file", "status", "tests", "passed", "skipped", "todo", "failed",
                  "failing", "reason", "sendfile", "ktls", "dropped"]
# Better states rank higher: a file that fails is worse than one that skips.
STATUS_RANK = {"ok": 2, "skipped": 1}
VERDICTS = ["WORSE", "flaky", "better"]

PLAN = re.compile(r"^1\.\.([0-9]+)")
SKIP_ALL_PREFIX = re.compile(r"^1\.\.0[ \t]*(#[ \t]*[Ss][Kk][Ii][Pp][ \t]*)?")
SKIPPED_TEST = re.compile(r"^ok [0-9]+ # [Ss][Kk][Ii][Pp]")
TODO = re.compile(r"#[ \t]*TODO")
LAST_WORDS_WIDTH = 80
FAILING_WIDTH = 30

# Test output and error logs are not always UTF-8; what they say is passed on
# byte for byte.
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


def die(message):
    """Fails as scripts/lib/log.sh's die does, with nginx-tests' status 2."""
    print(f"nginx-tests: error: {message}", file=sys.stderr)
    sys.exit(2)


def read_lines(path):
    """The lines of a file without their newlines; none for a missing file.
    Only a newline ends a line (a carriage return in TAP output is text)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="", **ENCODING) as stream:
        text = stream.read()
    return text.removesuffix("\n").split("\n") if text else []


def split_list(text):
    """A comma-separated field as a list; none for an empty one."""
    return text.split(",") if text else []


def leading_int(text):
    """The number a count field starts with, 0 when there is none (as awk)."""
    match = re.match(r"[ \t]*[-+]?[0-9]+", text or "")
    return int(match.group()) if match else 0


def exit_failed(rc):
    return rc != "0"


# Summaries ###################################################################

def read_meta(path):
    """The .meta a test file's run leaves: rc, sendfile, ktls_send, dropped;
    None when there is none (the file never ran)."""
    if not os.path.exists(path):
        return None
    meta = {}
    for line in read_lines(path):
        key, _, value = line.partition("\t")
        meta.setdefault(key, value)
    return meta


def last_words(err_path):
    """What a test that died says last on stderr ("Can't start nginx ...")."""
    words = [line for line in read_lines(err_path) if line.strip()]
    return words[-1][:LAST_WORDS_WIDTH] if words else ""


def append_failing(tap, number):
    """Adds a test number to the comma-separated failing ones ("not ok"
    without a number adds nothing at the start)."""
    tap["failing"] += ("," if tap["failing"] else "") + number


def count_tap(lines):
    """The plan, counts and failing test numbers of a file's TAP output."""
    tap = {"planned": -1, "seen": 0, "passed": 0, "skipped": 0, "todo": 0, "failed": 0,
           "failing": "", "skip_reason": "", "bail": "", "killed": False}
    for line in lines:
        plan = PLAN.match(line)
        if plan:
            tap["planned"] = int(plan.group(1))
            if tap["planned"] == 0:
                tap["skip_reason"] = SKIP_ALL_PREFIX.sub("", line, count=1)
        elif line.startswith("ok"):
            tap["seen"] += 1
            tap["skipped" if SKIPPED_TEST.match(line) else "passed"] += 1
        elif line.startswith("not ok"):
            tap["seen"] += 1
            if TODO.search(line):
                tap["todo"] += 1
            else:
                tap["failed"] += 1
                words = line.split()
                append_failing(tap, words[2] if len(words) > 2 else "")
        elif line.startswith("Bail out!"):
            tap["bail"] = line
        elif line.startswith("# nginx-tests: killed"):
            tap["killed"] = True
    return tap


def judge_run(tap, rc, died_with):
    """Status and reason of a file's run; counts the tests it never ran (or
    a run that never got to its plan) as failed, in tap."""
    if rc is None:
        return "failed", "not run"
    planned, seen = tap["planned"], tap["seen"]
    if planned == 0:
        return "skipped", tap["skip_reason"]
    reason = ""
    if planned > seen:
        for n in range(seen + 1, planned + 1):
            append_failing(tap, str(n))
        tap["failed"] += planned - seen
    if planned < 0:
        append_failing(tap, "0")
        tap["failed"] += 1
        reason = "died: " + died_with
    failed = tap["failed"] > 0 or exit_failed(rc)
    if failed and not tap["failing"]:
        tap["failing"] = "0"
    if tap["killed"]:
        reason = "killed by timeout"
    elif tap["bail"]:
        reason = tap["bail"]
    elif failed and exit_failed(rc) and not reason:
        reason = f"exit {rc}"
    return ("failed" if failed else "ok"), reason


def summarize_test_file(results, name):
    """The summary line (a list of SUMMARY_FIELDS) of one test file's run."""
    base = os.path.join(results, name)
    meta = read_meta(base + ".meta")
    rc = None if meta is None else meta.get("rc", "")
    tap = count_tap(read_lines(base + ".tap"))
    status, reason = judge_run(tap, rc, last_words(base + ".err"))
    tests = max(tap["planned"] if tap["planned"] > 0 else tap["seen"], tap["seen"])
    meta = meta or {}
    return [name, status, str(tests), str(tap["passed"]), str(tap["skipped"]),
            str(tap["todo"]), str(tap["failed"]), tap["failing"] or "-",
            re.sub(r"[\t|]", " ", reason) or "-",
            str(leading_int(meta.get("sendfile", "0"))),
            str(leading_int(meta.get("ktls_send", "0"))),
            meta.get("dropped") or "-"]


def summarize_run(results, names):
    return [summarize_test_file(results, name) for name in names]


def read_summaries(path):
    """The lines of a summary or compared.tsv, which must be there (a .tap
    or .err may be missing: read_lines)."""
    if not os.path.isfile(path):
        die(f"no such file: {path}")
    return [line.split("\t") for line in read_lines(path) if line]


def write_rows(rows, stream=sys.stdout):
    for row in rows:
        stream.write("\t".join(row) + "\n")


# The comparison ##############################################################

def field(summary, name):
    index = SUMMARY_FIELDS.index(name)
    return summary[index] if index < len(summary) else ""


def is_worse(base, mod):
    """The module's run ends in a lower state, or fails a test the baseline
    passed."""
    base_status, mod_status = field(base, "status"), field(mod, "status")
    if STATUS_RANK.get(mod_status, 0) < STATUS_RANK.get(base_status, 0):
        return True
    if "skipped" in (base_status, mod_status):
        return False
    failed_before = set(split_list(field(base, "failing")))
    return any(n != "-" and n not in failed_before for n in split_list(field(mod, "failing")))


def is_better(base, mod):
    if STATUS_RANK.get(field(mod, "status"), 0) > STATUS_RANK.get(field(base, "status"), 0):
        return True
    return (field(base, "status") != "skipped"
            and leading_int(field(mod, "failed")) < leading_int(field(base, "failed")))


def verdict(base, mod, recheck):
    """WORSE, better or same; flaky for a WORSE that a recheck run (one file
    at a time) did not repeat."""
    if is_worse(base, mod):
        return "flaky" if recheck is not None and not is_worse(base, recheck) else "WORSE"
    return "better" if is_better(base, mod) else "same"


def compare_runs(baseline, module, recheck):
    """Lines of compared.tsv, in the order of the module's summaries."""
    base_by_file = {row[0]: row for row in baseline}
    recheck_by_file = {row[0]: row for row in recheck}
    rows = []
    for mod in module:
        base = base_by_file.get(mod[0], [""])
        rows.append(base + mod + [verdict(base, mod, recheck_by_file.get(mod[0]))])
    return rows


def split_compared(row):
    """A line of compared.tsv as its baseline summary, module summary and
    verdict."""
    width = len(SUMMARY_FIELDS)
    return row[:width], row[width:2 * width], row[2 * width] if len(row) > 2 * width else ""


def worse_files(compared):
    return [split_compared(row)[0][0] for row in compared if split_compared(row)[2] == "WORSE"]


# The report ##################################################################

def describe_result(summary):
    """"ok 24/24", "ok 20/24, 4 skipped", "failed 22/24, failed #3,#7 (exit 2)",
    "skipped: no http_v3 available"."""
    def get(name):
        return field(summary, name)
    if get("status") == "skipped":
        return f"skipped: {get('reason')}"
    if get("status") == "failed" and get("tests") == "0":
        return f"failed ({get('reason')})"
    text = f"{get('status')} {get('passed')}/{get('tests')}"
    if get("skipped") != "0":
        text += f", {get('skipped')} skipped"
    if get("todo") != "0":
        text += f", {get('todo')} todo"
    if get("failed") != "0":
        failing = get("failing")
        if len(failing) > FAILING_WIDTH:
            failing = failing[:FAILING_WIDTH - 3] + "..."
        text += ", failed #" + failing.replace(",", ",#")
    if get("reason") != "-":
        text += f" ({get('reason')})"
    return text


def report_rows(compared):
    """The columns of the report's table of files, one list per file."""
    rows = []
    for row in compared:
        base, mod, judged = split_compared(row)
        rows.append([base[0], describe_result(base), describe_result(mod), judged,
                     f"{field(base, 'sendfile')} / {field(mod, 'sendfile')}",
                     f"{field(base, 'ktls')} / {field(mod, 'ktls')}",
                     field(mod, "dropped")])
    return rows


def totals(summaries):
    """files, ok, skipped, failed, tests, passed, skipped, todo, failed, files
    with kTLS TX, files with SSL_sendfile."""
    statuses = [field(s, "status") for s in summaries]

    def total(name):
        return sum(leading_int(field(s, name)) for s in summaries)

    def files_with(name):
        return sum(1 for s in summaries if leading_int(field(s, name)) > 0)

    return [len(summaries), statuses.count("ok"), statuses.count("skipped"),
            statuses.count("failed"), total("tests"), total("passed"), total("skipped"),
            total("todo"), total("failed"), files_with("ktls"), files_with("sendfile")]


def count_verdicts(compared):
    judged = [split_compared(row)[2] for row in compared]
    return {v: judged.count(v) for v in VERDICTS}


def markdown_row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def read_count(path):
    lines = read_lines(path)
    return lines[0] if lines else ""


def markdown_report(facts, results, compared):
    """The report as Markdown lines; facts are the report's options."""
    base_totals = totals([split_compared(r)[0] for r in compared])
    mod_totals = totals([split_compared(r)[1] for r in compared])
    counted = count_verdicts(compared)
    debug_note = "" if facts.debug_log else \
        " (binary built without --with-debug: no debug log, counts are 0)"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# nginx-tests: {facts.label}",
        "",
        f"- date: {now}",
        f"- nginx: `{facts.nginx}` ({facts.nginx_version})",
        f"- module: `{facts.module}`, with `{facts.module_conf or '(no directives)'}`",
        f"- suite: `{facts.suite}` revision {facts.suite_revision}, plus nginx-tests/perl/*.t",
        f"- where: {facts.where}",
        "- TEST_NGINX_GLOBALS_HTTP (both runs; a directive a test sets itself is left out for it):",
        f"  `{' '.join(facts.http_directives.splitlines())}`;"
        f" with the module also `{facts.module_conf}`",
        f"- prove -j{facts.jobs} as uid {facts.uid}; limits {facts.run_timeout}s a run,"
        f" {facts.file_timeout}s a file",
        "- kTLS TX sockets opened (/proc/net/tls_stat):"
        f" baseline {read_count(os.path.join(results, 'baseline.tls-tx'))},"
        f" module {read_count(os.path.join(results, 'module.tls-tx'))}",
        "",
        "## Totals",
        "",
        markdown_row(["run", "files", "ok", "skipped", "failed", "tests", "passed", "skipped",
                      "todo", "failed", "files with kTLS TX", "files with SSL_sendfile"]),
        "|---" * 12 + "|",
        markdown_row(["baseline"] + base_totals),
        markdown_row(["module"] + mod_totals),
        "",
        f"Verdicts: {counted['WORSE']} worse, {counted['flaky']} flaky (worse once, not on a"
        f" re-run), {counted['better']} better.",
        "kTLS TX: files whose debug log has `BIO_get_ktls_send(): 1`; SSL_sendfile: files whose"
        f" debug log has `SSL_sendfile:`{debug_note}.",
        "",
        "## Files",
        "",
        markdown_row(["file", "baseline", "with module", "verdict",
                      "SSL_sendfile lines (baseline / module)", "kTLS TX handshakes",
                      "directives left out"]),
        "|---" * 7 + "|",
    ]
    return lines + [markdown_row(r) for r in report_rows(compared)]


def terminal_report(compared):
    """The table for the terminal: one line per file, then the totals."""
    lines = ["%-38s %-44s %-44s %-7s %s" % ("file", "baseline", "with module", "verdict",
                                            "SSL_sendfile b/m")]
    for f, base, mod, judged, sendfile, _, _ in report_rows(compared):
        lines.append("%-38s %-44.44s %-44.44s %-7s %s" % (f, base, mod, judged, sendfile))
    lines.append("")
    for run, side in (("baseline", 0), ("module", 1)):
        t = totals([split_compared(r)[side] for r in compared])
        lines.append("%-8s files %s (ok %s, skipped %s, failed %s); tests %s: passed %s,"
                     " skipped %s, todo %s, failed %s; files with kTLS TX %s,"
                     " with SSL_sendfile %s" % (run, *t))
    return lines


def write_report(facts):
    compared = read_summaries(os.path.join(facts.results, "compared.tsv"))
    with open(facts.markdown, "w", **ENCODING) as stream:
        stream.writelines(line + "\n" for line in markdown_report(facts, facts.results, compared))
    for line in terminal_report(compared):
        print(line)


# Command line ################################################################

class Parser(argparse.ArgumentParser):
    def error(self, message):
        die(f"{self.prog}: {message}")


def parse_args(argv):
    parser = Parser(prog="nginx_tests_report.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    summarize = commands.add_parser("summarize", help="summary lines of one run's test files")
    summarize.add_argument("results", help="the run's directory of .tap, .err and .meta files")
    summarize.add_argument("files", nargs="+")

    compare = commands.add_parser("compare", help="the baseline's and module's summaries joined,"
                                  " with a verdict per file")
    compare.add_argument("baseline")
    compare.add_argument("module")
    compare.add_argument("recheck", nargs="?", help="summaries of a re-run of the worse files")

    worse = commands.add_parser("worse", help="the files a comparison calls WORSE")
    worse.add_argument("compared")

    report = commands.add_parser("report", help="writes the Markdown report, prints the table")
    report.add_argument("results", help="the directory of compared.tsv and RUN.tls-tx")
    report.add_argument("markdown", help="where the report goes")
    for name in ("label", "nginx", "nginx-version", "module", "suite", "suite-revision",
                 "where", "http-directives", "jobs", "uid", "run-timeout", "file-timeout"):
        report.add_argument("--" + name, required=True)
    report.add_argument("--module-conf", default="")
    report.add_argument("--debug-log", action="store_true",
                        help="the binary writes a debug log (the counts mean something)")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    sys.stdout.reconfigure(errors="surrogateescape")
    try:
        if args.command == "summarize":
            write_rows(summarize_run(args.results, args.files))
        elif args.command == "compare":
            recheck = read_summaries(args.recheck) if args.recheck else []
            write_rows(compare_runs(read_summaries(args.baseline),
                                    read_summaries(args.module), recheck))
        elif args.command == "worse":
            for name in worse_files(read_summaries(args.compared)):
                print(name)
        elif args.command == "report":
            write_report(args)
    except OSError as err:
        die(str(err))


if __name__ == "__main__":
    main(sys.argv[1:])
