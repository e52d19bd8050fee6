"""Jobs fail small on the deployed topology: one corrupt member among many due is named in the
report and retried by the next run, and a run with too little time left stops cleanly and the
next one finishes. (`shared/tests/jobs.rs` does the same for expiry with 1,000 members on the
embedded store; here the due job is release-pending, whose members can be made due within a
week.) JOBS_MEMBERS sets how many (CI: 400, to stay within its time; 1,000 took about 300 s)."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import boto3

from conftest import Running, start_stack, stop_stack

MEMBERS = int(os.environ.get("JOBS_MEMBERS", "400"))
BROKEN = f"j-{MEMBERS // 2:04d}"
TABLE = "loyalty-Table"


def invoke(stack: Running, function: str, payload: dict, timeout: float | None = None) -> dict:
    query = f"?timeout={timeout}" if timeout else ""
    req = urllib.request.Request(f"{stack.control}/invoke/{function}{query}", data=json.dumps(payload).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=900) as r:
        return json.loads(r.read())


def purchase(member: str, occurred: datetime) -> dict:
    return {
        "type": "purchase.completed", "version": 1, "id": f"jobs-{member}", "program": "kr-shop",
        "member": member, "occurred_at": occurred.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": {"order_id": f"jobs-{member}", "currency": "KRW", "lines": [
            {"line_id": "1", "sku": "TEE-01", "category": "apparel", "quantity": 1, "unit_price": "10000"}]},
    }


def test_a_corrupt_member_is_named_and_retried_and_a_run_out_of_time_resumes():
    stack = start_stack("--schedules-every", "0", "--visibility-timeout", "2")
    try:
        admin = stack.token("ops", admin=True)
        # GIVEN members whose purchase of six days ago releases its points tomorrow
        occurred = datetime.now(timezone.utc) - timedelta(days=6)
        members = [f"j-{i:04d}" for i in range(MEMBERS)]
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(
                lambda m: stack.request("POST", "/v1/programs/kr-shop/events", purchase(m, occurred), token=admin)[0], members))
        assert set(statuses) == {202}, set(statuses)
        stack.eventually(lambda: stack.member(members[-1]).get("pending") == 100 and stack.member(members[0]).get("pending") == 100,
                         timeout=300, what="the purchases credited")
        stack.eventually(lambda: all(stack.status()["queues"][q]["visible"] + stack.status()["queues"][q]["in_flight"] == 0
                                     for q in ("EarnQueue", "TierQueue")), timeout=300, what="empty earn and tier queues")
        # AND one of them whose account item cannot be read (a bad manual edit)
        dynamodb = boto3.client("dynamodb", endpoint_url=stack.moto, region_name="us-east-1",
                                aws_access_key_id="test", aws_secret_access_key="test")
        key = {"PK": {"S": f"P#kr-shop#M#{BROKEN}"}, "SK": {"S": "ACCOUNT"}}
        good = dynamodb.get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"]["body"]
        set_body = lambda body: dynamodb.update_item(  # noqa: E731
            TableName=TABLE, Key=key, UpdateExpression="SET body = :b", ExpressionAttributeValues={":b": body})
        set_body({"S": "{not an account"})
        day = (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%d")
        job = {"job": "release-pending", "program": "kr-shop", "date": day, "ahead": True}

        # WHEN release-pending runs with 5 seconds left in its invocation
        started = time.monotonic()
        short = invoke(stack, "tier-recalc", job, timeout=5)
        # THEN it stops cleanly before changing anyone, and says the run is incomplete
        assert short["ok"], short
        assert (short["result"][0]["complete"], short["result"][0]["changed"]) == (False, 0), short

        # WHEN it runs with its full time
        report = invoke(stack, "tier-recalc", job)
        assert report["ok"], report
        report = report["result"][0]
        print(f"release-pending over {MEMBERS} members: {time.monotonic() - started:.0f} s")
        # THEN all but one are released, and the report names the one that failed, with its cause
        assert (report["complete"], report["members"], report["changed"], report["failed"]) == (True, MEMBERS, MEMBERS - 1, 1), report
        assert report["failures"][0]["member"] == BROKEN and "corrupt" in report["failures"][0]["error"], report
        assert stack.member("j-0000")["pending"] == 0

        # WHEN an operator repairs the item and the job runs again
        set_body(good)
        again = invoke(stack, "tier-recalc", job)["result"][0]
        # THEN the one left is released, and nothing fails
        assert (again["changed"], again["failed"]) == (1, 0), again
        assert stack.member(BROKEN)["pending"] == 0
    finally:
        stop_stack(stack)
