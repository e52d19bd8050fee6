"""Exactly once at the at-least-once edges, on the deployed topology with faults: follow-ups go
through the outbox (written in the change's commit, relayed from the table's stream), parked
refunds are released through it, and queue identities are scoped by program."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import JWT_SECRET, ROOT, SECRETS, Running, start_stack, stop_stack

LOYALTY = os.environ.get("LOYALTY_BIN", str(ROOT / "target" / "debug" / "loyalty"))
WOO_SECRETS = {"LOYALTY_SECRET_US_SHOP_WOOCOMMERCE": "wc_us", "LOYALTY_SECRET_US_OUTLET_WOOCOMMERCE": "wc_outlet"}


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_retries(send, attempts: int = 8):
    """Delivers as a platform does: again after a 5xx or a dropped connection."""
    for _ in range(attempts):
        try:
            status, body, _ = send()
        except (ConnectionError, urllib.error.URLError):
            status, body = 0, None
        if status and status < 500:
            return status, body
        time.sleep(0.5)
    raise AssertionError(f"still failing after {attempts} deliveries: {status} {body}")


def entries(stack: Running, program: str, member: str) -> list[dict]:
    status, page, _ = stack.request("GET", f"/v1/programs/{program}/members/{member}/ledger?limit=100", token=stack.token("ops", admin=True))
    return page["entries"] if status == 200 else []


def settle(check, seconds: float = 6.0) -> None:
    """A condition that must keep holding: nothing arrives late and changes it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check()
        time.sleep(0.5)


# -- every send fails once after it was applied ------------------------------------------------


@pytest.fixture(scope="module")
def lossy():
    """Every SQS send and every transaction is applied and then its answer is lost, once."""
    running = start_stack(
        "--schedules-every", "0", "--visibility-timeout", "2",
        "--faults", "sqs.SendMessage*:lost=first;dynamodb.TransactWriteItems:lost=first",
    )
    yield running
    stop_stack(running)


def test_a_referrer_is_rewarded_once_though_every_send_is_lost_once(lossy: Running):
    # GIVEN a new member referred by m-referrer (recorded at signup), then their first purchase
    admin = lossy.token("ops", admin=True)
    now = datetime.now(timezone.utc)
    referral = {
        "type": "engagement.recorded", "version": 1, "id": "ref-signup-1", "program": "kr-shop",
        "member": "m-referee", "occurred_at": iso(now - timedelta(minutes=5)),
        "data": {"action": "referral", "ref": "signup-1", "role": "referee", "referrer": "m-referrer"},
    }
    purchase = {
        "type": "purchase.completed", "version": 1, "id": "ref-order-1", "program": "kr-shop",
        "member": "m-referee", "occurred_at": iso(now - timedelta(minutes=1)),
        "data": {"order_id": "ref-1", "currency": "KRW", "lines": [
            {"line_id": "1", "sku": "TEE-01", "category": "apparel", "quantity": 1, "unit_price": "59000"}]},
    }
    # WHEN both are submitted (every send and commit on the way is applied, then its answer lost)
    for event in (referral, purchase):
        assert with_retries(lambda: lossy.request("POST", "/v1/programs/kr-shop/events", event, token=admin))[0] == 202
        time.sleep(1.0)  # the referral is recorded before the purchase, as a signup precedes it

    # THEN the referrer receives the referral reward, exactly once
    def rewards():
        return [e for e in entries(lossy, "kr-shop", "m-referrer") if "for a referral" in (e["reason"] or "")]

    lossy.eventually(lambda: len(rewards()) >= 1, timeout=60, what="the referral reward")
    settle(lambda: len(rewards()) == 1)
    assert lossy.member("m-referrer")["balance"] == 3000
    # AND the faults did hit: sends from the relay and commits were answered with a reset
    requests = lossy.status()["requests"]
    assert any(k.startswith("outbox-relay sqs.SendMessageBatch lost") for k in requests), requests
    assert any(k.startswith("earn dynamodb.TransactWriteItems lost") for k in requests), requests


def shopify(stack: Running, topic: str, body: bytes, delivery: str):
    signature = base64.b64encode(hmac.new(SECRETS["LOYALTY_SECRET_KR_SHOP_SHOPIFY"].encode(), body, hashlib.sha256).digest())
    headers = {"X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": signature.decode(), "X-Shopify-Webhook-Id": delivery}
    return stack.request("POST", "/webhooks/shopify/kr-shop", body, headers=headers)


def test_a_refund_parked_before_its_order_is_applied_once_though_its_release_is_lost(lossy: Running):
    # GIVEN a Shopify refund that arrives before its order (it names no customer: it is parked)
    occurred = iso(datetime.now(timezone.utc) - timedelta(days=1))
    fixture = lambda name: (ROOT / "tests/fixtures/shopify" / name).read_text().replace("__OCCURRED_AT__", occurred).encode()  # noqa: E731
    refund, paid = fixture("refunds-create.json"), fixture("orders-paid.json")
    assert with_retries(lambda: shopify(lossy, "refunds/create", refund, "d-refund"))[0] == 200
    # WHEN the order's payment arrives: the release (parked item out, outbox item in, one
    # transaction) is applied and its answer lost, and so is the relay's send to the earn queue
    assert with_retries(lambda: shopify(lossy, "orders/paid", paid, "d-paid"))[0] == 200
    # THEN the member ends as in-order delivery leaves them: 1,000 earned, 450 taken back once
    member = lossy.token("shopify:7001234")

    def view():
        return lossy.request("GET", "/v1/programs/kr-shop/me", token=member)[1]

    lossy.eventually(lambda: view().get("pending") == 550, timeout=60, what="the refund after its order")
    settle(lambda: view().get("pending") == 550)
    refunds = [e for e in entries(lossy, "kr-shop", "shopify:7001234") if e["source"].get("refund_id")]
    assert [e["pending"] for e in refunds] == [-450], refunds
    assert any(k.startswith("webhook-ingest dynamodb.TransactWriteItems lost") for k in lossy.status()["requests"])


# -- two programs, one order number -------------------------------------------------------------


def programs(tmp: Path) -> list[Path]:
    """us-shop, and us-outlet: the same rules under another id (a second shop of the brand)."""
    us_shop = ROOT / "examples" / "us-shop.toml"
    outlet = tmp / "us-outlet.toml"
    outlet.write_text(us_shop.read_text().replace('id = "us-shop"', 'id = "us-outlet"', 1))
    return [us_shop, outlet]


def woo_order(customer: int) -> bytes:
    now = datetime.now(timezone.utc)
    stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S")  # noqa: E731
    text = (ROOT / "tests/fixtures/woocommerce/order-processing.json").read_text()
    text = (text.replace("__STATUS__", "processing").replace("__PAID_AT__", stamp(now - timedelta(days=2)))
            .replace("__MODIFIED_AT__", stamp(now)).replace("__REFUNDS__", "[]"))
    order = json.loads(text)
    order["id"], order["number"], order["customer_id"] = 1001, "1001", customer
    return json.dumps(order).encode()


def deliver_woo(base: str, program: str, body: bytes):
    secret = WOO_SECRETS[f"LOYALTY_SECRET_{program.upper().replace('-', '_')}_WOOCOMMERCE"]
    signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    req = urllib.request.Request(f"{base}/webhooks/woocommerce/{program}", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-WC-Webhook-Topic": "order.updated", "X-WC-Webhook-Signature": signature})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), {}
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {}


def pending_of(base: str, program: str, member: str) -> int | None:
    from awslocal.front import sign_hs256

    token = sign_hs256(JWT_SECRET, {"sub": member, "scope": "", "exp": int(time.time()) + 600})
    req = urllib.request.Request(f"{base}/v1/programs/{program}/me", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read()).get("pending")


def both_shops_credit_order_1001(base: str, webhooks: str | None = None) -> None:
    # WHEN each shop delivers its WooCommerce order 1001 (different customers) within a minute
    assert deliver_woo(webhooks or base, "us-shop", woo_order(55))[0] == 200
    assert deliver_woo(webhooks or base, "us-outlet", woo_order(66))[0] == 200
    # THEN both members are credited: neither delivery is taken for a copy of the other
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = (pending_of(base, "us-shop", "woocommerce:55"), pending_of(base, "us-outlet", "woocommerce:66"))
        if got == (64, 64):
            break
        time.sleep(0.3)
    assert got == (64, 64), got
    settle(lambda: (pending_of(base, "us-shop", "woocommerce:55"), pending_of(base, "us-outlet", "woocommerce:66")) == (64, 64), 3)


def test_two_programs_with_the_same_woocommerce_order_number_both_earn(tmp_path: Path):
    # GIVEN one deployment with two programs, each with its own WooCommerce secret
    files = programs(tmp_path)
    args = [a for f in files for a in ("--program", str(f))]
    running = start_stack("--schedules-every", "0", *args, env=WOO_SECRETS)
    try:
        both_shops_credit_order_1001(running.api, running.webhooks)
    finally:
        stop_stack(running)


def test_two_programs_with_the_same_woocommerce_order_number_both_earn_on_loyalty_serve(tmp_path: Path):
    # GIVEN loyalty serve with the same two programs
    files = programs(tmp_path)
    env = {**os.environ, "LOYALTY_JWT_SECRET": JWT_SECRET, **WOO_SECRETS}
    args = [a for f in files for a in ("--program", str(f))]
    process = subprocess.Popen(
        [LOYALTY, "serve", "--db", str(tmp_path / "loyalty.db"), "--addr", "127.0.0.1:0", "--jobs-every", "0", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = process.stdout.readline()
        assert "listening on" in line, line
        both_shops_credit_order_1001(line.split()[-1])
    finally:
        process.kill()
        process.wait()
