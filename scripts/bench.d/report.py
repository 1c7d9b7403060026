#!/usr/bin/python3
"""Turns the raw rows of scripts/bench.d/measure into tables.

    report.py RAW_DIR OUT_DIR

Reads RAW_DIR/ENV-{timing,counts,syscalls,probes,connection}.tsv,
ENV-error-log.txt and meta.txt;
writes OUT_DIR/bench.md and OUT_DIR/bench.csv and prints the Markdown.

"Per response" means per response-equivalent: body bytes received divided by
the body size of one response. Timed runs stop at a deadline, in the middle of
a response (a 64 MiB one lasts longer than a pass inside the guest), so
counting completed requests would misstate them.
"""

import collections
import csv
import glob
import math
import os
import statistics
import sys

SETUP_ORDER = ["nginx-ktls", "module-ktls", "module-ktls-preadv", "module-ktls-sf0",
               "module-ktls-rx-on", "module-ktls-rx-off", "module-ktls-rx-nopad", "userspace",
               "host-nginx", "host-module"]
# Each setup is compared with nginx's own send path in the same kernel.
BASELINE = {"module-ktls": "nginx-ktls", "module-ktls-preadv": "nginx-ktls",
            "module-ktls-sf0": "nginx-ktls", "module-ktls-rx-on": "nginx-ktls",
            "module-ktls-rx-off": "nginx-ktls", "module-ktls-rx-nopad": "nginx-ktls",
            "userspace": "nginx-ktls",
            "host-module": "host-nginx"}
WORKLOAD_ORDER = ["h1-4k", "h1-64k", "h1-1m", "h1-64m", "h2-1m-s1", "h2-1m-s8",
                  "h2-64m-s1", "h2-64m-s8", "h1-ssi", "h1-ranges", "up-h1-1m", "up-h2-1m",
                  "up-h1-100m", "up-h2-100m"]
# Uploads: receiving in the kernel against receiving in userspace, the same
# module sending with kTLS in both; and userspace TLS both ways.
UPLOAD_SETUPS = ["module-ktls-rx-on", "module-ktls-rx-nopad", "module-ktls-rx-off", "userspace",
                 "nginx-ktls"]
UPLOAD_BASELINE = "module-ktls-rx-off"
MIB = 1 << 20
FILE_SIZES = {"64m": 64 << 20}
# (key, column title, unit, higher is better)
METRICS = [
    ("mbps", "MB/s", "MB/s", True),
    ("rps", "req/s", "responses/s", True),
    ("cpu_per_gb", "worker CPU s/GB", "s/GB", False),
    ("syscalls", "syscalls/resp", "calls/response", False),
    ("file_kib", "KiB copied from files/resp", "KiB/response", False),
    ("records", "TLS records/resp", "records/response", False),
    ("small_records", "records <1 KiB/resp", "records/response", False),
]


def read_tsv(pattern):
    """Rows of every file matching pattern (one file per environment)."""
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path, newline="") as stream:
            rows += [line.rstrip("\n").split("\t") for line in stream if line.strip()]
    return rows


def read_meta(path):
    meta = {}
    if os.path.exists(path):
        with open(path) as stream:
            for line in stream:
                key, _, value = line.rstrip("\n").partition("=")
                meta[key] = value
    return meta


def seconds(text):
    """h2load's durations: 2.01s, 507.73ms, 950us."""
    for unit, scale in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    raise ValueError(f"not a duration: {text}")


def fmt(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def whole(value):
    """A count that may be a median of two (x.5)."""
    return str(int(value)) if float(value).is_integer() else fmt(value)


def order_key(order, name):
    return (order.index(name), name) if name in order else (len(order), name)


class Results:
    def __init__(self, raw_dir):
        self.meta = read_meta(os.path.join(raw_dir, "meta.txt"))
        self.body = {}  # (env, setup, workload) -> body bytes of one response
        self.probe_rows = read_tsv(os.path.join(raw_dir, "*-probes.tsv"))
        for env, setup, workload, data, _proto, _cipher in self.probe_rows:
            self.body[(env, setup, workload)] = int(data)
        self.samples = collections.defaultdict(lambda: collections.defaultdict(list))
        self.env_of = {}
        self.failures = collections.Counter()
        self.ktls_sockets = collections.defaultdict(list)
        self.tls_seen = collections.Counter()
        self.syscall_mix = collections.defaultdict(lambda: collections.defaultdict(list))
        self.counting_requests = {}
        self.unparsed_streams = collections.Counter()
        # (env, setup) -> what a connection without requests costs: the
        # median of the measurements (timer calls vary by a few).
        measured = collections.defaultdict(lambda: collections.defaultdict(list))
        for env, setup, version, syscalls, file_bytes, counters in read_tsv(
                os.path.join(raw_dir, "*-connection.tsv")):
            relay = dict(item.split("=") for item in counters.split())
            costs = measured[(env, setup)]
            costs["version"] = version
            costs["syscalls"].append(int(syscalls))
            costs["file_kib"].append(int(file_bytes) / 1024)
            costs["records"].append(int(relay["appdata"]))
            costs["small_records"].append(int(relay["appdata_small"]))
        self.connection = {
            key: {"version": costs.pop("version"), "runs": len(costs["syscalls"]),
                  "range": f"{min(costs['syscalls'])}..{max(costs['syscalls'])}",
                  **{metric: statistics.median(values) for metric, values in costs.items()}}
            for key, costs in measured.items()}
        self.read_timing(os.path.join(raw_dir, "*-timing.tsv"))
        self.read_counts(os.path.join(raw_dir, "*-counts.tsv"),
                         os.path.join(raw_dir, "*-syscalls.tsv"))
        self.error_log = []
        for path in sorted(glob.glob(os.path.join(raw_dir, "*-error-log.txt"))):
            with open(path) as stream:
                self.error_log += stream.read().splitlines()

    def body_size(self, env, setup, workload):
        if (env, setup, workload) in self.body:
            return self.body[(env, setup, workload)]
        for suffix, size in FILE_SIZES.items():
            if suffix in workload:
                return size
        raise SystemExit(f"report: no response size for {env}/{setup}/{workload}")

    def read_timing(self, path):
        for row in read_tsv(path):
            (env, setup, workload, _rep, elapsed, data, _ok, failed, ticks, hertz, sockets,
             proto, cipher) = row
            key = (workload, setup)
            self.env_of[setup] = env
            elapsed, data, cpu = seconds(elapsed), int(data), int(ticks) / int(hertz)
            responses = data / self.body_size(env, setup, workload)
            self.samples[key]["mbps"].append(data / elapsed / 1e6)
            self.samples[key]["rps"].append(responses / elapsed)
            if data:
                self.samples[key]["cpu_per_gb"].append(cpu / (data / 1e9))
            self.failures[key] += int(failed)
            if sockets != "NA":
                self.ktls_sockets[setup].append(int(sockets))
            self.tls_seen[(env, proto, cipher)] += 1

    def read_counts(self, counts_path, syscalls_path):
        responses_of = {}
        for row in read_tsv(counts_path):
            (env, setup, workload, rep, _elapsed, data, _ok, failed, total, file_bytes,
             counters) = row
            key = (workload, setup)
            self.env_of[setup] = env
            relay = dict(item.split("=") for item in counters.split())
            self.unparsed_streams[setup] += int(relay["bad"])
            responses = int(data) / self.body_size(env, setup, workload)
            responses_of[(setup, workload, rep)] = responses
            counted = self.counting_requests.setdefault(env, {})
            if "64m" in workload:
                counted[workload] = "timed"
            else:
                counted.setdefault(workload, _ok)
            self.failures[key] += int(failed)
            if responses <= 0:
                continue
            # Net of what the pass's connections cost without any request.
            connections = int(relay["connections"])
            setup_cost = self.connection.get((env, setup), {})
            for metric, measured in (("syscalls", int(total)),
                                     ("file_kib", int(file_bytes) / 1024),
                                     ("records", int(relay["appdata"])),
                                     ("small_records", int(relay["appdata_small"]))):
                net = measured - connections * setup_cost.get(metric, 0)
                self.samples[key][metric].append(net / responses)
        per_rep = collections.defaultdict(dict)
        for _env, setup, workload, rep, name, calls in read_tsv(syscalls_path):
            responses = responses_of.get((setup, workload, rep))
            if responses:
                per_rep[(workload, setup, rep)][name] = int(calls) / responses
        for (workload, setup, _rep), calls in per_rep.items():
            for name, value in calls.items():
                self.syscall_mix[(workload, setup)][name].append(value)

    def keys(self):
        return sorted(self.samples, key=lambda k: (order_key(WORKLOAD_ORDER, k[0]),
                                                     order_key(SETUP_ORDER, k[1])))

    def stats(self, key, metric):
        values = self.samples.get(key, {}).get(metric, [])
        if not values:
            return None
        return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values)}

    def worse_mark(self, key, metric, higher_better):
        """"!!" if clearly more than 5% worse than the baseline, "!" if within noise."""
        ratio = self.ratio(key, metric)
        if ratio is None or not (ratio < 0.95 if higher_better else ratio > 1.05):
            return ""
        mine = self.stats(key, metric)
        theirs = self.stats((key[0], BASELINE[key[1]]), metric)
        if min(mine["n"], theirs["n"]) < 2:
            return "!"  # one sample each: no spread to judge by
        apart = mine["max"] < theirs["min"] if higher_better else mine["min"] > theirs["max"]
        return "!!" if apart else "!"

    def ratio(self, key, metric):
        workload, setup = key
        baseline = BASELINE.get(setup)
        if not baseline:
            return None
        mine, theirs = self.stats(key, metric), self.stats((workload, baseline), metric)
        if not mine or not theirs or theirs["mean"] == 0:
            return None
        return mine["mean"] / theirs["mean"]


def cell(stats):
    if not stats:
        return "n/a"
    return f"{fmt(stats['mean'])} [{fmt(stats['min'])}..{fmt(stats['max'])}]"


def markdown(results):
    meta = results.meta
    lines = ["# nginx-ktls benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in meta.items()]
    lines += [
        "",
        "Cells: mean [min..max] over the repetitions. MB/s and req/s come from timing passes "
        "(h2load straight to nginx); req/s counts response-equivalents (body bytes received / "
        "body size of one response), because a timed pass stops in the middle of a response. "
        "MB = 10^6 bytes of response body. Worker CPU = utime+stime of the nginx worker "
        "(/proc/PID/stat, 10 ms ticks) over the timing pass. System calls (all of the "
        "worker's, failed ones included, from a full strace of the worker), KiB copied from "
        "files (what the worker's successful read/readv/pread64/preadv/preadv2 calls on the "
        "served files returned, from the same trace: file data read into userspace rather "
        "than sent with sendfile or splice; KiB = 1024 bytes) and TLS records (application-data records server->client, counted by "
        "a relay from the plaintext record headers) come from separate counting passes of a "
        "fixed number of requests, and are net of what one connection costs without any "
        "request (handshake, session tickets, accept, close: see Connection setup below). "
        "Guest setups run under User-Mode Linux with 1 CPU and generic-C kernel crypto: "
        "compare them only with each other, never with the host rows. Timing figures vary a "
        "lot from pass to pass (the machine is shared, the guest has one CPU): trust a timing "
        "ratio only where the min..max ranges do not overlap; the counts are the solid "
        "figures.",
        "",
        "## Figures",
        "",
        "| workload | setup | " + " | ".join(title for _k, title, _u, _h in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for key in results.keys():
        workload, setup = key
        cells = [cell(results.stats(key, metric)) for metric, _t, _u, _h in METRICS]
        lines.append(f"| {workload} | {setup} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "## Ratios to nginx's own send path in the same kernel",
        "",
        "mean(setup) / mean(baseline); baseline nginx-ktls for the guest setups, host-nginx for "
        "host-module. Above 1 is better for MB/s and req/s, below 1 is better for the rest. "
        "`!` = more than 5% worse than the baseline but the min..max ranges overlap (may be "
        "noise); `!!` = more than 5% worse and the ranges do not overlap.",
        "",
        "| workload | setup / baseline | " + " | ".join(t for _k, t, _u, _h in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    worse = []
    for key in results.keys():
        workload, setup = key
        if setup not in BASELINE or (workload, BASELINE[setup]) not in results.samples:
            continue  # no baseline in this run (--setups)
        cells = []
        for metric, title, _unit, higher_better in METRICS:
            ratio = results.ratio(key, metric)
            mark = results.worse_mark(key, metric, higher_better)
            if mark and setup != "userspace":
                worse.append((key, metric, title, ratio, mark))
            cells.append(("n/a" if ratio is None else f"{ratio:.2f}") + (" " + mark if mark else ""))
        lines.append(f"| {workload} | {setup} / {BASELINE[setup]} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "## Where a module setup does worse than nginx's own path (more than 5%)",
        "",
    ]
    if not worse:
        lines.append("Nowhere.")
    for (workload, setup), _metric, title, ratio, mark in sorted(
            worse, key=lambda item: (item[4] != "!!", order_key(WORKLOAD_ORDER, item[0][0]))):
        mine = results.stats((workload, setup), _metric)
        theirs = results.stats((workload, BASELINE[setup]), _metric)
        verdict = "ranges do not overlap" if mark == "!!" else "ranges overlap"
        lines.append(f"- {workload}, {title}: {setup} {cell(mine)} against "
                     f"{BASELINE[setup]} {cell(theirs)} (x{ratio:.2f}; {verdict})")

    lines += uploads_markdown(results)

    lines += [
        "",
        "## System calls per response, by call (counting pass, mean)",
        "",
        "Gross: including the connection's own calls spread over the pass's responses. "
        "Top 10 calls.",
        "",
        "| workload | setup | calls |",
        "|---|---|---|",
    ]
    for key in results.keys():
        mix = results.syscall_mix.get(key)
        if not mix:
            continue
        means = {name: statistics.fmean(values) for name, values in mix.items()}
        shown = sorted(means.items(), key=lambda item: -item[1])
        text = ", ".join(f"{name} {fmt(value)}" for name, value in shown[:10])
        lines.append(f"| {key[0]} | {key[1]} | {text} |")

    lines += [
        "",
        "## Connection setup (one TLS connection, no request; subtracted above)",
        "",
        "Median of the measurements (system calls: min..max).",
        "",
        "| setup | protocol | TLS records | of them < 1 KiB | system calls | KiB from files |",
        "|---|---|---|---|---|---|",
    ]
    for (env, setup), cost in sorted(results.connection.items(),
                                     key=lambda item: order_key(SETUP_ORDER, item[0][1])):
        lines.append(f"| {setup} | {cost['version']} | {whole(cost['records'])} | "
                     f"{whole(cost['small_records'])} | {whole(cost['syscalls'])} "
                     f"[{cost['range']}] | {fmt(cost['file_kib'])} |")

    lines += ["", "## Checks", ""]
    for env in sorted(set(results.env_of.values())):
        sizes = ", ".join(f"{workload} {requests}" for workload, requests in sorted(
            results.counting_requests.get(env, {}).items(),
            key=lambda item: order_key(WORKLOAD_ORDER, item[0])))
        lines.append(f"- {env}: requests per counting pass: {sizes}")
    for (env, proto, cipher), count in sorted(results.tls_seen.items()):
        lines.append(f"- {env}: {count} timing passes negotiated {proto} {cipher}")
    for setup in sorted(results.ktls_sockets, key=lambda s: order_key(SETUP_ORDER, s)):
        values = results.ktls_sockets[setup]
        lines.append(f"- {setup}: kTLS TX sockets per timing pass (TlsTxSw delta): "
                     f"{min(values)}..{max(values)}")
    for setup, count in sorted(results.unparsed_streams.items()):
        if count:
            lines.append(f"- RECORD COUNTS INVALID for {setup}: {count} connections whose "
                         "server stream did not parse as TLS records")
    failed = {k: v for k, v in results.failures.items() if v}
    if failed:
        for (workload, setup), count in sorted(failed.items()):
            lines.append(f"- FAILED requests: {workload} on {setup}: {count}")
    else:
        lines.append("- no failed or errored requests")
    sizes = collections.defaultdict(set)
    for env, _setup, workload, data, _proto, _cipher in results.probe_rows:
        sizes[(env, workload)].add(int(data))
    for (env, workload), values in sorted(sizes.items()):
        state = "same on every setup" if len(values) == 1 else "DIFFERS between setups"
        lines.append(f"- {env} {workload}: one response body = "
                     f"{', '.join(str(v) for v in sorted(values))} bytes ({state})")
    if results.error_log:
        lines.append(f"- nginx error logs (above warn): {len(results.error_log)} lines, first ones:")
        lines += [f"  - `{line}`" for line in results.error_log[:10]]
    else:
        lines.append("- nginx error logs: nothing above warn")
    return "\n".join(lines) + "\n"


def uploads_markdown(results):
    """Receiving: worker CPU per GB and system calls per MiB of the upload workloads."""
    uploads = [w for w in WORKLOAD_ORDER if w.startswith("up-")
               and any((w, s) in results.samples for s in UPLOAD_SETUPS)]
    if not uploads:
        return []
    lines = [
        "",
        "## Uploads: receiving in the kernel (ktls_rx on) against userspace (ktls_rx off)",
        "",
        "Per GB and per MiB of request body received and stored (one upload is the unit of "
        "the tables above). Ratio: mean(setup) / mean(module-ktls-rx-off), below 1 is "
        "better.",
        "",
        "| workload | setup | worker CPU s/GB | ratio | syscalls/MiB | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for workload in uploads:
        baseline = {metric: results.stats((workload, UPLOAD_BASELINE), metric)
                    for metric in ("cpu_per_gb", "syscalls")}
        for setup in UPLOAD_SETUPS:
            key = (workload, setup)
            if key not in results.samples:
                continue
            mib = results.body_size(results.env_of[setup], setup, workload) / MIB
            cells = []
            for metric, scale in (("cpu_per_gb", 1), ("syscalls", 1 / mib)):
                stats = results.stats(key, metric)
                theirs = baseline[metric]
                cells.append("n/a" if not stats else
                             f"{fmt(stats['mean'] * scale)} [{fmt(stats['min'] * scale)}.."
                             f"{fmt(stats['max'] * scale)}]")
                cells.append("n/a" if not stats or not theirs or not theirs["mean"] else
                             f"{stats['mean'] / theirs['mean']:.2f}")
            lines.append(f"| {workload} | {setup} | " + " | ".join(cells) + " |")
    return lines


def write_csv(results, path):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["environment", "workload", "setup", "metric", "unit", "mean", "min",
                         "max", "stdev", "reps", "baseline", "ratio_to_baseline"])
        for key in results.keys():
            workload, setup = key
            for metric, _title, unit, _higher in METRICS:
                stats = results.stats(key, metric)
                if not stats:
                    continue
                ratio = results.ratio(key, metric)
                writer.writerow([results.env_of.get(setup, ""), workload, setup, metric, unit,
                                 f"{stats['mean']:.6g}", f"{stats['min']:.6g}",
                                 f"{stats['max']:.6g}", f"{stats['stdev']:.6g}", stats["n"],
                                 BASELINE.get(setup, ""),
                                 "" if ratio is None else f"{ratio:.4f}"])


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    raw_dir, out_dir = argv
    results = Results(raw_dir)
    text = markdown(results)
    with open(os.path.join(out_dir, "bench.md"), "w") as stream:
        stream.write(text)
    write_csv(results, os.path.join(out_dir, "bench.csv"))
    sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
