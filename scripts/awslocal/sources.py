"""What AWS runs around the functions: SQS event-source mappings and EventBridge schedules."""

from __future__ import annotations

import json
import threading
import time

from .runtime import FunctionPool
from .template import Schedule, SqsSource

IDLE_POLL = 0.05  # moto is single-threaded: poll without long polling, and pause when empty


class SqsEventSource:
    """An event-source mapping: receive a batch, invoke, delete what succeeded.

    With `ReportBatchItemFailures` the function names the messages that failed; the others are
    deleted. A function error (or crash, or time-out) fails the whole batch. Failed messages
    come back when their visibility timeout ends, and after `maxReceiveCount` receives SQS moves
    them to the dead-letter queue. FIFO order within a message group is SQS's: a group with
    messages in flight gives no more until they are deleted or visible again.
    """

    def __init__(self, source: SqsSource, queue_url: str, queue_arn: str, pool: FunctionPool, sqs, pollers: int):
        self.source = source
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.pool = pool
        self.sqs = sqs
        self.pollers = max(1, min(pollers, source.maximum_concurrency))
        self.stopping = threading.Event()
        self.stats = {"batches": 0, "messages": 0, "deleted": 0, "failed": 0, "function_errors": 0}

    def start(self) -> None:
        for _ in range(self.pollers):
            threading.Thread(target=self._poll, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()

    def _receive(self) -> list[dict]:
        deadline = time.monotonic() + self.source.batching_window
        messages: list[dict] = []
        while True:
            answer = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.source.batch_size - len(messages)),
                WaitTimeSeconds=0,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages.extend(answer.get("Messages", []))
            if len(messages) >= self.source.batch_size or time.monotonic() >= deadline or not answer.get("Messages"):
                return messages

    def _poll(self) -> None:
        while not self.stopping.is_set():
            try:
                messages = self._receive()
                if messages:
                    self._deliver(messages)
                else:
                    time.sleep(IDLE_POLL)
            except Exception as e:  # moto restarting, a stack stopping: try again shortly
                if not self.stopping.is_set():
                    print(f"event source {self.source.name}: {e}", flush=True)
                time.sleep(0.5)

    def _deliver(self, messages: list[dict]) -> None:
        event = {"Records": [self._record(m) for m in messages]}
        self.stats["batches"] += 1
        self.stats["messages"] += len(messages)
        try:
            outcome = self.pool.invoke(event)
        except RuntimeError:  # the function is stopping
            return
        if not outcome.ok:
            self.stats["function_errors"] += 1
            self.stats["failed"] += len(messages)
            return
        failed = self._failures(outcome, messages)
        done = [m for m in messages if m["MessageId"] not in failed]
        self.stats["failed"] += len(failed)
        for i in range(0, len(done), 10):
            chunk = done[i : i + 10]
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(chunk)],
            )
            self.stats["deleted"] += len(chunk)

    def _failures(self, outcome, messages: list[dict]) -> set[str]:
        """The ids to keep. An answer that is not a valid batch response fails the batch."""
        if not self.source.report_batch_item_failures:
            return set()
        try:
            answer = outcome.json()
        except ValueError:
            return {m["MessageId"] for m in messages}
        if answer is None:
            return set()
        ids = {m["MessageId"] for m in messages}
        failures = answer.get("batchItemFailures") if isinstance(answer, dict) else None
        if failures is None:
            return set()
        named = set()
        for item in failures:
            identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not identifier or identifier not in ids:
                return ids
            named.add(identifier)
        return named

    def _record(self, m: dict) -> dict:
        attributes = dict(m.get("Attributes", {}))
        record = {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": attributes,
            "messageAttributes": {
                name: {
                    "stringValue": a.get("StringValue"),
                    "binaryValue": a.get("BinaryValue"),
                    "stringListValues": [],
                    "binaryListValues": [],
                    "dataType": a.get("DataType"),
                }
                for name, a in m.get("MessageAttributes", {}).items()
            },
            "md5OfBody": m.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": "us-east-1",
        }
        return record


class ScheduleRunner:
    """An EventBridge schedule: invokes its function with the template's input, every period
    (or faster, on demand). A failed run is retried twice, as asynchronous invocations are."""

    def __init__(self, schedule: Schedule, pool: FunctionPool, every: float | None):
        self.schedule = schedule
        self.pool = pool
        self.every = every if every is not None else schedule.every_seconds
        self.stopping = threading.Event()
        self.runs: list[dict] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        if self.every > 0:
            threading.Thread(target=self._loop, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()

    def _loop(self) -> None:
        while not self.stopping.wait(self.every):
            self.run()

    def run(self) -> dict:
        with self.lock:  # one run of a schedule at a time
            for attempt in range(3):
                try:
                    outcome = self.pool.invoke(self.schedule.input)
                except RuntimeError:
                    return {"ok": False, "error": "stopping"}
                if outcome.ok:
                    result = {"schedule": self.schedule.name, "ok": True, "attempts": attempt + 1, "result": _maybe_json(outcome.body)}
                    break
                result = {"schedule": self.schedule.name, "ok": False, "attempts": attempt + 1, "error": outcome.error_message}
                if self.stopping.wait(1.0 * (attempt + 1)):
                    break
            self.runs.append(result)
            return result


def _maybe_json(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
