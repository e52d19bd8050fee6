"""What the template grants each function, in the terms the fault proxy records what it used:
`(action, resource)` with resource `table`, `index/NAME`, a queue's name or an SSM parameter's
name, and patterns (`index/due-*`, `/loyalty/*`) as the template writes them."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from cfnlint.decode import cfn_yaml


def grants(path: Path) -> dict[str, set[tuple[str, str]]]:
    """{binary: {(action, resource pattern)}} from each function's inline policy statements."""
    resources = cfn_yaml.load(str(path))["Resources"]
    queues = {
        name: f"loyalty-{name}" + (".fifo" if r.get("Properties", {}).get("FifoQueue") else "")
        for name, r in resources.items()
        if r["Type"] == "AWS::SQS::Queue"
    }
    granted: dict[str, set[tuple[str, str]]] = {}
    for r in resources.values():
        if r["Type"] != "AWS::Serverless::Function":
            continue
        binary = r["Metadata"]["BuildProperties"]["Binary"]
        allowed = granted.setdefault(binary, set())
        for policy in r["Properties"].get("Policies", []):
            # Only inline statements are compared with what the code asks for. A managed policy
            # (a name or ARN here, or added to the role by SAM: AWSXrayWriteOnlyAccess for
            # `Tracing: Active`, the event sources' execution roles) is ignored: Lambda itself
            # uses it, the functions make no such calls of their own.
            if not isinstance(policy, dict):
                continue
            for statement in policy.get("Statement", []):
                if statement.get("Effect") != "Allow":
                    continue
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                for action in actions:
                    for target in targets:
                        allowed.add((action, _resource(target, queues)))
    return granted


def _resource(value, queues: dict[str, str]) -> str:
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        logical, attribute = value["Fn::GetAtt"]
        if logical in queues and attribute == "Arn":
            return queues[logical]
        if attribute == "Arn":
            return "table"
        return f"{logical}.{attribute}"
    if isinstance(value, dict) and "Fn::Sub" in value:
        text = value["Fn::Sub"]
        m = re.fullmatch(r"\$\{[A-Za-z]+\.Arn\}/(index/.+)", text)
        if m:
            return m.group(1)
        m = re.fullmatch(r"arn:\$\{AWS::Partition\}:ssm:\$\{AWS::Region\}:\$\{AWS::AccountId\}:parameter(/.+)", text)
        if m:
            return m.group(1)
    return str(value)


def compare(granted: dict[str, set[tuple[str, str]]], used: dict[str, set[tuple[str, str]]]):
    """(missing, unused): what a function used that no grant covers, and grants nothing used."""
    missing, unused = [], []
    for binary in sorted(set(granted) | set(used)):
        allowed, asked = granted.get(binary, set()), used.get(binary, set())
        for action, resource in sorted(asked):
            if not any(a == action and fnmatch.fnmatchcase(resource, r) for a, r in allowed):
                missing.append((binary, action, resource))
        for action, pattern in sorted(allowed):
            if not any(a == action and fnmatch.fnmatchcase(r, pattern) for a, r in asked):
                unused.append((binary, action, pattern))
    return missing, unused
