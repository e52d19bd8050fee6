"""Serves moto's DynamoDB, SQS and SSM single-threaded on a loopback port, for the tests and for
scripts/aws-local.

moto's own server is multi-threaded and its conditional writes are not atomic across concurrent
requests; serialised requests are a valid linearisation, so the race tests mean something.

moto 5.2.5 deep-copies the whole table once per item of every TransactWriteItems, to roll back a
cancelled transaction; with a few thousand items each transaction takes seconds. Here a
transaction checks every condition first, against the state before it (as DynamoDB does; items
of one transaction are distinct), writes only when all hold, and keeps copies of just the items
it touches in case a write fails half-way. What callers see is unchanged: the same cancellation
reasons, in the same order.

DynamoDB makes TransactWriteItems idempotent by its ClientRequestToken (which the SDKs draw for
every call and keep across their own retries): a repeat within 10 minutes succeeds without
writing again. moto ignores the token, so a retried transaction whose first answer was lost would
be cancelled by its own first write; here a token that succeeded answers the same again.

moto 5.2.5 also answers a Query on a table's key by going through every item of the table,
sorted, for the partition's: a Query of one small partition took 57 ms on a table of 5,000
items against 4.5 ms on one of a single item, so every Query slowed as a test or benchmark
filled the table, where DynamoDB reads the one partition. Here such a Query goes through the
partition's items alone, in the same order. A Query of an index went the same way through
every item, sorted, before looking at the index's key (the campaign tick's queries of the
due-date index took most of its 190 ms on a benchmark's table): here it goes through the items
whose index key is the one asked for alone, in the same order, and moto answers from those.
Usage: moto_server.py PORT
"""
import copy
import hashlib
import json
import sys
import time

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def _key(backend, op_type, op):
    if op_type != "Put":
        return op["Key"]
    table = backend.get_table(op["TableName"])
    attrs = op["Item"]
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def transact_write_items(self, transact_items):
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    seen, ops, errors = set(), [], []
    for item in transact_items:
        if len(item) > 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(item.items()))
        if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
            raise ValueError("Unsupported transaction operation")
        key = _key(self, op_type, op)
        unique = (str(op["TableName"]), str(dict(sorted(key.items()))))
        if unique in seen:
            raise MultipleTransactionsException()
        seen.add(unique)
        current = self.get_item(op["TableName"], key)
        ops.append((op_type, op, key, current))
        condition = op.get("ConditionExpression")
        if condition is not None and not get_filter_expression(
            condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
        ).expr(current):
            old = None
            if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                old = current.to_json()["Attributes"]
            errors.append(("ConditionalCheckFailed", ConditionalCheckFailed(item=old).message, old))
        else:
            errors.append((None, None, None))
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)

    originals = [(op["TableName"], key, copy.deepcopy(current)) for _, op, key, current in ops]
    for i, (op_type, op, key, _) in enumerate(ops):
        try:
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if op_type == "Put":
                self.put_item(op["TableName"], op["Item"])
            elif op_type == "Delete":
                self.delete_item(op["TableName"], key)
            elif op_type == "Update":
                self.update_item(
                    op["TableName"], key, update_expression=op["UpdateExpression"],
                    expression_attribute_names=names, expression_attribute_values=values,
                )
        except Exception as e:  # an invalid update: undo what was written, cancel like moto
            for table_name, original_key, original in originals:
                if original is None:
                    self.delete_item(table_name, original_key)
                else:
                    self.put_item(table_name, original.to_json()["Attributes"])
            failed = [(None, None, None)] * len(ops)
            failed[i] = (type(e).__name__, str(e), None)
            raise TransactionCanceledException(failed)


TOKEN_WINDOW = 600  # seconds, as DynamoDB keeps a token
_tokens: dict[str, tuple[str, float]] = {}  # token -> (digest of the items, when it succeeded)
_original_handler = DynamoHandler.transact_write_items


def handle_transact_write_items(self):
    token = self.body.get("ClientRequestToken")
    # Binary attributes arrive decoded (bytes); they are digested as their hex.
    items = json.dumps(self.body.get("TransactItems"), sort_keys=True, default=lambda b: b.hex())
    digest = hashlib.sha256(items.encode()).hexdigest()
    now = time.monotonic()
    for old in [t for t, (_, at) in _tokens.items() if now - at > TOKEN_WINDOW]:
        del _tokens[old]
    if token and _tokens.get(token, (None, 0))[0] == digest:
        return _success()
    result = _original_handler(self)
    if token:
        _tokens[token] = (digest, now)
    return result


def _success():
    from moto.core.responses import ActionResult

    return ActionResult({"ConsumedCapacity": [], "ItemCollectionMetrics": {}})


_original_query = Table.query


def query_partition(self, hash_key, *args, **kwargs):
    """Table.query, looking at the items that can match alone (moto's query filters
    `all_items()`, every item of the table sorted by its keys): the partition of `hash_key`
    when the query is on the table's own key, the items whose index key is the one asked for
    when it is on an index."""
    index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
    conditions = kwargs.get("hash_key_conditions") or []
    if index_name and conditions:
        candidates = _index_candidates(self, conditions)
    elif not index_name and hash_key is not None and self.range_key_attr:
        partition = self.items.get(hash_key, {})
        candidates = lambda: sorted(partition.values(), key=lambda x: x.range_key)
    else:
        return _original_query(self, hash_key, *args, **kwargs)
    # An attribute of the instance shadows the method for this one call (one request at a
    # time: the server is single-threaded).
    self.all_items = candidates
    try:
        return _original_query(self, hash_key, *args, **kwargs)
    finally:
        del self.all_items


def _index_candidates(table, conditions):
    """The items that have every attribute of an index's key as `conditions` asks, in the
    order of `Table.all_items` (moto keeps that order among equal index keys)."""

    def candidates():
        found = []
        for hash_set in table.items.values():
            for item in hash_set.values() if table.range_key_attr else [hash_set]:
                if all(_has(item, name, value) for name, value in conditions):
                    found.append(item)
        return sorted(
            found, key=lambda x: (x.hash_key, x.range_key) if x.range_key else x.hash_key
        )

    return candidates


def _has(item, name, value):
    found = item.attrs.get(name)
    return found is not None and found == value


def main() -> None:
    port = int(sys.argv[1])
    DynamoDBBackend.transact_write_items = transact_write_items
    Table.query = query_partition
    DynamoHandler.transact_write_items = handle_transact_write_items
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, app, threaded=False, use_reloader=False, use_debugger=False)


if __name__ == "__main__":
    main()
