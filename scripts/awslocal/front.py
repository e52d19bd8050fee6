"""The HTTP API as API Gateway serves it: routes of the template's HttpApi (method and path to a
function), payload format 2.0 events, and the JWT authorizer in front of every route that has it.

Locally the authorizer verifies the development tokens of `loyalty token` (HS256 with
`LOYALTY_JWT_SECRET`), where the deployed one verifies the user pool's RS256 tokens; what it
refuses and what it passes on are API Gateway's: 401 `{"message":"Unauthorized"}` without a valid
token, 403 `{"message":"Forbidden"}` without a required scope, and the claims as strings in
`requestContext.authorizer.jwt`.

A function URL is served the same way on a port of its own, as Lambda serves one on a host of
its own: every method and path goes to its function (the event's `routeKey` is `$default`, with
no path parameters), nothing is authorised on the way (AuthType NONE), a body may be at most
6 MB, and a failed invocation answers 502.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

from .runtime import FunctionPool
from .template import Route

MAX_PAYLOAD = 10 * 1024 * 1024  # API Gateway's limit on a request body
MAX_URL_PAYLOAD = 6 * 1024 * 1024  # Lambda's limit on a synchronous invocation's request
URL_ID = "local"  # the function URL's id: its host is {id}.lambda-url.{region}.on.aws


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_hs256(secret: str, claims: dict) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(mac)}"


def verify_hs256(secret: str, token: str, now: float) -> dict | None:
    """The token's claims, or None when the signature, algorithm or times do not hold."""
    try:
        header_text, payload_text, signature = token.split(".")
        header = json.loads(b64url_decode(header_text))
        claims = json.loads(b64url_decode(payload_text))
    except ValueError:
        return None
    if header.get("alg") != "HS256" or not isinstance(claims, dict):
        return None
    expected = hmac.new(secret.encode(), f"{header_text}.{payload_text}".encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(expected, b64url_decode(signature)):
            return None
    except ValueError:
        return None
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, (int, float)) or exp <= now:
        return None
    if isinstance(nbf, (int, float)) and nbf > now:
        return None
    return claims


def claim_strings(claims: dict) -> dict[str, str]:
    """API Gateway hands every claim to the function as a string."""
    out = {}
    for k, v in claims.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, list):
            out[k] = "[" + " ".join(str(x) for x in v) + "]"
        else:
            out[k] = json.dumps(v)
    return out


class HttpFront:
    def __init__(
        self,
        routes: list[Route],
        pools: dict[str, FunctionPool],
        jwt_secret: str,
        port: int,
        url_function: str | None = None,
    ):
        """`url_function`: serve that function's URL instead of the routes."""
        self.routes = routes
        self.pools = pools
        self.jwt_secret = jwt_secret
        self.url_function = url_function
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, each response on a kept-alive
            # connection waits for the delayed ACK (about 40 ms).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def handle_one(self):
                front.handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        if length > (MAX_URL_PAYLOAD if self.url_function else MAX_PAYLOAD):
            return _reply(h, 413, {"message": "Request Entity Too Large"})
        body = h.rfile.read(length) if length else b""
        url = urlsplit(h.path)
        if self.url_function:
            route, params = Route(h.command, "$default", self.url_function, None, []), {}
        else:
            route, params = self._route(h.command, url.path)
        if route is None:
            return _reply(h, 404, {"message": "Not Found"})
        authorizer = None
        if route.authorizer:
            authorizer, refusal = self._authorize(h, route)
            if refusal:
                return refusal
        event = self._event(h, route, params, url, body, authorizer)
        outcome = self.pools[route.function].invoke(event)
        failed = 502 if self.url_function else 500
        if not outcome.ok:
            if outcome.error_type == "Sandbox.Timedout" and not self.url_function:
                return _reply(h, 503, {"message": "Service Unavailable"})
            return _reply(h, failed, {"message": "Internal Server Error"})
        try:
            response = outcome.json()
            status = int(response["statusCode"])
        except (ValueError, KeyError, TypeError):
            return _reply(h, failed, {"message": "Internal Server Error"})
        payload = response.get("body") or ""
        data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
        h.send_response(status)
        headers = dict(response.get("headers") or {})
        for k, values in (response.get("multiValueHeaders") or {}).items():
            headers[k] = ", ".join(values)
        for k, v in headers.items():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                h.send_header(k, v)
        for cookie in response.get("cookies") or []:
            h.send_header("Set-Cookie", cookie)
        request_header = "x-amzn-requestid" if self.url_function else "apigw-requestid"
        h.send_header(request_header, event["requestContext"]["requestId"])
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _route(self, method: str, path: str):
        # API Gateway's precedence: a route of the method before ANY, greedy paths last.
        ranked = sorted(self.routes, key=lambda r: (r.greedy, r.method == "ANY"))
        for route in ranked:
            params = route.match(method, path)
            if params is not None:
                return route, params
        return None, None

    def _authorize(self, h: BaseHTTPRequestHandler, route: Route):
        value = h.headers.get("Authorization", "")
        token = value[7:].strip() if value[:7].lower() == "bearer " else value.strip()
        claims = verify_hs256(self.jwt_secret, token, time.time()) if token else None
        if claims is None:
            return None, _reply(
                h, 401, {"message": "Unauthorized"}, {"www-authenticate": 'Bearer error="invalid_token"'}
            )
        scopes = str(claims.get("scope", "")).split()
        if route.scopes and not set(route.scopes) & set(scopes):
            return None, _reply(h, 403, {"message": "Forbidden"})
        return {"jwt": {"claims": claim_strings(claims), "scopes": scopes or None}}, None

    def _event(self, h, route: Route, params, url, body: bytes, authorizer) -> dict:
        headers, cookies = {}, []
        for k, v in h.headers.items():
            k = k.lower()
            if k == "cookie":
                cookies.extend(c.strip() for c in v.split(";") if c.strip())
                continue
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        query: dict[str, str] = {}
        for k, v in parse_qsl(url.query, keep_blank_values=True):
            query[k] = f"{query[k]},{v}" if k in query else v
        now = datetime.now(timezone.utc)
        request_id = uuid.uuid4().hex[:16]
        try:
            text, encoded = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(body).decode(), True
        route_key = "$default" if self.url_function else route.key
        context = {
            "accountId": "123456789012",
            "apiId": URL_ID if self.url_function else "local",
            "domainName": h.headers.get("Host", "127.0.0.1"),
            "domainPrefix": URL_ID if self.url_function else "local",
            "http": {
                "method": h.command,
                "path": unquote(url.path),
                "protocol": "HTTP/1.1",
                "sourceIp": h.client_address[0],
                "userAgent": h.headers.get("User-Agent", ""),
            },
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        }
        if authorizer:
            context["authorizer"] = authorizer
        event = {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": url.path,
            "rawQueryString": url.query,
            "headers": headers,
            "requestContext": context,
            "isBase64Encoded": encoded,
        }
        if cookies:
            event["cookies"] = cookies
        if query:
            event["queryStringParameters"] = query
        if params:
            event["pathParameters"] = {k: unquote(v) for k, v in params.items()}
        if body:
            event["body"] = text
        return event


def _reply(h: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
    data = json.dumps(payload).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
