"""Starts `scripts/aws-local` as a user would (a process; its printed lines say where things
are) and speaks HTTP to it. The functions must already be built (scripts/test builds them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from awslocal.front import sign_hs256  # noqa: E402

JWT_SECRET = "aws-local-tests-secret"
SECRETS = {
    "LOYALTY_SECRET_KR_SHOP_SHOPIFY": "shpss_test",
    "LOYALTY_SECRET_KR_SHOP_WOOCOMMERCE": "wc_test",
    "LOYALTY_SECRET_KR_SHOP_CAFE24": "cafe24_test",
    "LOYALTY_SECRET_KR_SHOP_POS": "pos_test",
}


@dataclass
class Running:
    process: subprocess.Popen
    api: str
    webhooks: str  # webhook-ingest's function URL
    control: str
    moto: str
    output: list[str] = field(default_factory=list)

    def token(self, sub: str, admin: bool = False, exp_in: int = 3600) -> str:
        claims = {"sub": sub, "exp": int(time.time()) + exp_in, "scope": "loyalty/admin" if admin else ""}
        return sign_hs256(JWT_SECRET, claims)

    def request(self, method: str, path: str, body=None, token: str | None = None, headers: dict | None = None,
                base: str | None = None):
        """To the HTTP API, or as the platforms deliver: a /webhooks/ path to the function URL."""
        base = base or (self.webhooks if path.startswith("/webhooks/") else self.api)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, _json(r.read()), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read()), dict(e.headers)

    def status(self) -> dict:
        with urllib.request.urlopen(self.control + "/status", timeout=60) as r:
            return json.loads(r.read())

    def run_schedule(self, name: str) -> dict:
        req = urllib.request.Request(f"{self.control}/schedules/{name}", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def set_faults(self, spec: str) -> None:
        req = urllib.request.Request(f"{self.control}/faults", data=spec.encode(), method="PUT")
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200

    def member(self, member: str) -> dict:
        """The admin view of a member; `{}` while it has no account (`unknown-member`)."""
        status, body, _ = self.request("GET", f"/v1/programs/kr-shop/members/{member}", token=self.token("ops", admin=True))
        if status == 404 and body.get("type", "").endswith("/unknown-member"):
            return {}
        assert status == 200, body
        return body

    def eventually(self, check, timeout: float = 30.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"{what} did not hold within {timeout} s; last: {last!r}")


def _json(data: bytes):
    try:
        return json.loads(data) if data else None
    except ValueError:
        return data.decode("utf-8", "replace")


def start_stack(*args: str, env: dict | None = None) -> Running:
    environment = {**os.environ, "LOYALTY_JWT_SECRET": JWT_SECRET, **SECRETS, **(env or {})}
    bin_dir = ["--bin-dir", os.environ["AWS_LOCAL_BIN_DIR"]] if os.environ.get("AWS_LOCAL_BIN_DIR") else []
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "aws-local"), "--no-build", "--port", "0", *bin_dir, *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    found: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while "API" not in found:
        line = process.stdout.readline()
        if not line:
            raise AssertionError("aws-local exited before printing the API URL:\n" + "".join(lines))
        lines.append(line)
        for key in ("API", "Webhooks", "Control", "moto"):
            if line.startswith(key + ": "):
                found[key] = line.split()[1]
        if time.monotonic() > deadline:
            raise AssertionError("aws-local did not start:\n" + "".join(lines))
    running = Running(process, found["API"], found["Webhooks"], found["Control"], found["moto"], lines)
    threading.Thread(target=lambda: [running.output.append(l) for l in process.stdout], daemon=True).start()
    return running


def stop_stack(running: Running) -> None:
    os.killpg(running.process.pid, signal.SIGTERM)
    try:
        running.process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(running.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def stack():
    """One stack for a module's tests: no faults, schedules on demand, short visibility."""
    running = start_stack("--schedules-every", "0", "--visibility-timeout", "2")
    yield running
    stop_stack(running)
