"""The fault proxy's `partial` kind: a batch cut short is answered as AWS answers one it did in
part, so that the functions' handling of what was left out is exercised."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from awslocal.faults import Faults, split_batch, with_left_out  # noqa: E402


def test_a_batch_get_keeps_some_keys_and_answers_the_rest_unprocessed():
    # GIVEN a BatchGetItem of five keys, read consistently
    keys = [{"PK": {"S": f"k{i}"}, "SK": {"S": "ACCOUNT"}} for i in range(5)]
    body = json.dumps({"RequestItems": {"T": {"Keys": keys, "ConsistentRead": True}}}).encode()
    # WHEN it is cut short
    forwarded, left_out = split_batch(random.Random(3), "dynamodb", "BatchGetItem", body)
    sent = json.loads(forwarded)["RequestItems"]["T"]
    answer = json.loads(with_left_out("BatchGetItem", json.dumps({"Responses": {"T": []}}).encode(), left_out))
    # THEN at least one key goes on and the others come back unprocessed, with the read's options
    rest = answer["UnprocessedKeys"]["T"]
    assert 1 <= len(sent["Keys"]) < 5 and sent["ConsistentRead"] is True
    assert sent["Keys"] + rest["Keys"] == keys and rest["ConsistentRead"] is True
    assert answer["Responses"] == {"T": []}


def test_a_batch_write_answers_the_rest_as_unprocessed_items():
    # GIVEN a BatchWriteItem of three deletes
    writes = [{"DeleteRequest": {"Key": {"PK": {"S": f"k{i}"}}}} for i in range(3)]
    body = json.dumps({"RequestItems": {"T": writes}}).encode()
    # WHEN it is cut short
    forwarded, left_out = split_batch(random.Random(1), "dynamodb", "BatchWriteItem", body)
    answer = json.loads(with_left_out("BatchWriteItem", b"{}", left_out))
    # THEN what was not forwarded is what comes back unprocessed
    assert json.loads(forwarded)["RequestItems"]["T"] + answer["UnprocessedItems"]["T"] == writes


def test_a_message_batch_answers_the_rest_as_failed_entries():
    # GIVEN a SendMessageBatch of four entries
    entries = [{"Id": str(i), "MessageBody": f"m{i}"} for i in range(4)]
    body = json.dumps({"QueueUrl": "q", "Entries": entries}).encode()
    # WHEN it is cut short and the queue accepted what was forwarded
    forwarded, left_out = split_batch(random.Random(2), "sqs", "SendMessageBatch", body)
    sent = json.loads(forwarded)["Entries"]
    upstream = {"Successful": [{"Id": e["Id"], "MessageId": "x"} for e in sent]}
    answer = json.loads(with_left_out("SendMessageBatch", json.dumps(upstream).encode(), left_out))
    # THEN every entry is either successful or failed, never both, and the failed are not the
    # sender's fault (worth sending again)
    assert [e["Id"] for e in answer["Successful"]] + [f["Id"] for f in answer["Failed"]] == ["0", "1", "2", "3"]
    assert all(f["SenderFault"] is False for f in answer["Failed"])


def test_requests_that_are_not_batches_of_two_pass_untouched():
    # GIVEN a batch of one, a single write, and a body that is not JSON
    one = json.dumps({"RequestItems": {"T": {"Keys": [{"PK": {"S": "a"}}]}}}).encode()
    # THEN none of them is cut, and `partial` parses as a kind of request fault
    assert split_batch(random.Random(0), "dynamodb", "BatchGetItem", one) is None
    assert split_batch(random.Random(0), "dynamodb", "PutItem", b'{"Item": {}}') is None
    assert split_batch(random.Random(0), "sqs", "SendMessageBatch", b"Action=SendMessageBatch") is None
    assert Faults.parse("dynamodb.BatchGetItem:partial=0.5").rules[0].kinds == {"partial": 0.5}
