"""A Python Lambda for bench/coldstart.py: one DynamoDB GetItem per invocation with boto3, the
client built once at init, and a tiny Lambda Runtime API client loop (what the managed python
runtime does for a handler), so it runs behind the same local runtime API as the Rust
bootstraps. Table and key from PROBE_TABLE, PROBE_PK, PROBE_SK."""

import http.client
import json
import os

import boto3

client = boto3.client("dynamodb")
TABLE = os.environ["PROBE_TABLE"]
KEY = {"PK": {"S": os.environ["PROBE_PK"]}, "SK": {"S": os.environ["PROBE_SK"]}}


def handler(event):
    out = client.get_item(TableName=TABLE, Key=KEY)
    return {"found": "Item" in out}


def main():
    runtime = http.client.HTTPConnection(os.environ["AWS_LAMBDA_RUNTIME_API"])
    base = "/2018-06-01/runtime/invocation"
    while True:
        runtime.request("GET", f"{base}/next")
        answer = runtime.getresponse()
        payload = answer.read()
        if answer.status != 200:
            return
        request_id = answer.getheader("Lambda-Runtime-Aws-Request-Id")
        try:
            body, outcome = json.dumps(handler(json.loads(payload or b"null"))), "response"
        except Exception as e:  # reported to the runtime API as Lambda's runtimes do
            body, outcome = json.dumps({"errorType": type(e).__name__, "errorMessage": str(e)}), "error"
        runtime.request("POST", f"{base}/{request_id}/{outcome}", body=body, headers={"Content-Type": "application/json"})
        runtime.getresponse().read()


if __name__ == "__main__":
    main()
