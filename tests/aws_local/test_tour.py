"""The README's tour gives the same answers from the deployed topology (scripts/aws-local) as from
`loyalty serve`: the same requests, the same statuses and bodies, but for ids, codes and times."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from conftest import JWT_SECRET, ROOT, SECRETS, Running

LOYALTY = os.environ.get("LOYALTY_BIN", str(ROOT / "target" / "debug" / "loyalty"))
HEX = re.compile(r"[0-9a-f]{32}")
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?$")


def normalise(value, key=""):
    """Ids, codes and times differ between two runs; everything else must not."""
    if isinstance(value, dict):
        return {k: normalise(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(normalise(v, key) for v in value)
    if isinstance(value, str) and (TIME.match(value) or key in ("code", "recorded_at")):
        return f"<{key or 'time'}>"
    if key in ("id", "redemption") and isinstance(value, str) and not value.startswith("ev-"):
        return "<id>"
    if isinstance(value, str) and HEX.search(value):
        return HEX.sub("<hex>", value)
    if key in ("reason", "detail") and isinstance(value, str):
        return re.sub(r"[A-Z0-9]{5}(-[A-Z0-9]{4,5})+", "<code>", value)
    return value


def tour(base: str) -> list:
    """The README's tour, step by step; returns (status, body) of every request."""
    admin = sign({"sub": "ops", "scope": "loyalty/admin"})
    member = sign({"sub": "m-1", "scope": ""})
    eight_days_ago = (datetime.now(timezone.utc) - timedelta(days=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "type": "purchase.completed", "version": 1, "id": "ev-1001", "program": "kr-shop",
        "member": "m-1", "occurred_at": eight_days_ago,
        "data": {"order_id": "1001", "currency": "KRW", "channel": "online", "shipping": "3000", "tax": "0",
                 "lines": [{"line_id": "1", "sku": "TEE-01", "category": "apparel", "quantity": 1,
                            "unit_price": "59000", "discount": "0"}]},
    }
    p = "/v1/programs/kr-shop"
    answers = [call(base, "POST", f"{p}/events", admin, event)]
    wait(lambda: call(base, "GET", f"{p}/me", member)[1].get("balance") == 590)
    answers.append(call(base, "GET", f"{p}/me", member))
    answers.append(call(base, "GET", f"{p}/me/ledger", member))
    answers.append(call(base, "POST", f"{p}/events", admin, event))  # the same id again: no change
    answers.append(call(base, "POST", f"{p}/members/m-1/adjustments", admin, {"points": 12000, "reason": "launch gift"}))
    redeemed = call(base, "POST", f"{p}/me/redemptions", member, {"reward": "coupon-5000"}, {"Idempotency-Key": "6f1c0b2e"})
    answers.append(redeemed)
    answers.append(call(base, "POST", f"{p}/me/redemptions", member, {"reward": "coupon-5000"}, {"Idempotency-Key": "6f1c0b2e"}))
    code = redeemed[1]["code"]
    answers.append(call(base, "GET", f"{p}/coupons/{code}", admin))
    answers.append(call(base, "POST", f"{p}/coupons/{code}/consume", admin, {"order_ref": "till-0042"}))
    answers.append(call(base, "POST", f"{p}/coupons/{code}/consume", admin, {"order_ref": "till-0043"}))
    answers.append(call(base, "POST", f"{p}/me/redemptions", member, {"reward": "gold-gift"}, {"Idempotency-Key": "k-2"}))
    answers.append(call(base, "GET", f"{p}/me", member))
    answers.append(call(base, "GET", f"{p}/me/rewards", member))
    answers.append(call(base, "GET", f"{p}/members/m-1/ledger", admin))
    return [normalise(a) for a in answers]


def sign(claims: dict) -> str:
    from awslocal.front import sign_hs256

    return sign_hs256(JWT_SECRET, {**claims, "exp": int(time.time()) + 3600})


def call(base, method, path, token, body=None, headers=None):
    h = {"Authorization": f"Bearer {token}", **(headers or {})}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait(check, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("the tour's purchase was not credited in time")


@pytest.fixture
def serve():
    env = {**os.environ, "LOYALTY_JWT_SECRET": JWT_SECRET, **SECRETS}
    process = subprocess.Popen(
        [LOYALTY, "serve", "--memory", "--addr", "127.0.0.1:0", "--jobs-every", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = process.stdout.readline()
    assert "listening on" in line, line
    yield line.split()[-1]
    process.kill()
    process.wait()


def test_the_readme_tour_answers_the_same_as_loyalty_serve(stack: Running, serve: str):
    # GIVEN loyalty serve and the deployed topology, both with kr-shop and the same secret
    # WHEN the README's tour is run against each
    local = tour(serve)
    deployed = tour(stack.api)
    # THEN every answer is the same, step by step
    assert local[0] == (202, {"id": "ev-1001", "status": "accepted"})
    assert local[1][1]["balance"] == 590
    for step, (a, b) in enumerate(zip(local, deployed)):
        assert a == b, f"step {step}: serve answered {a}, aws-local {b}"
