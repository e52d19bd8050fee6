#!/usr/bin/env python3
"""Fuzzes `loyalty serve` against infra/openapi.yaml with schemathesis.

All checks are on, with the examples, coverage, fuzzing and stateful phases; any finding fails
the run. Admin routes get an admin token and member routes a member token. The number of
requests made is printed, and fewer than MIN_REQUESTS is a failure too.

    scripts/fuzz_api.py [--max-examples N] [--seed S]

LOYALTY_BIN names the binary (default target/debug/loyalty).
"""

import argparse
import json
import os
import pathlib
import secrets
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIN_REQUESTS = 1000

# Where a schema-valid request may still be refused, and why. Each widens only the statuses the
# `positive_data_acceptance` check expects of that operation; every other check stays as it is.
EXCEPTIONS = {
    ("PUT", "/v1/programs/{program}"): (
        ["400", "412"],
        "a program file has dozens of cross-field rules (tiers ascending, rewards known, "
        "currencies real) that a JSON schema of 'any file' cannot state; 400 names each field. "
        "An If-Match or If-None-Match that does not hold is 412 by design",
    ),
    ("PUT", "/v1/programs/{program}/campaigns/{campaign}"): (
        ["400", "412"],
        "weights must sum to 1, end must follow start, offered rewards and tiers must exist in "
        "the program: rules across fields and across documents. An If-Match or If-None-Match "
        "that does not hold is 412 by design",
    ),
    ("POST", "/v1/programs/{program}/events"): (
        ["400"],
        "an envelope must name the path's program, the program's currency, and a time within "
        "the program's backdating limit: rules that depend on the program and the clock",
    ),
    ("GET", "/v1/programs/{program}/me/ledger"): (
        ["400"],
        "a cursor is opaque: only one this API issued is accepted (400 invalid-cursor)",
    ),
    ("GET", "/v1/programs/{program}/members/{member}/ledger"): (
        ["400"],
        "a cursor is opaque: only one this API issued is accepted (400 invalid-cursor)",
    ),
    ("GET", "/v1/programs/{program}/rejected-events"): (
        ["400"],
        "a cursor is opaque: only one this API issued is accepted (400 invalid-cursor)",
    ),
    ("POST", "/v1/programs/{program}/members/{member}/adjustments"): (
        ["422"],
        "an Idempotency-Key reused with another body is refused by design",
    ),
    ("POST", "/v1/programs/{program}/members/{member}/aliases"): (
        ["400"],
        "an email's value must be an address, and `kind:value` together must follow the member "
        "id rule: rules across the two fields",
    ),
    ("POST", "/v1/programs/{program}/me/redemptions"): (
        ["422"],
        "an Idempotency-Key reused with another body is refused by design",
    ),
    ("PATCH", "/v1/programs/{program}/me/profile"): (
        ["400"],
        "an anniversary is a day already past, from 1900 on: a rule that depends on the clock",
    ),
    ("GET", "/v1/programs/{program}/reports/liability"): (
        ["400"],
        "the books cannot know a day after today: a rule that depends on the clock",
    ),
    ("GET", "/v1/programs/{program}/reports/kpis"): (
        ["400"],
        "a period's start must not follow its end: a rule across two parameters",
    ),
}
# Checks about the methods a path declares, which need the whole document.
METHOD_CHECKS = ("unsupported_method", "allow_header_conformance")
POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


def start_serve(binary, secret):
    env = dict(os.environ, LOYALTY_JWT_SECRET=secret, LOYALTY_LOG="error")
    serve = subprocess.Popen(
        [binary, "serve", "--memory", "--addr", "127.0.0.1:0", "--jobs-every", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in serve.stdout:
        if line.startswith("loyalty serve: listening on "):
            return serve, line.split("listening on ", 1)[1].strip()
    raise SystemExit("loyalty serve exited before listening")


def token(binary, secret, *args):
    env = dict(os.environ, LOYALTY_JWT_SECRET=secret)
    return subprocess.run(
        [binary, "token", *args], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def load_document():
    """The document, with the program parameter narrowed to the one program serve holds.

    Every route is under a program; any other program is 404 and would hide the route's logic
    from the fuzzer. Nothing else is changed."""
    document = yaml.safe_load((ROOT / "infra/openapi.yaml").read_text())
    document["components"]["parameters"]["program"]["schema"] = {
        "type": "string",
        "enum": ["kr-shop"],
    }
    return document


def groups(document):
    """Operations grouped by the token they need and the statuses a valid request may get.

    Each group is fuzzed in a run of its own (with its stateful phase over the group's
    operations), since a setting given for some operations only would reach the others."""
    grouped = {}
    for path, item in document["paths"].items():
        for method in item:
            if method not in ("get", "put", "post", "patch", "delete"):
                continue
            rest = path.split("{program}", 1)[1] if "{program}" in path else path
            who = "member" if rest == "/me" or rest.startswith("/me/") else "admin"
            extra = tuple(EXCEPTIONS.get((method.upper(), path), ([], ""))[0])
            grouped.setdefault((who, extra), []).append((path, method))
    return grouped


def only(document, operations):
    """A copy of the document with just these operations."""
    copy = json.loads(json.dumps(document))
    copy["paths"] = {}
    for path, method in operations:
        item = copy["paths"].setdefault(path, {})
        item[method] = document["paths"][path][method]
        if "parameters" in document["paths"][path]:
            item["parameters"] = document["paths"][path]["parameters"]
    return copy


PHASES = "examples,coverage,fuzzing,stateful"


def fuzz(work, name, document, token, extra, base, args, checks="all", exclude=(), phases=PHASES):
    """One schemathesis run; returns (exit status, requests made)."""
    schema = work / f"{name}.json"
    schema.write_text(json.dumps(document))
    config = work / f"{name}.toml"
    statuses = json.dumps(POSITIVE_DEFAULT + list(extra))
    config.write_text(f"[checks.positive_data_acceptance]\nexpected-statuses = {statuses}\n")
    har = work / f"{name}.har"
    run = subprocess.run(
        [
            str(ROOT / ".venv/bin/schemathesis"),
            "--config-file",
            str(config),
            "run",
            str(schema),
            "--url",
            base,
            "-H",
            f"Authorization: Bearer {token}",
            "--checks",
            checks,
            *(["--exclude-checks", ",".join(exclude)] if exclude else []),
            "--phases",
            phases,
            "--max-examples",
            str(args.max_examples),
            "--seed",
            str(args.seed),
            "--workers",
            "1",
            "--no-color",
            "--report",
            "har",
            "--report-har-path",
            str(har),
        ],
        cwd=work,
    )
    requests = len(json.loads(har.read_text())["log"]["entries"]) if har.exists() else 0
    return run.returncode, requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=60)
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args()
    binary = os.environ.get("LOYALTY_BIN", str(ROOT / "target/debug/loyalty"))
    secret = secrets.token_hex(16)
    print("exceptions to positive_data_acceptance:")
    for (method, path), (statuses, why) in EXCEPTIONS.items():
        print(f"  {method} {path} may answer {', '.join(statuses)}: {why}")
    document = load_document()
    failed, total = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        serve, base = start_serve(binary, secret)
        try:
            tokens = {
                "admin": token(binary, secret, "--admin"),
                "member": token(binary, secret, "--member", "m-fuzz"),
            }
            for i, ((who, extra), operations) in enumerate(sorted(groups(document).items())):
                name = f"{who}-{i}"
                print(f"\n== {name}: {len(operations)} operations, {who} token ==", flush=True)
                # A path split between groups has methods this copy does not declare; those
                # two checks run once over the whole document below.
                status, requests = fuzz(
                    work, name, only(document, operations), tokens[who], extra, base, args,
                    exclude=METHOD_CHECKS,
                )
                total += requests
                if status != 0:
                    failed.append(name)
            print("\n== every path: undeclared methods and Allow headers ==", flush=True)
            status, requests = fuzz(
                work, "methods", document, tokens["admin"], (), base, args,
                checks=",".join(METHOD_CHECKS), phases="coverage",
            )
            total += requests
            if status != 0:
                failed.append("methods")
        finally:
            serve.terminate()
            serve.wait()
    print(f"\nschemathesis: {total} requests; failed groups: {failed or 'none'}")
    if failed:
        sys.exit(1)
    if total < MIN_REQUESTS:
        sys.exit(f"only {total} requests were made; at least {MIN_REQUESTS} are expected")


if __name__ == "__main__":
    main()
