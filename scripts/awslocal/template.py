"""Reads infra/template.yaml into what the local stack builds: the table, the queues with their
dead-letter queues, the functions with their environment, HTTP routes, function URLs, SQS event
sources and schedules. Everything comes from the template, so the local stack cannot drift from the deployed one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml


@dataclass
class Queue:
    logical: str
    fifo: bool
    visibility_timeout: int
    dead_letter: str | None  # logical id of the dead-letter queue
    max_receive_count: int | None
    retention: int | None

    @property
    def name(self) -> str:
        return f"loyalty-{self.logical}" + (".fifo" if self.fifo else "")


@dataclass
class Route:
    method: str
    path: str  # /v1/programs/{program}/me
    function: str  # logical id
    authorizer: str | None  # None: no authorizer
    scopes: list[str]

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def greedy(self) -> bool:
        """A path ending in `{name+}`, which takes the rest of the path: API Gateway tries it last."""
        return self.path.endswith("+}")

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in (method, "ANY"):
            return None
        pattern = re.escape(self.path)
        pattern = re.sub(r"\\\{([A-Za-z0-9_]+)\\\+\\\}$", r"(?P<\1>.+)", pattern)
        pattern = "^" + re.sub(r"\\\{([A-Za-z0-9_]+)\\\}", r"(?P<\1>[^/]+)", pattern) + "$"
        m = re.match(pattern, path)
        return m.groupdict() if m else None


@dataclass
class FunctionUrl:
    """A function's URL (`FunctionUrlConfig`): every method and path goes to the function."""

    function: str  # logical id
    auth_type: str  # NONE | AWS_IAM


@dataclass
class SqsSource:
    name: str
    queue: str  # logical id
    function: str
    batch_size: int
    batching_window: int
    maximum_concurrency: int
    report_batch_item_failures: bool


@dataclass
class StreamSource:
    """A DynamoDB Streams event source on the table."""

    name: str
    function: str
    batch_size: int
    batching_window: int
    starting_position: str
    report_batch_item_failures: bool
    maximum_retry_attempts: int  # -1: until the record succeeds
    bisect_on_error: bool
    filters: list[dict]  # event filter patterns; a record passes when any matches


@dataclass
class Schedule:
    name: str
    function: str
    expression: str  # rate(1 hour)
    input: Any

    @property
    def every_seconds(self) -> int:
        m = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", self.expression)
        if not m:
            raise ValueError(f"schedule {self.name}: unsupported expression {self.expression}")
        unit = {"minute": 60, "hour": 3600, "day": 86400}[m.group(2).rstrip("s")]
        return int(m.group(1)) * unit


@dataclass
class Function:
    logical: str
    binary: str
    timeout: int
    memory: int
    environment: dict[str, Any]  # values are still template expressions


@dataclass
class Template:
    table_logical: str
    table: dict  # Properties of the AWS::DynamoDB::Table
    queues: dict[str, Queue]
    functions: dict[str, Function]
    routes: list[Route]
    urls: list[FunctionUrl]
    sqs_sources: list[SqsSource]
    schedules: list[Schedule]
    stream_sources: list[StreamSource]
    # AWS::SecretsManager::Secret resources, whose generated values the stack makes up itself
    secrets: list[str]


def load(path: Path) -> Template:
    raw = cfn_yaml.load(str(path))
    resources = raw["Resources"]
    globals_ = raw.get("Globals", {}).get("Function", {})

    tables = [k for k, r in resources.items() if r["Type"] == "AWS::DynamoDB::Table"]
    if len(tables) != 1:
        raise ValueError(f"expected one DynamoDB table, found {tables}")

    queues = {}
    for name, r in resources.items():
        if r["Type"] != "AWS::SQS::Queue":
            continue
        p = r.get("Properties", {})
        redrive = p.get("RedrivePolicy") or {}
        target = redrive.get("deadLetterTargetArn")
        queues[name] = Queue(
            logical=name,
            fifo=bool(p.get("FifoQueue", False)),
            visibility_timeout=int(p.get("VisibilityTimeout", 30)),
            dead_letter=target["Fn::GetAtt"][0] if isinstance(target, dict) else None,
            max_receive_count=int(redrive["maxReceiveCount"]) if redrive else None,
            retention=int(p["MessageRetentionPeriod"]) if "MessageRetentionPeriod" in p else None,
        )

    default_auth = _default_authorizer(resources)
    functions, routes, urls, sources, schedules, streams = {}, [], [], [], [], []
    for name, r in resources.items():
        if r["Type"] != "AWS::Serverless::Function":
            continue
        p = r["Properties"]
        env = dict(globals_.get("Environment", {}).get("Variables", {}))
        env.update(p.get("Environment", {}).get("Variables", {}))
        functions[name] = Function(
            logical=name,
            binary=r["Metadata"]["BuildProperties"]["Binary"],
            timeout=int(p.get("Timeout", globals_.get("Timeout", 3))),
            memory=int(p.get("MemorySize", globals_.get("MemorySize", 128))),
            environment=env,
        )
        if "FunctionUrlConfig" in p:
            auth_type = p["FunctionUrlConfig"]["AuthType"]
            if auth_type != "NONE":
                raise ValueError(f"{name}: a function URL with AuthType {auth_type} is not run locally")
            urls.append(FunctionUrl(function=name, auth_type=auth_type))
        for event_name, event in p.get("Events", {}).items():
            props = event.get("Properties", {})
            if event["Type"] == "HttpApi":
                auth = props.get("Auth", {})
                authorizer = auth.get("Authorizer", default_auth)
                routes.append(
                    Route(
                        method=props["Method"].upper(),
                        path=props["Path"],
                        function=name,
                        authorizer=None if authorizer in (None, "NONE") else authorizer,
                        scopes=list(auth.get("AuthorizationScopes", [])),
                    )
                )
            elif event["Type"] == "SQS":
                queue = props["Queue"]["Fn::GetAtt"][0]
                sources.append(
                    SqsSource(
                        name=event_name,
                        queue=queue,
                        function=name,
                        batch_size=int(props.get("BatchSize", 10)),
                        batching_window=int(props.get("MaximumBatchingWindowInSeconds", 0)),
                        maximum_concurrency=int(props.get("ScalingConfig", {}).get("MaximumConcurrency", 1000)),
                        report_batch_item_failures="ReportBatchItemFailures"
                        in props.get("FunctionResponseTypes", []),
                    )
                )
            elif event["Type"] == "DynamoDB":
                if props["Stream"] != {"Fn::GetAtt": [tables[0], "StreamArn"]}:
                    raise ValueError(f"{name}.{event_name}: only the table's own stream is run locally")
                streams.append(
                    StreamSource(
                        name=event_name,
                        function=name,
                        batch_size=int(props.get("BatchSize", 100)),
                        batching_window=int(props.get("MaximumBatchingWindowInSeconds", 0)),
                        starting_position=props["StartingPosition"],
                        report_batch_item_failures="ReportBatchItemFailures"
                        in props.get("FunctionResponseTypes", []),
                        maximum_retry_attempts=int(props.get("MaximumRetryAttempts", -1)),
                        bisect_on_error=bool(props.get("BisectBatchOnFunctionError", False)),
                        filters=[json.loads(f["Pattern"]) for f in props.get("FilterCriteria", {}).get("Filters", [])],
                    )
                )
            elif event["Type"] in ("Schedule", "ScheduleV2"):
                text = props.get("Input")
                schedules.append(
                    Schedule(
                        name=event_name,
                        function=name,
                        expression=props["ScheduleExpression"],
                        input=json.loads(text) if text else {},
                    )
                )
            else:
                raise ValueError(f"{name}.{event_name}: event type {event['Type']} is not run locally")

    return Template(
        table_logical=tables[0],
        table=at_defaults(resources[tables[0]]["Properties"], raw),
        queues=queues,
        functions=functions,
        routes=routes,
        urls=urls,
        sqs_sources=sources,
        schedules=schedules,
        stream_sources=streams,
        secrets=[k for k, r in resources.items() if r["Type"] == "AWS::SecretsManager::Secret"],
    )


def at_defaults(value: Any, raw: dict) -> Any:
    """`value` as deployed with every parameter at its default: each !If takes the branch its
    condition gives then, and !Ref AWS::NoValue drops the property (the table is on demand)."""
    if isinstance(value, list):
        return [at_defaults(v, raw) for v in value if not _no_value(v)]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Fn::If"}:
        name, then, otherwise = value["Fn::If"]
        return at_defaults(then if _condition(name, raw) else otherwise, raw)
    resolved = {k: at_defaults(v, raw) for k, v in value.items()}
    return {k: v for k, v in resolved.items() if not _no_value(v)}


def _no_value(value: Any) -> bool:
    return value == {"Ref": "AWS::NoValue"}


def _condition(name: str, raw: dict) -> bool:
    return _truth(raw.get("Conditions", {})[name], raw)


def _truth(expr: Any, raw: dict) -> bool:
    if "Fn::Equals" in expr:
        left, right = (_parameter(v, raw) for v in expr["Fn::Equals"])
        return left == right
    if "Fn::Not" in expr:
        return not _truth(expr["Fn::Not"][0], raw)
    if "Condition" in expr:
        return _condition(expr["Condition"], raw)
    raise ValueError(f"condition {expr!r} is not evaluated locally")


def _parameter(value: Any, raw: dict) -> Any:
    if isinstance(value, dict) and "Ref" in value:
        return str(raw.get("Parameters", {})[value["Ref"]].get("Default", ""))
    return value


def _default_authorizer(resources: dict) -> str | None:
    for r in resources.values():
        if r["Type"] == "AWS::Serverless::HttpApi":
            return r["Properties"].get("Auth", {}).get("DefaultAuthorizer")
    return None


SECRET_REFERENCE = re.compile(r"\{\{resolve:secretsmanager:\$\{(\w+)\}:SecretString\}\}")


def resolve(
    value: Any, refs: dict[str, str], attrs: dict[tuple[str, str], str], secrets: dict[str, str] | None = None
) -> str:
    """An environment value of the template, with !Ref and !GetAtt of local resources, and a
    dynamic reference to a generated secret of the template (`secrets`: by logical id)."""
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
        found = SECRET_REFERENCE.fullmatch(value["Fn::Sub"])
        if found and found.group(1) in (secrets or {}):
            return (secrets or {})[found.group(1)]
    if isinstance(value, dict) and "Ref" in value:
        return refs[value["Ref"]]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return attrs[tuple(value["Fn::GetAtt"])]
    raise ValueError(f"cannot resolve {value!r} locally")
