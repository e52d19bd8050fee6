"""Functions run as Lambda runs them: each instance is a fresh process of the function's
bootstrap that polls its own Lambda Runtime API (`AWS_LAMBDA_RUNTIME_API`) for invocations.
An instance is started on a cold start, reused while warm, and thrown away when it crashes or
times out; a function runs several instances at once, up to its concurrency.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

API = "/2018-06-01/runtime"
INIT_TIMEOUT = 10.0  # seconds Lambda allows for a cold start's init phase
_ids = itertools.count(1)


@dataclass
class Outcome:
    """What an invocation came to: a response body, or an error as Lambda reports it."""

    ok: bool
    body: bytes = b""
    error_type: str = ""
    error_message: str = ""
    cold: bool = False
    duration_ms: float = 0.0

    def json(self):
        return json.loads(self.body or b"null")


@dataclass
class Invocation:
    request_id: str
    payload: bytes
    deadline_ms: int
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None

    def finish(self, outcome: Outcome) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()


class _RuntimeApi(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, each response on a kept-alive
    # connection waits for the delayed ACK (about 40 ms).
    disable_nagle_algorithm = True
    instance: "Instance"

    def log_message(self, *args):  # the function's own log says enough
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        if self.path != f"{API}/invocation/next":
            return self._reply(404, b'{"errorMessage":"not found"}')
        invocation = self.server.instance.next_invocation()
        if invocation is None:  # the instance is being stopped
            self.close_connection = True
            return self._reply(410, b'{"errorMessage":"instance stopped"}')
        self._reply(
            200,
            invocation.payload,
            {
                "Content-Type": "application/json",
                "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": self.server.instance.pool.arn,
                "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
            },
        )

    def do_POST(self):
        body = self._body()
        instance = self.server.instance
        m = re.fullmatch(rf"{API}/invocation/([^/]+)/(response|error)", self.path)
        if m:
            instance.report(m.group(1), m.group(2) == "response", body)
            return self._reply(202, b'{"status":"OK"}')
        if self.path == f"{API}/init/error":
            instance.init_failed(body)
            return self._reply(202, b'{"status":"OK"}')
        self._reply(404, b'{"errorMessage":"not found"}')


class Instance:
    """One execution environment: a process and the Runtime API it polls."""

    def __init__(self, pool: "FunctionPool"):
        self.id = next(_ids)
        self.pool = pool
        self.lock = threading.Condition()
        self.waiting: list[Invocation] = []
        self.current: Invocation | None = None
        self.ready = threading.Event()  # the init phase ended: the first /next arrived
        self.ready_at: float | None = None  # when it did
        self.dead = False
        self.init_error: str | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _RuntimeApi)
        self.server.daemon_threads = True
        self.server.instance = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        env = pool.environment(self)
        env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{self.server.server_address[1]}"
        self.started = time.monotonic()
        # Known as the pool's before it runs: its first request (the init's warm-up read) can
        # reach the proxy before the pool's own bookkeeping after this constructor.
        pool.started.add(self.id)
        self.process = subprocess.Popen(
            [str(pool.binary)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        pool.log(self, f"INIT_START instance {self.id} pid {self.process.pid}")
        threading.Thread(target=self._pipe_logs, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _pipe_logs(self) -> None:
        for line in self.process.stdout:
            self.pool.log(self, line.decode("utf-8", "replace").rstrip("\n"))

    def _watch(self) -> None:
        code = self.process.wait()
        with self.lock:
            self.dead = True
            current, self.current = self.current, None
            self.lock.notify_all()
        self.ready.set()
        reason = f"Runtime exited with error: {_exit_reason(code)}"
        self.pool.log(self, f"instance {self.id} ended: {_exit_reason(code)}")
        if current:
            current.finish(Outcome(False, error_type="Runtime.ExitError", error_message=reason))
        self.pool.forget(self)
        self.server.shutdown()

    def next_invocation(self) -> Invocation | None:
        if self.ready_at is None:
            self.ready_at = time.monotonic()
        self.ready.set()
        with self.lock:
            while not self.waiting and not self.dead:
                self.lock.wait(0.5)
            if self.dead:
                return None
            self.current = self.waiting.pop(0)
            return self.current

    def invoke(self, invocation: Invocation) -> None:
        with self.lock:
            self.waiting.append(invocation)
            self.lock.notify_all()

    def report(self, request_id: str, ok: bool, body: bytes) -> None:
        with self.lock:
            current = self.current
            if current is None or current.request_id != request_id:
                return
            self.current = None
            if self.ready_at is not None and self.id not in self.pool.first_invocations:
                self.pool.first_invocations[self.id] = (self.ready_at, time.monotonic(), current.payload)
        if ok:
            current.finish(Outcome(True, body=body))
        else:
            try:
                error = json.loads(body)
            except ValueError:
                error = {}
            current.finish(
                Outcome(
                    False,
                    body=body,
                    error_type=str(error.get("errorType", "Unhandled")),
                    error_message=str(error.get("errorMessage", body[:500])),
                )
            )

    def init_failed(self, body: bytes) -> None:
        self.init_error = body.decode("utf-8", "replace")
        self.pool.log(self, f"INIT_ERROR {self.init_error}")
        self.kill()

    def kill(self) -> None:
        try:
            self.process.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        return not self.dead and self.process.poll() is None


class FunctionPool:
    """The instances of one function, and invocations handed to them."""

    def __init__(
        self,
        logical: str,
        binary: Path,
        timeout: int,
        memory: int,
        concurrency: int,
        environment: Callable[[Instance], dict[str, str]],
        log_dir: Path,
        crash_fraction: float = 0.0,
        rng: random.Random | None = None,
    ):
        self.logical = logical
        self.binary = binary
        self.name = f"loyalty-{logical}"
        self.arn = f"arn:aws:lambda:us-east-1:123456789012:function:{self.name}"
        self.timeout = timeout
        self.memory = memory
        self.concurrency = concurrency
        self._environment = environment
        self.crash_fraction = crash_fraction
        self.rng = rng or random.Random()
        self.lock = threading.Condition()
        self.idle: list[Instance] = []
        self.instances: dict[int, Instance] = {}
        # Every instance this pool started, stopped ones too: a stopping process may still be
        # talking to AWS, and its requests belong to this function.
        self.started: set[int] = set()
        # Each instance's first invocation: its first /next, its answer, and its payload.
        self.first_invocations: dict[int, tuple[float, float, bytes]] = {}
        self.stopping = False
        self.stats = {"invocations": 0, "cold_starts": 0, "errors": 0, "crashes": 0, "timeouts": 0}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = open(log_dir / f"{binary.name}.log", "a", buffering=1, encoding="utf-8")
        self.log_lock = threading.Lock()

    def environment(self, instance: Instance) -> dict[str, str]:
        env = self._environment(instance)
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": self.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": f"local/[$LATEST]{instance.id:08d}",
                "AWS_LAMBDA_LOG_FORMAT": "JSON",
                "AWS_EXECUTION_ENV": "AWS_Lambda_provided.al2023",
                "LAMBDA_TASK_ROOT": str(self.binary.parent),
                "_HANDLER": "bootstrap",
            }
        )
        return env

    def log(self, instance: Instance, line: str) -> None:
        with self.log_lock:
            self.log_file.write(f"[{self.logical} #{instance.id}] {line}\n")

    def forget(self, instance: Instance) -> None:
        with self.lock:
            self.instances.pop(instance.id, None)
            if instance in self.idle:
                self.idle.remove(instance)
            self.lock.notify_all()

    def _acquire(self) -> tuple[Instance, bool]:
        with self.lock:
            while True:
                if self.stopping:
                    raise RuntimeError(f"{self.name} is stopping")
                while self.idle:
                    instance = self.idle.pop()
                    if instance.alive():
                        return instance, False
                if len(self.instances) < self.concurrency:
                    instance = Instance(self)
                    self.instances[instance.id] = instance
                    self.started.add(instance.id)
                    self.stats["cold_starts"] += 1
                    return instance, True
                self.lock.wait(0.5)

    def _release(self, instance: Instance) -> None:
        with self.lock:
            if instance.alive() and not self.stopping:
                self.idle.append(instance)
            self.lock.notify_all()

    def invoke(self, payload, timeout: float | None = None) -> Outcome:
        """A synchronous invocation (RequestResponse). `timeout` gives this invocation less time
        than the function's own (what a job sees when its schedule fires late in a run)."""
        timeout = min(timeout, self.timeout) if timeout else self.timeout
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        instance, cold = self._acquire()
        started = time.monotonic()
        if cold and not instance.ready.wait(INIT_TIMEOUT):
            instance.kill()
            self.stats["timeouts"] += 1
            return Outcome(False, error_type="Runtime.InitTimeout", error_message="init timed out", cold=True)
        if cold and not instance.alive():
            self.stats["errors"] += 1
            return Outcome(
                False,
                error_type="Runtime.InitError" if instance.init_error else "Runtime.ExitError",
                error_message=instance.init_error or "the process exited during init",
                cold=True,
            )
        invocation = Invocation(
            request_id=str(uuid.uuid4()),
            payload=body,
            deadline_ms=int((time.time() + timeout) * 1000),
        )
        self.stats["invocations"] += 1
        if self.crash_fraction and self.rng.random() < self.crash_fraction:
            self._crash_later(instance, invocation)
        instance.invoke(invocation)
        if not invocation.done.wait(timeout):
            self.log(instance, f"{invocation.request_id} Task timed out after {timeout} seconds")
            instance.kill()
            self.stats["timeouts"] += 1
            invocation.finish(Outcome(False, error_type="Sandbox.Timedout", error_message="Task timed out"))
        outcome = invocation.outcome
        outcome.cold = cold
        outcome.duration_ms = (time.monotonic() - started) * 1000
        self.log(
            instance,
            f"REPORT RequestId: {invocation.request_id} Duration: {outcome.duration_ms:.2f} ms"
            + (" (cold start)" if cold else "")
            + ("" if outcome.ok else f" Error: {outcome.error_type}"),
        )
        if not outcome.ok:
            self.stats["errors"] += 1
        self._release(instance)
        return outcome

    def _crash_later(self, instance: Instance, invocation: Invocation) -> None:
        """A crash at a random moment of the invocation (the fault `crash`)."""

        def crash():
            if not invocation.done.is_set():
                self.stats["crashes"] += 1
                self.log(instance, f"{invocation.request_id} fault: killed (crash)")
                instance.kill()

        threading.Timer(self.rng.uniform(0.0, 0.03), crash).start()

    def kill_instance(self, instance_id: int, why: str) -> bool:
        with self.lock:
            instance = self.instances.get(instance_id)
        if instance is None:
            return False
        self.stats["crashes"] += 1
        self.log(instance, f"fault: killed ({why})")
        instance.kill()
        return True

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            instances = list(self.instances.values())
            self.lock.notify_all()
        for instance in instances:
            instance.kill()
        for instance in instances:
            try:
                instance.process.wait(5)
            except subprocess.TimeoutExpired:
                pass


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"signal: {signal.Signals(-code).name.lower().removeprefix('sig')}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"
