"""The deployed topology on one machine, from outside: the HTTP API and its authorizer,
webhook-ingest's function URL, a webhook through SQS to earn, a tier upgrade through the tier queue, a schedule, and a message
that keeps failing ending in the dead-letter queue."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3

from conftest import JWT_SECRET, ROOT, SECRETS, Running, start_stack, stop_stack

LOYALTY = os.environ.get("LOYALTY_BIN", str(ROOT / "target" / "debug" / "loyalty"))


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def purchase(event_id: str, member: str, order: str, amount: int, occurred: datetime) -> dict:
    return {
        "type": "purchase.completed",
        "version": 1,
        "id": event_id,
        "program": "kr-shop",
        "member": member,
        "occurred_at": iso(occurred),
        "data": {
            "order_id": order,
            "currency": "KRW",
            "channel": "online",
            "shipping": "0",
            "tax": "0",
            "lines": [
                {"line_id": "1", "sku": "TEE-01", "category": "apparel", "quantity": 1, "unit_price": str(amount), "discount": "0"}
            ],
        },
    }


def test_the_authorizer_refuses_what_api_gateway_refuses(stack):
    # GIVEN the HTTP front with the template's JWT authorizer
    # WHEN a member route is called without a token, with a bad signature, or expired
    no_token = stack.request("GET", "/v1/programs/kr-shop/me")
    forged = stack.request("GET", "/v1/programs/kr-shop/me", token=stack.token("m-1")[:-4] + "AAAA")
    expired = stack.request("GET", "/v1/programs/kr-shop/me", token=stack.token("m-1", exp_in=-10))
    # THEN API Gateway's 401, before any function runs
    for status, body, _ in (no_token, forged, expired):
        assert (status, body) == (401, {"message": "Unauthorized"})
    # WHEN a member token calls an admin route THEN 403 for the missing scope
    assert stack.request("GET", "/v1/programs/kr-shop", token=stack.token("m-1"))[:2] == (403, {"message": "Forbidden"})
    # WHEN a path or a method is not in the template THEN member-api's router answers, through
    # the ANY /{proxy+} route, 404 and 405 (with Allow) as problems, as `loyalty serve` does
    unknown = stack.request("GET", "/v1/nothing", token=stack.token("m-1"))
    wrong_method = stack.request("DELETE", "/v1/programs/kr-shop/me", token=stack.token("m-1"))
    for (status, problem, headers), expected in ((unknown, 404), (wrong_method, 405)):
        headers = {k.lower(): v for k, v in headers.items()}
        assert (status, headers["content-type"]) == (expected, "application/problem+json"), problem
        assert problem["status"] == expected, problem
    assert "GET" in {k.lower(): v for k, v in wrong_method[2].items()}["allow"]
    # AND such a request without a token is refused by the authorizer before any function runs
    assert stack.request("GET", "/v1/nothing")[:2] == (401, {"message": "Unauthorized"})
    # WHEN a valid member token calls GET /me THEN the function answers with the member's view
    status, body, headers = stack.request("GET", "/v1/programs/kr-shop/me", token=stack.token("m-new"))
    assert status == 200, body
    assert body["member"] == "m-new" and body["balance"] == 0
    assert "apigw-requestid" in {k.lower() for k in headers}


def test_faults_put_while_running_are_request_faults_only(stack):
    # GIVEN a running stack's control API
    def put(spec: str) -> int:
        req = urllib.request.Request(f"{stack.control}/faults", data=spec.encode(), method="PUT")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    # WHEN a function's crash is asked for THEN it is refused (before: 200, and nothing crashed)
    assert put("lambda.*:crash=1") == 400
    # WHEN request faults are put, then none THEN both are taken
    assert put("sqs.SendMessage:throttle=0") == 200
    assert put("") == 200


def test_the_local_table_is_the_one_deployed_at_the_parameters_defaults(tmp_path):
    from awslocal.template import load

    # GIVEN the template, whose table is on demand unless TableCapacity is provisioned
    source = (ROOT / "infra" / "template.yaml").read_text()
    # WHEN it is loaded as it stands
    table = load(ROOT / "infra" / "template.yaml").table
    # THEN the table is on demand, with no capacity on it or on any index
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert "ProvisionedThroughput" not in table
    assert all("ProvisionedThroughput" not in index for index in table["GlobalSecondaryIndexes"])
    # WHEN TableCapacity defaults to provisioned instead
    provisioned = tmp_path / "template.yaml"
    marker = "    AllowedValues: [on-demand, provisioned]\n    Default: on-demand\n"
    assert marker in source
    provisioned.write_text(source.replace(marker, marker.replace("Default: on-demand", "Default: provisioned")))
    table = load(provisioned).table
    # THEN the table and each of its indexes have their floor of capacity
    assert table["BillingMode"] == "PROVISIONED"
    assert table["ProvisionedThroughput"] == {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
    assert [index["ProvisionedThroughput"] for index in table["GlobalSecondaryIndexes"]] == [
        {"ReadCapacityUnits": 1, "WriteCapacityUnits": 1}
    ] * 6


def test_a_signed_shopify_order_travels_through_sqs_to_earn(stack):
    # GIVEN a Shopify orders/paid delivery from yesterday, signed with the program's secret
    body = (ROOT / "tests/fixtures/shopify/orders-paid.json").read_text()
    body = body.replace("__OCCURRED_AT__", iso(datetime.now(timezone.utc) - timedelta(days=1))).encode()
    signature = base64.b64encode(hmac.new(SECRETS["LOYALTY_SECRET_KR_SHOP_SHOPIFY"].encode(), body, hashlib.sha256).digest())
    headers = {
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Hmac-Sha256": signature.decode(),
        "X-Shopify-Webhook-Id": "delivery-1",
    }
    # WHEN it is delivered to webhook-ingest's function URL (no authorizer; the secret comes from SSM)
    status, answer, _ = stack.request("POST", "/webhooks/shopify/kr-shop", body, headers=headers)
    # THEN it is acknowledged, and the member sees 1,000 pending points through GET /me
    assert status == 200, answer
    member_token = stack.token("shopify:7001234")

    def pending():
        s, view, _ = stack.request("GET", "/v1/programs/kr-shop/me", token=member_token)
        return view if s == 200 and view["pending"] == 1000 else None

    view = stack.eventually(pending, timeout=20, what="1,000 pending points")
    assert view["balance"] == 0
    # AND a badly signed delivery is refused and changes nothing
    headers["X-Shopify-Hmac-Sha256"] = base64.b64encode(b"x" * 32).decode()
    assert stack.request("POST", "/webhooks/shopify/kr-shop", body, headers=headers)[0] == 401


def shopify_paid(order_id: int, customer: int, days_ago: int) -> tuple[bytes, dict]:
    """The orders/paid fixture as another order of another customer, signed."""
    body = (ROOT / "tests/fixtures/shopify/orders-paid.json").read_text()
    body = body.replace("__OCCURRED_AT__", iso(datetime.now(timezone.utc) - timedelta(days=days_ago)))
    body = body.replace("820982911946154508", str(order_id)).replace("7001234", str(customer)).encode()
    signature = base64.b64encode(hmac.new(SECRETS["LOYALTY_SECRET_KR_SHOP_SHOPIFY"].encode(), body, hashlib.sha256).digest())
    return body, {"X-Shopify-Topic": "orders/paid", "X-Shopify-Hmac-Sha256": signature.decode()}


def test_webhooks_enter_by_the_function_url_alone(stack):
    # GIVEN a signed Shopify delivery of a new order
    body, headers = shopify_paid(820982911946150001, 7005555, days_ago=1)
    admin = stack.token("ops", admin=True)
    # WHEN it is posted to the HTTP API THEN the authorizer refuses it (no token), and with a
    # token member-api's 404: the API has no webhook route
    assert stack.request("POST", "/webhooks/shopify/kr-shop", body, headers=headers, base=stack.api)[:2] == (
        401,
        {"message": "Unauthorized"},
    )
    status, problem, _ = stack.request(
        "POST", "/webhooks/shopify/kr-shop", body, headers=headers, token=admin, base=stack.api
    )
    assert (status, problem.get("status")) == (404, 404), problem
    # WHEN the function URL is sent another method, or an admin route with an admin token
    wrong_method = stack.request("GET", "/webhooks/shopify/kr-shop")
    admin_route = stack.request(
        "POST", "/v1/programs/kr-shop/events", purchase("ev-url-1", "m-url", "url-1", 10_000, datetime.now(timezone.utc)),
        token=admin, base=stack.webhooks,
    )
    # THEN the function refuses them itself, as problems: nothing but the webhooks is served there
    for (status, problem, response_headers), expected in ((wrong_method, 405), (admin_route, 404)):
        assert status == expected, problem
        assert {k.lower(): v for k, v in response_headers.items()}["content-type"] == "application/problem+json"
    # WHEN the delivery goes to the function URL THEN it is accepted, with Lambda's request id
    status, answer, response_headers = stack.request("POST", "/webhooks/shopify/kr-shop", body, headers=headers)
    assert status == 200, answer
    assert "x-amzn-requestid" in {k.lower() for k in response_headers}
    # AND its customer is credited, while the event sent to the wrong place credited no one
    token = stack.token("shopify:7005555")
    stack.eventually(
        lambda: stack.request("GET", "/v1/programs/kr-shop/me", token=token)[1].get("pending") == 1000,
        what="the delivery credited",
    )
    view = stack.request("GET", "/v1/programs/kr-shop/me", token=stack.token("m-url"))[1]
    assert (view["balance"], view["pending"]) == (0, 0), view


def test_ssm_throttled_is_503_and_the_next_delivery_succeeds():
    # GIVEN a fresh stack whose webhook-ingest finds SSM throttled (every call, retries included)
    running = start_stack(
        "--schedules-every", "0", "--concurrency", "1", "--faults", "webhook-ingest/ssm.GetParameters:throttle=1"
    )
    try:
        body, headers = shopify_paid(820982911946154999, 7009999, days_ago=1)
        # WHEN a signed delivery arrives
        status, problem, response_headers = running.request("POST", "/webhooks/shopify/kr-shop", body, headers=headers)
        # THEN it is 503 (the platform will retry), not 401 (which would say the secret is wrong)
        assert status == 503, problem
        content_type = {k.lower(): v for k, v in response_headers.items()}["content-type"]
        assert content_type == "application/problem+json"
        # WHEN SSM answers again and the platform retries THEN it is accepted and credited by the
        # same warm instance: the failure was not remembered
        running.set_faults("")
        assert running.request("POST", "/webhooks/shopify/kr-shop", body, headers=headers)[0] == 200
        token = running.token("shopify:7009999")
        running.eventually(
            lambda: running.request("GET", "/v1/programs/kr-shop/me", token=token)[1].get("pending") == 1000,
            what="the retried delivery credited",
        )
        assert running.status()["functions"]["webhook-ingest"]["cold_starts"] == 1
    finally:
        stop_stack(running)


def test_a_tier_upgrade_arrives_through_the_tier_queue(stack):
    # GIVEN a member with no purchases
    admin = stack.token("ops", admin=True)
    # WHEN a 300,000 KRW purchase from 8 days ago is submitted (the SILVER threshold)
    event = purchase("ev-tier-1", "m-tier", "tier-1", 300_000, datetime.now(timezone.utc) - timedelta(days=8))
    status, body, _ = stack.request("POST", "/v1/programs/kr-shop/events", event, token=admin)
    assert (status, body) == (202, {"id": "ev-tier-1", "status": "accepted"})
    # THEN earn credits 3,000 points and tier-recalc, fed by earn's tier.check, upgrades to SILVER
    view = stack.eventually(
        lambda: (v := stack.member("m-tier")).get("tier", {}).get("id") == "SILVER" and v, timeout=30, what="SILVER"
    )
    assert view["balance"] == 3000
    ledger = stack.request("GET", "/v1/programs/kr-shop/members/m-tier/ledger", token=admin)[1]
    assert [e["kind"] for e in ledger["entries"]][:2] == ["tier", "earn"]
    functions = stack.status()["functions"]
    assert functions["tier-recalc"]["invocations"] >= 1


def test_a_schedule_releases_pending_points(stack):
    # GIVEN a purchase whose return window ends in a few seconds
    admin = stack.token("ops", admin=True)
    # (15 s: earn must see it before the window ends, even on a busy machine)
    occurred = datetime.now(timezone.utc) - timedelta(days=7) + timedelta(seconds=15)
    event = purchase("ev-release-1", "m-release", "release-1", 50_000, occurred)
    assert stack.request("POST", "/v1/programs/kr-shop/events", event, token=admin)[0] == 202
    stack.eventually(lambda: stack.member("m-release").get("pending") == 500, what="500 pending")
    # WHEN the window has ended, the view already counts the points, provisionally
    stack.eventually(lambda: stack.member("m-release").get("balance") == 500, what="500 available", timeout=30)

    def entries():
        return stack.request("GET", "/v1/programs/kr-shop/members/m-release/ledger", token=admin)[1]["entries"]

    assert any(e["kind"] == "release" and e["provisional"] for e in entries())
    # AND the ReleasePending schedule (the template's input, invoked as EventBridge would) writes it
    run = stack.run_schedule("ReleasePending")
    assert run["ok"], run
    released = [e for e in entries() if e["kind"] == "release"]
    assert len(released) == 1 and not released[0]["provisional"], released
    assert released[0]["points"] == 500 and released[0]["pending"] == -500
    view = stack.member("m-release")
    assert (view["balance"], view["pending"]) == (500, 0)


def test_a_message_that_keeps_failing_ends_in_the_dead_letter_queue():
    # GIVEN a stack whose earn function cannot reach DynamoDB at all (every call throttled)
    running = start_stack(
        "--schedules-every", "0", "--visibility-timeout", "1", "--faults", "earn/dynamodb.*:throttle=1"
    )
    try:
        admin = running.token("ops", admin=True)
        event = purchase("ev-dlq-1", "m-dlq", "dlq-1", 10_000, datetime.now(timezone.utc) - timedelta(days=8))
        # WHEN an event is accepted into the earn queue
        assert running.request("POST", "/v1/programs/kr-shop/events", event, token=admin)[0] == 202
        sqs = boto3.client(
            "sqs", endpoint_url=running.moto, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        )
        dlq = sqs.get_queue_url(QueueName="loyalty-EarnDeadLetterQueue.fifo")["QueueUrl"]

        def dead_lettered():
            got = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, AttributeNames=["All"], VisibilityTimeout=30)
            return got.get("Messages")

        # THEN after maxReceiveCount (5) failed batches it is in the dead-letter queue, unchanged
        messages = running.eventually(dead_lettered, timeout=90, what="a dead-lettered message")
        assert len(messages) == 1
        assert json.loads(messages[0]["Body"])["id"] == "ev-dlq-1"
        # (received five times from the earn queue; the sixth receive moved it)
        assert messages[0]["Attributes"]["ApproximateReceiveCount"] == "6"
        status = running.eventually(
            lambda: (s := running.status())["sources"]["EarnMessages"]["failed"] == 5 and s, what="5 failed batches"
        )
        assert status["sources"]["EarnMessages"]["batches"] == 5, status["sources"]
        assert status["queues"]["EarnQueue"] == {"visible": 0, "in_flight": 0}
        # AND the member was never credited: it has no account at all
        assert running.member("m-dlq") == {}
    finally:
        stop_stack(running)


def test_a_function_that_cannot_start_answers_500_and_is_started_afresh(tmp_path):
    # GIVEN a stack whose redeem instances start without their environment (LOYALTY_TABLE)
    running = start_stack(
        "--schedules-every", "0", "--work-dir", str(tmp_path), "--faults", "lambda.redeem:init=1"
    )
    try:
        # WHEN a member redeems, twice
        ask = lambda: running.request(  # noqa: E731
            "POST", "/v1/programs/kr-shop/me/redemptions", {"reward": "coupon-5000"},
            token=running.token("m-1"), headers={"Idempotency-Key": "k-1"},
        )
        first, second = ask(), ask()
        # THEN API Gateway's 500 each time, each from a new cold start that failed at start-up
        assert first[:2] == second[:2] == (500, {"message": "Internal Server Error"})
        redeem = running.status()["functions"]["redeem"]
        assert redeem["cold_starts"] == 2 and redeem["errors"] == 2, redeem
        assert "LOYALTY_TABLE is not set" in (tmp_path / "logs" / "redeem.log").read_text()
        # AND the other functions, started with their environment, answer
        assert running.request("GET", "/v1/programs/kr-shop/me", token=running.token("m-1"))[0] == 200
    finally:
        stop_stack(running)


TRACE = "1-6750a1b2-0123456789abcdef01234567"
EMAIL = "jiwoo.logs@example.com"


def json_lines(log: Path) -> list[dict]:
    """The JSON objects a function printed (the stack prefixes each line with its source)."""
    found = []
    for line in log.read_text().splitlines():
        _, _, payload = line.partition("] ")
        if payload.startswith("{"):
            try:
                found.append(json.loads(payload))
            except json.JSONDecodeError:
                pass
    return found


def emf_sum(lines: list[dict], metric: str, **labels: str) -> int:
    """The sum of an EMF metric over the lines whose labels match, checking each declaration."""
    total = 0
    for line in lines:
        if metric not in line or "_aws" not in line:
            continue
        declared = line["_aws"]["CloudWatchMetrics"][0]
        assert declared["Namespace"] == "Loyalty", line
        assert metric in [m["Name"] for m in declared["Metrics"]], line
        assert ["function"] in declared["Dimensions"], line
        assert all("member" not in d for d in declared["Dimensions"]), line
        if all(line.get(k) == v for k, v in labels.items()):
            value = line[metric]
            total += sum(value) if isinstance(value, list) else value
    return total


def test_functions_log_each_message_at_info_with_its_ids_trace_and_metrics_and_no_personal_data(tmp_path):
    # GIVEN a stack whose functions run with the template's logging settings, logs kept on disk
    running = start_stack("--schedules-every", "0", "--work-dir", str(tmp_path))
    logs = tmp_path / "logs"
    try:
        admin = running.token("ops", admin=True)
        member = f"email:{EMAIL}"
        # WHEN an event of a member named by an email is accepted (a purchase that reaches
        # SILVER, so that a tier check follows it); the caller's X-Ray header is replaced by the
        # invocation's trace, as Lambda does
        event = purchase("ev-log-1", member, "log-1", 300_000, datetime.now(timezone.utc) - timedelta(days=8))
        header = {"X-Amzn-Trace-Id": f"Root={TRACE};Parent=53995c3f42cd8ad8;Sampled=1"}
        assert running.request("POST", "/v1/programs/kr-shop/events", event, token=admin, headers=header)[0] == 202
        running.eventually(lambda: running.member(member).get("balance") == 3000, what="the purchase credited")
        # AND a signed Shopify order whose payload holds a customer's email is processed
        body, headers = shopify_paid(820982911946154999, 7009999, 1)
        assert running.request("POST", "/webhooks/shopify/kr-shop", body, headers=headers)[0] == 200
        running.eventually(lambda: running.member("shopify:7009999").get("pending", 0) > 0, what="the order credited")

        def processed():
            for record in json_lines(logs / "earn.log"):
                span = record.get("span", {})
                if record.get("fields", {}).get("message") == "message processed" and span.get("event_id") == "ev-log-1":
                    return record
            return None

        # THEN the function that took the request logged it by its route, under the trace of its
        # invocation (_X_AMZN_TRACE_ID, which the Lambda runtime passes on as the header)
        requests = [r for f in logs.glob("*.log") for r in json_lines(f)
                    if r.get("fields", {}).get("message") == "request answered"]
        accepted = [r for r in requests
                    if r["fields"]["route"] == "/v1/programs/{program}/events" and r["fields"]["status"] == 202]
        assert len(accepted) == 1, requests[:5]
        trace = accepted[0]["fields"]["trace"]
        invocation = next(s for s in accepted[0]["spans"] if "requestId" in s)
        assert invocation.get("xrayTraceId", "").startswith(f"Root={trace};"), accepted[0]
        # AND earn logged the event at INFO as one JSON line with its ids, outcome and that trace
        record = running.eventually(processed, what="an INFO line for ev-log-1")
        assert record["level"] == "INFO", record
        span = record["span"]
        assert (span["program"], span["kind"], span["trace"]) == ("kr-shop", "purchase.completed", trace), span
        assert span["member"].startswith("person-"), span
        # (keyed with the stack's generated secret: not the digest anyone can compute from the
        # email alone)
        assert span["member"] != f"person-{fnv1a64(member.encode()):016x}", span
        assert record["fields"]["outcome"] == "applied", record
        # AND the invocation's request id
        assert any(s.get("requestId") for s in record["spans"]), record
        # AND the trace went on with the tier check to tier-recalc
        running.eventually(
            lambda: any(r.get("span", {}).get("trace") == trace and r["span"].get("kind") == "tier.check"
                        for r in json_lines(logs / "tier-recalc.log")),
            what="the tier check logged under the request's trace")

        # AND every processed message was counted in EMF lines by outcome, once
        earn = json_lines(logs / "earn.log")
        outcomes = [r["fields"]["outcome"] for r in earn
                    if r.get("fields", {}).get("message") in ("message processed", "message rejected for good",
                                                              "message will be retried")]
        assert outcomes, earn[-5:]
        assert emf_sum(earn, "Events", function="earn") == len(outcomes)
        assert emf_sum(earn, "Events", function="earn", outcome="applied") == outcomes.count("applied")
        assert emf_sum(earn, "PointsIssued", function="earn", program="kr-shop") >= 3000
        assert emf_sum(earn, "ColdStart", function="earn") >= 1
        api = [r for f in logs.glob("*.log") for r in json_lines(f)]
        assert emf_sum(api, "Requests", status="2xx") >= 3
        # AND every line, logs and metrics alike, carries the level and the RFC 3339 time that
        # Lambda's log-level filter reads (a line without either is INFO, dropped at WARN)
        for line in api:
            assert line.get("level") in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"), line
            datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))

        # AND no log of any function holds a secret of the stack or a person's data
        for log in logs.glob("*.log"):
            text = log.read_text()
            for secret in [JWT_SECRET, admin, *SECRETS.values(), EMAIL, "minji@example.com"]:
                assert secret not in text, f"{log.name} holds {secret}"
    finally:
        stop_stack(running)


def fnv1a64(data: bytes) -> int:
    """The unkeyed digest a log would hold without the stack's key."""
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) % (1 << 64)
    return value


def dlq(stack: Running, *args: str) -> dict:
    urls = stack.status()["queue_urls"]
    out = subprocess.run(
        [LOYALTY, "dlq", *args, "--queue", "earn", "--queue-url", urls["EarnQueue"],
         "--dead-letter-url", urls["EarnDeadLetterQueue"], "--json"],
        env={**os.environ, "AWS_ENDPOINT_URL": stack.moto, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t",
             "AWS_REGION": "us-east-1", "LOYALTY_LOG": "warn"},
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_dead_letter_is_redriven_and_applied_once(stack: Running):
    # GIVEN a purchase the earn queue gave up on: in its dead-letter queue, as SQS leaves it
    occurred = (datetime.now(timezone.utc) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    purchase = {"type": "purchase.completed", "version": 1, "id": "ev-dlq-aws", "program": "kr-shop",
                "member": "m-dlq-aws", "occurred_at": occurred,
                "data": {"order_id": "o-dlq-aws", "currency": "KRW",
                         "lines": [{"line_id": "l-1", "quantity": 1, "unit_price": "50000"}]}}
    sqs = boto3.client("sqs", endpoint_url=stack.moto, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
    dead_letters = stack.status()["queue_urls"]["EarnDeadLetterQueue"]

    def force(copy: str) -> None:
        sqs.send_message(QueueUrl=dead_letters, MessageBody=json.dumps(purchase),
                         MessageGroupId="kr-shop#m-dlq-aws", MessageDeduplicationId=f"kr-shop/ev-dlq-aws-{copy}")

    force("a")
    # WHEN operators list the dead letters THEN it is there, and still there after the look
    listed = dlq(stack, "list")
    assert listed["count"] == 1 and len(listed["messages"]) == 1, listed
    assert json.loads(listed["messages"][0]["body"])["id"] == "ev-dlq-aws"
    assert dlq(stack, "list")["count"] == 1
    # WHEN they redrive it THEN the earn function applies it: 500 points, past the return window
    assert dlq(stack, "redrive")["redriven"] == 1
    stack.eventually(lambda: stack.member("m-dlq-aws").get("balance") == 500, timeout=60, what="the redriven purchase")
    # WHEN a copy is forced in and redriven THEN nothing changes, and no dead letter is left
    force("b")
    assert dlq(stack, "redrive", "--max", "10")["redriven"] == 1
    stack.eventually(lambda: stack.status()["queues"]["EarnQueue"] == {"visible": 0, "in_flight": 0}, timeout=60,
                     what="an empty earn queue")
    assert stack.member("m-dlq-aws")["balance"] == 500
    assert dlq(stack, "list")["count"] == 0
    # WHEN a dead letter is redriven with URLs that pair it with another queue (the tier queue,
    # whose consumer would take the purchase for a tier check and drop it)
    force("c")
    urls = stack.status()["queue_urls"]
    wrong = subprocess.run(
        [LOYALTY, "dlq", "redrive", "--queue", "earn", "--queue-url", urls["TierQueue"],
         "--dead-letter-url", dead_letters, "--json"],
        env={**os.environ, "AWS_ENDPOINT_URL": stack.moto, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t",
             "AWS_REGION": "us-east-1", "LOYALTY_LOG": "warn"},
        capture_output=True, text=True, timeout=120,
    )
    # THEN it is refused, saying why, and the dead letter stays where it is
    assert wrong.returncode != 0 and "not to" in wrong.stderr, (wrong.returncode, wrong.stderr)
    assert dlq(stack, "list")["count"] == 1
    # AND redriven to its own queue it changes nothing (a copy), and leaves no dead letter
    assert dlq(stack, "redrive")["redriven"] == 1
    stack.eventually(lambda: stack.status()["queues"]["EarnQueue"] == {"visible": 0, "in_flight": 0}, timeout=60,
                     what="an empty earn queue")
    assert stack.member("m-dlq-aws")["balance"] == 500
    assert dlq(stack, "list")["count"] == 0
