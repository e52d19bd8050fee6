"""IAM, the template and the code agree: every function is driven through its routes, queues,
stream and schedules on the deployed topology, the fault proxy records each AWS action it asks
for (a transaction counts as the actions of its items), and that is compared with the function's
policy in infra/template.yaml, both ways: nothing missing, nothing unused.

The same run shows that every instance opened during its init the connections its first
invocation used: on AWS each one opened later is a TLS handshake that invocation waits for."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from awslocal import iam
from conftest import ROOT, Running, start_stack, stop_stack
from test_outbox import shopify, with_retries
from test_topology import purchase
from test_tour import tour

TEMPLATE = ROOT / "infra" / "template.yaml"
P = "/v1/programs/kr-shop"


def woocommerce_api() -> tuple[ThreadingHTTPServer, list[str]]:
    """kr-shop's WooCommerce order API: one paid order (customer 88) the webhooks never sent."""
    paid = (datetime.now(timezone.utc) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")
    order = {"id": 5501, "status": "processing", "currency": "KRW", "prices_include_tax": False,
             "date_created_gmt": paid, "date_paid_gmt": paid, "date_modified_gmt": paid,
             "shipping_total": "0", "total_tax": "0", "total": "30000", "customer_id": 88,
             "billing": {"email": "iam-woo@example.com"},
             "line_items": [{"id": 1, "quantity": 1, "subtotal": "30000", "subtotal_tax": "0",
                             "total": "30000", "total_tax": "0", "sku": "MUG"}],
             "refunds": []}
    asked: list[str] = []

    class Orders(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            asked.append(self.path)
            body = json.dumps([order]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-WP-TotalPages", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Orders)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, asked


def invoke(stack: Running, function: str, payload: dict) -> dict:
    req = urllib.request.Request(f"{stack.control}/invoke/{function}", data=json.dumps(payload).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def exercise(stack: Running) -> None:
    """Every route, queue, stream and schedule of the template, once."""
    started = time.monotonic()
    step = lambda what: print(f"iam: {what} at {time.monotonic() - started:.1f} s", flush=True)  # noqa: E731
    admin, member = stack.token("ops", admin=True), stack.token("m-1")
    call = lambda method, path, body=None, token=admin, headers=None: stack.request(method, path, body, token=token, headers=headers)  # noqa: E731
    # A purchase whose return window closes during the exercise: the release schedule commits
    # it (a job's commit, with its books).
    occurred = datetime.now(timezone.utc) - timedelta(days=7) + timedelta(seconds=5)
    assert call("POST", f"{P}/events", purchase("ev-iam-release", "m-iam-release", "iam-release", 50_000, occurred))[0] == 202
    # The README's tour: events, the member's views, adjustments, a redemption, a coupon.
    tour(stack.api)
    step("tour")
    # Pay with points, captured and voided; a redemption reversed; the profile.
    for order, then in (("till-7", "capture"), ("till-8", "void")):
        status, held, _ = call("POST", f"{P}/me/redemptions", {"reward": "pay-with-points", "points": 1000, "order_ref": order},
                               token=member, headers={"Idempotency-Key": f"hold-{order}"})
        assert status == 201, held
        assert call("POST", f"{P}/redemptions/{held['id']}/{then}", {"order_ref": order})[0] == 200
    status, issued, _ = call("POST", f"{P}/me/redemptions", {"reward": "coupon-5000"}, token=member, headers={"Idempotency-Key": "iam-r"})
    assert status == 201, issued
    assert call("GET", f"{P}/me/redemptions/{issued['id']}", token=member)[0] == 200
    assert call("POST", f"{P}/members/m-1/redemptions/{issued['id']}/reverse", {"reason": "iam"})[0] == 200
    assert call("PATCH", f"{P}/me/profile", {"birthday": "03-15"}, token=member)[0] == 200
    # A member's first contact is a profile: a new account, counted in the books.
    assert call("PATCH", f"{P}/me/profile", {"birthday": "05-05"}, token=stack.token("m-iam-new"))[0] == 200
    # Members whose birthday is today in Seoul, or tomorrow should the day turn before the
    # campaign tick runs: the tick sends one of them its birthday's event (campaign-assign's
    # only use of SQS).
    seoul = datetime.now(timezone(timedelta(hours=9)))
    for n, day in enumerate((seoul, seoul + timedelta(days=1))):
        birthday = {"birthday": day.strftime("%m-%d")}
        assert call("PATCH", f"{P}/me/profile", birthday, token=stack.token(f"m-iam-bd-{n}"))[0] == 200
    step("redemptions")
    # Finance's reports and a member's export.
    assert call("GET", f"{P}/reports/liability")[0] == 200
    assert call("GET", f"{P}/reports/kpis")[0] == 200
    assert call("GET", f"{P}/members/m-1/export")[0] == 200
    # An audit run as a job by the tier queue's consumer, its report kept.
    status, run, _ = call("POST", f"{P}/audits")
    assert status == 202, run
    stack.eventually(lambda: call("GET", f"{P}/audits/{run['id']}")[1].get("status") == "done", timeout=120, what="the audit job")
    step("reports")
    # The program and a campaign: saved, read, reported, shown to a member.
    assert call("GET", P)[0] == 200
    campaign = {
        "name": "Welcome back", "kind": "broadcast", "status": "running",
        "start": (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hash_seed": "iam-1", "audience": {}, "goal": "purchase",
        "variants": [{"key": "control", "weight": 0.5, "effect": {"type": "none"}},
                     {"key": "gift", "weight": 0.5, "effect": {"type": "grant", "points": 100}}],
    }
    status, saved, _ = call("PUT", f"{P}/campaigns/welcome-back", campaign)
    assert status in (200, 201), saved
    assert call("GET", f"{P}/campaigns/welcome-back")[0] == 200
    assert call("GET", f"{P}/me/campaigns", token=member)[0] == 200
    assert call("GET", f"{P}/campaigns/welcome-back/report")[0] == 200
    step("campaign")
    # A webhook whose refund waits for its order (parked, then released through the outbox).
    occurred = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fixture = lambda name: (ROOT / "tests/fixtures/shopify" / name).read_text().replace("__OCCURRED_AT__", occurred).encode()  # noqa: E731
    assert with_retries(lambda: shopify(stack, "refunds/create", fixture("refunds-create.json"), "iam-1"))[0] == 200
    assert with_retries(lambda: shopify(stack, "orders/paid", fixture("orders-paid.json"), "iam-2"))[0] == 200
    stack.eventually(lambda: call("GET", f"{P}/members/shopify:7001234")[1].get("pending") == 550, timeout=60, what="the order and its refund")
    step("webhooks")
    # An event refused for an action kr-shop does not reward: listed, shown and replayed (the
    # replay is refused again, since the program still lacks the action).
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    share = {"type": "engagement.recorded", "version": 1, "id": "ev-iam-share", "program": "kr-shop",
             "member": "m-1", "occurred_at": now, "data": {"action": "share", "ref": "iam"}}
    assert call("POST", f"{P}/events", share)[0] == 202
    stack.eventually(lambda: any(e["id"] == "ev-iam-share" for e in call("GET", f"{P}/rejected-events")[1].get("events", [])),
                     timeout=60, what="the rejected event")
    assert call("GET", f"{P}/rejected-events/ev-iam-share")[0] == 200
    assert call("POST", f"{P}/rejected-events/ev-iam-share/replay")[0] == 202
    step("rejected events")
    # What the console reads: the programs, the program's versions, campaigns and job runs.
    for path in ("/v1/programs", f"{P}/versions", f"{P}/versions/1", f"{P}/campaigns", f"{P}/jobs"):
        assert call("GET", path)[0] == 200, path
    # Dead letters: a purchase and a tier check that their queues gave up on, counted and
    # redriven by an operator, then processed.
    sqs = boto3.client("sqs", endpoint_url=stack.moto, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    urls = stack.status()["queue_urls"]
    recent = datetime.now(timezone.utc) - timedelta(minutes=1)
    check = {"type": "tier.check", "version": 1, "id": "tier-iam-dlq", "program": "kr-shop", "member": "m-iam-dlq",
             "occurred_at": recent.strftime("%Y-%m-%dT%H:%M:%SZ"), "data": {}}
    for logical, body in (("EarnDeadLetterQueue", purchase("ev-iam-dlq", "m-iam-dlq", "iam-dlq", 10_000, recent)),
                          ("TierDeadLetterQueue", check)):
        sqs.send_message(QueueUrl=urls[logical], MessageBody=json.dumps(body), MessageGroupId="kr-shop/m-iam-dlq",
                         MessageDeduplicationId=f"iam-{logical}")
    status, depths, _ = call("GET", "/v1/dead-letters")
    assert status == 200 and {q["queue"]: q["depth"] for q in depths["queues"]} == {"earn": 1, "tier": 1}, depths
    for queue in ("earn", "tier"):
        status, moved, _ = call("POST", f"/v1/dead-letters/{queue}/redrive")
        assert status == 200 and moved["moved"] == 1, moved
    stack.eventually(lambda: call("GET", f"{P}/members/m-iam-dlq")[1].get("pending") == 100, timeout=60,
                     what="the redriven purchase")
    step("dead letters")
    # One person, one account: a POS member merged into the app's, a suspension whose event
    # waits for the resume, an erasure; a purchase over the daily limit held and released; an
    # adjustment over the threshold approved by a second operator.
    today = datetime.now(timezone.utc) - timedelta(minutes=1)
    assert call("POST", f"{P}/events", purchase("ev-iam-pos", "pos:010-9999-0000", "iam-pos", 20_000, today))[0] == 202
    stack.eventually(lambda: call("GET", f"{P}/members/pos:010-9999-0000")[1].get("pending") == 200, timeout=60,
                     what="the POS member's purchase")
    assert call("POST", f"{P}/members/m-iam-app/adjustments", {"points": 100, "reason": "iam"})[0] == 201
    status, merged, _ = call("POST", f"{P}/members/m-iam-app/merge", {"from": "pos:010-9999-0000", "reason": "iam"})
    assert status == 200 and merged["balance"] == 100 and merged["pending"] == 200, merged
    # Support links the member's app login; the app's token of it then sees the member.
    status, linked, _ = call("POST", f"{P}/members/m-iam-app/aliases", {"kind": "app", "value": "sub-iam-app"})
    assert status == 201 and linked["linked"] is True, linked
    status, view, _ = call("GET", f"{P}/me", token=stack.token("sub-iam-app"))
    assert status == 200 and view["member"] == "m-iam-app" and view["balance"] == 100, view
    assert call("POST", f"{P}/members/m-iam-app/suspend", {"reason": "iam"})[0] == 200
    review = {"type": "engagement.recorded", "version": 1, "id": "ev-iam-review", "program": "kr-shop",
              "member": "m-iam-app", "occurred_at": now, "data": {"action": "review", "ref": "iam"}}
    assert call("POST", f"{P}/events", review)[0] == 202
    stack.eventually(lambda: stack.status()["queues"]["EarnQueue"]["visible"] + stack.status()["queues"]["EarnQueue"]["in_flight"] == 0,
                     timeout=60, what="the event parked")
    status, resumed, _ = call("POST", f"{P}/members/m-iam-app/resume", {"reason": "iam"})
    assert status == 200 and resumed["applied"] == 1, resumed
    stack.eventually(lambda: call("GET", f"{P}/members/m-iam-app")[1].get("balance") == 600, timeout=60,
                     what="the resumed event applied")
    status, erased, _ = call("DELETE", f"{P}/members/m-iam-app?reason=iam")
    assert status == 200 and erased["forfeited"] == 600, erased
    assert call("POST", f"{P}/events", purchase("ev-iam-big", "m-iam-big", "iam-big", 20_000_000, today))[0] == 202
    stack.eventually(lambda: any(e["id"] == "ev-iam-big" for e in call("GET", f"{P}/reviews")[1].get("events", [])),
                     timeout=60, what="the held purchase")
    assert call("POST", f"{P}/reviews/ev-iam-big/release")[0] == 202
    stack.eventually(lambda: call("GET", f"{P}/members/m-iam-big")[1].get("pending") == 200_000, timeout=60,
                     what="the released purchase")
    status, asked, _ = call("POST", f"{P}/members/m-iam-big/adjustments", {"points": 200_000, "reason": "iam"})
    assert status == 202, asked
    assert call("GET", f"{P}/approvals")[0] == 200
    lead = stack.token("lead-2", admin=True)
    assert call("POST", f"{P}/approvals/{asked['id']}/approve", token=lead)[0] == 201
    step("members and safeguards")
    # A member whose stored account cannot be read (a bad manual edit): the campaign tick's
    # broadcast pass and recalculate-tiers fail on it and keep it to try again (the pass's list
    # of members to retry; a tier check on the tier queue).
    dynamodb = boto3.client("dynamodb", endpoint_url=stack.moto, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")
    broken = {"PK": {"S": "P#kr-shop#M#m-iam-broken"}, "SK": {"S": "ACCOUNT"},
              "member": {"S": "m-iam-broken"}, "body": {"S": "{not an account"}}
    dynamodb.put_item(TableName=stack.status()["table"], Item=broken)
    # Every schedule, and the full pass that no schedule runs.
    for name in ("ReleasePending", "ExpirePoints", "TierReviews", "Notices", "CampaignTick", "ReconcilePlatforms"):
        assert stack.run_schedule(name)["ok"], name
        step(f"schedule {name}")
    # The reconciliation read the shop's API and sent the order its webhook never delivered.
    stack.eventually(lambda: call("GET", f"{P}/members/woocommerce:88")[1].get("pending") == 300, timeout=60,
                     what="the reconciled order")
    result = invoke(stack, "tier-recalc", {"job": "recalculate-tiers"})
    assert result["ok"], result
    # (the tier check went out: the function has the tier queue's URL, not only the grant)
    sent = {k: n for k, n in stack.status()["requests"].items() if k.startswith("tier-recalc sqs.SendMessage ")}
    assert sent, stack.status()["requests"]
    step("recalculate-tiers")
    # Once the account is gone, the tick's retry finds nothing to assign and drops its list.
    dynamodb.delete_item(TableName=stack.status()["table"], Key={"PK": broken["PK"], "SK": broken["SK"]})
    assert stack.run_schedule("CampaignTick")["ok"]
    step("the tick's retries")
    # Everything queued for the functions has been consumed (notices are the brand's to read).
    stack.eventually(lambda: all(stack.status()["queues"][q]["visible"] + stack.status()["queues"][q]["in_flight"] == 0
                                 for q in ("EarnQueue", "TierQueue")), timeout=60, what="empty earn and tier queues")
    time.sleep(2)


FUNCTIONS = {"webhook-ingest", "earn", "outbox-relay", "tier-recalc", "member-api", "redeem", "campaign-assign"}


@pytest.fixture(scope="module")
def exercised(tmp_path_factory) -> dict:
    """The stack's status after every function was driven through its work."""
    # kr-shop with an anniversary action too, so that the campaign tick reads both yearly indexes.
    program = tmp_path_factory.mktemp("iam") / "kr-shop.toml"
    program.write_text((ROOT / "examples" / "kr-shop.toml").read_text()
                       + '\n[actions.anniversary]\npoints = 500\nlimit = { count = 1, per = "year" }\n'
                       + '\n[safeguards]\ndaily_points = 100000\nadjustment_approval_above = 150000\n'
                       + 'operator_daily_points = 100000000\n')
    api, asked = woocommerce_api()
    credentials = json.dumps({"url": f"http://127.0.0.1:{api.server_address[1]}", "key": "ck_iam", "secret": "cs_iam"})
    running = start_stack("--schedules-every", "0", "--visibility-timeout", "2", "--program", str(program),
                          env={"LOYALTY_API_KR_SHOP_WOOCOMMERCE": credentials})
    try:
        exercise(running)
        assert any("modified_after=" in path for path in asked), asked
        return running.status()
    finally:
        stop_stack(running)
        api.shutdown()


@pytest.fixture(scope="module")
def used(exercised) -> dict[str, set[tuple[str, str]]]:
    actions: dict[str, set[tuple[str, str]]] = {}
    for function, action, resource in exercised["actions"]:
        actions.setdefault(function, set()).add((action, resource))
    return actions


def test_every_function_uses_exactly_what_the_template_grants(used):
    # GIVEN every function driven through its routes, queues, stream and schedules
    # WHEN what each asked of AWS is compared with its policy
    missing, unused = iam.compare(iam.grants(TEMPLATE), used)
    # THEN nothing is missing and nothing is granted in vain
    assert missing == [], f"used but not granted: {missing}"
    assert unused == [], f"granted but never used: {unused}"


def test_a_removed_grant_is_noticed(used):
    # GIVEN the template's grants without tier-recalc's Scan (the full pass of recalculate-tiers)
    granted = iam.grants(TEMPLATE)
    assert ("dynamodb:Scan", "table") in granted["tier-recalc"]
    granted["tier-recalc"].discard(("dynamodb:Scan", "table"))
    # WHEN compared with what the functions used THEN that action is reported missing
    missing, _ = iam.compare(granted, used)
    assert ("tier-recalc", "dynamodb:Scan", "table") in missing


def test_no_first_invocation_waits_for_a_new_connection(exercised):
    # GIVEN every function started cold and driven through its routes, queues, stream and
    # schedules
    first = exercised["first_invocation_connections"]
    assert FUNCTIONS <= set(first) and all(first[f] for f in FUNCTIONS), first
    # WHEN the connections each instance opened during its first invocation are counted
    # (jobs are left out: a schedule's run or an audit reads many members at once, for as long
    # as it takes, and nobody waits on its answer)
    opened = {f"{f} {i}": first[f][i] for f in first for i in first[f]
              if first[f][i]["connections"] and not re.search(r"^job |audit\.requested", first[f][i]["work"])}
    # THEN there are none: init opened every connection the first invocation used
    assert opened == {}, opened
