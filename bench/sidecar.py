#!/usr/bin/env python3
"""The sidecar's idle cost: a loop polling an unchanged remote, with the HTTP server on and
scraped every second (GET /metrics, /readyz and /healthz, as Prometheus and two kubelet probes
would), against the same loop without the server, in the same run.

CPU per poll is the loop process's own user + system time over the measured window (from
/proc/<pid>/stat, so it includes the HTTP server's work) divided by its polls; the git
upload-pack serving the file:// remote is counted apart. Memory is VmRSS and VmHWM at the end.

Usage: bench/sidecar.py [--seconds 120] [--period 1s] [--files 1000]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def scrape(base):
    """One round of what a cluster asks every second; the seconds each request took."""
    took = []
    for path in ("/metrics", "/readyz", "/healthz"):
        start = time.perf_counter()
        with urllib.request.urlopen(base + path, timeout=5) as response:
            response.read()
        took.append(time.perf_counter() - start)
    return took


def loop(binary, url, work, name, seconds, period, http):
    root, cache = os.path.join(work, name, "root"), os.path.join(work, name, "cache")
    bench.dagsnap_once(binary, url, root, cache)
    log_path = os.path.join(work, f"{name}.log")
    extra, base = [], None
    if http:
        port = bench.free_port()
        extra = ["--http-bind", f"127.0.0.1:{port}"]
        base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [binary, "sync", "--repo", url, "--root", root, "--cache-dir", cache, "--period", period,
             "--log-level", "debug", *extra],
            env=bench.env(), stdout=subprocess.DEVNULL, stderr=log,
        )
    latencies = []
    try:
        deadline = time.time() + 60
        while "up to date" not in open(log_path).read():
            if time.time() > deadline:
                sys.exit(f"{name}: the loop never reported an unchanged poll")
            time.sleep(0.05)
        time.sleep(1)
        polls_before = open(log_path).read().count("up to date")
        self_before, children_before = bench.proc_cpu_ticks(proc.pid)
        end = time.monotonic() + seconds
        next_scrape = time.monotonic()
        while time.monotonic() < end:
            if base:
                latencies += scrape(base)
            next_scrape += 1.0
            time.sleep(max(0.0, next_scrape - time.monotonic()))
        self_after, children_after = bench.proc_cpu_ticks(proc.pid)
        polls = open(log_path).read().count("up to date") - polls_before
        rss = bench.proc_status_kib(proc.pid, "VmRSS")
        hwm = bench.proc_status_kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait()
    tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
    return {
        "polls": polls,
        "self_ms": (self_after - self_before) * tick_ms / max(polls, 1),
        "children_ms": (children_after - children_before) * tick_ms / max(polls, 1),
        "rss_mib": rss / 1024,
        "hwm_mib": hwm / 1024,
        "scrapes": len(latencies) // 3,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0,
        "p99_ms": sorted(latencies)[int(len(latencies) * 0.99)] * 1000 if latencies else 0,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--period", default="1s")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--dagsnap", default="target/release/dagsnap")
    args = parser.parse_args()
    binary = os.path.abspath(args.dagsnap)
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} not found; run `cargo build --release` first (bench/run does)")
    with tempfile.TemporaryDirectory(prefix="dagsnap-sidecar-") as work:
        source = os.path.join(work, "source")
        bench.make_repo(source, args.files, max(1, args.files // 20))
        url = "file://" + source
        ls_remote = [bench.run(["git", "ls-remote", url, "refs/heads/main"]) for _ in range(5)]
        quiet = loop(binary, url, work, "quiet", args.seconds, args.period, http=False)
        served = loop(binary, url, work, "served", args.seconds, args.period, http=True)
    ls_cpu = statistics.median(m.cpu for m in ls_remote) * 1000
    print(
        f"Machine: {os.cpu_count()} cores, dagsnap {bench.git_out('rev-parse', '--short', 'HEAD', cwd=os.path.dirname(os.path.abspath(__file__)))}, "
        f"{time.strftime('%Y-%m-%d')}; {args.files:,}-file repository, `--period {args.period}`, {args.seconds} s per loop\n"
    )
    print("| loop | polls | CPU per poll (dagsnap) | upload-pack per poll | RSS | peak RSS | scrape p50 / p99 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in (("no HTTP server", quiet), ("--http-bind, scraped every second", served)):
        scrape_text = f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms ({r['scrapes']} rounds)" if r["scrapes"] else "-"
        print(
            f"| {name} | {r['polls']} | {r['self_ms']:.2f} ms | {r['children_ms']:.2f} ms | "
            f"{r['rss_mib']:.1f} MiB | {r['hwm_mib']:.1f} MiB | {scrape_text} |"
        )
    print(
        f"\nThe server and its scrapes add {served['self_ms'] - quiet['self_ms']:.2f} ms CPU per poll "
        f"({served['self_ms'] / max(quiet['self_ms'], 0.01):.2f}x the quiet loop) and "
        f"{served['hwm_mib'] - quiet['hwm_mib']:.1f} MiB of peak RSS; one `git ls-remote` of the same "
        f"remote costs {ls_cpu:.1f} ms CPU."
    )


if __name__ == "__main__":
    main()
