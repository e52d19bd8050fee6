"""What AWS runs around the functions: SQS and DynamoDB Streams event-source mappings, and
EventBridge schedules."""

from __future__ import annotations

import base64
import json
import threading
import time

from .runtime import FunctionPool
from .template import Schedule, SqsSource, StreamSource

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


class StreamEventSource:
    """A DynamoDB Streams event-source mapping on the table's one shard (moto keeps one).

    Records pass the mapping's filter patterns or are dropped, as Lambda drops them. A batch is
    invoked in order; with `ReportBatchItemFailures` the function names the first record that
    failed and the batch is retried from it, and a function error retries the whole batch (with
    `BisectBatchOnFunctionError`, in halves: a function that keeps crashing still gets through,
    one record at a time at worst). With `MaximumRetryAttempts: -1` a batch is retried until it
    succeeds, holding back the shard.
    """

    def __init__(self, source: StreamSource, table: str, pool: FunctionPool, dynamodb, streams):
        self.source = source
        self.table = table
        self.pool = pool
        self.dynamodb = dynamodb
        self.streams = streams
        self.stopping = threading.Event()
        self.stats = {"batches": 0, "records": 0, "filtered": 0, "retries": 0, "function_errors": 0, "pending": 0}

    def start(self) -> None:
        self.arn = self.dynamodb.describe_table(TableName=self.table)["Table"]["LatestStreamArn"]
        shard = self.streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"][0]["ShardId"]
        self.iterator = self.streams.get_shard_iterator(
            StreamArn=self.arn, ShardId=shard, ShardIteratorType=self.source.starting_position
        )["ShardIterator"]
        threading.Thread(target=self._poll, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()

    def _poll(self) -> None:
        pending: list[dict] = []
        attempts = 0
        size = self.source.batch_size  # halved after each function error, with bisect
        while not self.stopping.is_set():
            try:
                if not pending:
                    pending = self._read()
                    attempts, size = 0, self.source.batch_size
                    if not pending:
                        time.sleep(IDLE_POLL)
                        continue
                self.stats["pending"] = len(pending)
                batch = pending[:size]
                left, crashed = self._deliver(batch)
                pending = left + pending[len(batch):]
                if crashed and self.source.bisect_on_error:
                    size = max(1, len(batch) // 2)
                elif not left:
                    attempts, size = 0, self.source.batch_size
                self.stats["pending"] = len(pending)
                if left:
                    attempts += 1
                    self.stats["retries"] += 1
                    if 0 <= self.source.maximum_retry_attempts < attempts:
                        print(f"stream source {self.source.name}: {len(pending)} records dropped after {attempts} attempts", flush=True)
                        pending = []
                    else:
                        self.stopping.wait(min(0.2 * attempts, 2.0))
            except Exception as e:  # moto restarting, a stack stopping: try again shortly
                if not self.stopping.is_set():
                    print(f"stream source {self.source.name}: {e}", flush=True)
                time.sleep(0.5)

    def _read(self) -> list[dict]:
        """Records for one invocation. As Lambda does with a batching window, once a record has
        passed the filter, the batch waits for more until it is full or the window, counted from
        that record, has passed; with no window it goes as soon as a read brings nothing new."""
        deadline = None
        records: list[dict] = []
        while True:
            answer = self.streams.get_records(ShardIterator=self.iterator, Limit=self.source.batch_size - len(records))
            self.iterator = answer["NextShardIterator"]
            got = answer.get("Records", [])
            for record in got:
                if self._passes(record):
                    records.append(self._event_record(record))
                else:
                    self.stats["filtered"] += 1
            if records and deadline is None:
                deadline = time.monotonic() + self.source.batching_window
            if len(records) >= self.source.batch_size or not records:
                return records
            if time.monotonic() >= deadline:
                return records
            if not got:
                if self.source.batching_window <= 0:
                    return records
                time.sleep(min(IDLE_POLL, max(0.0, deadline - time.monotonic())))

    def _passes(self, record: dict) -> bool:
        return not self.source.filters or any(_matches(f, record) for f in self.source.filters)

    def _event_record(self, record: dict) -> dict:
        record = dict(record)
        change = dict(record["dynamodb"])
        created = change.get("ApproximateCreationDateTime")
        if not isinstance(created, (int, float)):
            change["ApproximateCreationDateTime"] = created.timestamp() if hasattr(created, "timestamp") else time.time()
        record["dynamodb"] = _base64_binaries(change)
        record["eventSourceARN"] = self.arn
        return record

    def _deliver(self, records: list[dict]) -> tuple[list[dict], bool]:
        """Invokes with the batch; returns the records to retry (from the first failure on), and
        whether the function itself failed (crashed, timed out, raised)."""
        self.stats["batches"] += 1
        self.stats["records"] += len(records)
        try:
            outcome = self.pool.invoke({"Records": records})
        except RuntimeError:  # the function is stopping
            return records, False
        if not outcome.ok:
            self.stats["function_errors"] += 1
            return records, True
        if not self.source.report_batch_item_failures:
            return [], False
        try:
            answer = outcome.json()
        except ValueError:
            return records, False
        if answer is None:
            return [], False
        if not isinstance(answer, dict):
            return records, False
        failures = answer.get("batchItemFailures") or []
        if not failures:
            return [], False
        sequences = [r["dynamodb"]["SequenceNumber"] for r in records]
        first = failures[0].get("itemIdentifier") if isinstance(failures[0], dict) else None
        if first not in sequences:
            return records, False
        return records[sequences.index(first):], False


def _base64_binaries(value):
    """A stream record's images with binary attributes as Lambda delivers them: base64 text
    (boto3 hands them over decoded)."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _base64_binaries(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_base64_binaries(v) for v in value]
    return value


def _matches(pattern, value) -> bool:
    """An event filter pattern (the subset the template uses): nested keys, lists of values,
    `{"prefix": ...}` or `{"exists": true}`."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and _matches(p, value[k]) for k, p in pattern.items())
    if isinstance(pattern, list):
        for option in pattern:
            if isinstance(option, dict) and "prefix" in option:
                if isinstance(value, str) and value.startswith(option["prefix"]):
                    return True
            elif option == {"exists": True}:
                return True  # the dict above found the key
            elif option == value:
                return True
        return False
    return pattern == value


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
