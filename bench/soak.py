"""`loyalty serve` held under a steady load for a long time: does what it holds stay bounded?

Starts `loyalty serve` (the binary given with --loyalty, else the first of target/local,
target/release and target/debug) on a fresh SQLite file with kr-shop and the scheduled jobs on
(every 60 s, as a shop runs it), then for MINUTES minutes:

  - purchase events posted by wrk (bench/wrk/events.lua), paced at about EVENTS events/s
    (each connection waits before each POST), over MEMBERS members;
  - GET /me at ME requests/s by bench/getter (open loop, the members' tokens in turn);
  - every SAMPLE seconds: the server's resident memory (VmRSS) and its peak (VmHWM), its
    threads and open descriptors, the database file and its write-ahead log, printed as a row.

Then it waits for the queue to drain, stops serve with SIGTERM, and runs `loyalty audit` on the
file: the exit status of the audit is the soak's. The rows are written to --json as well.
Usage: .venv/bin/python bench/soak.py [--minutes 20] [--events 200] [--me 100] [--members 2000]
       [--sample 30] [--loyalty PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import AMOUNT, ROOT, SECRET, getter_command, latencies, pending, token  # noqa: E402

CONNECTIONS = 4  # wrk's connections; each waits 1000 * CONNECTIONS / EVENTS ms before a POST


def status(pid: int) -> dict:
    """VmRSS and VmHWM in MB and the thread count, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    mb = lambda k: int(fields[k].split()[0]) / 1024  # noqa: E731
    return {"rss_mb": round(mb("VmRSS"), 1), "peak_mb": round(mb("VmHWM"), 1), "threads": int(fields["Threads"])}


def sample(pid: int, db: Path, started: float) -> dict:
    size = lambda p: round(p.stat().st_size / 1e6, 1) if p.exists() else 0.0  # noqa: E731
    return {"minute": round((time.monotonic() - started) / 60, 1), **status(pid),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "db_mb": size(db),
            "wal_mb": size(db.with_name(db.name + "-wal"))}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--events", type=int, default=200, help="purchase events per second")
    p.add_argument("--me", type=int, default=100, help="GET /me per second")
    p.add_argument("--members", type=int, default=2000)
    p.add_argument("--sample", type=int, default=30, help="seconds between samples")
    p.add_argument("--loyalty", type=Path)
    p.add_argument("--json", type=Path, default=ROOT / "target" / "bench" / "soak.json")
    args = p.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 2
    loyalty = args.loyalty or next((c for c in (ROOT / "target" / d / "loyalty" for d in ("local", "release", "debug")) if c.exists()), None)
    if loyalty is None:
        print("no loyalty binary: cargo build --profile local -p loyalty-cli", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    db = work / "loyalty.db"
    env = {**os.environ, "LOYALTY_JWT_SECRET": SECRET}
    server = subprocess.Popen([str(loyalty), "serve", "--addr", "127.0.0.1:0", "--jobs-every", "60", "--db", str(db)],
                              env=env, stdout=subprocess.PIPE, stderr=open(work / "serve.log", "w"), text=True)
    seconds = int(args.minutes * 60)
    rows: list[dict] = []
    result: dict = {"binary": str(loyalty), "minutes": args.minutes, "events_per_second": args.events,
                    "me_per_second": args.me, "members": args.members,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    try:
        line = server.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"serve did not start: {line!r}")
        base = line.split()[-1]
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        admin = token("bench", admin=True)
        tokens = work / "tokens.json"
        tokens.write_text(json.dumps([token(f"m-{i}") for i in range(args.members)]))
        print(f"{loyalty} serve at {base}, pid {server.pid}, logs in {work}", flush=True)
        delay = max(1, round(1000 * CONNECTIONS / args.events))
        wrk_env = {**os.environ, "WRK_TOKEN": admin, "WRK_RUN": "soak", "WRK_MEMBERS": str(args.members),
                   "WRK_AMOUNT": str(AMOUNT), "WRK_THREADS": "1", "WRK_DELAY_MS": str(delay)}
        poster = subprocess.Popen(["wrk", "-t", "1", "-c", str(CONNECTIONS), "-d", f"{seconds}s", "--latency",
                                   "-s", str(ROOT / "bench" / "wrk" / "events.lua"), base],
                                  env=wrk_env, stdout=subprocess.PIPE, text=True)
        csv = work / "me.csv"
        getter = subprocess.Popen(getter_command("rust", base, tokens, args.me, seconds, csv))
        started = time.monotonic()
        print(" ".join(f"{k:>8}" for k in sample(server.pid, db, started)), flush=True)
        while time.monotonic() - started < seconds:
            row = sample(server.pid, db, started)
            rows.append(row)
            print(" ".join(f"{v:>8}" for v in row.values()), flush=True)
            time.sleep(min(args.sample, max(0.0, seconds - (time.monotonic() - started))))
        out, _ = poster.communicate(timeout=120)
        getter.wait(timeout=120)
        summary = next(l for l in out.splitlines() if l.startswith("WRK "))
        fields = dict(kv.split("=") for kv in summary.split()[1:])
        result["posted"] = int(fields["requests"])
        result["post_errors_status"] = int(fields["errors_status"])
        result["me"] = latencies(csv)
        # Drained: the books' pending total stops moving (the release job may lower it too).
        last, still = -1, 0
        while still < 3:
            now = pending(base, admin)
            still = still + 1 if now == last else 0
            last = now
            time.sleep(1)
        rows.append(sample(server.pid, db, started))
        print(" ".join(f"{v:>8}" for v in rows[-1].values()), "(drained)", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    audit = subprocess.run([str(loyalty), "audit", "--db", str(db)], capture_output=True, text=True)
    result["audit"] = {"status": audit.returncode, "last_line": (audit.stdout.strip().splitlines() or [""])[-1]}
    result["stop_status"] = server.returncode
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    return audit.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
