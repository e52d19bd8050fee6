"""The same chaos scenarios on `loyalty serve` (SQLite, the embedded queue), killed and restarted
at random moments while the deliveries arrive, end where the same oracle says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_chaos import EVENTS, ONCE_SEED, SEED

HERE = Path(__file__).resolve().parent
LOYALTY = os.environ.get("LOYALTY_BIN", str(HERE.parents[1] / "target" / "debug" / "loyalty"))


def check_on_serve(seed: int, copies: int) -> None:
    """Runs chaos_serve_check.py: SIGKILLs and restarts serve 5 times while sending; exit status
    0 when every member's balance and pending are the oracle's."""
    run = subprocess.run(
        [sys.executable, str(HERE / "chaos_serve_check.py"), "--seed", str(seed), "--events", str(EVENTS),
         "--copies", str(copies), "--loyalty", LOYALTY, "--kills", "5", "--timeout", "120"],
        capture_output=True, text=True, timeout=600,
    )
    print(run.stdout[-3000:], run.stderr[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_the_same_scenario_on_loyalty_serve_with_kills_agrees():
    # GIVEN the scenario of the chaos test, and loyalty serve on a SQLite file
    # WHEN every delivery is sent three times while serve is SIGKILLed and restarted 5 times
    # THEN every member's balance and pending are the oracle's
    check_on_serve(SEED, copies=3)


def test_events_delivered_once_on_loyalty_serve_with_kills_agree():
    # GIVEN the once-delivered scenario of the chaos test, and loyalty serve on a SQLite file
    # WHEN every event is sent once (retried on 5xx and resets) while serve is SIGKILLed and
    # restarted 5 times: no later copy heals an event accepted but lost
    # THEN every member's balance and pending are the oracle's
    check_on_serve(ONCE_SEED, copies=1)
