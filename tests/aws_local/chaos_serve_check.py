#!/usr/bin/env python3
"""Sends a chaos scenario (tests/aws_local/chaos.py) to `loyalty serve` and checks the oracle.

    python3 tests/aws_local/chaos_serve_check.py --seed 7 [--events 300] [--loyalty target/debug/loyalty]
        [--copies 3] [--kills 3] [--threads 6] [--timeout 60]

Starts serve (in memory, or on a fresh SQLite file with --kills), takes an admin token from
`loyalty token --admin`, sends every delivery like a platform does (retrying 5xx, 429 and
connection errors), optionally SIGKILLs and restarts serve N times at random moments while
sending, then polls `check` until it passes or the timeout ends. Exit status 0 when every
member matches, 1 on a mismatch (printed), 2 when the run itself failed (a delivery refused).
Standard library only.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chaos  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
JWT_SECRET = "chaos-serve-check-jwt-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """One `loyalty serve` on a fixed port; restartable on the same database."""

    def __init__(self, binary: str, port: int, db: str | None, env: dict[str, str], log: Path) -> None:
        self.binary, self.port, self.db, self.env, self.log = binary, port, db, env, log
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        store = ["--db", self.db] if self.db else ["--memory"]
        for attempt in range(50):
            self.starts += 1
            with open(self.log, "ab") as log:
                log.write(f"\n==== start {self.starts} ====\n".encode())
                self.proc = subprocess.Popen(
                    [self.binary, "serve", "--addr", f"127.0.0.1:{self.port}", "--jobs-every", "0", *store],
                    env=self.env, stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().decode()
            if line.startswith("loyalty serve: listening on"):
                # Keep draining stdout so serve never blocks on a full pipe.
                threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
                return
            self.proc.wait()
            time.sleep(0.2)  # e.g. the port is still held for a moment
        raise RuntimeError(f"loyalty serve did not start; see {self.log}")

    @staticmethod
    def _drain(proc: subprocess.Popen) -> None:
        for _ in proc.stdout:  # type: ignore[union-attr]
            pass

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, whatever was in flight is cut off."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def admin_token(binary: str, env: dict[str, str]) -> str:
    out = subprocess.run([binary, "token", "--admin"], env=env, capture_output=True, check=True)
    return out.stdout.decode().strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--copies", type=int, default=chaos.COPIES, help="deliveries of each logical event")
    ap.add_argument("--loyalty", default=str(ROOT / "target/debug/loyalty"))
    ap.add_argument("--kills", type=int, default=0, help="SIGKILL and restart serve N times while sending")
    ap.add_argument("--threads", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the queues to drain")
    ap.add_argument("--engagement-days", type=int, default=chaos.ENGAGEMENT_WINDOW_DAYS,
                    help="how far back engagement is dated (default 55: at most 3 calendar months; "
                         "up to 85 puts 4 months in play on most dates, see chaos.py)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (database, serve log)")
    args = ap.parse_args()

    chaos.ENGAGEMENT_WINDOW_DAYS = args.engagement_days
    started = time.monotonic()
    scenario = chaos.build_scenario(args.seed, args.events, copies=args.copies)
    print(f"seed {args.seed}: {scenario.logical_events} logical events, {len(scenario.deliveries)} deliveries, "
          f"{len(scenario.expected)} members, kills {args.kills}")
    print("composition:", chaos.composition(scenario))

    work = Path(tempfile.mkdtemp(prefix=f"chaos-{args.seed}-"))
    env = {**os.environ, "LOYALTY_JWT_SECRET": JWT_SECRET, "LOYALTY_LOG": "warn", **scenario.secrets}
    db = str(work / "loyalty.db") if args.kills else None
    serve = Serve(args.loyalty, free_port(), db, env, work / "serve.log")
    serve.start()
    token = admin_token(args.loyalty, env)

    todo: queue.Queue = queue.Queue()
    for d in scenario.deliveries:
        todo.put(d)
    done = 0
    failures: list[str] = []
    lock = threading.Lock()

    def sender() -> None:
        nonlocal done
        while True:
            try:
                d = todo.get_nowait()
            except queue.Empty:
                return
            status = chaos.send_until_accepted(serve.base, d, scenario, token)
            with lock:
                done += 1
                if not 200 <= status < 300:
                    failures.append(f"{d.key} ({d.kind} {d.path}): final status {status}")

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()

    # Kill at random moments of the sending: when a random share of the deliveries is done,
    # plus a random delay so that requests are cut off in every phase.
    rng = random.Random(args.seed * 7919 + 1)
    marks = sorted(rng.uniform(0.05, 0.95) for _ in range(args.kills))
    kills = 0
    for mark in marks:
        while done < mark * len(scenario.deliveries) and any(t.is_alive() for t in threads):
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        serve.kill()
        kills += 1
        time.sleep(rng.uniform(0.0, 0.5))
        serve.start()
    for t in threads:
        t.join()
    sent_at = time.monotonic()
    print(f"sent in {sent_at - started:.1f}s ({kills} kills, {serve.starts} starts, "
          f"retries {dict(chaos.RETRIES) or 0})")
    if failures:
        print(f"FAIL: {len(failures)} deliveries were refused:")
        for f in failures[:50]:
            print("  ", f)
        serve.stop()
        return 2

    deadline = time.monotonic() + args.timeout
    problems: list[str] = []
    while True:
        try:
            problems = chaos.check(serve.base, scenario, token)
        except OSError as e:
            problems = [f"check failed: {e}"]
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    total = time.monotonic() - started
    serve.stop()
    if problems:
        print(f"FAIL seed {args.seed}: {len(problems)} mismatches after {total:.1f}s (work dir {work}):")
        for p in problems:
            print("  ", p)
        return 1
    print(f"PASS seed {args.seed}: {len(scenario.expected)} members match "
          f"(drained {time.monotonic() - sent_at:.1f}s after sending; total {total:.1f}s)")
    if not args.keep:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
