"""The deployed topology on one machine: moto (DynamoDB, SQS, SSM), the resources of
infra/template.yaml, the function binaries under a local Lambda runtime, the HTTP API with its
JWT authorizer, webhook-ingest's function URL, the SQS event-source mappings and the schedules, with faults on demand."""

from __future__ import annotations

import json
import os
import random
import secrets as secrets_module
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import boto3
from botocore.config import Config

from . import template as tpl
from .faults import FaultProxy, Faults
from .front import HttpFront, sign_hs256
from .runtime import FunctionPool
from .sources import ScheduleRunner, SqsEventSource, StreamEventSource

REGION = "us-east-1"
ACCOUNT = "123456789012"
PLATFORMS = ("shopify", "woocommerce", "cafe24", "pos")
SECRET_PREFIX = "LOYALTY_SECRET_"


@dataclass
class Options:
    root: Path
    bin_dir: Path
    api_port: int = 3000
    webhook_port: int = 0  # webhook-ingest's function URL
    control_port: int = 0
    faults: str = ""
    seed: int | None = None
    schedules_every: float | None = None  # None: the template's rates
    visibility_timeout: int | None = None  # None: the template's
    concurrency: int = 4
    pollers: int = 2
    programs: list[Path] = field(default_factory=list)
    jwt_secret: str | None = None
    work_dir: Path | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret_variable(program: str, platform: str) -> str:
    """As the engine names it: kr-shop, shopify -> LOYALTY_SECRET_KR_SHOP_SHOPIFY."""
    return f"{SECRET_PREFIX}{program}_{platform}".upper().replace("-", "_")


def program_id(path: Path) -> str:
    """The `id` of a program file (TOML)."""
    for line in path.read_text().splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip() == "id":
            return value.split("#")[0].strip().strip('"')
    raise RuntimeError(f"{path}: no id")


class Stack:
    def __init__(self, options: Options):
        self.o = options
        self.work = options.work_dir or options.root / "target" / "aws-local"
        self.work.mkdir(parents=True, exist_ok=True)
        self.template = tpl.load(options.root / "infra" / "template.yaml")
        self.faults = Faults.parse(options.faults)
        self.seed = options.seed if options.seed is not None else random.randrange(2**32)
        self.rng = random.Random(self.seed)
        self.jwt_secret = options.jwt_secret or os.environ.get("LOYALTY_JWT_SECRET") or ""
        self.generated_secret = not self.jwt_secret
        if self.generated_secret:
            self.jwt_secret = secrets_module.token_hex(32)
        self.moto: subprocess.Popen | None = None
        self.pools: dict[str, FunctionPool] = {}
        self.sources: list[SqsEventSource | StreamEventSource] = []
        self.schedules: dict[str, ScheduleRunner] = {}
        self.queue_urls: dict[str, str] = {}
        self.queue_arns: dict[str, str] = {}
        self.lines: list[str] = []

    # -- start and stop ------------------------------------------------------------------------

    def start(self) -> None:
        self._start_moto()
        self._create_resources()
        self.proxy = FaultProxy(self.moto_port, self.faults, random.Random(self.rng.random()), self._function_of, self._kill)
        self._start_functions()
        self.front = HttpFront(self.template.routes, self.pools, self.jwt_secret, self.o.api_port)
        threading.Thread(target=self.front.serve_forever, daemon=True).start()
        self.api = f"http://127.0.0.1:{self.front.port}"
        # Each function URL on a port of its own; the webhooks' is where the platforms deliver.
        self.urls: dict[str, str] = {}
        for url in self.template.urls:
            binary = self.template.functions[url.function].binary
            port = self.o.webhook_port if binary == "webhook-ingest" else 0
            front = HttpFront([], self.pools, self.jwt_secret, port, url_function=url.function)
            threading.Thread(target=front.serve_forever, daemon=True).start()
            self.urls[binary] = f"http://127.0.0.1:{front.port}"
        self.webhooks = self.urls["webhook-ingest"]
        self._start_control()
        for source in self.sources:
            source.start()
        for runner in self.schedules.values():
            runner.start()
        self._load_programs()

    def stop(self) -> None:
        for source in self.sources:
            source.stop()
        for runner in self.schedules.values():
            runner.stop()
        for pool in self.pools.values():
            pool.stop()
        if self.moto:
            self.moto.terminate()
            try:
                self.moto.wait(5)
            except subprocess.TimeoutExpired:
                self.moto.kill()

    def _start_moto(self) -> None:
        self.moto_port = free_port()
        log = open(self.work / "moto.log", "w")
        self.moto = subprocess.Popen(
            [sys.executable, str(self.o.root / "scripts" / "moto_server.py"), str(self.moto_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{self.moto_port}/moto-api/data.json"
        for _ in range(150):
            if self.moto.poll() is not None:
                raise RuntimeError(f"moto exited; see {self.work / 'moto.log'}")
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto did not start")
        self.moto_url = f"http://127.0.0.1:{self.moto_port}"
        config = Config(retries={"max_attempts": 10, "mode": "standard"})
        kw = dict(endpoint_url=self.moto_url, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test", config=config)
        self.dynamodb = boto3.client("dynamodb", **kw)
        self.sqs = boto3.client("sqs", **kw)
        self.ssm = boto3.client("ssm", **kw)
        self._client_kw = kw

    def sqs_client(self):
        """A client of its own for a thread."""
        return boto3.client("sqs", **self._client_kw)

    def streams_client(self):
        return boto3.client("dynamodbstreams", **self._client_kw)

    # -- resources from the template ------------------------------------------------------------

    def _create_resources(self) -> None:
        t = self.template
        self.table_name = f"loyalty-{t.table_logical}"
        props = t.table
        kwargs = {
            "TableName": self.table_name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PROVISIONED"),
        }
        if props.get("GlobalSecondaryIndexes"):
            kwargs["GlobalSecondaryIndexes"] = [
                {k: gsi[k] for k in ("IndexName", "KeySchema", "Projection", "ProvisionedThroughput") if k in gsi}
                for gsi in props["GlobalSecondaryIndexes"]
            ]
        if props.get("ProvisionedThroughput"):
            kwargs["ProvisionedThroughput"] = props["ProvisionedThroughput"]
        if props.get("StreamSpecification"):
            kwargs["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": props["StreamSpecification"]["StreamViewType"]}
        self.dynamodb.create_table(**kwargs)
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            self.dynamodb.update_time_to_live(
                TableName=self.table_name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
            )
        self.table_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{self.table_name}"
        self.lines.append(f"table {self.table_name} ({len(kwargs.get('GlobalSecondaryIndexes', []))} indexes)")

        dead_letters = {q.dead_letter for q in t.queues.values() if q.dead_letter}
        for queue in sorted(t.queues.values(), key=lambda q: q.logical not in dead_letters):
            attributes = {"VisibilityTimeout": str(self.o.visibility_timeout if self.o.visibility_timeout is not None else queue.visibility_timeout)}
            if queue.fifo:
                attributes["FifoQueue"] = "true"
            if queue.retention:
                attributes["MessageRetentionPeriod"] = str(queue.retention)
            if queue.dead_letter:
                attributes["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": self.queue_arns[queue.dead_letter], "maxReceiveCount": queue.max_receive_count}
                )
            url = self.sqs.create_queue(QueueName=queue.name, Attributes=attributes)["QueueUrl"]
            self.queue_urls[queue.logical] = url
            self.queue_arns[queue.logical] = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue.name}"
        self.lines.append("queues " + ", ".join(q.name for q in t.queues.values()))

        names = []
        for program in self._program_ids():
            for platform in PLATFORMS:
                for suffix, param_suffix in (("", ""), ("_PREVIOUS", "/previous")):
                    value = os.environ.get(secret_variable(program, platform) + suffix)
                    if value:
                        name = f"/loyalty/{program}/{platform}{param_suffix}"
                        self.ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
                        names.append(name)
                # A shop's order API (JSON: url and key/secret or token), for reconciliation.
                api = os.environ.get(secret_variable(program, platform).replace(SECRET_PREFIX, "LOYALTY_API_", 1))
                if api:
                    name = f"/loyalty/{program}/{platform}/api"
                    self.ssm.put_parameter(Name=name, Value=api, Type="SecureString", Overwrite=True)
                    names.append(name)
        self.lines.append(f"SSM parameters: {', '.join(names) if names else 'none (no LOYALTY_SECRET_* variables)'}")

    def _program_ids(self) -> list[str]:
        files = self.o.programs or [self.o.root / "examples" / "kr-shop.toml"]
        return [program_id(path) for path in files]

    # -- functions, event sources, schedules ------------------------------------------------------

    def _start_functions(self) -> None:
        t = self.template
        refs = {t.table_logical: self.table_name, **self.queue_urls}
        attrs = {(t.table_logical, "Arn"): self.table_arn}
        for logical, url in self.queue_urls.items():
            attrs[(logical, "Arn")] = self.queue_arns[logical]
            attrs[(logical, "QueueName")] = t.queues[logical].name
        log_dir = self.work / "logs"
        # What Secrets Manager would generate, once for the stack as CloudFormation does.
        generated = {name: secrets_module.token_hex(32) for name in t.secrets}
        for logical, function in t.functions.items():
            binary = self.o.bin_dir / function.binary
            if not binary.exists():
                raise RuntimeError(f"{binary} is missing: build the functions first (scripts/aws-local builds them)")
            variables = {k: tpl.resolve(v, refs, attrs, generated) for k, v in function.environment.items()}
            self.pools[logical] = FunctionPool(
                logical=logical,
                binary=binary,
                timeout=function.timeout,
                memory=function.memory,
                concurrency=self.o.concurrency,
                environment=self._environment(variables, self.faults.init_failure_fraction(function.binary)),
                log_dir=log_dir,
                crash_fraction=self.faults.crash_fraction(function.binary),
                rng=random.Random(self.rng.random()),
            )
        for source in t.sqs_sources:
            self.sources.append(
                SqsEventSource(
                    source,
                    self.queue_urls[source.queue],
                    self.queue_arns[source.queue],
                    self.pools[source.function],
                    self.sqs_client(),
                    self.o.pollers,
                )
            )
        for source in t.stream_sources:
            self.sources.append(
                StreamEventSource(source, self.table_name, self.pools[source.function], self.dynamodb, self.streams_client())
            )
        for schedule in t.schedules:
            self.schedules[schedule.name] = ScheduleRunner(schedule, self.pools[schedule.function], self.o.schedules_every)
        self.lines.append(
            f"functions {', '.join(f.binary for f in t.functions.values())} from {self.o.bin_dir}; logs in {log_dir}"
        )

    def _environment(self, variables: dict[str, str], init_failures: float):
        proxy = lambda: self.proxy  # noqa: E731 (the proxy starts before any instance)
        rng = random.Random(self.rng.random())

        def environment(instance) -> dict[str, str]:
            env = {
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_SESSION_TOKEN": "local",
                "AWS_ENDPOINT_URL": proxy().endpoint(instance.id),
                "AWS_EC2_METADATA_DISABLED": "true",
                "TZ": ":UTC",
                "LANG": "en_US.UTF-8",
            }
            if os.environ.get("RUST_LOG"):  # not set in AWS; passed on to see more locally
                env["RUST_LOG"] = os.environ["RUST_LOG"]
            if not (init_failures and rng.random() < init_failures):
                env.update(variables)
            return env

        return environment

    def _function_of(self, instance_id: int) -> str:
        for pool in self.pools.values():
            if instance_id in pool.started:
                return pool.binary.name
        return "?"

    def _kill(self, instance_id: int, why: str) -> bool:
        return any(pool.kill_instance(instance_id, why) for pool in self.pools.values())

    # -- programs ---------------------------------------------------------------------------------

    def admin_token(self) -> str:
        return sign_hs256(self.jwt_secret, {"sub": "aws-local", "scope": "loyalty/admin", "exp": int(time.time()) + 3600})

    def _load_programs(self) -> None:
        files = self.o.programs or [self.o.root / "examples" / "kr-shop.toml"]
        for path in files:
            text = path.read_bytes()
            program = program_id(path)
            request = urllib.request.Request(
                f"{self.api}/v1/programs/{program}",
                data=text,
                method="PUT",
                headers={"Authorization": f"Bearer {self.admin_token()}", "Content-Type": "application/toml"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    saved = json.loads(answer.read() or b"{}")
            except urllib.error.HTTPError as e:
                raise RuntimeError(f"{path}: {e.code} {e.read().decode('utf-8', 'replace')}") from e
            version = saved.get("version") or saved.get("file", {}).get("version")
            self.lines.append(f"program {program} v{version} from {path}")

    # -- what tests and operators can ask -------------------------------------------------------

    def queue_depths(self) -> dict[str, dict[str, int]]:
        depths = {}
        for logical, url in self.queue_urls.items():
            a = self.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
            depths[logical] = {
                "visible": int(a.get("ApproximateNumberOfMessages", 0)),
                "in_flight": int(a.get("ApproximateNumberOfMessagesNotVisible", 0)),
            }
        return depths

    def status(self) -> dict:
        proxy: dict[str, int] = {}
        for (function, service, operation, outcome), n in sorted(self.proxy.counts.items()):
            key = f"{function} {service}.{operation} {outcome}"
            proxy[key] = n
        return {
            "seed": self.seed,
            "functions": {p.binary.name: {**p.stats, "instances": len(p.instances)} for p in self.pools.values()},
            "sources": {s.source.name: s.stats for s in self.sources},
            "actions": sorted(list(a) for a in self.proxy.actions),
            "queues": self.queue_depths(),
            "queue_urls": dict(self.queue_urls),
            "table": self.table_name,
            "requests": proxy,
            "schedules": {name: r.runs[-5:] for name, r in self.schedules.items()},
            "first_invocation_connections": self.first_invocation_connections(),
        }

    def first_invocation_connections(self) -> dict[str, dict[str, dict]]:
        """For each function, each instance's first invocation: the connections it opened
        (those opened during init are not counted: that is where they belong) and what it was
        (a scheduled job's input, an HTTP route, or the number of queue or stream records)."""
        found: dict[str, dict[str, dict]] = {}
        with self.proxy.count_lock:
            opened = {i: list(times) for i, times in self.proxy.opened.items()}
        for pool in self.pools.values():
            mine = found.setdefault(pool.binary.name, {})
            for instance, (ready, answered, payload) in list(pool.first_invocations.items()):
                mine[str(instance)] = {
                    "connections": sum(1 for at in opened.get(instance, []) if ready < at <= answered),
                    "work": _work_of(payload),
                }
        return found

    def _start_control(self) -> None:
        stack = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status: int, payload) -> None:
                data = json.dumps(payload, indent=1).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/status":
                    return self._json(200, stack.status())
                self._json(404, {"message": "GET /status, POST /schedules/{name}, POST /invoke/{function}, PUT /faults"})

            def do_PUT(self):
                if self.path != "/faults":
                    return self._json(404, {"message": "PUT /faults"})
                spec = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                try:
                    faults = Faults.parse(spec)
                except ValueError as e:
                    return self._json(400, {"message": str(e)})
                # The functions' faults are drawn when their processes start: a rule taken
                # here would be answered 200 and do nothing.
                if faults.crashes or faults.init_failures:
                    return self._json(400, {"message": "lambda.FUNCTION faults are set when the stack starts (--faults); PUT /faults replaces the request faults only"})
                stack.proxy.faults = faults
                self._json(200, {"faults": spec})

            def do_POST(self):
                if self.path.startswith("/invoke/"):
                    name, _, query = self.path.removeprefix("/invoke/").partition("?")
                    timeout = parse_qs(query).get("timeout", [None])[0]
                    return self._invoke(name, float(timeout) if timeout else None)
                name = self.path.removeprefix("/schedules/")
                runner = stack.schedules.get(name)
                if runner is None:
                    return self._json(404, {"message": f"schedules: {sorted(stack.schedules)}"})
                self._json(200, runner.run())

            def _invoke(self, binary: str, timeout: float | None):
                """Invokes a function once with the request's JSON, as `aws lambda invoke` does;
                `?timeout=S` gives it only S seconds (its deadline, as the runtime reports it)."""
                pool = next((p for p in stack.pools.values() if p.binary.name == binary), None)
                if pool is None:
                    return self._json(404, {"message": f"functions: {sorted(p.binary.name for p in stack.pools.values())}"})
                try:
                    payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                except ValueError as e:
                    return self._json(400, {"message": f"not JSON: {e}"})
                outcome = pool.invoke(payload, timeout)
                if outcome.ok:
                    return self._json(200, {"ok": True, "result": json.loads(outcome.body or b"null")})
                self._json(200, {"ok": False, "error": outcome.error_message})

        self.control = ThreadingHTTPServer(("127.0.0.1", self.o.control_port), Handler)
        self.control.daemon_threads = True
        threading.Thread(target=self.control.serve_forever, daemon=True).start()
        self.control_url = f"http://127.0.0.1:{self.control.server_address[1]}"


def _work_of(payload: bytes) -> str:
    """What an invocation was, in a few words: a job, a route, or a number of records."""
    try:
        event = json.loads(payload or b"null")
    except ValueError:
        return "?"
    if not isinstance(event, dict):
        return "?"
    if "job" in event:
        return f"job {event['job']}"
    if "Records" in event:
        kinds = set()
        for record in event["Records"]:
            try:
                kinds.add(json.loads(record.get("body") or "{}").get("type") or record.get("eventName") or "?")
            except (ValueError, AttributeError):
                kinds.add(record.get("eventName") or "?")
        return f"{len(event['Records'])} records: {', '.join(sorted(kinds))}"
    context = event.get("requestContext", {}).get("http", {})
    return f"{context.get('method', '?')} {event.get('rawPath', '?')}"
