"""Operators' repairs on the deployed topology: a message forced into the earn queue's
dead-letter queue is listed and redriven with `loyalty dlq`, and applied once."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta, timezone

import boto3

from conftest import ROOT, Running

LOYALTY = os.environ.get("LOYALTY_BIN", str(ROOT / "target" / "debug" / "loyalty"))


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
