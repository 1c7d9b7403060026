#!/usr/bin/python3
"""Markdown table of scripts/bench.d/stall's results: medians over repetitions.

Usage: stall-report.py STALL_CSV DELAY_MS SIZE_MB
"""

import csv
import statistics
import sys

SETUPS = {
    "plain-threads": "plain HTTP, `aio threads` (anchor)",
    "nginx-ktls": "HTTPS kTLS, nginx's own path, `aio threads`",
    "module-ktls": "HTTPS kTLS, the module, `aio threads`",
    "module-ktls-sync": "HTTPS kTLS, the module, `aio off`",
}
PROTOS = {"h1": "HTTP/1.1", "h2": "HTTP/2"}


def main():
    path, delay, size = sys.argv[1:4]
    rows = list(csv.DictReader(open(path)))
    med = {}
    for setup in SETUPS:
        for proto in PROTOS:
            runs = [r for r in rows if r["setup"] == setup and r["proto"] == proto]
            if runs:
                med[setup, proto] = {
                    k: statistics.median(float(r[k]) for r in runs)
                    for k in ("p50_ms", "p90_ms", "max_ms", "mb_s")
                } | {"reps": len(runs)}
    print(f"Small requests every 50 ms during one cold download of a {size} MB file "
          f"(every disk read delayed {delay} ms), medians of the repetitions:\n")
    print("| setup | protocol | small requests p50 / p90 / max, ms | cold download MB/s |")
    print("|---|---|---|---|")
    for (setup, proto), m in med.items():
        print(f"| {SETUPS[setup]} | {PROTOS[proto]} | {m['p50_ms']:.0f} / {m['p90_ms']:.0f} / "
              f"{m['max_ms']:.0f} | {m['mb_s']:.1f} |")
    for proto in PROTOS:
        t, s = med.get(("module-ktls", proto)), med.get(("module-ktls-sync", proto))
        if t and s and s["mb_s"] > 0:
            print(f"\n{PROTOS[proto]}: the module's cold download with threads runs at "
                  f"{t['mb_s'] / s['mb_s']:.2f} of its speed without.", end="")
    print()


if __name__ == "__main__":
    main()
