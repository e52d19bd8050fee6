"""The same chaos scenario on `loyalty serve` (SQLite, the embedded queue), killed and restarted
at random moments while the deliveries arrive, ends where the same oracle says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_chaos import EVENTS, SEED

HERE = Path(__file__).resolve().parent
LOYALTY = os.environ.get("LOYALTY_BIN", str(HERE.parents[1] / "target" / "debug" / "loyalty"))


def test_the_same_scenario_on_loyalty_serve_with_kills_agrees():
    # GIVEN the scenario of the chaos test, and loyalty serve on a SQLite file
    # WHEN every delivery is sent three times while serve is SIGKILLed and restarted 5 times
    run = subprocess.run(
        [sys.executable, str(HERE / "chaos_serve_check.py"), "--seed", str(SEED), "--events", str(EVENTS),
         "--loyalty", LOYALTY, "--kills", "5", "--timeout", "120"],
        capture_output=True, text=True, timeout=600,
    )
    print(run.stdout[-3000:], run.stderr[-3000:])
    # THEN every member's balance and pending are the oracle's (exit status 0)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
