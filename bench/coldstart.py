"""Cold starts: each function's release bootstrap, and the probes doing one DynamoDB GetItem
per invocation (bench/probe in Rust with the functions' SDK versions and features, on the SDK's
default HTTPS client and, given --probe-ring, on the functions' own (rustls on ring); Node.js 20
with AWS SDK v3; Python with boto3), each started as Lambda starts an instance: a fresh process
behind the local Lambda Runtime API of scripts/awslocal/runtime.py, talking to moto through the
same proxy as the functions (scripts/awslocal, in this process).

For each function, SAMPLES times: every instance of it is killed, then it is invoked once with
work of its own (a new order, a new idempotency key: never a repeat), so the process is new and
its first invocation does real work. Measured on the runtime API's side:
  init   process start (just before exec) -> its first GET /invocation/next
  first  that GET -> the POST of the first invocation's response
  total  process start -> the first response
The samples are taken in rounds, one of each function and probe per round, so that every row
meets moto's table as it grows over the run alike (moto answers one request at a time, and its
answers slow as the table fills); --no-interleave takes each row's samples one after another.
In three modes: plain HTTP to the local endpoint; HTTPS through a local TLS-terminating proxy
with a certificate signed by a local CA that each runtime is told to trust (SSL_CERT_FILE for
the Rust SDK's default client, rustls with rustls-native-certs, which reads SSL_CERT_FILE instead
of the system store when it is set; AWS_CA_BUNDLE for boto3; NODE_EXTRA_CA_CERTS for Node.js,
added to its built-in roots), the bundle given to Rust and Python being the system's CA bundle
plus the local CA, so that loading the roots costs what it costs on Lambda; and the same HTTPS
with only the local CA in SSL_CERT_FILE / AWS_CA_BUNDLE (the share of loading ~150 roots).

What each function's first invocation is:
  webhook-ingest  POST /webhooks/shopify/kr-shop, a new order of a new customer (through the
                  function URL front): the customer's and the email's links made
  webhook-ingest-known  the same function, a new order of a customer known since the set-up
                  (most orders): the links read, the order's written (a row of its own)
  earn            that order's message from the earn queue, as an SQS event of 1 record
  outbox-relay    the stream records of earn's commit (the stream event-source mapping)
  tier-recalc     the tier.check from the tier queue, as an SQS event of 1 record
  member-api      GET /v1/programs/kr-shop/me
  redeem          POST /v1/programs/kr-shop/me/redemptions with a new Idempotency-Key
  campaign-assign its schedule's input, {"job": "campaign-tick"}: a whole tick over every member
                  the earlier samples made (a batch job, started by a schedule)
  campaign-assign-api  the same function's member route, GET /v1/programs/kr-shop/me/campaigns,
                  what the app waits for (a row of its own, on the same binary)
  probes          {} -> one GetItem of the member's account item

Usage: .venv/bin/python bench/coldstart.py [--samples 15] [--bin-dir /tmp/bench-bin]
       [--probe target/bench-probe/release/probe]
       [--probe-ring target/bench-probe-ring/release/probe] [--json FILE] [--modes plain,tls,tls-ca-only]
       [--only NAME,...] [--no-interleave]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import ipaddress
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

from awslocal import runtime as runtime_module  # noqa: E402
from awslocal import stack as stack_module  # noqa: E402
from awslocal.runtime import FunctionPool, Instance  # noqa: E402
from awslocal.sources import SqsEventSource  # noqa: E402

import units  # noqa: E402  (webhook payloads, the driver)

PROGRAM = "kr-shop"
FUNCTIONS = ["webhook-ingest", "webhook-ingest-known", "earn", "outbox-relay", "tier-recalc", "member-api", "redeem",
             "campaign-assign", "campaign-assign-api"]
# Rows measured on another row's binary: a second kind of first invocation of the same function.
SAME_BINARY = {"campaign-assign-api": "campaign-assign", "webhook-ingest-known": "webhook-ingest"}
# The customer of the webhook-ingest-known row: known since the bench's set-up.
KNOWN_CUSTOMER = 8_200_000_002
PROBES = ["probe-rust", "probe-rust-ring", "probe-node", "probe-python"]

# -- timing hooks on the runtime ------------------------------------------------------------------

TIMES: dict[int, dict] = {}  # instance id -> {"start", "ready", "response"}
_popen = subprocess.Popen
ARGV: dict[str, list[str]] = {}  # a probe's pseudo binary path -> the command that runs it


def _popen_probe(args, *a, **kw):
    if isinstance(args, list) and args and args[0] in ARGV:
        args = ARGV[args[0]] + args[1:]
        env = dict(kw.get("env") or {})
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        env.setdefault("HOME", os.environ.get("HOME", "/tmp"))
        kw["env"] = env
    return _popen(args, *a, **kw)


runtime_module.subprocess.Popen = _popen_probe  # the runtime's own module reference
_orig_init = Instance.__init__
_orig_next = Instance.next_invocation
_orig_report = Instance.report


def _init(self, pool):
    _orig_init(self, pool)
    self.server.handle_error = lambda *args: None  # a killed instance's last /next: expected
    TIMES.setdefault(self.id, {}).update(start=self.started, pool=pool.name)


def _next(self):
    TIMES.setdefault(self.id, {}).setdefault("ready", time.monotonic())
    return _orig_next(self)


def _report(self, request_id, ok, body):
    TIMES.setdefault(self.id, {}).setdefault("response", time.monotonic())
    TIMES[self.id].setdefault("ok", ok)
    if not ok:
        TIMES[self.id].setdefault("error", body[:300])
    return _orig_report(self, request_id, ok, body)


OUTCOMES: dict[str, list] = defaultdict(list)  # pool name -> outcomes, in order
_orig_invoke = FunctionPool.invoke


def _invoke(self, payload, timeout=None):
    outcome = _orig_invoke(self, payload, timeout)
    OUTCOMES[self.name].append(outcome)
    return outcome


FunctionPool.invoke = _invoke
Instance.__init__ = _init
Instance.next_invocation = _next
Instance.report = _report

# -- TLS in front of the proxy ---------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path, Path, Path]:
    """A local CA and a server certificate it signs for localhost and 127.0.0.1 (webpki, which
    rustls uses, refuses a CA certificate as a server's own); the CA alone, and a bundle of the
    system's CAs plus it. Returns (server cert chain, server key, CA, bundle)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loyalty bench local CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    (directory / "server.pem").write_bytes(pem(leaf) + pem(ca))
    (directory / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "ca.pem").write_bytes(pem(ca))
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    (directory / "bundle.pem").write_bytes((system.read_bytes() if system.exists() else b"") + b"\n" + pem(ca))
    return directory / "server.pem", directory / "server.key", directory / "ca.pem", directory / "bundle.pem"


class TlsFront:
    """HTTPS on a loopback port, forwarded as plain HTTP to the proxy (paths kept)."""

    def __init__(self, upstream_port: int, cert: Path, key: Path):
        upstream = upstream_port
        # Connections and requests by instance (the path's `/i/{id}`): a rise in an instance's
        # connections between two of its invocations is a TLS handshake it paid.
        self.counts: dict[str, dict[str, int]] = {}
        # When each instance's connections were accepted (their handshake done), known at their
        # first request.
        self.opened: dict[str, list[float]] = {}
        counts, opened, lock = self.counts, self.opened, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes: without TCP_NODELAY, Nagle's algorithm and
            # the client's delayed ACK hold the second one for 40 ms.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # The handshake is done when the connection is accepted; a connection may
                # carry its first request much later (the client's pool opened it ahead).
                self.accepted_at = time.monotonic()

            def do_POST(self):
                parts = self.path.split("/")
                instance = parts[2] if len(parts) > 2 and parts[1] == "i" else "?"
                with lock:
                    mine = counts.setdefault(instance, {"connections": 0, "requests": 0})
                    mine["requests"] += 1
                    if not getattr(self, "counted", False):
                        self.counted = True
                        mine["connections"] += 1
                        opened.setdefault(instance, []).append(self.accepted_at)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                c = http.client.HTTPConnection("127.0.0.1", upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                    c.request(self.command, self.path, body=body, headers=headers)
                    r = c.getresponse()
                    answer = r.read()
                    self.send_response(r.status)
                    for k, v in r.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                finally:
                    c.close()

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.handle_error = lambda *a: None
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# -- the bench -------------------------------------------------------------------------------------


class Bench:
    def __init__(self, stack, driver: units.Driver, probe_binary: Path, ring_binary: Path | None, cert_dir: Path):
        self.stack = stack
        self.d = driver
        self.by_binary = {p.binary.name: p for p in stack.pools.values()}
        self.tls: TlsFront | None = None
        self.tls_host = "127.0.0.1"
        self.bundle: Path | None = None
        self.cert: Path | None = None
        self.counter = 0
        self.now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        # Every SQS event-source mapping is paused: earn and tier-recalc are invoked here.
        for s in stack.sources:
            if isinstance(s, SqsEventSource):
                s.stop()
        time.sleep(1.0)
        self.queue = {logical: url for logical, url in stack.queue_urls.items()}
        self.source_of = {s.pool.binary.name: s for s in stack.sources if isinstance(s, SqsEventSource)}
        # A member with points to read and redeem: the probes read its account item.
        self.member = "shopify:8200000001"
        driver.shopify("orders/paid", units.shopify_order(8200000001, 7_900_001, self.now - dt.timedelta(minutes=30), [(1, 1, 10000)]))
        driver.shopify("orders/paid", units.shopify_order(KNOWN_CUSTOMER, 7_900_002, self.now - dt.timedelta(minutes=30), [(1, 1, 10000)]))
        self._drain("earn")
        self._drain("tier-recalc")
        status, answer = driver.http("POST", f"/v1/programs/{PROGRAM}/members/{self.member}/adjustments",
                                     json.dumps({"points": 1_000_000, "reason": "bench"}).encode(),
                                     {"Authorization": f"Bearer {driver.admin()}", "Content-Type": "application/json"})
        assert status < 300, (status, answer)
        self._probe_pools(probe_binary, ring_binary)

    def _probe_pools(self, probe_binary: Path, ring_binary: Path | None) -> None:
        node = shutil.which("node") or "node"
        python = str(ROOT / ".venv" / "bin" / "python")
        ARGV["/bench/probe-node"] = [node, str(ROOT / "bench" / "node" / "probe.mjs")]
        ARGV["/bench/probe-python"] = [python, str(ROOT / "bench" / "python" / "probe.py")]
        binaries = {"probe-rust": probe_binary, "probe-node": Path("/bench/probe-node"), "probe-python": Path("/bench/probe-python")}
        if ring_binary:
            # The same probe on the functions' own HTTPS client (rustls on ring), in the same run.
            binaries["probe-rust-ring"] = ring_binary
        variables = {"PROBE_TABLE": self.stack.table_name, "PROBE_PK": f"P#{PROGRAM}#M#{self.member}", "PROBE_SK": "ACCOUNT"}
        for name, binary in binaries.items():
            pool = FunctionPool(
                logical=name, binary=binary, timeout=30, memory=256, concurrency=1,
                environment=self.stack._environment(variables, 0.0), log_dir=self.stack.work / "logs",
            )
            self.by_binary[name] = pool

    def _environment_hook(self, pool: FunctionPool):
        """The environment of an instance, with the TLS endpoint and trust when TLS is on."""
        original = pool._environment
        bench = self

        def environment(instance):
            env = original(instance)
            if bench.tls:
                env["AWS_ENDPOINT_URL"] = f"https://{bench.tls_host}:{bench.tls.port}/i/{instance.id}"
                env["SSL_CERT_FILE"] = str(bench.bundle)
                env["AWS_CA_BUNDLE"] = str(bench.bundle)
                env["NODE_EXTRA_CA_CERTS"] = str(bench.cert)
            return env

        pool._environment = environment

    def enable_tls(self, chain: Path, key: Path, ca: Path, bundle: Path) -> None:
        self.tls = TlsFront(self.stack.proxy.port, chain, key)
        self.cert, self.bundle = ca, bundle

    def _settle(self, timeout: float = 30) -> None:
        """Until the stream mapping has nothing pending and no instance of any pool is busy
        (earn's commits reach outbox-relay through the stream, in the background)."""
        streams = [s for s in self.stack.sources if not isinstance(s, SqsEventSource)]
        deadline = time.monotonic() + timeout
        quiet_since = None
        while time.monotonic() < deadline:
            busy = any(s.stats.get("pending", 0) for s in streams)
            for pool in self.by_binary.values():
                with pool.lock:
                    busy = busy or len(pool.idle) != len(pool.instances)
            now = time.monotonic()
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since > 1.2:  # the stream mapping's batching window is 1 s
                return
            time.sleep(0.02)

    def _kill_all(self, pool: FunctionPool) -> None:
        self._settle()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with pool.lock:
                instances = list(pool.instances.values())
            if not instances:
                return
            for instance in instances:
                instance.kill()
            time.sleep(0.05)
        raise RuntimeError(f"{pool.name}: instances did not stop")

    def _messages(self, function: str, want: int = 1, timeout: float = 20) -> list[dict]:
        source = self.source_of[function]
        deadline = time.monotonic() + timeout
        got: list[dict] = []
        while time.monotonic() < deadline and len(got) < want:
            answer = self.stack.sqs.receive_message(QueueUrl=source.queue_url, MaxNumberOfMessages=min(10, want - len(got)), WaitTimeSeconds=0,
                                                    AttributeNames=["All"], MessageAttributeNames=["All"])
            got.extend(answer.get("Messages", []))
            if len(got) < want:
                time.sleep(0.05)
        return got

    def _invoke_messages(self, function: str, messages: list[dict]):
        source = self.source_of[function]
        outcome = self.by_binary[function].invoke({"Records": [source._record(m) for m in messages]})
        for m in messages:
            self.stack.sqs.delete_message(QueueUrl=source.queue_url, ReceiptHandle=m["ReceiptHandle"])
        return outcome

    def _drain(self, function: str) -> None:
        messages = self._messages(function, 1, timeout=10)
        if messages:
            self._invoke_messages(function, messages)

    def _purge(self, function: str) -> None:
        """Deletes what waits in the queue of `function` (its mapping is paused)."""
        url = self.source_of[function].queue_url
        while True:
            got = self.stack.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
            if not got:
                return
            for m in got:
                self.stack.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    def trigger(self, function: str) -> None:
        """One invocation of `function` with work of its own (new ids every time)."""
        self.counter += 1
        n = self.counter
        d = self.d
        # A new customer and order per trigger; each row's orders in a range of its own.
        order_id = lambda base: 7_400_000_000 + base // 1_000_000 * 10_000 + n  # noqa: E731
        order = lambda base: units.shopify_order(base + n, order_id(base), self.now - dt.timedelta(minutes=20), [(1, 1, 20000)])  # noqa: E731
        if function == "webhook-ingest":
            d.shopify("orders/paid", order(8_300_000_000))
        elif function == "webhook-ingest-known":
            d.shopify("orders/paid", units.shopify_order(KNOWN_CUSTOMER, order_id(8_350_000_000), self.now - dt.timedelta(minutes=20), [(1, 1, 20000)]))
        elif function == "earn":
            self._purge("earn")
            d.shopify("orders/paid", order(8_400_000_000))
            self._invoke_messages("earn", self._messages("earn"))
        elif function == "outbox-relay":
            self._purge("earn")
            d.shopify("orders/paid", order(8_500_000_000))
            self._invoke_messages("earn", self._messages("earn"))  # its commit's outbox items reach the relay by the stream
        elif function == "tier-recalc":
            self._purge("earn")
            self._purge("tier-recalc")
            # 400,000 KRW takes a new member past SILVER's threshold: the one purchase that
            # sends a tier.check (others send none since the checks became conditional).
            d.shopify("orders/paid", units.shopify_order(8_600_000_000 + n, order_id(8_600_000_000),
                                                         self.now - dt.timedelta(minutes=20), [(1, 1, 400_000)]))
            self._invoke_messages("earn", self._messages("earn"))
            checks = self._messages("tier-recalc")
            if not checks:
                raise RuntimeError("tier-recalc: no tier.check to invoke it with")
            self._invoke_messages("tier-recalc", checks)
        elif function == "member-api":
            d.http("GET", f"/v1/programs/{PROGRAM}/me", None, {"Authorization": f"Bearer {d.member_token(self.member)}"})
        elif function == "redeem":
            status, answer = d.http("POST", f"/v1/programs/{PROGRAM}/me/redemptions", json.dumps({"reward": "coupon-5000"}).encode(),
                                    {"Authorization": f"Bearer {d.member_token(self.member)}", "Content-Type": "application/json",
                                     "Idempotency-Key": f"cold-{time.time_ns()}"})
            if status >= 300:
                raise RuntimeError(f"redeem: {status} {answer}")
        elif function == "campaign-assign":
            self.by_binary[function].invoke({"job": "campaign-tick"})
        elif function == "campaign-assign-api":
            status, answer = d.http("GET", f"/v1/programs/{PROGRAM}/me/campaigns", None,
                                    {"Authorization": f"Bearer {d.member_token(self.member)}"})
            if status >= 300:
                raise RuntimeError(f"campaign-assign-api: {status} {answer}")
        else:  # the probes
            self.by_binary[function].invoke({})

    def _outcome(self, pool: FunctionPool, index: int):
        deadline = time.monotonic() + 30
        while len(OUTCOMES[pool.name]) <= index:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pool.name}: no invocation")
            time.sleep(0.01)
        return OUTCOMES[pool.name][index]

    def one(self, function: str) -> dict:
        """Kills every instance of `function`, runs its first invocation (cold) and then the
        same kind of work again on the same instance (warm); returns the times."""
        pool = self.pool_of(function)
        self._kill_all(pool)
        before = set(TIMES)
        k = len(OUTCOMES[pool.name])
        self.trigger(function)
        cold = self._outcome(pool, k)
        new = [i for i in TIMES if i not in before and TIMES[i].get("pool") == pool.name]
        if not cold.ok or not new:
            raise RuntimeError(f"{function}: first invocation failed: {cold.error_type} {cold.error_message} {TIMES.get(new[0] if new else -1)}")
        t = TIMES[new[0]]
        self._settle()
        between = self._seen_by(pool)
        self.trigger(function)
        warm = self._outcome(pool, k + 1)
        if not warm.ok or warm.cold:
            raise RuntimeError(f"{function}: second invocation was not a warm success: {warm}")
        sample = {"init": (t["ready"] - t["start"]) * 1000, "first": (t["response"] - t["ready"]) * 1000,
                  "total": (t["response"] - t["start"]) * 1000, "warm": warm.duration_ms}
        if self.tls:
            # Connections opened before the first /next (init) and during the first invocation:
            # every one of the latter is a TLS handshake the first invocation waited for.
            opened = self.tls.opened.get(str(new[0]), [])
            sample["init_connections"] = sum(1 for at in opened if at <= t["ready"])
            sample["first_connections"] = sum(1 for at in opened if t["ready"] < at <= t["response"])
            after = self._seen_by(pool)
            sample["warm_connections"] = after["connections"] - between["connections"]
            sample["warm_requests"] = after["requests"] - between["requests"]
        return sample

    def pool_of(self, function: str) -> FunctionPool:
        """The instances that answer `function`'s row."""
        return self.by_binary[SAME_BINARY.get(function, function)]

    def _seen_by(self, pool: FunctionPool) -> dict[str, int]:
        """The TLS connections and requests of `pool`'s instances so far."""
        seen = {"connections": 0, "requests": 0}
        for instance, counts in (self.tls.counts.items() if self.tls else []):
            if instance.isdigit() and int(instance) in pool.started:
                for k in seen:
                    seen[k] += counts[k]
        return seen


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def sample_rounds(bench: "Bench", names: list[str], samples: int, interleave: bool) -> dict[str, list[dict]]:
    """`samples` cold starts of each name: in rounds of one each, or each name's in a row."""
    by_name: dict[str, list[dict]] = {name: [] for name in names}
    order = [name for _ in range(samples) for name in names] if interleave else \
        [name for name in names for _ in range(samples)]
    for done, name in enumerate(order, 1):
        by_name[name].append(bench.one(name))
        if interleave and done % len(names) == 0:
            print(f"  round {done // len(names)} of {samples}", file=sys.stderr, flush=True)
    return by_name


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=15)
    p.add_argument("--bin-dir", type=Path, default=Path("/tmp/bench-bin"))
    p.add_argument("--probe", type=Path, default=ROOT / "target" / "bench-probe" / "release" / "probe")
    p.add_argument("--probe-ring", type=Path, default=ROOT / "target" / "bench-probe-ring" / "release" / "probe",
                   help="the probe built with --features ring, run beside the other in the same run (skipped when absent)")
    p.add_argument("--json", type=Path, default=ROOT / "target" / "bench" / "coldstart.json")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-coldstart"))
    p.add_argument("--tls-host", default="127.0.0.1", help="host of the HTTPS endpoint (the certificate names localhost and 127.0.0.1)")
    p.add_argument("--latency-ms", type=int, default=0,
                   help="hold every AWS request this long before it reaches moto (a network and service round trip: "
                        "moto answers in its own time, one request after another, where DynamoDB answers in parallel)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=True,
                   help="take the samples in rounds of one per function or probe (default), so that every row "
                        "meets moto's table as it grows over the run alike; --no-interleave: each row's samples "
                        "one after another, a later row on a fuller table")
    p.add_argument("--only", default="", help="comma-separated functions/probes to run (default: all)")
    p.add_argument("--modes", default="plain,tls,tls-ca-only",
                   help="plain: HTTP; tls: HTTPS, Rust and Python trusting the system bundle plus the local CA; "
                        "tls-ca-only: HTTPS, trusting only the local CA (what loading the system's roots costs)")
    args = p.parse_args(argv)
    if not args.probe.exists():
        print(f"{args.probe} is missing: cd bench/probe && CARGO_TARGET_DIR=target/bench-probe nice -n 19 cargo build --release", file=sys.stderr)
        return 2
    if not (ROOT / "bench" / "node" / "node_modules" / "@aws-sdk" / "client-dynamodb").exists():
        print("bench/node/node_modules is missing: (cd bench/node && npm ci)", file=sys.stderr)
        return 2

    os.environ["LOYALTY_SECRET_KR_SHOP_SHOPIFY"] = units.SHOPIFY_SECRET
    os.environ["LOYALTY_JWT_SECRET"] = units.JWT_SECRET
    # The plain fault proxy (no unit counting: its own GetItems would slow the writes).
    stack_module.FaultProxy = units.FaultProxy
    stack = stack_module.Stack(stack_module.Options(
        root=ROOT, bin_dir=args.bin_dir, api_port=0, schedules_every=0, visibility_timeout=30,
        concurrency=1, pollers=1, jwt_secret=units.JWT_SECRET, work_dir=args.work_dir,
        faults=f"*.*:delay=1@{args.latency_ms}" if args.latency_ms else ""))
    stack.start()
    results: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "samples": args.samples, "modes": {}}
    try:
        driver = units.Driver(stack)
        ring = args.probe_ring if args.probe_ring.exists() else None
        if ring is None:
            print(f"{args.probe_ring} is missing: the probe on ring is not run", file=sys.stderr)
        bench = Bench(stack, driver, args.probe, ring, args.work_dir / "tls")
        bench.tls_host = args.tls_host
        for pool in bench.by_binary.values():
            bench._environment_hook(pool)
        names = [n for n in FUNCTIONS + PROBES if SAME_BINARY.get(n, n) in bench.by_binary]
        if args.only:
            names = [n for n in names if n in args.only.split(",")]
        for mode in args.modes.split(","):
            if mode.startswith("tls"):
                chain, key, ca, bundle = make_certificate(args.work_dir / "tls")
                bench.enable_tls(chain, key, ca, ca if mode == "tls-ca-only" else bundle)
            results["modes"][mode] = {}
            by_name = sample_rounds(bench, names, args.samples, args.interleave)
            for name in names:
                samples = by_name[name]
                row = {k: stats([s[k] for s in samples]) for k in ("init", "first", "total", "warm")}
                for k in ("init_connections", "first_connections", "warm_connections", "warm_requests"):
                    if k in samples[0]:
                        row[k] = stats([s[k] for s in samples])
                row["samples"] = samples
                results["modes"][mode][name] = row
                print(f"{mode:5} {name:16} total median {row['total']['median']:7.1f} ms (min {row['total']['min']:6.1f}, max {row['total']['max']:7.1f}); "
                      f"init {row['init']['median']:6.1f}, first invocation {row['first']['median']:6.1f}, warm {row['warm']['median']:6.1f}"
                      + (f"; TLS connections opened: init {row['init_connections']['median']:.0f}, first invocation "
                         f"{row['first_connections']['median']:.0f} (max {row['first_connections']['max']:.0f}), "
                         f"warm {row['warm_connections']['median']:.0f} for {row['warm_requests']['median']:.0f} requests"
                         if "warm_connections" in row else ""), flush=True)
    finally:
        for pool in bench.by_binary.values() if "bench" in locals() else []:
            if pool.name.startswith("loyalty-probe"):
                pool.stop()
        stack.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")
    report(results)
    return 0


def report(results: dict) -> None:
    for mode, rows in results["modes"].items():
        rust = rows.get("probe-rust", {}).get("total", {}).get("median")
        ring = rows.get("probe-rust-ring", {}).get("total", {}).get("median")
        node = rows.get("probe-node", {}).get("total", {}).get("median")
        print(f"\n{mode}: median of {results['samples']} (min-max), ms")
        print("| function | process start -> first response | init | first invocation | same work warm | cold extra (total - warm) | vs Rust probe | vs Rust probe on ring | Node.js probe / this |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            t = row["total"]
            ratio = f"{t['median'] / rust:.2f}x" if rust else "-"
            ring_ratio = f"{t['median'] / ring:.2f}x" if ring else "-"
            node_ratio = f"{node / t['median']:.1f}x" if node else "-"
            extra = t["median"] - row["warm"]["median"]
            print(f"| {name} | {t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) | {row['init']['median']:.1f} | {row['first']['median']:.1f} | "
                  f"{row['warm']['median']:.1f} | {extra:.1f} | {ratio} | {ring_ratio} | {node_ratio} |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
