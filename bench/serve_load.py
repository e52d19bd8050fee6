"""`loyalty serve` under load: purchase events accepted per second, processed end to end per
second, and GET /me latency at a fixed 500 requests/s while idle and while the events are being
processed.

Starts `loyalty serve` (the first of target/local/loyalty, target/release/loyalty and
target/debug/loyalty that exists; copy it aside first if a rebuild may replace it, and pass it
with --loyalty) on a fresh SQLite file with kr-shop and no scheduled jobs. Then:

  1. seed: one purchase for each of MEMBERS members (m-0 ...), waited for until applied;
  2. idle: GET /me at RATE/s for IDLE seconds, cycling through the members' tokens;
  3. throughput: EVENTS purchase events (EVENTS/MEMBERS per member, 20,000 KRW each = 200
     pending points, so nobody changes tier and the expected total is exact) posted to
     POST /v1/programs/kr-shop/events by CONCURRENCY keep-alive connections as fast as they
     are accepted; processed = the liability report's `pending` reaching the expected total
     (the report reads the books, counters written in each event's own commit);
  4. the same again with GET /me at RATE/s running meanwhile (latency while processing).
With wrk installed, step 2 is also run with wrk (bench/wrk/me.lua): paced at about RATE/s, and
closed-loop at full speed (the most GET /me the server answers).

The load generators: GET /me by bench/getter (Rust; `--getter node` for bench/node/load.mjs, which
fires on the same schedule and writes the same CSV but took 0.14-0.17 of a core at 500/s, against
0.04-0.05 for the Rust one, on the two cores the server uses too; its event loop also added to
the latencies it measured: idle p99 3.3-4.1 ms through Node, 1.5-2.6 ms through the Rust one).
With wrk installed, step 3 posts with wrk (bench/wrk/events.lua) for --seconds instead of
--events with Node.js (--poster node to choose Node): C costs the shared cores less.
Usage: .venv/bin/python bench/serve_load.py [--events 20000] [--seconds 10] [--members 2000] [--rate 500]
       [--idle 20] [--concurrency 32] [--post-delay-ms 0] [--loyalty PATH] [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from awslocal.front import sign_hs256  # noqa: E402

SECRET = "bench-serve-secret"
AMOUNT = 20000  # KRW: 200 points each, pending for the return window
POINTS = AMOUNT // 100
NODE = shutil.which("node") or "node"
LOAD = str(ROOT / "bench" / "node" / "load.mjs")
GETTER = ROOT / "target" / "bench-getter" / "release" / "getter"


def getter_command(kind: str, base: str, tokens: Path, rate: int, seconds: int, csv: Path) -> list[str]:
    """The open-loop GET /me client: bench/getter (Rust, built on first use) or Node.js. Both
    fire on the same schedule and write the same CSV; the Rust one costs the shared cores less."""
    if kind == "node":
        return [NODE, LOAD, "get", base, str(tokens), str(rate), str(seconds), str(csv)]
    if not GETTER.exists():
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT / "bench" / "getter", check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": str(ROOT / "target" / "bench-getter")})
    return [str(GETTER), base, str(tokens), str(rate), str(seconds), str(csv)]


def token(sub: str, admin: bool = False) -> str:
    return sign_hs256(SECRET, {"sub": sub, "scope": "loyalty/admin" if admin else "", "exp": int(time.time()) + 7200})


def pending(base: str, admin: str) -> int:
    req = urllib.request.Request(f"{base}/v1/programs/kr-shop/reports/liability", headers={"Authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return int(json.loads(r.read())["pending"])


def post(base: str, admin: str, count: int, members: int, concurrency: int, first_id: int) -> dict:
    out = subprocess.run([NODE, LOAD, "post", base, admin, str(count), str(members), str(concurrency), str(first_id), str(AMOUNT)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def post_wrk(base: str, admin: str, seconds: int, members: int, concurrency: int, first_id: int, delay_ms: int = 0) -> dict:
    """Events posted by wrk (bench/wrk/events.lua) for a number of seconds: a load generator in
    C costs the two cores far less than Node's HTTP client, so more of them is left to the
    server. "count" is the requests wrk saw answered (a few more sent as it stopped may count).
    With delay_ms, each connection waits that long before each request: an offered load of at
    most concurrency * 1000 / delay_ms events per second instead of a flood."""
    threads = 2
    env = {**os.environ, "WRK_TOKEN": admin, "WRK_RUN": f"wrk{first_id}",
           "WRK_MEMBERS": str(members), "WRK_AMOUNT": str(AMOUNT), "WRK_THREADS": str(threads),
           "WRK_DELAY_MS": str(delay_ms)}
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--latency",
                          "-s", str(ROOT / "bench" / "wrk" / "events.lua"), base],
                         env=env, check=True, capture_output=True, text=True)
    summary = next(l for l in out.stdout.splitlines() if l.startswith("WRK "))
    fields = dict(kv.split("=") for kv in summary.split()[1:])
    elapsed = float(fields["seconds"])
    posted = int(fields["requests"])
    return {"count": posted, "seconds": elapsed, "per_second": posted / elapsed,
            "errors_status": int(fields["errors_status"]),
            "latency_ms": {"p50": float(fields["p50_ms"]), "p99": float(fields["p99_ms"]), "max": float(fields["max_ms"])}}


def wait_pending(base: str, admin: str, expected: int, timeout: float = 3600) -> float:
    """Polls the liability report until pending == expected; returns when it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pending(base, admin) >= expected:
            return time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"pending did not reach {expected}")


def latencies(csv: Path, since_ms: float = 0, until_ms: float = float("inf")) -> dict:
    values, errors = [], 0
    for line in csv.read_text().splitlines():
        if not line:
            continue
        due, latency, status = line.split(",")
        if not since_ms <= float(due) < until_ms:
            continue
        if status != "200":
            errors += 1
        values.append(float(latency))
    values.sort()
    if not values:
        return {"requests": 0}

    def pct(p):
        return values[min(len(values) - 1, max(0, int(len(values) * p / 100 + 0.999999) - 1))]

    return {"requests": len(values), "errors": errors, "p50": pct(50), "p90": pct(90), "p99": pct(99), "p99.9": pct(99.9),
            "max": values[-1], "mean": statistics.fmean(values)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--members", type=int, default=2000)
    p.add_argument("--rate", type=int, default=500)
    p.add_argument("--idle", type=int, default=20, help="seconds of GET /me while idle")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--loyalty", type=Path)
    p.add_argument("--poster", choices=("node", "wrk"), default="wrk" if shutil.which("wrk") else "node",
                   help="what posts the events (default: wrk when installed)")
    p.add_argument("--getter", choices=("rust", "node"), default="rust",
                   help="the open-loop GET /me client: bench/getter (Rust, built on first use) or bench/node/load.mjs")
    p.add_argument("--seconds", type=int, default=10, help="how long wrk posts events (--events is node's count)")
    p.add_argument("--post-delay-ms", type=int, default=0,
                   help="wrk: each connection waits this long before each POST (a paced load of at most "
                        "concurrency * 1000 / delay events/s); 0 posts as fast as they are answered")
    p.add_argument("--memory", action="store_true", help="serve --memory instead of a SQLite file")
    p.add_argument("--json", type=Path, default=ROOT / "target" / "bench" / "serve_load.json")
    args = p.parse_args(argv)
    loyalty = args.loyalty or next((c for c in (ROOT / "target" / "local" / "loyalty", ROOT / "target" / "release" / "loyalty", ROOT / "target" / "debug" / "loyalty") if c.exists()), None)
    if loyalty is None:
        print("no loyalty binary: cargo build -p loyalty-cli", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    store = ["--memory"] if args.memory else ["--db", str(work / "loyalty.db")]
    env = {**os.environ, "LOYALTY_JWT_SECRET": SECRET}
    server = subprocess.Popen([str(loyalty), "serve", "--addr", "127.0.0.1:0", "--jobs-every", "0", *store],
                              env=env, stdout=subprocess.PIPE, stderr=open(work / "serve.log", "w"), text=True)
    results: dict = {"binary": str(loyalty), "poster": args.poster, "getter": args.getter, "store": "memory" if args.memory else "sqlite file", "events": args.events,
                     "members": args.members, "rate": args.rate, "concurrency": args.concurrency,
                     "post_delay_ms": args.post_delay_ms,
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    getter = None
    try:
        line = server.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"serve did not start: {line!r}")
        base = line.split()[-1]
        admin = token("bench", admin=True)
        tokens = work / "tokens.json"
        tokens.write_text(json.dumps([token(f"m-{i}") for i in range(args.members)]))
        print(f"{loyalty} serve at {base} ({results['store']}), logs in {work}", flush=True)

        # 1. seed
        seeded = post(base, admin, args.members, args.members, args.concurrency, 1)
        expected = args.members * POINTS
        wait_pending(base, admin, expected)
        print(f"seeded {args.members} members: {seeded['per_second']:.0f} accepted/s", flush=True)

        # 2. idle GET /me
        csv = work / "idle.csv"
        subprocess.run(getter_command(args.getter, base, tokens, args.rate, args.idle, csv), check=True)
        results["idle"] = latencies(csv)
        print(f"idle GET /me at {args.rate}/s: {results['idle']}", flush=True)

        # 2b. the same with wrk, as a cross-check: paced (20 connections, 40 ms apart: about
        # 500/s), then closed-loop as fast as 32 connections go.
        if shutil.which("wrk"):
            lines = work / "tokens.txt"
            lines.write_text("\n".join(json.loads(tokens.read_text())) + "\n")
            for name, extra, delay in (("wrk_paced", ["-c", "20", "-t", "2"], "40"), ("wrk_max", ["-c", "32", "-t", "2"], "0")):
                out = subprocess.run(["wrk", *extra, "-d", f"{args.idle}s", "--latency", "-s", str(ROOT / "bench" / "wrk" / "me.lua"), base],
                                     env={**os.environ, "WRK_TOKENS": str(lines), "WRK_DELAY_MS": delay}, capture_output=True, text=True)
                summary = next((l for l in out.stdout.splitlines() if l.startswith("WRK ")), "")
                results[name] = dict(kv.split("=") for kv in summary.split()[1:])
                print(f"{name}: {results[name]}", flush=True)

        # 3. throughput, no reads
        first = 1_000_000
        for phase, with_reads in (("throughput", False), ("throughput with GET /me", True)):
            if with_reads:
                csv = work / "busy.csv"
                getter = subprocess.Popen(getter_command(args.getter, base, tokens, args.rate, 3600, csv))
                time.sleep(2.0)
            before = pending(base, admin)
            started_wall = time.time() * 1000
            started = time.monotonic()
            if args.poster == "wrk":
                accepted = post_wrk(base, admin, args.seconds, args.members, args.concurrency, first, args.post_delay_ms)
            else:
                accepted = post(base, admin, args.events, args.members, args.concurrency, first)
            posted = time.monotonic()
            done = wait_pending(base, admin, before + accepted["count"] * POINTS)
            done_wall = time.time() * 1000
            first += args.events
            events = accepted["count"]
            row = {"accepted": accepted, "accepted_per_s": events / (posted - started),
                   "post_seconds": posted - started, "end_to_end_seconds": done - started,
                   "processed_per_s": events / (done - started), "drain_after_posting_s": done - posted}
            if with_reads:
                getter.send_signal(signal.SIGTERM)
                getter.wait(60)
                getter = None
                row["get_me_while_processing"] = latencies(csv, started_wall, done_wall)
                row["get_me_after"] = latencies(csv, done_wall)
            results[phase] = row
            print(f"{phase}: {json.dumps(row)}", flush=True)
    finally:
        if getter:
            getter.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
