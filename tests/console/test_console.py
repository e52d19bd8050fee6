"""The operator console in a real browser (Debian's Chromium, driven by Playwright) against
`loyalty serve` with seeded data: what support staff, marketers and finance do with it, and a
screenshot of every page at desktop and phone width (target/console/)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
LOYALTY = os.environ.get("LOYALTY_BIN", str(ROOT / "target" / "debug" / "loyalty"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "target" / "console"
SECRET = "console-test-secret"
SHOPIFY_SECRET = "console-shopify-secret"
ENV = {**os.environ, "LOYALTY_JWT_SECRET": SECRET, "LOYALTY_SECRET_KR_SHOP_SHOPIFY": SHOPIFY_SECRET}
# Chromium on a closed network: no background connections, no sandbox (root in CI).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
P = "/v1/programs/kr-shop"


class Server:
    def __init__(self, base: str, process: subprocess.Popen):
        self.base, self.process = base, process
        self.admin = token("--admin", "--operator", "seed")

    def call(self, method: str, path: str, body=None, auth: str | None = None, headers: dict | None = None, raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {auth or self.admin}")
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def eventually(self, check, what: str, timeout: float = 15):
        end = time.time() + timeout
        while time.time() < end:
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


def token(*args: str) -> str:
    return subprocess.run([LOYALTY, "token", *args], env=ENV, check=True, capture_output=True, text=True).stdout.strip()


def ago(days: int) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def purchase(n: int, member: str, days_ago: int, quantity: int) -> dict:
    return {"type": "purchase.completed", "version": 1, "id": f"ev-{n}", "program": "kr-shop", "member": member,
            "occurred_at": ago(days_ago),
            "data": {"order_id": str(n), "currency": "KRW", "channel": "online", "shipping": "3000", "tax": "0",
                     "lines": [{"line_id": "1", "sku": "TEE-01", "category": "apparel", "quantity": quantity,
                                "unit_price": "59000", "discount": "0"}]}}


def seed(server: Server) -> None:
    """Six members with purchases (some released, some pending), an operator's gift, a coupon, and
    a Shopify customer known by email."""
    for i in range(1, 7):
        assert server.call("POST", f"{P}/events", purchase(2000 + i, f"m-{i}", 3 + 2 * i, i))[0] == 202
    assert server.call("POST", f"{P}/members/m-1/adjustments", {"points": 12000, "reason": "launch gift"})[0] == 201
    points = lambda view: view.get("pending", 0) + view.get("balance", 0)  # noqa: E731 (no account: none)
    server.eventually(lambda: points(server.call("GET", f"{P}/members/m-6")[1]) > 0, "purchases applied")
    member = token("--member", "m-1")
    status, _ = server.call("POST", f"{P}/me/redemptions", {"reward": "coupon-5000"}, auth=member, headers={"Idempotency-Key": "seed-1"})
    assert status == 201
    body = (ROOT / "tests/fixtures/shopify/orders-paid.json").read_text().replace("__OCCURRED_AT__", ago(2)).encode()
    signature = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    status, answer = server.call("POST", "/webhooks/shopify/kr-shop", raw=body,
                                 headers={"X-Shopify-Topic": "orders/paid", "X-Shopify-Hmac-Sha256": signature, "Content-Type": "application/json"})
    assert status == 200, answer
    server.eventually(lambda: server.call("GET", f"{P}/members/email:minji@example.com")[1].get("pending") == 1000, "the Shopify order applied")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path_factory.mktemp("console") / "loyalty.db"
    process = subprocess.Popen([LOYALTY, "serve", "--db", str(db), "--addr", f"127.0.0.1:{port}"], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    running = Server(base, process)
    running.db = db
    seed(running)
    yield running
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=DESKTOP, locale="en-US")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)
    page.goto(server.base + "/console/")
    page.get_by_test_id("token").fill(server.admin)
    page.get_by_test_id("signin").click()
    expect(page.get_by_test_id("kpi-members")).to_be_visible()
    yield page
    context.close()
    # THEN no page threw or logged an error along the way
    assert errors == []


def value(page: Page, testid: str) -> str:
    return page.get_by_test_id(testid).get_attribute("data-value")


def test_support_finds_a_member_by_email_and_adjusts_with_a_reason(page: Page, server: Server):
    # GIVEN the Shopify customer known by the email minji@example.com
    status, view = server.call("GET", f"{P}/members/email:minji@example.com")
    assert status == 200
    # WHEN a support agent searches the email
    page.get_by_role("link", name="Members").click()
    page.get_by_test_id("member-search").fill("minji@example.com")
    page.get_by_test_id("member-find").click()
    # THEN the console shows the member the API names, with the balance and pending the API reports
    expect(page.get_by_test_id("member-id")).to_have_text(view["member"])
    assert int(value(page, "kpi-balance")) == view["balance"]
    assert int(value(page, "kpi-pending")) == view["pending"] == 1000
    # WHEN the agent adjusts by 1,500 points with a reason, confirming in the dialog
    page.get_by_test_id("action-adjust").click()
    page.get_by_test_id("field-points").fill("1500")
    page.get_by_test_id("field-reason").fill("goodwill: late delivery")
    page.get_by_test_id("confirm").click()
    # THEN the new ledger entry is on top with its reason, and the balance is the API's
    expect(page.get_by_test_id("notice")).to_be_visible()
    first = page.get_by_test_id("ledger-table").locator("tbody tr").first
    expect(first.locator(".reason")).to_have_text("goodwill: late delivery")
    assert first.locator("[data-value]").get_attribute("data-value") == "1500"
    after = server.call("GET", f"{P}/members/email:minji@example.com")[1]
    assert after["balance"] == view["balance"] + 1500
    assert int(value(page, "kpi-balance")) == after["balance"]
    # AND a confirmation without a reason sends nothing: the dialog refuses to close
    page.get_by_test_id("action-adjust").click()
    page.get_by_test_id("field-points").fill("100")
    page.get_by_test_id("confirm").click()
    expect(page.get_by_test_id("dialog")).to_be_visible()
    page.keyboard.press("Escape")
    assert server.call("GET", f"{P}/members/email:minji@example.com")[1]["balance"] == after["balance"]
    # AND one filled in and left with Esc sends nothing either (the last confirmation does not
    # confirm it)
    page.get_by_test_id("action-adjust").click()
    page.get_by_test_id("field-points").fill("100")
    page.get_by_test_id("field-reason").fill("changed my mind")
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("dialog")).to_be_hidden()
    page.wait_for_load_state("networkidle")
    assert server.call("GET", f"{P}/members/email:minji@example.com")[1]["balance"] == after["balance"]
    # AND points written as "1e3" are refused by the dialog (before: 1,000 points were sent)
    page.get_by_test_id("action-adjust").click()
    page.get_by_test_id("field-points").fill("1e3")
    page.get_by_test_id("field-reason").fill("typo")
    page.get_by_test_id("confirm").click()
    expect(page.get_by_test_id("dialog")).to_be_visible()
    page.keyboard.press("Escape")
    page.wait_for_load_state("networkidle")
    assert server.call("GET", f"{P}/members/email:minji@example.com")[1]["balance"] == after["balance"]
    # AND an answer of API Gateway's own (a throttle) is shown with its message
    page.route("**/members/m-5", lambda route: route.fulfill(
        status=503, content_type="application/json", body='{"message":"Service Unavailable"}'))
    page.goto(server.base + "/console/#/members/m-5")
    expect(page.get_by_test_id("problem")).to_contain_text("Service Unavailable")


def test_a_cognito_console_signs_in_by_code_and_signing_out_ends_the_cognito_session(browser, server: Server):
    # GIVEN the console deployed with Cognito sign-in (its domain's token endpoint answered here)
    context = browser.new_context(viewport=DESKTOP, locale="en-US")
    page = context.new_page()
    domain = "loyalty-test.auth.us-east-1.amazoncognito.com"
    config = {"auth": "cognito", "cognito_domain": domain, "client_id": "console-client"}
    page.route("**/console/config.json", lambda route: route.fulfill(json=config))
    left: list[str] = []
    page.route(f"https://{domain}/oauth2/token",
               lambda route: route.fulfill(json={"access_token": server.admin}, headers={"Access-Control-Allow-Origin": "*"}))
    page.route(f"https://{domain}/logout**", lambda route: (left.append(route.request.url), route.fulfill(body="bye")))
    # (the sign-in this browser started: its PKCE verifier and state)
    page.goto(server.base + "/console/")
    page.evaluate("sessionStorage.setItem('loyalty.pkce', 'the-verifier'); sessionStorage.setItem('loyalty.oauth_state', 'the-state')")
    # WHEN Cognito sends the operator back with a code and the state
    page.goto(server.base + "/console/?code=the-code&state=the-state")
    # THEN the console exchanges it for a token (under the page's Content-Security-Policy) and
    # shows the overview
    expect(page.get_by_test_id("kpi-members")).to_be_visible()
    # WHEN the operator signs out
    page.locator("#signout").click()
    page.wait_for_url(f"https://{domain}/logout**")
    # THEN the token is gone and the browser went to Cognito's logout for this console
    assert len(left) == 1 and left[0].startswith(f"https://{domain}/logout?"), left
    query = dict(part.split("=", 1) for part in left[0].split("?", 1)[1].split("&"))
    assert query["client_id"] == "console-client"
    # (the page's own address, which the sign-in returns to as well)
    assert urllib.parse.unquote(query["logout_uri"]) == server.base + "/console/"
    page.goto(server.base + "/console/")
    assert page.evaluate("sessionStorage.getItem('loyalty.token')") is None
    # WHEN a link brings a code this browser did not ask for THEN it is not exchanged
    page.goto(server.base + "/console/?code=someone-elses-code&state=forged")
    expect(page.get_by_test_id("problem")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('loyalty.token')") is None
    context.close()


def test_support_reverses_a_captured_payment_with_points_from_the_member_page(page: Page, server: Server):
    # GIVEN m-5 paid 1,000 points at a till, and the till captured them
    member = token("--member", "m-5")
    status, held = server.call("POST", f"{P}/me/redemptions", {"reward": "pay-with-points", "points": 1000, "order_ref": "till-c1"},
                               auth=member, headers={"Idempotency-Key": "console-hold-1"})
    assert status == 201, held
    assert server.call("POST", f"{P}/redemptions/{held['id']}/capture", {"order_ref": "till-c1"})[0] == 200
    before = server.call("GET", f"{P}/members/m-5")[1]["balance"]
    # WHEN support reverses it from the member's page (the sale was refunded at the till)
    page.goto(server.base + "/console/#/members/m-5")
    page.get_by_test_id(f"reverse-{held['id']}").click()
    page.get_by_test_id("field-reason").fill("sale refunded at the till")
    page.get_by_test_id("confirm").click()
    # THEN the points are back and the redemption says so
    server.eventually(lambda: server.call("GET", f"{P}/members/m-5")[1].get("balance") == before + 1000, "the points returned")
    status, reversed_ = server.call("GET", f"{P}/me/redemptions/{held['id']}", auth=member)
    assert (status, reversed_["status"]) == (200, "reversed"), reversed_


def test_a_member_whose_own_id_looks_like_a_phone_number_is_found_by_it(page: Page, server: Server):
    # GIVEN a member whose own id is 0101234567 (no phone identity of that number)
    assert server.call("POST", f"{P}/members/0101234567/adjustments", {"points": 10, "reason": "opening"})[0] == 201
    # WHEN support searches it
    page.get_by_role("link", name="Members").click()
    page.get_by_test_id("member-search").fill("0101234567")
    page.get_by_test_id("member-find").click()
    # THEN its page is shown (before: the search asked for phone:0101234567, a 404)
    expect(page.get_by_test_id("member-id")).to_have_text("0101234567")
    expect(page.get_by_test_id("problem")).to_be_hidden()


def test_support_erases_a_member_and_is_told_it_was_done(page: Page, server: Server):
    # GIVEN m-erase-1, who asked to be forgotten, and m-5
    assert server.call("POST", f"{P}/members/m-erase-1/adjustments", {"points": 10, "reason": "opening"})[0] == 201
    page.goto(server.base + "/console/#/members/m-erase-1")
    expect(page.get_by_test_id("member-id")).to_have_text("m-erase-1")
    # WHEN support erases it, typing its id and a reason
    page.get_by_test_id("action-erase").click()
    page.get_by_test_id("field-confirm").fill("m-erase-1")
    page.get_by_test_id("field-reason").fill("asked to be forgotten")
    page.get_by_test_id("confirm").click()
    # THEN the members' search page says it was done, with no problem shown (before: the
    # member's page was drawn again and showed the erased member's 404)
    expect(page.get_by_test_id("notice")).to_be_visible()
    expect(page.get_by_test_id("member-search")).to_be_visible()
    expect(page.get_by_test_id("problem")).to_be_hidden()
    assert server.call("GET", f"{P}/members/m-erase-1")[0] == 404
    # AND the notice is not shown again on the next page
    page.goto(server.base + "/console/#/members/m-5")
    expect(page.get_by_test_id("member-id")).to_have_text("m-5")
    expect(page.get_by_test_id("notice")).to_have_count(0)


def test_a_page_answered_late_is_not_drawn_over_the_page_opened_after_it(page: Page, server: Server):
    # GIVEN m-2's view, whose answer the network holds back
    held = []
    page.route(lambda url: url.endswith("/members/m-2"), lambda route: held.append(route))
    page.goto(server.base + "/console/#/members/m-2")
    page.wait_for_function("() => document.querySelector('main')?.getAttribute('aria-busy') === 'true'")
    # WHEN support opens m-3 meanwhile, and m-2's answer comes after m-3 is drawn
    page.goto(server.base + "/console/#/members/m-3")
    expect(page.get_by_test_id("member-id")).to_have_text("m-3")
    assert len(held) == 1
    with page.expect_response(lambda r: r.url.endswith("/members/m-2")):
        held[0].continue_()
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(300)
    # THEN the page still shows m-3, and is not busy
    expect(page.get_by_test_id("member-id")).to_have_text("m-3")
    assert page.evaluate("document.querySelector('main').getAttribute('aria-busy')") is None


def test_an_api_problem_is_shown_with_its_title_and_detail(page: Page, server: Server):
    # WHEN an agent takes more points than the member has
    page.goto(server.base + "/console/#/members/m-2")
    expect(page.get_by_test_id("member-id")).to_have_text("m-2")
    page.get_by_test_id("action-adjust").click()
    page.get_by_test_id("field-points").fill("-99999999")
    page.get_by_test_id("field-reason").fill("test")
    page.get_by_test_id("confirm").click()
    # THEN the problem's title and detail are shown, and the page is still there
    expect(page.get_by_test_id("problem-title")).to_be_visible()
    assert page.get_by_test_id("problem-detail").inner_text().strip() != ""
    expect(page.get_by_test_id("member-id")).to_have_text("m-2")
    # AND a malformed member id in the address is a problem too, not a blank page
    page.goto(server.base + "/console/#/members/" + "x" * 300)
    expect(page.get_by_test_id("problem-title")).to_have_text("Bad Request")
    expect(page.get_by_test_id("page-failed")).to_be_visible()
    # AND so is an address whose escape is not UTF-8
    page.goto(server.base + "/console/#/overview")
    expect(page.get_by_test_id("page-failed")).to_be_hidden()
    page.goto(server.base + "/console/#/members/%E0")
    expect(page.get_by_test_id("page-failed")).to_be_visible()


def test_the_console_is_served_with_the_headers_cloudfront_sends(server: Server):
    # GIVEN loyalty serve's console files WHEN one is fetched
    with urllib.request.urlopen(server.base + "/console/app.js", timeout=10) as response:
        headers = response.headers
    # THEN it may not be framed, sends no Referer, and its policy allows no base or form target
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    policy = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "base-uri 'none'" in policy, policy


def test_a_marketer_fixes_a_campaign_by_field_and_opens_its_report(page: Page, server: Server):
    # GIVEN a new campaign whose weights sum to 1.1
    page.get_by_role("link", name="Campaigns").click()
    page.get_by_test_id("campaign-new").click()
    page.get_by_test_id("campaign-id").fill("spring-double")
    draft = json.loads(page.get_by_test_id("campaign-editor").input_value())
    draft.update({"name": "Spring double points", "start": ago(1), "end": ago(-14)})
    draft["variants"][1]["weight"] = 0.6
    page.get_by_test_id("campaign-editor").fill(json.dumps(draft, indent=2))
    # WHEN it is saved THEN the problem names the field, and nothing is saved
    page.get_by_test_id("campaign-save").click()
    fields = page.get_by_test_id("problem-fields")
    expect(fields).to_be_visible()
    assert fields.locator("li").first.get_attribute("data-field") == "variants"
    assert "sum to 1" in fields.inner_text()
    assert server.call("GET", f"{P}/campaigns/spring-double")[0] == 404
    # WHEN the weight is fixed and saved, then started
    draft["variants"][1]["weight"] = 0.5
    page.get_by_test_id("campaign-editor").fill(json.dumps(draft, indent=2))
    page.get_by_test_id("campaign-save").click()
    expect(page.get_by_test_id("campaign-status")).to_have_text("draft")
    expect(page.get_by_test_id("problem")).to_be_hidden()
    page.get_by_test_id("campaign-start").click()
    expect(page.get_by_test_id("campaign-status")).to_have_text("running")
    assert server.call("GET", f"{P}/campaigns/spring-double")[1]["status"] == "running"
    # AND members are exposed to it in the app
    for i in range(1, 7):
        assert server.call("GET", f"{P}/me/campaigns", auth=token("--member", f"m-{i}"))[0] == 200
    page.reload()
    # THEN its report shows one bar per variant, the members the API counts, and a verdict
    report = server.call("GET", f"{P}/campaigns/spring-double/report")[1]
    bars = page.get_by_test_id("report-chart").locator("rect.bar")
    expect(bars).to_have_count(2)
    rows = page.get_by_test_id("report-table").locator("tbody tr")
    shown = sum(int(rows.nth(i).locator("td").nth(2).inner_text().replace(",", "")) for i in range(2))
    assert shown == sum(v["members"] for v in report["variants"]) == 6
    expect(page.get_by_test_id("verdict")).to_contain_text(report["verdict"])
    # AND the list shows it running with its window
    page.get_by_role("link", name="Campaigns").click()
    expect(page.get_by_test_id("campaign-list")).to_contain_text("Spring double points")
    expect(page.get_by_test_id("campaign-list")).to_contain_text("running")
    # WHEN another new campaign is saved under the same id
    before = server.call("GET", f"{P}/campaigns/spring-double")[1]
    page.get_by_test_id("campaign-new").click()
    page.get_by_test_id("campaign-id").fill("spring-double")
    page.get_by_test_id("campaign-save").click()
    # THEN the problem says it exists, and the running campaign is as it was
    expect(page.get_by_test_id("problem")).to_contain_text("spring-double")
    assert server.call("GET", f"{P}/campaigns/spring-double")[1] == before
    # WHEN the running campaign is open here while another operator renames it, and it is stopped here
    page.get_by_role("link", name="Campaigns").click()
    page.get_by_role("link", name="Spring double points").click()
    expect(page.get_by_test_id("campaign-stop")).to_be_visible()
    renamed = {k: v for k, v in before.items() if k not in ("id", "version")} | {"name": "Spring double (renamed)"}
    assert server.call("PUT", f"{P}/campaigns/spring-double", renamed)[0] == 200
    page.get_by_test_id("campaign-stop").click()
    # (a stop is asked first: it is for every member at once)
    expect(page.get_by_test_id("dialog")).to_be_visible()
    page.get_by_test_id("confirm").click()
    # THEN the stop is refused as saved meanwhile, and the campaign runs on under the other's name
    expect(page.get_by_test_id("problem-title")).to_have_text("Saved meanwhile by someone else")
    after = server.call("GET", f"{P}/campaigns/spring-double")[1]
    assert (after["status"], after["name"], after["version"]) == ("running", "Spring double (renamed)", before["version"] + 1)


def test_the_overview_totals_equal_the_reports(page: Page, server: Server):
    # GIVEN the reports' JSON for the period the overview shows
    to = page.get_by_test_id("to").input_value()
    frm = page.get_by_test_id("from").input_value()
    kpis = server.call("GET", f"{P}/reports/kpis?from={frm}&to={to}")[1]
    liability = server.call("GET", f"{P}/reports/liability?as_of={to}")[1]
    # THEN every tile is the reports' number
    for key in ("members", "new_members", "active_30", "orders", "order_points"):
        assert int(value(page, f"kpi-{key}")) == kpis[key], key
    assert kpis["members"] >= 7
    assert int(value(page, "kpi-outstanding")) == liability["outstanding"]
    assert int(value(page, "kpi-pending")) == liability["pending"]
    assert value(page, "kpi-value") == liability["value"]
    # AND the charts' bars are the months' and tiers' numbers
    bars = page.get_by_test_id("issued-redeemed-chart").locator("rect.bar")
    issued = [int(bars.nth(i).get_attribute("data-value")) for i in range(bars.count()) if bars.nth(i).get_attribute("data-series") == "Issued"]
    assert issued == [m["issued"] for m in liability["movements"]]
    expiry = page.get_by_test_id("liability-expiry-chart").locator("rect.bar")
    assert sum(int(expiry.nth(i).get_attribute("data-value")) for i in range(expiry.count())) == liability["outstanding"]
    tiers = page.get_by_test_id("tiers-chart").locator("rect.bar")
    assert {tiers.nth(i).get_attribute("data-label"): int(tiers.nth(i).get_attribute("data-value")) for i in range(tiers.count())} == kpis["tiers"]
    # WHEN a bar is hovered THEN its number shows
    bars.first.hover()
    expect(page.get_by_test_id("tooltip")).to_contain_text(f"{issued[0]:,}")
    # WHEN the table view is chosen THEN the same numbers are in a table
    page.get_by_test_id("issued-redeemed-toggle").click()
    expect(page.get_by_test_id("issued-redeemed-table")).to_contain_text(f"{issued[0]:,}")


def test_every_page_in_both_languages_and_at_phone_width(browser, server: Server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    pages = {"overview": "kpi-members", "members/m-1": "ledger-table", "program": "program-editor",
             "campaigns": "campaign-list", "operations": "job-runs"}
    for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=size, locale="en-US", device_scale_factor=1)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.base + "/console/")
        page.get_by_test_id("token").fill(server.admin)
        page.get_by_test_id("signin").click()
        for route, ready in pages.items():
            page.goto(f"{server.base}/console/#/{route}")
            expect(page.get_by_test_id(ready)).to_be_visible()
            page.wait_for_timeout(100)
            name = route.split("/")[0]
            page.screenshot(path=str(SHOTS / f"{name}-{size_name}.png"), full_page=True)
            # THEN nothing is wider than the screen but for tables and editors, which scroll
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{route} at {size_name} is {overflow}px too wide"
        # WHEN the language is switched THEN the page is in Korean, amounts in won
        page.goto(f"{server.base}/console/#/members/m-1")
        expect(page.get_by_test_id("ledger-table")).to_be_visible()
        page.get_by_test_id("lang").click()
        expect(page.get_by_role("link", name="회원")).to_be_visible()
        expect(page.get_by_test_id("kpi-cash")).to_contain_text("₩")
        page.screenshot(path=str(SHOTS / f"members-ko-{size_name}.png"), full_page=True)
        page.get_by_test_id("lang").click()
        assert errors == []
        context.close()
    # AND the operations page lists the last run of every job, as the API does
    jobs = server.call("GET", f"{P}/jobs")[1]["jobs"]
    assert any("report" in j for j in jobs)


def test_an_operator_redrives_a_dead_letter_and_sees_the_last_job_runs(page: Page, server: Server):
    # GIVEN a purchase the earn queue gave up on (forced into its dead letters)
    event = purchase(3001, "m-dead", 20, 1)
    with sqlite3.connect(server.db) as db:
        db.execute("INSERT INTO dead_letters (queue, id, body, attempts, error, at) VALUES ('earn', 'kr-shop/ev-3001', ?, 5, 'store unavailable', ?)",
                   (json.dumps(event), datetime.now(timezone.utc).isoformat()))
    # WHEN an operator opens the operations page THEN the earn queue's depth is the API's: 1
    page.get_by_role("link", name="Operations").click()
    expect(page.get_by_test_id("dlq-earn")).to_have_attribute("data-value", "1")
    assert server.call("GET", "/v1/dead-letters")[1]["queues"][0] == {"queue": "earn", "depth": 1}
    # WHEN it is redriven, confirmed in the dialog
    page.get_by_test_id("redrive-earn").click()
    page.get_by_test_id("confirm").click()
    # THEN the queue is empty and the purchase is applied once
    expect(page.get_by_test_id("dlq-earn")).to_have_attribute("data-value", "0")
    server.eventually(lambda: server.call("GET", f"{P}/members/m-dead")[1].get("balance") == 590, "the redriven purchase")
    # AND the last run of each job is listed as the API reports it
    jobs = server.call("GET", f"{P}/jobs")[1]["jobs"]
    rows = page.get_by_test_id("job-runs").locator("tbody tr")
    expect(rows).to_have_count(len(jobs))
    assert [rows.nth(i).locator("td").first.inner_text() for i in range(len(jobs))] == [j["job"] for j in jobs]


def test_an_operator_replays_a_rejected_event_from_its_row(page: Page, server: Server):
    # GIVEN an event kr-shop rejected (an action it does not reward)
    event = {"type": "engagement.recorded", "version": 1, "id": "ev-console-share", "program": "kr-shop",
             "member": "m-1", "occurred_at": ago(0), "data": {"action": "share", "ref": "ev-console-share"}}
    assert server.call("POST", f"{P}/events", event)[0] == 202
    server.eventually(lambda: server.call("GET", f"{P}/rejected-events/ev-console-share")[0] == 200, "the rejection")
    # WHEN an operator opens the operations page THEN the event is listed by its id
    page.get_by_role("link", name="Operations").click()
    expect(page.get_by_test_id("replays-ev-console-share")).to_have_text("0")
    # WHEN it is replayed from its row, confirmed in the dialog
    page.get_by_test_id("replay-ev-console-share").click()
    page.get_by_test_id("confirm").click()
    # THEN the API counts the replay
    server.eventually(lambda: server.call("GET", f"{P}/rejected-events/ev-console-share")[1].get("replays") == 1, "the replay")


def test_every_rejected_event_is_reached_a_page_at_a_time(page: Page, server: Server):
    # GIVEN more rejected events than a page of the operations page holds
    for i in range(55):
        event = {"type": "engagement.recorded", "version": 1, "id": f"ev-many-{i:02}", "program": "kr-shop",
                 "member": "m-1", "occurred_at": ago(0), "data": {"action": "share", "ref": f"ev-many-{i:02}"}}
        assert server.call("POST", f"{P}/events", event)[0] == 202
    server.eventually(lambda: all(server.call("GET", f"{P}/rejected-events/ev-many-{i:02}")[0] == 200
                                  for i in (0, 54)), "the rejections")
    listed, cursor = [], None
    while True:
        answer = server.call("GET", f"{P}/rejected-events?limit=50" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else ""))[1]
        listed += [e["id"] for e in answer["events"]]
        cursor = answer.get("next_cursor")
        if not cursor:
            break
    # WHEN an operator opens the operations page and asks for more until there is no more
    page.get_by_role("link", name="Operations").click()
    more = page.get_by_test_id("rejected-more")
    expect(more).to_be_visible()
    pages = page.locator("[data-testid=rejected-more-page]")
    for n in range(1, 10):
        more.click()
        expect(pages).to_have_count(n)
        if more.is_hidden():
            break
    # THEN every rejected event the API lists is on the page, once
    shown = page.locator("[data-testid=rejected] tbody tr code, [data-testid=rejected-more-page] tbody tr code")
    assert sorted(shown.all_inner_texts()) == sorted(listed)
    assert all(f"ev-many-{i:02}" in listed for i in range(55))


def test_the_program_editor_names_every_problem_by_field_and_keeps_versions(page: Page, server: Server):
    # GIVEN the program file in the editor
    page.get_by_role("link", name="Program").click()
    editor = page.get_by_test_id("program-editor")
    file = json.loads(editor.input_value())
    before = server.call("GET", f"{P}/versions")[1]["versions"]
    # WHEN it is saved with no expiry and a negative tier threshold
    broken = json.loads(json.dumps(file))
    broken["expiry"]["months"] = 0
    broken["tiers"][2]["threshold"] = -5
    editor.fill(json.dumps(broken, indent=2))
    page.get_by_test_id("program-save").click()
    # THEN every problem the API names is listed by its field, and nothing is saved
    problem = server.call("PUT", P, raw=json.dumps(broken).encode(), headers={"Content-Type": "application/json"})[1]
    fields = page.get_by_test_id("problem-fields").locator("li")
    expect(fields).to_have_count(len(problem["errors"]))
    assert [fields.nth(i).get_attribute("data-field") for i in range(fields.count())] == [e["field"] for e in problem["errors"]]
    assert {"expiry.months", "tiers[2].threshold"} <= {e["field"] for e in problem["errors"]}
    assert server.call("GET", f"{P}/versions")[1]["versions"] == before
    # WHEN a valid change is saved with a double click THEN it is one new version, listed above
    # the old one, and no problem is shown (before: the second click was refused as saved
    # meanwhile, after the first had saved)
    file["name"] = "KR Shop Members (console)"
    editor.fill(json.dumps(file, indent=2))
    page.get_by_test_id("program-save").dblclick()
    expect(page.get_by_test_id("notice")).to_contain_text(f"version {before[0]['version'] + 1}")
    expect(page.get_by_test_id("problem")).to_be_hidden()
    page.reload()
    expect(page.get_by_test_id("versions").locator("tbody tr")).to_have_count(len(before) + 1)
    # AND an older version can be read as it was saved
    page.get_by_test_id(f"view-v{before[0]['version']}").click()
    expect(page.get_by_test_id("version-view")).to_contain_text('"name": "KR Shop Members"')
    # WHEN another operator saves a version while this page is open, and the editor saves after
    page.reload()
    expect(page.get_by_test_id("program-editor")).to_be_visible()
    theirs = json.loads(json.dumps(file)) | {"name": "KR Shop Members (theirs)"}
    assert server.call("PUT", P, raw=json.dumps(theirs).encode(), headers={"Content-Type": "application/json"})[0] == 200
    saved = server.call("GET", f"{P}/versions")[1]["versions"]
    page.get_by_test_id("program-editor").fill(json.dumps(file | {"name": "KR Shop Members (mine)"}, indent=2))
    page.get_by_test_id("program-save").click()
    # THEN the editor is told, and theirs stays the current version
    expect(page.get_by_test_id("problem-title")).to_have_text("Saved meanwhile by someone else")
    assert server.call("GET", f"{P}/versions")[1]["versions"] == saved
    assert server.call("GET", P)[1]["file"]["name"] == "KR Shop Members (theirs)"


def test_enter_in_an_action_dialog_confirms_it_and_never_discards_what_was_typed(page: Page, server: Server):
    # GIVEN m-enter-1 with 100 points, its page open
    assert server.call("POST", f"{P}/members/m-enter-1/adjustments", {"points": 100, "reason": "opening"})[0] == 201
    page.goto(server.base + "/console/#/members/m-enter-1")
    expect(page.get_by_test_id("member-id")).to_have_text("m-enter-1")
    # WHEN an adjustment of 250 points is typed with its reason, and Enter is pressed in the points field
    page.get_by_test_id("action-adjust").click()
    page.get_by_test_id("field-points").fill("250")
    page.get_by_test_id("field-reason").fill("goodwill: typed and entered")
    page.get_by_test_id("field-points").press("Enter")
    # THEN it is confirmed: the dialog closes, it is done, and the points are the member's (before:
    # Enter pressed the form's first button, Cancel, and what was typed was lost)
    expect(page.get_by_test_id("dialog")).to_be_hidden()
    expect(page.get_by_test_id("notice")).to_contain_text("Adjust points: done")
    assert server.call("GET", f"{P}/members/m-enter-1")[1]["balance"] == 350
    # WHEN Enter is pressed with no reason
    page.get_by_test_id("action-adjust").click()
    page.get_by_test_id("field-points").fill("50")
    page.get_by_test_id("field-points").press("Enter")
    # THEN the same check as Confirm's refuses it: the dialog stays open with what was typed, and
    # nothing is sent
    expect(page.get_by_test_id("dialog")).to_be_visible()
    expect(page.get_by_test_id("field-points")).to_have_value("50")
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("dialog")).to_be_hidden()
    page.wait_for_load_state("networkidle")
    assert server.call("GET", f"{P}/members/m-enter-1")[1]["balance"] == 350


def test_a_member_is_found_by_a_phone_number_as_the_api_stores_it(page: Page, server: Server):
    # GIVEN m-phone-1 linked to the phone 010-5555-6666 as written, m-phone-2 to 01099990000 (digits
    # only), and pos:010-7777-8888, the member a till's purchases made
    for member, phone in (("m-phone-1", "010-5555-6666"), ("m-phone-2", "01099990000")):
        assert server.call("POST", f"{P}/members/{member}/adjustments", {"points": 10, "reason": "opening"})[0] == 201
        status, linked = server.call("POST", f"{P}/members/{member}/aliases", {"kind": "phone", "value": phone})
        assert status in (200, 201), linked
        assert server.call("GET", f"{P}/members/phone:{phone}")[1]["member"] == member
    assert server.call("POST", f"{P}/members/pos:010-7777-8888/adjustments", {"points": 10, "reason": "till"})[0] == 201
    page.get_by_role("link", name="Members").click()
    for typed, member in (("010-5555-6666", "m-phone-1"), ("010-9999-0000", "m-phone-2"), ("010-7777-8888", "pos:010-7777-8888")):
        # WHEN support searches the number as the customer says it
        page.get_by_test_id("member-search").fill(typed)
        page.get_by_test_id("member-find").click()
        # THEN the member of that number is shown (before: only phone:<digits> was asked for, a 404
        # for the two numbers stored as written)
        expect(page.get_by_test_id("member-id")).to_have_text(member)
        expect(page.get_by_test_id("problem")).to_be_hidden()


def test_merge_finds_the_other_member_as_search_does(page: Page, server: Server):
    # GIVEN bob@example.com, a member whose own id is that (no email identity), m-carol with the
    # phone 010-3333-4444 as written, and the survivor m-survivor
    for member, pts in (("bob@example.com", 700), ("m-carol", 300), ("m-survivor", 100)):
        assert server.call("POST", f"{P}/members/{member}/adjustments", {"points": pts, "reason": "opening"})[0] == 201
    assert server.call("POST", f"{P}/members/m-carol/aliases", {"kind": "phone", "value": "010-3333-4444"})[0] in (200, 201)
    page.goto(server.base + "/console/#/members/m-survivor")
    expect(page.get_by_test_id("member-id")).to_have_text("m-survivor")
    for typed, balance in (("bob@example.com", 800), ("010-3333-4444", 1100)):
        # WHEN the other member is merged into it, named as support knows it
        page.get_by_test_id("action-merge").click()
        page.get_by_test_id("field-from").fill(typed)
        page.get_by_test_id("field-reason").fill("same person")
        page.get_by_test_id("confirm").click()
        # THEN it is merged, with no problem (before: the email-like id was sent as
        # email:bob@example.com and the phone as phone:01033334444, each a 404)
        expect(page.get_by_test_id("kpi-balance")).to_have_attribute("data-value", str(balance))
        expect(page.get_by_test_id("notice")).to_contain_text("done")
        expect(page.get_by_test_id("problem")).to_be_hidden()
        assert server.call("GET", f"{P}/members/m-survivor")[1]["balance"] == balance


def test_a_saved_program_shows_its_new_version_at_once(page: Page, server: Server):
    # GIVEN the program page
    page.get_by_role("link", name="Program").click()
    editor = page.get_by_test_id("program-editor")
    expect(editor).to_be_visible()
    version = server.call("GET", P)[1]["version"]
    expect(page.locator("h1 .badge")).to_have_text(f"v{version}")
    # WHEN the file is saved
    page.get_by_test_id("program-save").click()
    expect(page.get_by_test_id("notice")).to_contain_text(f"version {version + 1}")
    # THEN the badge and the versions list show the new version without leaving the page
    # (before: both kept the version the page was opened with)
    assert server.call("GET", P)[1]["version"] == version + 1
    expect(page.locator("h1 .badge")).to_have_text(f"v{version + 1}")
    expect(page.get_by_test_id("versions").locator("tbody tr").first.locator("td").first).to_have_text(f"v{version + 1}")
    # AND a second save is made over the new version, not refused as saved meanwhile
    page.get_by_test_id("program-save").click()
    expect(page.get_by_test_id("notice")).to_contain_text(f"version {version + 2}")
    expect(page.get_by_test_id("problem")).to_be_hidden()


def test_every_field_has_a_name_and_a_done_action_is_announced_with_focus_kept(page: Page, server: Server):
    # GIVEN m-a11y-1's page
    assert server.call("POST", f"{P}/members/m-a11y-1/adjustments", {"points": 100, "reason": "opening"})[0] == 201
    page.goto(server.base + "/console/#/members/m-a11y-1")
    expect(page.get_by_test_id("member-id")).to_have_text("m-a11y-1")
    # WHEN the adjust dialog is opened THEN each field is named by its label
    page.get_by_test_id("action-adjust").click()
    expect(page.get_by_label("Points (negative to take away)", exact=True)).to_have_attribute("data-testid", "field-points")
    expect(page.get_by_label("Reason", exact=True)).to_have_attribute("data-testid", "field-reason")
    # WHEN it is confirmed
    page.get_by_label("Points (negative to take away)", exact=True).fill("5")
    page.get_by_label("Reason", exact=True).fill("a11y")
    page.get_by_test_id("confirm").click()
    # THEN the notice is a status (read out by screen readers), and focus is back on Adjust
    # (before: the notice had no role, and focus was on the page's body)
    expect(page.get_by_role("status")).to_contain_text("Adjust points: done")
    expect(page.get_by_test_id("action-adjust")).to_be_focused()
    # WHEN the member is suspended (its Suspend button is then gone) THEN focus is on the heading
    page.get_by_test_id("action-suspend").click()
    page.get_by_label("Reason", exact=True).fill("a11y check")
    page.get_by_test_id("confirm").click()
    expect(page.get_by_test_id("suspended")).to_be_visible()
    expect(page.get_by_role("heading", level=1)).to_be_focused()
    # AND the program and campaign editors are named
    page.get_by_role("link", name="Program").click()
    expect(page.get_by_label("Program file (JSON)")).to_have_attribute("data-testid", "program-editor")
    page.goto(server.base + "/console/#/campaigns/new")
    expect(page.get_by_label("Campaign (JSON)")).to_have_attribute("data-testid", "campaign-editor")
    expect(page.get_by_label("Campaign id")).to_have_attribute("data-testid", "campaign-id")
    # AND so is the sign-in token
    page.locator("#signout").click()
    expect(page.get_by_label("Paste an admin token (loyalty token --admin).")).to_have_attribute("data-testid", "token")


def test_resume_counts_the_waiting_events_and_can_cancel_them(page: Page, server: Server):
    # GIVEN m-resume-1 and m-resume-2, suspended, each with a purchase waiting for the resume
    for member, n in (("m-resume-1", 4001), ("m-resume-2", 4002)):
        assert server.call("POST", f"{P}/members/{member}/adjustments", {"points": 10, "reason": "opening"})[0] == 201
        assert server.call("POST", f"{P}/members/{member}/suspend", {"reason": "chargebacks"})[0] == 200
        assert server.call("POST", f"{P}/events", purchase(n, member, 1, 1))[0] == 202
        server.eventually(lambda: len(server.call("GET", f"{P}/members/{member}/export")[1]["held_events"]) == 1, "the purchase waiting")
    # WHEN m-resume-1 is resumed as the dialog offers (the waiting events applied)
    page.goto(server.base + "/console/#/members/m-resume-1")
    page.get_by_test_id("action-resume").click()
    expect(page.get_by_test_id("field-events")).to_have_value("apply")
    page.get_by_test_id("field-reason").fill("cleared")
    page.get_by_test_id("confirm").click()
    # THEN the notice counts the event being applied, not as applied yet (before: "Resume: done"
    # only), and the API applies it
    expect(page.get_by_test_id("notice")).to_contain_text("Resume: done")
    expect(page.get_by_test_id("notice")).to_contain_text("1 waiting event is being applied")
    server.eventually(lambda: server.call("GET", f"{P}/members/m-resume-1")[1].get("pending") == 590, "the purchase applied")
    # WHEN m-resume-2 is resumed with its waiting events cancelled
    page.goto(server.base + "/console/#/members/m-resume-2")
    page.get_by_test_id("action-resume").click()
    page.get_by_test_id("field-events").select_option("cancel")
    page.get_by_test_id("field-reason").fill("fraud")
    page.get_by_test_id("confirm").click()
    # THEN the notice says so, the purchase is kept among the rejected events, and earns nothing
    expect(page.get_by_test_id("notice")).to_contain_text("1 waiting event is being cancelled")
    server.eventually(lambda: server.call("GET", f"{P}/rejected-events/ev-4002")[0] == 200, "the purchase cancelled")
    view = server.call("GET", f"{P}/members/m-resume-2")[1]
    assert (view.get("pending", 0), view.get("balance"), view.get("suspended")) == (0, 10, None)
