"""Requests and DynamoDB capacity units per operation, through the real bootstraps.

Runs the deployed topology in this process (scripts/awslocal: moto, the table and queues of
infra/template.yaml, the release bootstraps under the local Lambda runtime, the HTTP API, the function URL) with
the proxy the functions already talk to (AWS_ENDPOINT_URL = the fault proxy) replaced by a
counting proxy: every DynamoDB, SQS and SSM request of every function is parsed and priced as
DynamoDB on-demand and SQS bill it. Then drives, one at a time and each until the whole chain
is quiet (webhook-ingest -> earn -> outbox-relay -> tier-recalc ...):

  first purchase of a new member, purchase of a known member, a frequent buyer's purchase
  (eight others still pending), duplicate delivery, refund,
  admin adjustment, redemption, GET /me, release of matured pending points (tier-recalc job),
  ten purchases delivered to earn as one batch of 10, the campaign tick; then, in a running
  campaign the members have seen, a purchase alone and ten as one batch of 10; last, a purchase
  of a member the campaign has not assigned.

Units, as DynamoDB on-demand charges them (sizes approximated, see item_size):
  reads   GetItem / BatchGetItem item: ceil(size/4KB) x (1 strong, 0.5 eventual), 1 item at least;
          Query / Scan: ceil(sum of item sizes evaluated / 4KB) x (1 | 0.5) (re-run without
          projection or filter to see what was evaluated); TransactGetItems: 2 x ceil(size/4KB)
  writes  PutItem / UpdateItem / DeleteItem: ceil(max(size before, size after)/1KB);
          BatchWriteItem: the same per item; TransactWriteItems: 2 x that per item;
          ConditionCheck in a transaction: 2 x ceil(size/4KB) read units (not used by the code).
          A failed conditional write and a cancelled transaction are charged as if written
          (DynamoDB charges failed conditional writes; for a cancelled transaction this is an
          upper bound). Sizes before/after come from the proxy's own consistent GetItem to moto
          around each write, under a lock that serialises the functions' DynamoDB requests.
  indexes each GSI whose key attributes an item gains or loses costs 1 write (projected size,
          KEYS_ONLY here: always < 1 KB), a changed index key costs 2 (delete + put), an
          unchanged key of a KEYS_ONLY index costs nothing.
  SQS     each request 1, each started 64 KB of a send's payload 1 more (SendMessageBatch of
          small messages = 1); FIFO and standard apart. The event-source mapping's own
          ReceiveMessage and DeleteMessageBatch (1 + 1 per batch) are counted from its batches.

moto's own ReturnConsumedCapacity is not used: it answers constants (1.0 per write, 0.5 per
read, len(keys) per batch), not sizes.

Usage: .venv/bin/python bench/units.py [--bin-dir /tmp/bench-bin] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import math
import os
import re
import socketserver
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from awslocal import stack as stack_module  # noqa: E402
from awslocal import template as tpl  # noqa: E402
from awslocal.faults import FaultProxy, operation_of  # noqa: E402
from awslocal.front import sign_hs256  # noqa: E402
from awslocal.runtime import FunctionPool  # noqa: E402
from awslocal.sources import SqsEventSource  # noqa: E402

PROGRAM = "kr-shop"
SHOPIFY_SECRET = "bench-shopify-secret"
JWT_SECRET = "bench-jwt-secret"

# Prices, us-east-1 list prices (see docs/performance.md for their source and date).
PRICE = {
    "wru": 0.625 / 1e6,
    "rru": 0.125 / 1e6,
    "sqs_fifo": 0.50 / 1e6,
    "sqs_standard": 0.40 / 1e6,
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_s": 0.0000133334,  # arm64
    "http_api": 1.00 / 1e6,  # API Gateway HTTP API, first 300 million a month
    "function_url": 0.0,  # a function URL: the invocation's own price, nothing more
    # Provisioned capacity (TableCapacity=provisioned), by the hour of one unit per second.
    "wcu_hour": 0.00065,
    "rcu_hour": 0.00013,
}
# The share of provisioned capacity used: auto scaling's target, and a lower figure for a load
# that moves faster than auto scaling follows it (it scales up within minutes, down rarely).
UTILISATION = (0.70, 0.50)
MEMORY_GB = 256 / 1024

# -- DynamoDB item sizes --------------------------------------------------------------------


def number_size(text: str) -> int:
    """DynamoDB: about 1 byte per two significant digits, plus 1."""
    digits = text.lstrip("+-").replace(".", "")
    digits = digits.split("e")[0].split("E")[0].strip("0") or "0"
    return math.ceil(len(digits) / 2) + 1


def value_size(value: dict) -> int:
    """Size of one attribute value (wire JSON), as DynamoDB documents it: strings and binaries
    by their UTF-8 / byte length, numbers as above, booleans and nulls 1 byte, lists and maps
    3 bytes plus 1 per element plus their elements (and a map's names)."""
    (kind, v), = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return number_size(v)
    if kind == "B":
        return len(base64.b64decode(v))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in v)
    if kind == "NS":
        return sum(number_size(s) for s in v)
    if kind == "BS":
        return sum(len(base64.b64decode(s)) for s in v)
    if kind == "M":
        return 3 + sum(len(k.encode()) + value_size(x) + 1 for k, x in v.items())
    if kind == "L":
        return 3 + sum(value_size(x) + 1 for x in v)
    raise ValueError(kind)


def item_size(item: dict | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + value_size(v) for name, v in item.items())


def kb_units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def read_units(size: int, consistent: bool) -> float:
    return max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5)


# -- the counting proxy ----------------------------------------------------------------------


class Ledger:
    """What each labelled operation cost: rows of (label, function, key) -> amount."""

    def __init__(self):
        self.label = "setup"
        self.lock = threading.Lock()
        self.rows: dict[str, dict] = defaultdict(lambda: defaultdict(float))
        self.last_request = time.monotonic()
        self.invocations: dict[str, list] = defaultdict(list)  # label -> [(function, ms, cold, records)]
        self.batches: dict[str, list] = defaultdict(list)  # label -> [(queue, fifo, n)]
        self.writes: dict[str, list] = defaultdict(list)  # label -> [write of one item]

    def write(self, function, operation, kind, key, size, wcu, index, ok) -> None:
        sk = next(iter(key.get("SK", {"S": "?"}).values()))
        what = re.sub(r"[#].*", "", sk) if not sk.startswith(("ACCOUNT", "IDEMP", "ALIAS", "COUPON")) else sk
        with self.lock:
            self.writes[self.label].append({"function": function, "operation": operation, "kind": kind, "item": what,
                                            "size": size, "wcu": wcu, "index_wcu": index, "ok": ok})

    def add(self, function: str, key: str, amount: float = 1.0) -> None:
        with self.lock:
            self.rows[self.label][(function, key)] += amount
            self.last_request = time.monotonic()


LEDGER = Ledger()


class Moto:
    """Raw DynamoDB JSON requests straight to moto (not through the proxy, not counted)."""

    def __init__(self, port: int):
        self.port = port

    def call(self, operation: str, request: dict) -> tuple[int, dict]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            c.request("POST", "/", body=json.dumps(request), headers={
                "Content-Type": "application/x-amz-json-1.0",
                "X-Amz-Target": f"DynamoDB_20120810.{operation}",
                "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
            })
            r = c.getresponse()
            return r.status, json.loads(r.read() or b"{}")
        finally:
            c.close()

    def get(self, table: str, key: dict) -> dict | None:
        status, answer = self.call("GetItem", {"TableName": table, "Key": key, "ConsistentRead": True})
        return answer.get("Item") if status == 200 else None


class CountingProxy(FaultProxy):
    """The fault proxy (no faults) that also prices what passes through it."""

    table_keys: list[str] = ["PK", "SK"]
    indexes: list[dict] = []
    counting = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.moto = Moto(self.upstream_port)
        self.dynamo_lock = threading.Lock()

    def _forward(self, h, path, body):
        m = re.match(r"^/i/(\d+)", h.path)
        function = self.function_of(int(m.group(1))) if m else "?"
        service, operation = operation_of(h.headers, body)
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = {}
        if not self.counting:
            LEDGER.last_request = time.monotonic()
            return super()._forward(h, path, body)
        LEDGER.add(function, f"req {service}.{operation}")
        if service == "dynamodb":
            with self.dynamo_lock:
                return self._dynamodb(function, operation, request, lambda: super(CountingProxy, self)._forward(h, path, body))
        if service == "sqs":
            self._sqs(function, operation, request)
        return super()._forward(h, path, body)

    # SQS: billed requests
    def _sqs(self, function: str, operation: str, request: dict) -> None:
        url = request.get("QueueUrl", "")
        kind = "fifo" if url.endswith(".fifo") else "standard"
        queue = url.rstrip("/").rsplit("/", 1)[-1]
        if operation == "SendMessage":
            size = len(request.get("MessageBody", "").encode()) + len(json.dumps(request.get("MessageAttributes", {})))
            LEDGER.add(function, f"sqs billed {kind}", math.ceil(max(size, 1) / 65536))
            LEDGER.add(function, f"sqs sent {queue}")
        elif operation == "SendMessageBatch":
            entries = request.get("Entries", [])
            size = sum(len(e.get("MessageBody", "").encode()) + len(json.dumps(e.get("MessageAttributes", {}))) for e in entries)
            LEDGER.add(function, f"sqs billed {kind}", math.ceil(max(size, 1) / 65536))
            LEDGER.add(function, f"sqs sent {queue}", len(entries))
        else:
            LEDGER.add(function, f"sqs billed {kind}")

    # DynamoDB: capacity units
    def _key_of(self, item: dict) -> dict:
        return {k: item[k] for k in self.table_keys if k in item}

    def _index_writes(self, before: dict | None, after: dict | None) -> float:
        writes = 0
        for index in self.indexes:
            names = [k["AttributeName"] for k in index["KeySchema"]]
            kb = tuple(json.dumps(before.get(n), sort_keys=True) for n in names) if before and all(n in before for n in names) else None
            ka = tuple(json.dumps(after.get(n), sort_keys=True) for n in names) if after and all(n in after for n in names) else None
            if kb and ka:
                if kb != ka:
                    writes += 2
                elif index["Projection"]["ProjectionType"] != "KEYS_ONLY":
                    writes += 1 if before != after else 0
            elif kb or ka:
                writes += 1
        return writes

    def _dynamodb(self, function: str, operation: str, request: dict, forward):
        add = lambda key, n: LEDGER.add(function, key, n)  # noqa: E731
        moto = self.moto
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            table = request["TableName"]
            key = self._key_of(request["Item"]) if operation == "PutItem" else request["Key"]
            before = moto.get(table, key)
            status, headers, answer = forward()
            after = moto.get(table, key)
            add("wcu table", kb_units(max(item_size(before), item_size(after))))
            index = self._index_writes(before, after) if status == 200 else 0
            if status == 200:
                add("wcu index", index)
            else:
                add("failed writes", 1)
            LEDGER.write(function, operation, operation, key, max(item_size(before), item_size(after)), kb_units(max(item_size(before), item_size(after))), index, status == 200)
            return status, headers, answer
        if operation == "TransactWriteItems":
            items = []
            for entry in request.get("TransactItems", []):
                (kind, op), = entry.items()
                key = self._key_of(op["Item"]) if kind == "Put" else op["Key"]
                items.append((kind, op["TableName"], key, moto.get(op["TableName"], key)))
            status, headers, answer = forward()
            for kind, table, key, before in items:
                if kind == "ConditionCheck":
                    add("rcu table", 2 * read_units(item_size(before), True))
                    continue
                after = moto.get(table, key) if status == 200 else before
                size = max(item_size(before), item_size(after))
                add("wcu table", 2 * kb_units(size))
                index = self._index_writes(before, after) if status == 200 else 0
                if status == 200:
                    add("wcu index", index)
                LEDGER.write(function, "TransactWriteItems", kind, key, size, 2 * kb_units(size), index, status == 200)
            add("transact items", len(items))
            if status != 200:
                add("cancelled transactions", 1)
            return status, headers, answer
        if operation == "BatchWriteItem":
            befores = []
            for table, requests in request.get("RequestItems", {}).items():
                for r in requests:
                    key = self._key_of(r["PutRequest"]["Item"]) if "PutRequest" in r else r["DeleteRequest"]["Key"]
                    befores.append((table, key, moto.get(table, key)))
            status, headers, answer = forward()
            for table, key, before in befores:
                after = moto.get(table, key)
                add("wcu table", kb_units(max(item_size(before), item_size(after))))
                add("wcu index", self._index_writes(before, after))
            return status, headers, answer

        status, headers, answer = forward()
        if status != 200:
            return status, headers, answer
        try:
            result = json.loads(answer)
        except ValueError:
            return status, headers, answer
        consistent = bool(request.get("ConsistentRead"))
        if operation == "GetItem":
            item = result.get("Item")
            if request.get("ProjectionExpression"):
                item = moto.get(request["TableName"], request["Key"])
            add("rcu table", read_units(item_size(item), consistent))
        elif operation == "BatchGetItem":
            for table, spec in request.get("RequestItems", {}).items():
                for key in spec.get("Keys", []):
                    add("rcu table", read_units(item_size(moto.get(table, key)), bool(spec.get("ConsistentRead"))))
                add("batch get items", len(spec.get("Keys", [])))
        elif operation in ("Query", "Scan"):
            shadow = {k: v for k, v in request.items() if k not in ("ProjectionExpression", "Select", "FilterExpression", "ReturnConsumedCapacity")}
            used = (request.get("KeyConditionExpression") or "")
            if "ExpressionAttributeNames" in shadow:
                shadow["ExpressionAttributeNames"] = {k: v for k, v in shadow["ExpressionAttributeNames"].items() if k in used}
                if not shadow["ExpressionAttributeNames"]:
                    del shadow["ExpressionAttributeNames"]
            if "ExpressionAttributeValues" in shadow:
                shadow["ExpressionAttributeValues"] = {k: v for k, v in shadow["ExpressionAttributeValues"].items() if k in used}
                if not shadow["ExpressionAttributeValues"]:
                    del shadow["ExpressionAttributeValues"]
            s_status, s_answer = moto.call(operation, shadow)
            items = s_answer.get("Items", []) if s_status == 200 else result.get("Items", [])
            size = sum(item_size(i) for i in items)
            where = "rcu index" if request.get("IndexName") else "rcu table"
            add(where, max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5))
            add(f"{operation.lower()} items evaluated", len(items))
        elif operation == "TransactGetItems":
            for entry in request.get("TransactItems", []):
                op = entry["Get"]
                add("rcu table", 2 * read_units(item_size(moto.get(op["TableName"], op["Key"])), True))
        return status, headers, answer


# -- what the Lambda service does around the functions ------------------------------------------

_original_invoke = FunctionPool.invoke


def _counted_invoke(self, payload, timeout=None):
    label = LEDGER.label
    outcome = _original_invoke(self, payload, timeout)
    records = len(payload.get("Records", [])) if isinstance(payload, dict) else 0
    LEDGER.invocations[label].append((self.binary.name, outcome.duration_ms, outcome.cold, records, outcome.ok))
    LEDGER.last_request = time.monotonic()
    return outcome


_original_deliver = SqsEventSource._deliver


def _counted_deliver(self, messages):
    label = LEDGER.label
    fifo = self.queue_url.endswith(".fifo")
    LEDGER.batches[label].append((self.queue_url.rsplit("/", 1)[-1], fifo, len(messages)))
    return _original_deliver(self, messages)


# The local runtime API, the proxy and the HTTP front write a response's headers and body in
# two writes; on a kept-alive connection past TCP's quick-ACK start, Nagle's algorithm holds the
# body until the peer's delayed ACK (40 ms). Lambda's and AWS's endpoints do not do that, so every
# server in this process answers with TCP_NODELAY.
socketserver.StreamRequestHandler.disable_nagle_algorithm = True
FunctionPool.invoke = _counted_invoke
SqsEventSource._deliver = _counted_deliver
stack_module.FaultProxy = CountingProxy


# -- driving operations -----------------------------------------------------------------------


class Driver:
    def __init__(self, stack):
        self.stack = stack
        self.api = stack.api
        self.webhooks = stack.webhooks
        self.control = stack.control_url

    def http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, object]:
        """To the HTTP API, or a webhook to webhook-ingest's function URL as the platforms send."""
        base = self.webhooks if path.startswith("/webhooks/") else self.api
        req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def admin(self) -> str:
        return sign_hs256(JWT_SECRET, {"sub": "bench", "scope": "loyalty/admin", "exp": int(time.time()) + 3600})

    def member_token(self, member: str) -> str:
        return sign_hs256(JWT_SECRET, {"sub": member, "scope": "", "exp": int(time.time()) + 3600})

    def shopify(self, topic: str, payload: dict) -> int:
        body = json.dumps(payload, separators=(",", ":")).encode()
        mac = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest()).decode()
        status, answer = self.http("POST", f"/webhooks/shopify/{PROGRAM}", body, {
            "Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": mac,
            "X-Shopify-Shop-Domain": "kr-shop.myshopify.com", "X-Shopify-API-Version": "2025-10",
        })
        if status >= 300:
            raise RuntimeError(f"webhook {topic}: {status} {answer}")
        return status

    def event(self, envelope: dict) -> None:
        status, answer = self.http("POST", f"/v1/programs/{PROGRAM}/events", json.dumps(envelope).encode(),
                                   {"Authorization": f"Bearer {self.admin()}", "Content-Type": "application/json"})
        if status != 202:
            raise RuntimeError(f"event: {status} {answer}")

    def view(self, member: str) -> dict:
        status, answer = self.http("GET", f"/v1/programs/{PROGRAM}/members/{member}", None, {"Authorization": f"Bearer {self.admin()}"})
        return answer if status == 200 else {}

    def quiet(self, settle: float = 2.5, timeout: float = 120) -> None:
        """Until no queue holds a message, the stream source has nothing pending and no request
        passed the proxy for `settle` seconds (the stream mapping batches for up to 1 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.3)
            depths = self.stack.queue_depths()
            # Only queues a function consumes: notify is the brand's, the DLQs nobody's.
            consumed = {s.source.queue for s in self.stack.sources if isinstance(s, SqsEventSource)}
            busy = any(d["visible"] + d["in_flight"] for q, d in depths.items() if q in consumed)
            pending = any(getattr(s, "stats", {}).get("pending", 0) for s in self.stack.sources)
            if not busy and not pending and time.monotonic() - LEDGER.last_request > settle:
                return
        raise RuntimeError("the stack did not settle")


def shopify_order(customer: int, order_id: int, when: datetime, lines: list[tuple[int, int, int]]) -> dict:
    """orders/paid with lines (line id, quantity, unit price)."""
    kst = when.astimezone(timezone(timedelta(hours=9))).isoformat(timespec="seconds")
    goods = sum(q * p for _, q, p in lines)
    money = lambda a: {"shop_money": {"amount": str(a), "currency_code": "KRW"}}  # noqa: E731
    return {
        "id": order_id, "name": f"#{order_id % 100000}", "email": f"c{customer}@example.kr",
        "created_at": kst, "processed_at": kst, "currency": "KRW", "presentment_currency": "KRW",
        "financial_status": "paid", "taxes_included": True, "total_price": str(goods + 3000),
        "subtotal_price": str(goods), "total_tax": str(goods // 11), "total_tax_set": money(goods // 11),
        "customer": {"id": customer, "email": f"c{customer}@example.kr", "first_name": "Bench", "last_name": str(customer)},
        "line_items": [
            {"id": lid, "sku": f"SKU-{lid}", "title": f"Item {lid}", "product_type": "apparel", "quantity": q,
             "price": str(p), "price_set": money(p), "gift_card": False, "taxable": True,
             "total_discount": "0", "total_discount_set": money(0), "discount_allocations": []}
            for lid, q, p in lines],
        "shipping_lines": [{"id": order_id + 1, "title": "Standard", "price": "3000", "price_set": money(3000)}],
    }


def shopify_refund(order_id: int, refund_id: int, when: datetime, line: int, quantity: int, price: int) -> dict:
    kst = when.astimezone(timezone(timedelta(hours=9))).isoformat(timespec="seconds")
    return {
        "id": refund_id, "order_id": order_id, "created_at": kst, "processed_at": kst, "note": "bench", "restock": True,
        "refund_line_items": [{"id": refund_id * 10, "line_item_id": line, "quantity": quantity, "restock_type": "return",
                               "subtotal": str(quantity * price)}],
        "transactions": [{"id": refund_id + 7, "kind": "refund", "status": "success", "amount": str(quantity * price), "currency": "KRW"}],
        "order_adjustments": [],
    }


def summarise(label: str) -> dict:
    rows = LEDGER.rows.get(label, {})
    out = {"requests": defaultdict(int), "rcu": 0.0, "rcu_index": 0.0, "wcu_table": 0.0, "wcu_index": 0.0,
           "sqs_fifo": 0.0, "sqs_standard": 0.0, "sent": defaultdict(int), "by_function": defaultdict(lambda: defaultdict(float)),
           "failed_writes": 0, "cancelled": 0}
    for (function, key), n in rows.items():
        if key.startswith("req "):
            out["requests"][key[4:]] += int(n)
            out["by_function"][function]["requests"] += n
            out["by_function"][function][key[4:]] += n
        elif key == "rcu table":
            out["rcu"] += n
            out["by_function"][function]["rcu"] += n
        elif key == "rcu index":
            out["rcu_index"] += n
            out["by_function"][function]["rcu"] += n
        elif key == "wcu table":
            out["wcu_table"] += n
            out["by_function"][function]["wcu"] += n
        elif key == "wcu index":
            out["wcu_index"] += n
            out["by_function"][function]["wcu"] += n
            out["by_function"][function]["wcu index"] += n
        elif key.startswith("sqs billed "):
            out["sqs_" + key.split()[-1]] += n
        elif key.startswith("sqs sent "):
            out["sent"][key.split()[-1]] += int(n)
        elif key == "failed writes":
            out["failed_writes"] += int(n)
        elif key == "cancelled transactions":
            out["cancelled"] += int(n)
    # The event-source mappings' ReceiveMessage + DeleteMessageBatch, per batch.
    out["esm_batches"] = LEDGER.batches.get(label, [])
    for queue, fifo, n in out["esm_batches"]:
        out["sqs_fifo" if fifo else "sqs_standard"] += 2
        out["requests"]["sqs.ReceiveMessage (ESM)"] += 1
        out["requests"]["sqs.DeleteMessageBatch (ESM)"] += 1
    out["invocations"] = LEDGER.invocations.get(label, [])
    out["writes"] = LEDGER.writes.get(label, [])
    out["requests"] = dict(out["requests"])
    out["sent"] = dict(out["sent"])
    out["by_function"] = {f: dict(v) for f, v in out["by_function"].items()}
    return out


def fmt_requests(requests: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(requests.items()))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin-dir", type=Path, default=Path("/tmp/bench-bin"))
    p.add_argument("--json", type=Path, default=ROOT / "target" / "bench" / "units.json")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-units"))
    p.add_argument("--skip-durations", action="store_true", help="only the counting pass (durations then include the proxy's own reads)")
    args = p.parse_args(argv)

    os.environ["LOYALTY_SECRET_KR_SHOP_SHOPIFY"] = SHOPIFY_SECRET
    os.environ["LOYALTY_JWT_SECRET"] = JWT_SECRET
    template = tpl.load(ROOT / "infra" / "template.yaml")
    CountingProxy.indexes = template.table.get("GlobalSecondaryIndexes", [])
    CountingProxy.table_keys = [k["AttributeName"] for k in template.table["KeySchema"]]

    # Pass 1 counts (the proxy's reads around each write slow the functions down); pass 2 runs
    # the same operations on a fresh stack through the plain proxy, for the durations.
    print("== pass 1: units", flush=True)
    results = scenario(args, args.work_dir / "count")
    if not args.skip_durations:
        global LEDGER
        LEDGER = Ledger()
        CountingProxy.counting = False
        print("== pass 2: durations (nothing counted)", flush=True)
        timed = scenario(args, args.work_dir / "time")
        for label, s in timed.items():
            if label in results and not label.startswith("_"):
                results[label]["invocations_counted_pass"] = results[label]["invocations"]
                results[label]["invocations"] = s["invocations"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.json}")
    report(results)
    return 0


def scenario(args, work_dir: Path) -> dict:
    stack = stack_module.Stack(stack_module.Options(
        root=ROOT, bin_dir=args.bin_dir, api_port=0, schedules_every=0, visibility_timeout=5,
        concurrency=1, pollers=1, jwt_secret=JWT_SECRET, work_dir=work_dir))
    stack.start()
    d = Driver(stack)
    results: dict[str, dict] = {}
    now = datetime.now(timezone.utc).replace(microsecond=0)
    try:
        d.quiet()

        def run(label: str, action, settle: float = 2.5) -> dict:
            LEDGER.label = label
            started = time.monotonic()
            action()
            d.quiet(settle)
            LEDGER.label = "between"
            summary = summarise(label)
            summary["wall_s"] = time.monotonic() - started
            results[label] = summary
            print(f"{label}: RCU {summary['rcu'] + summary['rcu_index']:.1f} WCU {summary['wcu_table']:.0f}+{summary['wcu_index']:.0f} "
                  f"SQS fifo {summary['sqs_fifo']:.0f} std {summary['sqs_standard']:.0f} | {fmt_requests(summary['requests'])}", flush=True)
            return summary

        base = 8_100_000_000
        # A warm-up pass over every path, so that the measured ones run on warm instances with
        # the program cached (the cold ones are reported under warm-up).
        w = base + 1
        run("warm-up: first purchase (cold instances)", lambda: d.shopify("orders/paid", shopify_order(w, 7_000_001, now - timedelta(minutes=5), [(1, 1, 59000)])))
        run("warm-up: purchase", lambda: d.shopify("orders/paid", shopify_order(w, 7_000_002, now - timedelta(minutes=4), [(2, 2, 30000)])))
        run("warm-up: refund", lambda: d.shopify("refunds/create", shopify_refund(7_000_002, 9_000_001, now - timedelta(minutes=3), 2, 1, 30000)))
        warm_member = f"shopify:{w}"
        run("warm-up: adjustment", lambda: d.http("POST", f"/v1/programs/{PROGRAM}/members/{warm_member}/adjustments",
                                                   json.dumps({"points": 20000, "reason": "bench"}).encode(),
                                                   {"Authorization": f"Bearer {d.admin()}", "Content-Type": "application/json"}))
        run("warm-up: redemption", lambda: d.http("POST", f"/v1/programs/{PROGRAM}/me/redemptions", json.dumps({"reward": "coupon-5000"}).encode(),
                                                   {"Authorization": f"Bearer {d.member_token(warm_member)}", "Content-Type": "application/json", "Idempotency-Key": "warm-1"}))
        run("warm-up: GET /me", lambda: d.http("GET", f"/v1/programs/{PROGRAM}/me", None, {"Authorization": f"Bearer {d.member_token(warm_member)}"}))

        c = base + 2
        member = f"shopify:{c}"
        first = shopify_order(c, 7_100_001, now - timedelta(minutes=10), [(11, 1, 59000), (12, 2, 12000)])
        second = shopify_order(c, 7_100_002, now - timedelta(minutes=8), [(21, 1, 45000), (22, 3, 9000)])
        run("first purchase of a new member", lambda: d.shopify("orders/paid", first))
        run("purchase of a known member", lambda: d.shopify("orders/paid", second))
        run("duplicate delivery of that purchase", lambda: d.shopify("orders/paid", second))
        run("refund (1 unit of a line)", lambda: d.shopify("refunds/create", shopify_refund(7_100_002, 9_100_001, now - timedelta(minutes=6), 22, 1, 9000)))
        run("admin adjustment (+20000)", lambda: d.http("POST", f"/v1/programs/{PROGRAM}/members/{member}/adjustments",
                                                        json.dumps({"points": 20000, "reason": "bench"}).encode(),
                                                        {"Authorization": f"Bearer {d.admin()}", "Content-Type": "application/json"}))
        redeem_status = {}

        def redeem():
            redeem_status["answer"] = d.http("POST", f"/v1/programs/{PROGRAM}/me/redemptions", json.dumps({"reward": "coupon-5000"}).encode(),
                                             {"Authorization": f"Bearer {d.member_token(member)}", "Content-Type": "application/json", "Idempotency-Key": "bench-1"})

        run("redemption (coupon-5000)", redeem)
        me = {}
        run("GET /me", lambda: me.setdefault("answer", d.http("GET", f"/v1/programs/{PROGRAM}/me", None, {"Authorization": f"Bearer {d.member_token(member)}"})))
        print("redemption:", redeem_status["answer"][0], "GET /me:", me["answer"][0], json.dumps(me["answer"][1])[:300], flush=True)

        # A frequent buyer: eight purchases in the last days, all still pending (kr-shop keeps
        # points pending 7 days), so the account carries eight pending purchases; then a ninth.
        # Order ids as long as Shopify's (13 digits).
        f, order = base + 50, 6_100_000_000_000
        for i in range(8):
            d.shopify("orders/paid", shopify_order(f, order + 7919 * i, now - timedelta(hours=40 - 4 * i), [(50 + i, 1, 39000 + 1000 * i)]))
        d.quiet()
        run("purchase of a frequent buyer (8 purchases pending)",
            lambda: d.shopify("orders/paid", shopify_order(f, order + 7919 * 9, now - timedelta(minutes=7), [(60, 2, 41000)])))

        # Ten purchases of ten known members, delivered to earn as one batch of 10: the earn
        # source is paused while webhook-ingest queues them.
        members10 = [base + 100 + i for i in range(10)]
        for i, m in enumerate(members10):
            d.shopify("orders/paid", shopify_order(m, 7_200_000 + i, now - timedelta(minutes=20), [(30 + i, 1, 10000)]))
        d.quiet()
        earn_source = next(s for s in stack.sources if isinstance(s, SqsEventSource) and s.pool.binary.name == "earn")

        def ten(label: str, orders: int, lines: int, minutes: int, at: datetime | None = None) -> None:
            """A purchase of each of the ten, queued while earn's source is paused, then
            delivered to earn as one batch."""
            earn_source.stop()
            time.sleep(1.0)
            when = at or now - timedelta(minutes=minutes)

            def send():
                for i, m in enumerate(members10):
                    d.shopify("orders/paid", shopify_order(m, orders + i, when, [(lines + i, 2, 25000)]))
                earn_source.stopping.clear()
                earn_source.start()

            run(label, send, settle=3.0)

        ten("10 purchases of known members, earn batch of 10", 7_300_000, 40, 15)

        # Release of matured pending points (kr-shop keeps points pending 7 days): the
        # release-pending job's first run as of yesterday (nothing due, but it catches up on its
        # whole look-back); then a member whose purchase of six days ago matures tomorrow or the
        # day after (in the program's zone), and the job as of two days ahead; then 10 members
        # whose purchases of five days ago mature a day later, and the job as of three days ahead.
        # Each run reads from the day the one before stopped, so each finds its members due.
        six_days = now - timedelta(days=6)
        five_days = now - timedelta(days=5)
        job_days = {key: (now + timedelta(days=ahead)).strftime("%Y-%m-%d") for key, ahead in ((0, -1), (1, 2), (10, 3))}
        one = base + 300
        job_answer = {}

        def job(key):
            day = job_days[key]
            req = urllib.request.Request(f"{d.control}/invoke/tier-recalc", data=json.dumps({"job": "release-pending", "program": PROGRAM, "date": day}).encode(), method="POST")
            with urllib.request.urlopen(req, timeout=600) as r:
                job_answer[key] = json.loads(r.read())

        run("release-pending job, first run (catch-up of its look-back, nothing due)", lambda: job(0))
        d.event({"type": "purchase.completed", "version": 1, "id": f"bench-rel-{one}", "program": PROGRAM, "member": f"m-rel-{one}",
                 "occurred_at": six_days.strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "data": {"order_id": f"rel-{one}", "currency": "KRW", "lines": [{"line_id": "1", "sku": "TEE-01", "category": "apparel", "quantity": 1, "unit_price": "10000"}]}})
        d.quiet()
        run("release-pending job, 1 member due", lambda: job(1))
        for i in range(10):
            m = base + 400 + i
            d.event({"type": "purchase.completed", "version": 1, "id": f"bench-rel-{m}", "program": PROGRAM, "member": f"m-rel-{m}",
                     "occurred_at": five_days.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "data": {"order_id": f"rel-{m}", "currency": "KRW", "lines": [{"line_id": "1", "sku": "TEE-01", "category": "apparel", "quantity": 1, "unit_price": "10000"}]}})
        d.quiet()
        run("release-pending job, 10 members due", lambda: job(10))
        print("jobs:", json.dumps(job_answer)[:600], flush=True)

        # campaign-tick, the campaign-assign schedule (kr-shop as loaded has no campaign).
        def tick():
            req = urllib.request.Request(f"{d.control}/invoke/campaign-assign", data=json.dumps({"job": "campaign-tick"}).encode(), method="POST")
            with urllib.request.urlopen(req, timeout=600) as r:
                job_answer["campaign-tick"] = json.loads(r.read())

        run("campaign-tick job (schedule of campaign-assign)", tick)
        print("campaign-tick:", json.dumps(job_answer.get("campaign-tick"))[:600], flush=True)

        # A running campaign counting purchases (two variants that change nothing), which the
        # ten members above and the warm-up member see in the app; once the functions' cached
        # campaigns have expired and a warm-up purchase has read them again, a purchase of one
        # member alone and then one of each of the ten as one earn batch of 10 (within the
        # cache's 30 s).
        campaign = {"name": "Bench split", "kind": "on_exposure", "status": "running",
                    "start": (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "end": (now + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "hash_seed": "bench-split", "goal": "purchase",
                    "variants": [{"key": "a", "weight": 0.5, "effect": {"type": "none"}},
                                 {"key": "b", "weight": 0.5, "effect": {"type": "none"}}]}
        status, answer = d.http("PUT", f"/v1/programs/{PROGRAM}/campaigns/bench-split", json.dumps(campaign).encode(),
                                {"Authorization": f"Bearer {d.admin()}", "Content-Type": "application/json"})
        assert status < 300, (status, answer)
        time.sleep(31)  # PROGRAM_CACHE_TTL: every warm instance reads the campaigns again
        for m in [w] + members10:
            status, answer = d.http("GET", f"/v1/programs/{PROGRAM}/me/campaigns", None, {"Authorization": f"Bearer {d.member_token(f'shopify:{m}')}"})
            assert status == 200 and answer["campaigns"], (status, answer)
        # Purchases made after the members saw the campaign: only those count in it.
        seen = datetime.now(timezone.utc) + timedelta(seconds=1)
        run("warm-up: purchase in a running campaign", lambda: d.shopify("orders/paid", shopify_order(w, 7_000_003, seen, [(3, 1, 30000)])))
        run("purchase of a known member in a running campaign",
            lambda: d.shopify("orders/paid", shopify_order(members10[0], 7_400_000, seen, [(70, 1, 25000)])))
        ten("10 purchases of known members in a running campaign, earn batch of 10", 7_500_000, 80, 10, at=seen)
        # A known member the campaign has not assigned (never shown it): earn reads the absent
        # assignment again, strongly, before the purchase counts in no variant.
        run("purchase of a known member a running campaign has not assigned",
            lambda: d.shopify("orders/paid", shopify_order(c, 7_400_001, now - timedelta(minutes=11), [(71, 1, 25000)])))
        results["_meta"] = {"date": now.isoformat(), "bin_dir": str(args.bin_dir), "redemption_status": redeem_status["answer"][0],
                            "me_status": me["answer"][0], "jobs": job_answer}
    finally:
        stack.stop()
    return results


# -- the report ---------------------------------------------------------------------------------


def report(results: dict) -> None:
    print("\n| operation | requests by API (all functions) | RCU | WCU table | WCU indexes | SQS sends (queue: n) | SQS billed fifo/std | invocations (warm ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, s in results.items():
        if label.startswith("_"):
            continue
        inv = defaultdict(list)
        for function, ms, cold, records, ok in s["invocations"]:
            inv[function].append(ms)
        inv_text = "; ".join(f"{f} {len(v)}x {statistics.median(v):.0f}" for f, v in sorted(inv.items()))
        sends = ", ".join(f"{q} {n}" for q, n in sorted(s["sent"].items())) or "-"
        print(f"| {label} | {fmt_requests(s['requests'])} | {s['rcu'] + s['rcu_index']:g} | {s['wcu_table']:g} | {s['wcu_index']:g} | {sends} | "
              f"{s['sqs_fifo']:g} / {s['sqs_standard']:g} | {inv_text} |")
    print("\n| operation | function | requests | RCU | WCU (of which indexes) |")
    print("|---|---|---|---|---|")
    for label, s in results.items():
        if label.startswith("_") or label.startswith("warm-up"):
            continue
        for function, f in sorted(s["by_function"].items()):
            calls = ", ".join(f"{k.split('.', 1)[1]} {v:g}" for k, v in sorted(f.items()) if "." in k)
            print(f"| {label} | {function} | {calls} | {f.get('rcu', 0):g} | {f.get('wcu', 0):g} ({f.get('wcu index', 0):g}) |")
    for label in ("purchase of a known member", "purchase of a frequent buyer (8 purchases pending)",
                  "redemption (coupon-5000)", "duplicate delivery of that purchase",
                  "purchase of a known member in a running campaign",
                  "10 purchases of known members in a running campaign, earn batch of 10",
                  "purchase of a known member a running campaign has not assigned"):
        if label not in results:
            continue
        print(f"\nItems written by '{label}': function, call, item (sort key kind), size in bytes, WCU (+ index WCU)")
        for w in results[label].get("writes", []):
            print(f"  {w['function']:15} {w['operation']}/{w['kind']:8} {w['item']:12} {w['size']:6} B  {w['wcu']:g} (+{w['index_wcu']:g}){'' if w['ok'] else '  failed/cancelled'}")
    cost(results)


def cost(results: dict) -> None:
    """Cost per million purchase events of a known member (the steady state), from the measured
    units and durations: delivered to earn one by one, and in batches of 10; without a campaign,
    then in a running campaign the members have seen."""
    for title, single, ten in (
        ("known member", "purchase of a known member", "10 purchases of known members, earn batch of 10"),
        ("known member in a running campaign", "purchase of a known member in a running campaign",
         "10 purchases of known members in a running campaign, earn batch of 10"),
    ):
        if results.get(single) and results.get(ten):
            cost_of(title, results[single], results[ten])


def cost_of(title: str, single: dict, ten: dict) -> None:
    print(f"\nCost per million purchase events ({title}; us-east-1 list prices; Lambda arm64 256 MB):")
    print("| | batch of 1 | batch of 10 |")
    print("|---|---|---|")
    rows = {}
    for name, s, events in (("1", single, 1), ("10", ten, 10)):
        per = 1e6 / events
        wru = (s["wcu_table"] + s["wcu_index"]) * per
        rru = (s["rcu"] + s["rcu_index"]) * per
        lambda_requests = len(s["invocations"]) * per
        gb_s = sum(math.ceil(ms) / 1000 * MEMORY_GB for _, ms, *_ in s["invocations"]) * per
        c = {
            "DynamoDB writes": wru * PRICE["wru"],
            "DynamoDB reads": rru * PRICE["rru"],
            "SQS FIFO": s["sqs_fifo"] * per * PRICE["sqs_fifo"],
            "SQS standard": s["sqs_standard"] * per * PRICE["sqs_standard"],
            "Lambda requests": lambda_requests * PRICE["lambda_request"],
            "Lambda duration": gb_s * PRICE["lambda_gb_s"],
            "webhooks' function URL (API Gateway HTTP API: $1.00)": 1e6 * PRICE["function_url"],
        }
        c["total"] = sum(c.values())
        rows[name] = (c, {"WRU": wru, "RRU": rru, "SQS billed": (s["sqs_fifo"] + s["sqs_standard"]) * per,
                          "Lambda invocations": lambda_requests, "GB-s": gb_s})
    for key in rows["1"][0]:
        print(f"| {key} | ${rows['1'][0][key]:.2f} | ${rows['10'][0][key]:.2f} |")
    for key in rows["1"][1]:
        print(f"| {key} per million | {rows['1'][1][key]:,.0f} | {rows['10'][1][key]:,.0f} |")
    provisioned(rows)


def provisioned(rows: dict) -> None:
    """The same counts with the table's capacity provisioned: a unit used for one second costs an
    hour's price / 3600, divided by the share of the capacity used."""
    print("\nWith provisioned capacity (TableCapacity=provisioned), by utilisation:")
    heads = [f"batch of {b}, {u:.0%} used" for b in ("1", "10") for u in UTILISATION]
    print("| | " + " | ".join(heads) + " |")
    print("|---" * (len(heads) + 1) + "|")
    totals = {}
    for key in ("DynamoDB writes", "DynamoDB reads"):
        unit, price = ("WRU", "wcu_hour") if key == "DynamoDB writes" else ("RRU", "rcu_hour")
        cells = []
        for batch in ("1", "10"):
            for u in UTILISATION:
                value = rows[batch][1][unit] * PRICE[price] / 3600 / u
                totals[(batch, u)] = totals.get((batch, u), 0.0) + value
                cells.append(f"${value:.2f}")
        print(f"| {key} | " + " | ".join(cells) + " |")
    rest = [sum(v for k, v in rows[batch][0].items() if not k.startswith("DynamoDB") and k != "total")
            for batch in ("1", "10") for _ in UTILISATION]
    print("| everything else, as above | " + " | ".join(f"${r:.2f}" for r in rest) + " |")
    cells = [totals[(b, u)] + r for (b, u), r in zip(((b, u) for b in ("1", "10") for u in UTILISATION), rest)]
    print("| **total** | " + " | ".join(f"**${c:.2f}**" for c in cells) + " |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
