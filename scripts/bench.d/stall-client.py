#!/usr/bin/python3
"""Small-request latency during one cold download, for scripts/bench.d/stall.

Usage: stall-client.py DOWNLOAD_URL SMALL_URL [--h2 | --h2c] [--new]

Starts the download with curl (HTTP/1.1; HTTP/2 over TLS with --h2, over
plain TCP with --h2c) and, while it runs, fetches SMALL_URL every 50 ms
(plain HTTP or TLS, as the URL says) on one keep-alive connection, or with
--new on a new connection each time, timing each request from sending it
(from connecting, with --new: the handshake counts) to its last byte. Prints one line of JSON: the samples' p50, p90 and max in ms, their
count, and the download's bytes and MB/s as curl reports them. Every wait is
bounded: the download by curl's --max-time, the sampling by the same limit.
"""

import http.client
import json
import ssl
import subprocess
import sys
import time
import urllib.parse

LIMIT_S = 300
INTERVAL_S = 0.05


def connect(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(u.hostname, u.port, timeout=60, context=ctx)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def fetch(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"small request: status {r.status}")
    return len(body)


def percentile(sorted_ms, p):
    return sorted_ms[(len(sorted_ms) - 1) * p // 100]


def sample(conn, small_url, path, new):
    """One small request's time in ms, on a new connection with new."""
    t = time.monotonic()
    if new:
        conn = connect(small_url)
        conn.connect()
    fetch(conn, path)
    ms = (time.monotonic() - t) * 1000
    if new:
        conn.close()
    return ms


def main():
    flags = {"--h2": "--http2", "--h2c": "--http2-prior-knowledge"}
    new = "--new" in sys.argv[1:]
    args = [a for a in sys.argv[1:] if a not in flags and a != "--new"]
    if len(args) != 2:
        raise SystemExit(__doc__)
    download_url, small_url = args
    small_path = urllib.parse.urlsplit(small_url).path
    conn = connect(small_url)
    fetch(conn, small_path)  # warm: handshake and page in the page cache
    proto = next((flags[a] for a in sys.argv[1:] if a in flags), "--http1.1")
    curl = subprocess.Popen(
        ["curl", "-sk", proto, "--max-time", str(LIMIT_S), "-o", "/dev/null",
         "-w", "%{size_download} %{speed_download} %{http_code}", download_url],
        stdout=subprocess.PIPE, text=True)
    samples = []
    deadline = time.monotonic() + LIMIT_S
    while curl.poll() is None and time.monotonic() < deadline:
        time.sleep(INTERVAL_S)
        samples.append(sample(conn, small_url, small_path, new))
    out, _ = curl.communicate(timeout=LIMIT_S)
    size, speed, code = out.split()
    if code != "200":
        raise SystemExit(f"download: status {code}")
    if not samples:
        raise SystemExit("no samples: the download ended at once")
    samples.sort()
    print(json.dumps({
        "p50": round(percentile(samples, 50), 1),
        "p90": round(percentile(samples, 90), 1),
        "max": round(samples[-1], 1),
        "samples": len(samples),
        "bytes": int(size),
        "mbps": round(float(speed) / 1e6, 2),
    }))


if __name__ == "__main__":
    main()
