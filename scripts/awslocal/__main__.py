"""Usage: scripts/aws-local [--port 3000] [--program FILE]... [--faults SPEC] [--seed N]
[--schedules-every SECONDS] [--visibility-timeout SECONDS] [--concurrency N]

Runs the functions of infra/template.yaml as they are deployed, on moto, until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from .stack import Options, Stack


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(prog="scripts/aws-local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=3000, help="port of the HTTP API (default 3000, as loyalty serve)")
    p.add_argument("--webhook-port", type=int, help="port of webhook-ingest's function URL (default: the API's port + 1; any free port with --port 0)")
    p.add_argument("--control-port", type=int, default=0, help="port of the control API (default: any free port)")
    p.add_argument("--program", action="append", type=Path, default=[], help="program file to load (default: examples/kr-shop.toml)")
    p.add_argument("--faults", default="", help="faults to inject; see README (Faults on demand)")
    p.add_argument("--seed", type=int, help="seed of the fault choices")
    p.add_argument("--schedules-every", type=float, help="run every schedule this often, in seconds (default: the template's rates; 0: only on demand)")
    p.add_argument("--visibility-timeout", type=int, help="visibility timeout of every queue, in seconds (default: the template's)")
    p.add_argument("--concurrency", type=int, default=4, help="instances per function at most (default 4)")
    p.add_argument("--pollers", type=int, default=2, help="concurrent batches per SQS event source (default 2)")
    p.add_argument("--bin-dir", type=Path, default=root / "target" / "release", help="where the function binaries are")
    p.add_argument("--work-dir", type=Path, help="logs and moto's output (default target/aws-local)")
    args = p.parse_args(argv)

    try:
        stack = Stack(
            Options(
                root=root,
                bin_dir=args.bin_dir,
                api_port=args.port,
                webhook_port=args.webhook_port if args.webhook_port is not None else (args.port + 1 if args.port else 0),
                control_port=args.control_port,
                faults=args.faults,
                seed=args.seed,
                schedules_every=args.schedules_every,
                visibility_timeout=args.visibility_timeout,
                concurrency=args.concurrency,
                pollers=args.pollers,
                programs=args.program,
                work_dir=args.work_dir,
            )
        )
    except ValueError as e:
        print(f"aws-local: {e}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    try:
        stack.start()
    except Exception as e:
        print(f"aws-local: {e}", file=sys.stderr)
        stack.stop()
        return 1
    print(f"moto: {stack.moto_url} (DynamoDB, SQS, SSM)")
    for line in stack.lines:
        print(line)
    if stack.faults.rules or stack.faults.crashes:
        print(f"faults: {args.faults} (seed {stack.seed})")
    if stack.generated_secret:
        print("LOYALTY_JWT_SECRET was not set; generated one for this run. In other shells:")
        print(f"export LOYALTY_JWT_SECRET={stack.jwt_secret}")
    print("tokens: loyalty token --admin | loyalty token --member ID")
    print(f"Control: {stack.control_url} (GET /status, POST /schedules/NAME, POST /invoke/FUNCTION, PUT /faults)")
    print(f"Webhooks: {stack.webhooks} (webhook-ingest's function URL: POST /webhooks/PLATFORM/PROGRAM)")
    print(f"API: {stack.api}", flush=True)
    stopped.wait()
    stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
