#!/usr/bin/python3
"""Markdown table of scripts/bench.d/stall's results: medians over repetitions.

Usage: stall-report.py STALL_CSV DELAY_MS SIZE_MB
"""

import csv
import statistics
import sys

SETUPS = {
    "plain-threads": "plain HTTP, `aio threads` (anchor)",
    "userspace-threads": "HTTPS without kTLS, `aio threads` (handshake anchor)",
    "nginx-ktls": "HTTPS kTLS, nginx's own path, `aio threads`",
    "module-ktls": "HTTPS kTLS, the module, `aio threads`",
    "module-ktls-sync": "HTTPS kTLS, the module, `aio off`",
}
PROTOS = {"h1": "HTTP/1.1", "h2": "HTTP/2"}
SAMPLINGS = {"keepalive": "keep-alive", "new": "new connection each"}
FIGURES = ("p50_ms", "p90_ms", "max_ms", "mb_s")


def medians(rows):
    med = {}
    for sampling in SAMPLINGS:
        for setup in SETUPS:
            for proto in PROTOS:
                runs = [r for r in rows if (r["setup"], r["proto"], r["sampling"])
                        == (setup, proto, sampling)]
                if runs:
                    med[sampling, setup, proto] = {
                        k: statistics.median(float(r[k]) for r in runs) for k in FIGURES}
    return med


def ratio_lines(med):
    """The module with threads against its anchors, per protocol and sampling."""
    for (sampling, setup, proto), m in med.items():
        if setup != "module-ktls":
            continue
        for anchor in ("plain-threads", "userspace-threads"):
            a = med.get((sampling, anchor, proto))
            if a and a["p50_ms"] > 0 and a["max_ms"] > 0:
                yield (f"{PROTOS[proto]}, {SAMPLINGS[sampling]}: the module with threads / "
                       f"{SETUPS[anchor].split(',')[0]}: p50 {m['p50_ms'] / a['p50_ms']:.2f}, "
                       f"max {m['max_ms'] / a['max_ms']:.2f}")


def main():
    path, delay, size = sys.argv[1:4]
    med = medians(list(csv.DictReader(open(path))))
    print(f"Small requests every 50 ms during one cold download of a {size} MB file "
          f"(every disk read delayed {delay} ms), medians of the repetitions:\n")
    print("| setup | protocol | small requests | p50 / p90 / max, ms | cold download MB/s |")
    print("|---|---|---|---|---|")
    for (sampling, setup, proto), m in med.items():
        print(f"| {SETUPS[setup]} | {PROTOS[proto]} | {SAMPLINGS[sampling]} | "
              f"{m['p50_ms']:.0f} / {m['p90_ms']:.0f} / {m['max_ms']:.0f} | {m['mb_s']:.1f} |")
    print()
    for line in ratio_lines(med):
        print(f"- {line}")


if __name__ == "__main__":
    main()
