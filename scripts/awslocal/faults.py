"""Faults on demand, injected from outside the functions: a proxy between the functions and
moto that, per service and operation, answers a fraction of requests with a throttle, a 500, a
reset connection or a delay, or forwards the request and then loses the answer (the write
happened; the caller sees an error), or kills the calling function right after the write.

Spec (`--faults`): rules separated by `;`, each `TARGET:KIND=FRACTION[,KIND=FRACTION...]`.
FRACTION may be `first`: the fault hits the first request of each distinct content (an SDK's own
idempotency token left out) and never its repeats, so every write fails exactly once.
TARGET is `[FUNCTION/]SERVICE.OPERATION` (`*` matches any service, operation or function) for
requests to DynamoDB, SQS and SSM, or `lambda.FUNCTION` for the function processes.
KIND for requests: throttle, error (500), reset, delay (`delay=0.1@300` waits 300 ms),
lost (forwarded, then the connection is reset), kill (forwarded, then the caller is killed),
partial (a batch of two or more is done in part and answered as AWS does then: BatchGetItem's
`UnprocessedKeys`, BatchWriteItem's `UnprocessedItems`, SendMessageBatch's and
DeleteMessageBatch's `Failed` entries; other requests, and batches of one, pass untouched).
KIND for lambda: crash (the process is killed at a random moment of an invocation), init (a cold
start without the function's environment variables, so its start-up fails as a misconfigured
deployment's would).
Example: `dynamodb.*:throttle=0.05,lost=0.05;sqs.SendMessage:lost=0.1;earn/dynamodb.TransactWriteItems:kill=0.03;lambda.*:crash=0.01`
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs

REQUEST_KINDS = ("throttle", "error", "reset", "delay", "lost", "kill", "partial")
FIRST = -1.0  # the fraction of a kind given as `first`
LAMBDA_KINDS = ("crash", "init")


@dataclass
class Rule:
    function: str
    service: str
    operation: str
    kinds: dict[str, float]
    delay_ms: int = 200

    def matches(self, function: str, service: str, operation: str) -> bool:
        return (
            fnmatch.fnmatchcase(function, self.function)
            and fnmatch.fnmatchcase(service, self.service)
            and fnmatch.fnmatchcase(operation, self.operation)
        )


@dataclass
class Faults:
    rules: list[Rule] = field(default_factory=list)
    seen: set = field(default_factory=set)  # (rule, kind, content) already hit by a `first`
    crashes: dict[str, float] = field(default_factory=dict)  # function pattern -> fraction
    init_failures: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def parse(spec: str | None) -> "Faults":
        faults = Faults()
        for text in filter(None, (part.strip() for part in (spec or "").split(";"))):
            target, sep, kinds_text = text.partition(":")
            if not sep or not kinds_text:
                raise ValueError(f"fault rule {text!r}: expected TARGET:KIND=FRACTION")
            kinds, delay_ms = {}, 200
            for item in kinds_text.split(","):
                kind, eq, value = item.strip().partition("=")
                if not eq:
                    raise ValueError(f"fault rule {text!r}: {item!r} has no =FRACTION")
                if "@" in value:
                    value, ms = value.split("@", 1)
                    delay_ms = int(ms)
                if value == "first":
                    kinds[kind] = FIRST
                    continue
                fraction = float(value)
                if not 0.0 <= fraction <= 1.0:
                    raise ValueError(f"fault rule {text!r}: {fraction} is not a fraction")
                kinds[kind] = fraction
            if target.startswith("lambda."):
                unknown = set(kinds) - set(LAMBDA_KINDS)
                if unknown:
                    raise ValueError(f"fault rule {text!r}: {sorted(unknown)} do not apply to lambda")
                function = target.removeprefix("lambda.")
                faults.crashes[function] = kinds.get("crash", 0.0)
                faults.init_failures[function] = kinds.get("init", 0.0)
                continue
            unknown = set(kinds) - set(REQUEST_KINDS)
            if unknown:
                raise ValueError(f"fault rule {text!r}: unknown kinds {sorted(unknown)}")
            function, _, service_op = target.rpartition("/")
            service, dot, operation = service_op.partition(".")
            if not dot:
                raise ValueError(f"fault rule {text!r}: target must be SERVICE.OPERATION")
            faults.rules.append(
                Rule(function or "*", service.lower(), operation, kinds, delay_ms)
            )
        return faults

    def crash_fraction(self, function: str) -> float:
        return max((f for p, f in self.crashes.items() if fnmatch.fnmatchcase(function, p)), default=0.0)

    def init_failure_fraction(self, function: str) -> float:
        return max((f for p, f in self.init_failures.items() if fnmatch.fnmatchcase(function, p)), default=0.0)

    def choose(self, rng: random.Random, function: str, service: str, operation: str, body: bytes = b"") -> tuple[str | None, int]:
        """The fault for one request, if any (the first rule and kind that fire)."""
        for index, rule in enumerate(self.rules):
            if not rule.matches(function, service, operation):
                continue
            for kind, fraction in rule.kinds.items():
                if fraction == FIRST:
                    key = (index, kind, _content(body))
                    if key not in self.seen:
                        self.seen.add(key)
                        return kind, rule.delay_ms
                elif fraction and rng.random() < fraction:
                    return kind, rule.delay_ms
        return None, 0


def _content(body: bytes) -> str:
    """What a request asks for, without the idempotency token an SDK draws for each call."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return hashlib.sha256(body).hexdigest()
    if isinstance(parsed, dict):
        parsed.pop("ClientRequestToken", None)
    return hashlib.sha256(json.dumps(parsed, sort_keys=True).encode()).hexdigest()


def operation_of(headers, body: bytes) -> tuple[str, str]:
    """(service, operation) of an AWS request: JSON protocols name it in X-Amz-Target."""
    target = headers.get("X-Amz-Target", "")
    if "." in target:
        prefix, operation = target.split(".", 1)
        service = {"DynamoDB_20120810": "dynamodb", "AmazonSQS": "sqs", "AmazonSSM": "ssm"}.get(
            prefix, prefix.lower()
        )
        return service, operation
    action = parse_qs(body.decode("utf-8", "replace")).get("Action", ["?"])[0]
    scope = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", headers.get("Authorization", ""))
    return (scope.group(1) if scope else "?"), action


def iam_actions(service: str, operation: str, body: bytes) -> list[tuple[str, str]]:
    """The IAM actions a request needs, with what they act on (`table`, `index/NAME`, a queue's
    name, a parameter's name). A transaction needs the action of each of its items; there is no
    IAM action for TransactWriteItems itself."""
    try:
        request = json.loads(body) if body else {}
    except ValueError:
        request = {}
    if service == "dynamodb":
        if operation == "TransactWriteItems":
            kinds = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem"}
            return sorted({(f"dynamodb:{kinds[k]}", "table") for item in request.get("TransactItems", []) for k in item if k in kinds})
        if operation == "TransactGetItems":
            return [("dynamodb:GetItem", "table")]
        index = request.get("IndexName")
        return [(f"dynamodb:{operation}", f"index/{index}" if index else "table")]
    if service == "sqs":
        url = request.get("QueueUrl", "")
        # A batch is authorised by its single operation's action (SendMessageBatch: sqs:SendMessage).
        single = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage",
                  "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}.get(operation, operation)
        return [(f"sqs:{single}", url.rstrip("/").rsplit("/", 1)[-1])]
    if service == "ssm":
        names = request.get("Names") or [request.get("Name", "?")]
        return [(f"ssm:{operation}", name) for name in names]
    return [(f"{service}:{operation}", "?")]


THROTTLE = {
    "dynamodb": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
    "sqs": "com.amazonaws.sqs#ThrottlingException",
    "ssm": "ThrottlingException",
}


class FaultProxy:
    """Listens on a loopback port; a function instance reaches it at `/i/{instance}`."""

    def __init__(
        self,
        upstream_port: int,
        faults: Faults,
        rng: random.Random,
        function_of: Callable[[int], str],
        kill: Callable[[int, str], bool],
    ):
        self.upstream_port = upstream_port
        self.faults = faults
        self.rng = rng
        self.rng_lock = threading.Lock()
        self.function_of = function_of
        self.kill = kill
        self.counts: Counter = Counter()  # (function, service, operation, outcome) -> n
        self.count_lock = threading.Lock()
        # What each function asked of AWS, as IAM names it: {(function, action, resource)}.
        self.actions: set[tuple[str, str, str]] = set()
        # When each instance's connections were accepted, known at their first request: one
        # opened during an invocation is a TLS handshake it waited for on AWS.
        self.opened: dict[int, list[float]] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, each response on a kept-alive
            # connection waits for the delayed ACK (about 40 ms).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # A client's pool may open a connection well before its first request.
                self.accepted_at = time.monotonic()

            def do_POST(self):
                proxy.handle(self)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *args: None  # resets are the point here
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def endpoint(self, instance_id: int) -> str:
        return f"http://127.0.0.1:{self.port}/i/{instance_id}"

    def _count(self, function: str, service: str, operation: str, outcome: str) -> None:
        with self.count_lock:
            self.counts[(function, service, operation, outcome)] += 1

    def _record(self, function: str, service: str, operation: str, body: bytes) -> None:
        found = iam_actions(service, operation, body)
        with self.count_lock:
            self.actions.update((function, action, resource) for action, resource in found)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        m = re.match(r"^/i/(\d+)(/.*)?$", h.path)
        instance = int(m.group(1)) if m else 0
        path = (m.group(2) if m else h.path) or "/"
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if not getattr(h, "counted", False):
            h.counted = True
            with self.count_lock:
                self.opened.setdefault(instance, []).append(h.accepted_at)
        function = self.function_of(instance)
        service, operation = operation_of(h.headers, body)
        with self.rng_lock:
            kind, delay_ms = self.faults.choose(self.rng, function, service, operation, body)
            split = split_batch(self.rng, service, operation, body) if kind == "partial" else None
        if kind == "partial" and split is None:
            kind = None
        self._count(function, service, operation, kind or "ok")
        self._record(function, service, operation, body)

        if kind == "throttle":
            return _answer(h, 400, {"__type": THROTTLE.get(service, "ThrottlingException"), "message": "Rate exceeded (fault)"}, service)
        if kind == "error":
            return _answer(h, 500, {"__type": "InternalServerError", "message": "internal error (fault)"}, service)
        if kind == "reset":
            return _reset(h)
        if kind == "delay":
            time.sleep(delay_ms / 1000)

        if split is not None:
            body, left_out = split
        status, headers, answer = self._forward(h, path, body)
        if split is not None and status == 200:
            answer = with_left_out(operation, answer, left_out)
        if kind == "lost":
            return _reset(h)
        if kind == "kill":
            self.kill(instance, f"after {service}.{operation}")
            return _reset(h)
        h.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(answer)))
        h.end_headers()
        h.wfile.write(answer)

    def _forward(self, h: BaseHTTPRequestHandler, path: str, body: bytes):
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            # Content-Length is the body's own (a `partial` fault forwards a shorter one).
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("connection", "keep-alive", "content-length")}
            connection.request(h.command, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


def split_batch(rng: random.Random, service: str, operation: str, body: bytes) -> tuple[bytes, object] | None:
    """For a `partial` fault: the request to forward (a batch cut short, at least one of its
    items kept) and what was left out, or None when the request is not a batch of two or more."""
    try:
        request = json.loads(body)
    except ValueError:
        return None
    if service == "dynamodb" and operation in ("BatchGetItem", "BatchWriteItem"):
        tables = request.get("RequestItems") or {}
        if len(tables) != 1:
            return None
        (table, part), = tables.items()
        items = part.get("Keys", []) if operation == "BatchGetItem" else part
        if len(items) < 2:
            return None
        cut = rng.randint(1, len(items) - 1)
        if operation == "BatchGetItem":
            kept = {**part, "Keys": items[:cut]}
            left_out = {table: {**part, "Keys": items[cut:]}}
        else:
            kept, left_out = items[:cut], {table: items[cut:]}
        return json.dumps({**request, "RequestItems": {table: kept}}).encode(), left_out
    if service == "sqs" and operation in ("SendMessageBatch", "DeleteMessageBatch"):
        entries = request.get("Entries") or []
        if len(entries) < 2:
            return None
        cut = rng.randint(1, len(entries) - 1)
        return json.dumps({**request, "Entries": entries[:cut]}).encode(), [e["Id"] for e in entries[cut:]]
    return None


def with_left_out(operation: str, answer: bytes, left_out) -> bytes:
    """The upstream answer to the shortened batch, telling the caller what was not done."""
    response = json.loads(answer or b"{}")
    if operation == "BatchGetItem":
        response["UnprocessedKeys"] = left_out
    elif operation == "BatchWriteItem":
        response["UnprocessedItems"] = left_out
    else:
        failed = [{"Id": i, "SenderFault": False, "Code": "InternalError", "Message": "not processed (fault)"}
                  for i in left_out]
        response["Failed"] = response.get("Failed", []) + failed
    return json.dumps(response).encode()


def _answer(h: BaseHTTPRequestHandler, status: int, error: dict, service: str) -> None:
    body = json.dumps(error).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/x-amz-json-1.0" if service != "ssm" else "application/x-amz-json-1.1")
    if service == "sqs":
        # SQS's JSON protocol also names the legacy error code in this header.
        code = error["__type"].split("#")[-1]
        h.send_header("x-amzn-query-error", f"{code};{'Sender' if status < 500 else 'Receiver'}")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Closes the connection with a TCP reset: the caller gets no answer at all."""
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass
