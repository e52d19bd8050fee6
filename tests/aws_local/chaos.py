"""A seeded chaos scenario of loyalty events for kr-shop, and an independent oracle.

`build_scenario(seed)` invents members on every channel (Shopify, WooCommerce, Cafe24, POS and
the admin events API) and what happens to them: purchases, partial and full refunds,
cancellations, engagement actions (over their limits too) and grants. Every logical event is
rendered as the exact payload its platform sends, with one fixed id, and delivered three times
(or as many as asked) in an order shuffled by the seed, so refunds and cancellations often arrive before their
order. `Scenario.expected` is what every member must end with, computed here from kr-shop's
documented rules (README "The rules in one page", DESIGN §3, examples/kr-shop.toml and the
platform notes of README "Webhooks from shop platforms"), not from the engine's code.

`render`, `send_until_accepted` and `check` send a scenario to any deployment of the HTTP routes
(`loyalty serve`, or the local Lambda emulation of scripts/awslocal) and compare. Standard
library only (Python 3.11).

The oracle, in short (kr-shop):

* A purchase earns floor(eligible / 100) points, one floor per order, where eligible is the sum
  of line totals after line discounts, shipping and separately charged tax excluded, gift cards
  (the flag or the `gift_card` category) excluded. The order's points are shared out to its
  lines by largest remainder (ties to the earlier line), so the lines sum to the order.
  Platform specifics: Shopify line price x quantity less its discount allocations (or
  `total_discount`); WooCommerce a line's `total` (plus `total_tax` when prices include tax);
  Cafe24 one line worth what was paid in money for the goods (`actual_payment_amount` less
  `shipping_fee`, at most `order_price_amount`).
* Points are pending for 7 days after `occurred_at`: a purchase from 1-5 days ago ends pending,
  one from 8-80 days ago ends available (all within the 90-day backdating limit).
* A refund of r of q units of a line that earned p takes back floor(p x r / q), cumulatively
  over the order's refunds; a refund by amount (WooCommerce, Cafe24, an envelope with `amount`
  and `order_total`) takes back floor(p x A / T) per line, A the cumulative amount refunded
  (at most T); for Cafe24, A is `refund_amount` less the `refund_shipping_fee` it returns and T
  what the goods were paid (a refund of shipping alone takes nothing); a cancellation takes back
  whatever is left. A line never gives back more than it
  earned.
* "Pending points go first" on a clawback means the refunded order's own pending points: an
  order still in its return window gives back from pending, an order past it from available.
  That is the only reading that keeps DESIGN §3's promise that "arrival order never changes
  the result" (taking *any* pending points of the member first would make the split depend on
  whether another, recent order had arrived yet), and it is how the engine does it. So the
  split between pending and available is a per-order fact and members freely mix old and
  recent orders, which also checks that a refund of an old order never eats another order's
  pending points. (No order releases during a run: recent ones have >= 2 days left.)
* Engagement: signup 1000 once per member (a second signup, by another channel and id, is a
  no-op); review 500 and photo_review 1000, at most 5 per calendar month (Asia/Seoul) of
  `occurred_at`; birthday 2000 once per year; `share` is not rewarded by kr-shop (refused, to be replayed if it ever is); points.granted
  credits its points. All available at once.
* Tiers never move: every member's total eligible spend stays below SILVER (300,000 KRW), so
  every purchase earns at WELCOME (x1.0) whatever the arrival order.

What the scenario avoids, on purpose, so that the expected result is unambiguous:
* Referrals (the referrer's reward is a follow-up message, tested elsewhere), redemptions and
  time passing over a release or an expiry date.
* Engagement dated more than 85 days ago, so that every event is well inside the 90-day
  backdating limit however long a run takes. (85 days can span four calendar months, the oldest
  of which may arrive last: its limit must still hold.)
* Anything that makes a platform send a different body for the same event (every copy of a
  logical event is byte-identical; only delivery ids in headers change).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

PROGRAM = "kr-shop"
SEOUL = timezone(timedelta(hours=9))  # Asia/Seoul has had no DST since 1988

# kr-shop's rules (examples/kr-shop.toml), restated for the oracle.
POINTS, PER = 1, 100  # 1 point per 100 KRW of eligible amount
WELCOME_BP, UNIT_BP = 10_000, 10_000
PENDING_DAYS = 7  # recent purchases are 1-5 days old, old ones 8-80 (backdating limit 90)
EXCLUDED_CATEGORIES = {"gift_card"}
SILVER = 300_000
ACTIONS = {  # action -> (points, limit count or None, period)
    "signup": (1000, 1, "lifetime"),
    "review": (500, 5, "month"),
    "photo_review": (1000, 5, "month"),
    "birthday": (2000, 1, "year"),
}
SPEND_BUDGET = 280_000  # per member, safely below SILVER
assert SPEND_BUDGET < SILVER
ENGAGEMENT_WINDOW_DAYS = 85  # see the module doc: inside the backdating limit, up to 4 months

# Deliveries of each logical event: a platform's retries and resends. A run with one copy is
# the one that catches an event acknowledged but not applied (a later copy would heal it).
COPIES = 3


@dataclass
class Delivery:
    key: str  # logical event key, e.g. "shopify-paid-1007"; its copies share it
    kind: str  # "shopify", "woocommerce", "cafe24", "pos", "admin"
    method: str  # "POST"
    path: str  # e.g. "/webhooks/shopify/kr-shop" or "/v1/programs/kr-shop/events"
    body: bytes
    headers: dict[str, str]  # content-type etc; signatures NOT yet applied for pos/admin (see render)


@dataclass
class Scenario:
    program: str  # "kr-shop"
    secrets: dict[str, str]  # env var name -> secret
    deliveries: list[Delivery]  # every logical event 3 times, shuffled by the seed
    expected: dict[str, dict]  # canonical member id -> {"balance": int, "pending": int}
    logical_events: int


# ---------------------------------------------------------------------------------------------
# The oracle


def share_out(eligibles: list[int], tier_bp: int = WELCOME_BP) -> list[int]:
    """Order points = floor(sum(eligible) x rate x tier), shared to lines by largest remainder."""
    denominator = PER * UNIT_BP
    numerators = [e * POINTS * tier_bp for e in eligibles]
    total = sum(numerators) // denominator
    shares = [n // denominator for n in numerators]
    by_remainder = sorted(range(len(numerators)), key=lambda i: (-(numerators[i] % denominator), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


@dataclass
class _Order:
    """What the oracle knows about one order: what each line earned and what came back."""

    member: str
    recent: bool  # still pending at the end
    quantities: list[int]
    points: list[int]
    eligible: int
    units_refunded: list[int] = field(default_factory=list)
    amount_refunded: int = 0
    amount_total: int = 0  # T of refunds by amount (0: none)
    cancelled: bool = False

    def __post_init__(self) -> None:
        if not self.units_refunded:
            self.units_refunded = [0] * len(self.quantities)

    def remaining(self) -> int:
        if self.cancelled:
            return 0
        left = 0
        for q, p, r in zip(self.quantities, self.points, self.units_refunded):
            by_units = p * min(r, q) // q
            by_amount = (
                p * min(self.amount_refunded, self.amount_total) // self.amount_total
                if self.amount_total
                else 0
            )
            left += p - max(by_units, by_amount)
        return left


def _period(period: str, when: datetime) -> str:
    local = when.astimezone(SEOUL)
    return {"month": local.strftime("%Y-%m"), "year": local.strftime("%Y"), "lifetime": "-"}[period]


def _expected(orders: list[_Order], actions: list[tuple[str, str, datetime]],
              grants: list[tuple[str, int]], members: list[str]) -> dict[str, dict]:
    out = {m: {"balance": 0, "pending": 0} for m in members}
    for o in orders:
        out[o.member]["pending" if o.recent else "balance"] += o.remaining()
    used: Counter = Counter()
    for member, action, when in actions:
        rule = ACTIONS.get(action)
        if rule is None:
            continue  # not rewarded by kr-shop
        points, limit, period = rule
        key = (member, action, _period(period, when))
        if used[key] < limit:
            used[key] += 1
            out[member]["balance"] += points
    for member, points in grants:
        out[member]["balance"] += points
    return out


# ---------------------------------------------------------------------------------------------
# Payload helpers


def _rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kst(t: datetime) -> str:
    return t.astimezone(SEOUL).strftime("%Y-%m-%dT%H:%M:%S+09:00")


def _kst_naive(t: datetime) -> str:
    return t.astimezone(SEOUL).strftime("%Y-%m-%d %H:%M:%S")


def _gmt(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _won(n: int, decimals: bool = False) -> str:
    return f"{n}.00" if decimals else str(n)


def _json(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _b64_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def pos_signature(secret: str, body: bytes, t: int) -> str:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def secret_variable(program: str, platform: str) -> str:
    return f"LOYALTY_SECRET_{program}_{platform}".upper().replace("-", "_")


# ---------------------------------------------------------------------------------------------
# The generator


class _Builder:
    def __init__(self, seed: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.tag = seed % 100_000  # keeps ids of different seeds apart in a shared store
        self.now = now
        self.secrets = {
            secret_variable(PROGRAM, p): f"chaos-{p}-{seed}-{hashlib.sha256(f'{p}{seed}'.encode()).hexdigest()[:16]}"
            for p in ("shopify", "woocommerce", "cafe24", "pos")
        }
        self.logical: list[Delivery] = []  # one per logical event
        self.orders: list[_Order] = []
        self.actions: list[tuple[str, str, datetime]] = []
        self.grants: list[tuple[str, int]] = []
        self.members: list[str] = []
        self.counter = 0

    # -- ids and times --------------------------------------------------------------------

    def next_id(self) -> int:
        self.counter += 1
        return self.counter

    def purchase_time(self, recent: bool) -> datetime:
        days = self.rng.uniform(1.0, 5.0) if recent else self.rng.uniform(8.0, 80.0)
        return (self.now - timedelta(days=days)).replace(microsecond=0)

    def after(self, t: datetime) -> datetime:
        """A moment between t and a couple of minutes before now (a refund, a cancellation)."""
        latest = self.now - timedelta(minutes=2)
        span = max((latest - t).total_seconds(), 1.0)
        return (t + timedelta(seconds=self.rng.uniform(60.0, max(span, 61.0)))).replace(microsecond=0)

    def engagement_time(self, around: datetime | None = None) -> datetime:
        oldest = self.now - timedelta(days=ENGAGEMENT_WINDOW_DAYS)
        latest = self.now - timedelta(minutes=2)
        if around is None:
            t = oldest + timedelta(seconds=self.rng.uniform(0, (latest - oldest).total_seconds()))
        else:
            t = around + timedelta(hours=self.rng.uniform(-36, 36))
            t = min(max(t, oldest), latest)
        return t.replace(microsecond=0)

    # -- deliveries -----------------------------------------------------------------------

    def add(self, key: str, kind: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        self.logical.append(Delivery(key, kind, "POST", path, body, {"Content-Type": "application/json", **headers}))

    def shopify(self, key: str, topic: str, payload: dict) -> None:
        body = _json(payload)
        secret = self.secrets[secret_variable(PROGRAM, "shopify")]
        self.add(key, "shopify", f"/webhooks/shopify/{PROGRAM}", body, {
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": _b64_hmac(secret, body),
            "X-Shopify-Shop-Domain": "kr-shop.myshopify.com",
            "X-Shopify-API-Version": "2025-10",
        })

    def woocommerce(self, key: str, topic: str, payload: dict) -> None:
        body = _json(payload)
        secret = self.secrets[secret_variable(PROGRAM, "woocommerce")]
        self.add(key, "woocommerce", f"/webhooks/woocommerce/{PROGRAM}", body, {
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": "order",
            "X-WC-Webhook-Event": topic.split(".")[1],
            "X-WC-Webhook-Signature": _b64_hmac(secret, body),
            "X-WC-Webhook-Source": "https://kr-shop.example/",
        })

    def cafe24(self, key: str, payload: dict) -> None:
        self.add(key, "cafe24", f"/webhooks/cafe24/{PROGRAM}", _json(payload), {
            "X-Api-Key": self.secrets[secret_variable(PROGRAM, "cafe24")],
        })

    def envelope(self, key: str, kind: str, type_: str, event_id: str, member: str,
                 occurred_at: datetime, data: dict) -> None:
        body = _json({"type": type_, "version": 1, "id": event_id, "program": PROGRAM,
                      "member": member, "occurred_at": _rfc3339(occurred_at), "data": data})
        path = f"/webhooks/pos/{PROGRAM}" if kind == "pos" else f"/v1/programs/{PROGRAM}/events"
        self.add(key, kind, path, body, {})

    # -- amounts --------------------------------------------------------------------------

    def price(self, low: int = 3_000, high: int = 60_000) -> int:
        step = self.rng.choice([10, 100, 100, 1000])
        return self.rng.randrange(low // step, high // step + 1) * step

    def discount(self, total: int) -> int:
        if self.rng.random() < 0.6:
            return 0
        return self.rng.randrange(0, total // 5 + 1, 10)

    def partial_units(self, quantities: list[int], refunded: list[int]) -> list[tuple[int, int]]:
        """Some units of some lines not yet refunded: [(line index, units)]."""
        open_lines = [i for i, q in enumerate(quantities) if refunded[i] < q]
        if not open_lines:
            return []
        chosen = self.rng.sample(open_lines, self.rng.randint(1, len(open_lines)))
        out = []
        for i in sorted(chosen):
            units = self.rng.randint(1, quantities[i] - refunded[i])
            refunded[i] += units
            out.append((i, units))
        return out

    def amount_refunds(self, total: int, count: int) -> list[int]:
        """`count` refund amounts whose sum is at most `total` (sometimes exactly it)."""
        left = total
        amounts = []
        for k in range(count):
            if left <= 0:
                break
            if k == count - 1 and self.rng.random() < 0.25:
                amounts.append(left)
                break
            a = max(1, min(left, self.rng.randrange(1, max(2, total // 2))))
            if self.rng.random() < 0.5:
                a = max(10, a // 10 * 10) if left >= 10 else left
                a = min(a, left)
            amounts.append(a)
            left -= a
        return amounts

    def fate(self) -> str:
        r = self.rng.random()
        if r < 0.45:
            return "kept"
        if r < 0.75:
            return "partial"
        if r < 0.88:
            return "partial+cancel"
        return "cancel"


def _lines_for_budget(b: _Builder, budget: int, make_line) -> list[dict] | None:
    """Up to 4 lines of a new order whose eligible total fits the member's budget."""
    for _ in range(20):
        lines = [make_line(i) for i in range(b.rng.randint(1, 4))]
        if 1_000 <= sum(line["eligible"] for line in lines) <= budget:
            return lines
    return None


def _new_order(b: _Builder, budget: int, make_line, member: str):
    """A new order of the member: its lines, the oracle's record of it and when it was paid; or
    None when the budget is spent."""
    lines = _lines_for_budget(b, budget, make_line)
    if lines is None:
        return None
    eligibles = [line["eligible"] for line in lines]
    recent = b.rng.random() < 0.4
    paid_at = b.purchase_time(recent)
    order = _Order(member, recent, [line["q"] for line in lines], share_out(eligibles), sum(eligibles))
    return lines, order, paid_at


# -- Shopify ---------------------------------------------------------------------------------


def _shopify_member(b: _Builder, budget_events: int) -> None:
    n = b.next_id()
    customer = 9_000_000_000 + b.tag * 1_000 + n
    member = f"shopify:{customer}"
    email = f"shopper{b.tag}.{n}@example.kr"
    b.members.append(member)
    budget = SPEND_BUDGET
    orders = b.rng.choices([1, 2, 3], [4, 3, 2])[0]
    for _ in range(orders):
        order_no = b.next_id()
        order_id = 5_000_000_000_000 + b.tag * 1_000_000 + order_no

        def make_line(i):
            q = b.rng.randint(1, 4)
            price = b.price()
            disc = b.discount(q * price)
            gift = b.rng.random() < 0.08
            category = "gift_card" if (not gift and b.rng.random() < 0.05) else b.rng.choice(
                ["apparel", "accessories", "beauty", "home"])
            excluded = gift or category in EXCLUDED_CATEGORIES
            return {"id": 10_000_000_000 + b.tag * 100_000 + b.next_id(), "q": q, "price": price, "discount": disc, "gift": gift,
                    "category": category, "eligible": 0 if excluded else q * price - disc,
                    "allocations": b.rng.random() < 0.7}

        made = _new_order(b, budget, make_line, member)
        if made is None:
            break
        lines, order, paid_at = made
        budget -= order.eligible
        recent, points = order.recent, order.points
        b.orders.append(order)
        shipping = b.rng.choice([0, 2500, 3000])
        items = []
        for line in lines:
            money = lambda a: {"shop_money": {"amount": str(a), "currency_code": "KRW"},  # noqa: E731
                               "presentment_money": {"amount": f"{a / 1380:.2f}", "currency_code": "USD"}}
            item = {"id": line["id"], "sku": f"SKU-{line['id']}", "title": f"Item {line['id']}",
                    "product_type": line["category"], "quantity": line["q"], "price": str(line["price"]),
                    "price_set": money(line["price"]), "gift_card": line["gift"], "taxable": True}
            if line["allocations"] and line["discount"]:
                half = line["discount"] // 2
                item["total_discount"] = "0"
                item["discount_allocations"] = [
                    {"amount": str(part), "amount_set": money(part), "discount_application_index": k}
                    for k, part in enumerate([half, line["discount"] - half]) if part]
            else:
                item["total_discount"] = str(line["discount"])
                item["total_discount_set"] = money(line["discount"])
                item["discount_allocations"] = []
            items.append(item)
        goods = sum(line["q"] * line["price"] - line["discount"] for line in lines)
        customer_obj = {"id": customer, "email": email, "first_name": "Chaos", "last_name": str(n)}
        b.shopify(f"shopify-paid-{order_id}", "orders/paid", {
            "id": order_id, "name": f"#{order_no}", "email": email, "created_at": _kst(paid_at),
            "processed_at": _kst(paid_at), "currency": "KRW", "presentment_currency": "KRW",
            "financial_status": "paid", "taxes_included": True, "total_price": str(goods + shipping),
            "subtotal_price": str(goods), "total_tax": str(goods // 11),
            "total_tax_set": {"shop_money": {"amount": str(goods // 11), "currency_code": "KRW"}},
            "customer": customer_obj, "line_items": items,
            "shipping_lines": [{"id": order_id + 1, "title": "Standard", "price": str(shipping),
                                "price_set": {"shop_money": {"amount": str(shipping), "currency_code": "KRW"}}}],
        })
        fate = b.fate()
        t = paid_at
        if fate in ("partial", "partial+cancel"):
            for _ in range(b.rng.choice([1, 1, 2])):
                t = b.after(t)
                refund_id = 900_000_000 + b.tag * 10_000 + b.next_id()
                if shipping and b.rng.random() < 0.1:
                    # A shipping-only refund: no line items, the shipping returned as an order
                    # adjustment; acknowledged without effect.
                    units = []
                else:
                    units = b.partial_units(order.quantities, order.units_refunded)
                b.shopify(f"shopify-refund-{order_id}/{refund_id}", "refunds/create", {
                    "id": refund_id, "order_id": order_id, "created_at": _kst(t), "processed_at": _kst(t),
                    "note": "chaos", "restock": True,
                    "refund_line_items": [
                        {"id": refund_id * 10 + k, "line_item_id": lines[i]["id"], "quantity": u,
                         "restock_type": "return", "subtotal": str(u * lines[i]["price"])}
                        for k, (i, u) in enumerate(units)],
                    "transactions": [{"id": refund_id + 7, "kind": "refund", "status": "success",
                                      "amount": str(sum(u * lines[i]["price"] for i, u in units) or shipping),
                                      "currency": "KRW"}],
                    "order_adjustments": [] if units else [
                        {"id": refund_id + 8, "order_id": order_id, "refund_id": refund_id,
                         "kind": "shipping_refund", "reason": "Shipping refund",
                         "amount": str(-shipping), "tax_amount": "0.00"}],
                })
        if fate in ("cancel", "partial+cancel"):
            t = b.after(t)
            order.cancelled = True
            # A cancellation is the whole order, so it names the order's customer (one naming
            # none is a guest's, taken only when a payment credited someone: delivered ahead of
            # its payment, it is dropped).
            b.shopify(f"shopify-cancel-{order_id}", "orders/cancelled", {
                "id": order_id, "name": f"#{order_no}", "created_at": _kst(paid_at),
                "cancelled_at": _kst(t), "cancel_reason": "customer", "currency": "KRW",
                "financial_status": "refunded", "customer": customer_obj, "line_items": [],
            })
    if b.rng.random() < 0.1:
        # A refund of an order this shop never reports paid (e.g. paid before the loyalty app
        # was installed): kept waiting for its order for ever, no effect.
        ghost = 5_000_000_000_000 + b.tag * 1_000_000 + b.next_id()
        refund_id = 900_000_000 + b.tag * 10_000 + b.next_id()
        t = b.after(b.purchase_time(True))
        b.shopify(f"shopify-orphanrefund-{ghost}/{refund_id}", "refunds/create", {
            "id": refund_id, "order_id": ghost, "created_at": _kst(t), "processed_at": _kst(t),
            "refund_line_items": [{"id": refund_id * 10, "line_item_id": 1, "quantity": 1}],
            "transactions": [], "order_adjustments": []})
    if b.rng.random() < 0.6:
        signup_at = b.engagement_time()
        b.actions.append((member, "signup", signup_at))
        b.shopify(f"shopify-customer-{customer}", "customers/create", {
            "id": customer, "email": email, "created_at": _kst(signup_at),
            "first_name": "Chaos", "last_name": str(n), "state": "enabled",
        })
    _engagement(b, member, "admin")


# -- WooCommerce -----------------------------------------------------------------------------


def _woo_member(b: _Builder, budget_events: int) -> None:
    n = b.next_id()
    customer = b.tag * 1_000 + n + 1
    member = f"woocommerce:{customer}"
    email = f"Woo{b.tag}.{n}@Example.kr"
    b.members.append(member)
    budget = SPEND_BUDGET
    for _ in range(b.rng.choices([1, 2, 3], [4, 3, 2])[0]):
        order_id = 700_000 + b.tag * 1_000 + b.next_id()
        with_tax = b.rng.random() < 0.5
        decimals = b.rng.random() < 0.3

        def make_line(i):
            q = b.rng.randint(1, 3)
            gross = q * b.price()  # what the member pays for the line before its discount
            disc = b.discount(gross)
            if with_tax:  # prices include VAT: WooCommerce still stores net + tax separately
                sub_tax, tot_tax = gross // 11, (gross - disc) // 11
                sub, tot = gross - sub_tax, gross - disc - tot_tax
                eligible = tot + tot_tax
            else:  # VAT on top: it is separately charged and earns nothing
                sub, tot = gross, gross - disc
                sub_tax, tot_tax = sub // 10, tot // 10
                eligible = tot
            return {"id": 100_000_000 + b.tag * 1_000 + b.next_id(), "q": q, "subtotal": sub, "subtotal_tax": sub_tax,
                    "total": tot, "total_tax": tot_tax, "eligible": eligible}

        made = _new_order(b, budget, make_line, member)
        if made is None:
            break
        lines, order, paid_at = made
        budget -= order.eligible
        recent = order.recent
        abandoned = b.rng.random() < 0.1  # never paid, cancelled by WooCommerce: no points
        if not abandoned:
            b.orders.append(order)
        shipping = b.rng.choice([0, 3000])
        total = sum(line["total"] + line["total_tax"] for line in lines) + shipping

        def payload(status: str, modified: datetime, refunds: list[dict]) -> dict:
            return {
                "id": order_id, "parent_id": 0, "number": str(order_id), "status": status,
                "currency": "KRW", "prices_include_tax": with_tax,
                "date_created_gmt": _gmt(paid_at - timedelta(minutes=3)),
                "date_modified_gmt": _gmt(modified),
                "date_paid_gmt": _gmt(paid_at) if status not in ("pending",) else None,
                "discount_total": _won(sum(line["subtotal"] - line["total"] for line in lines), decimals),
                "shipping_total": _won(shipping, decimals), "shipping_tax": _won(0, decimals),
                "total": _won(total, decimals),
                "total_tax": _won(sum(line["total_tax"] for line in lines), decimals),
                "customer_id": customer,
                "billing": {"first_name": "Chaos", "last_name": str(n), "email": email},
                "payment_method": "kakaopay",
                "line_items": [
                    {"id": line["id"], "name": f"Item {line['id']}", "product_id": line["id"] + 5,
                     "variation_id": 0, "quantity": line["q"], "tax_class": "",
                     "subtotal": _won(line["subtotal"], decimals),
                     "subtotal_tax": _won(line["subtotal_tax"], decimals),
                     "total": _won(line["total"], decimals), "total_tax": _won(line["total_tax"], decimals),
                     "sku": f"WC-{line['id']}", "price": line["subtotal"] / line["q"]}
                    for line in lines],
                "shipping_lines": [{"id": order_id * 10 + 9, "method_title": "Flat rate",
                                    "total": _won(shipping, decimals), "total_tax": _won(0, decimals)}],
                "refunds": refunds,
            }

        if abandoned:
            b.woocommerce(f"woocommerce-unpaid-{order_id}", "order.created",
                          payload("pending", paid_at - timedelta(minutes=3), []))
            b.woocommerce(f"woocommerce-abandoned-{order_id}", "order.updated",
                          {**payload("cancelled", b.after(paid_at), []), "date_paid_gmt": None})
            continue
        if b.rng.random() < 0.3:
            # The order as created, before payment: acknowledged without effect.
            b.woocommerce(f"woocommerce-created-{order_id}", "order.created",
                          payload("pending", paid_at - timedelta(minutes=3), []))
        b.woocommerce(f"woocommerce-paid-{order_id}", b.rng.choice(["order.created", "order.updated"]),
                      payload(b.rng.choice(["processing", "completed"]), paid_at, []))
        fate = b.fate()
        t = paid_at
        refunds: list[dict] = []
        if fate in ("partial", "partial+cancel"):
            amounts = b.amount_refunds(total, b.rng.choice([1, 1, 2]))
            for amount in amounts:
                t = b.after(t)
                refund_id = order_id * 10 + 5 + len(refunds)
                # WooCommerce lists every refund so far, newest first, totals negative.
                refunds = [{"id": refund_id, "reason": "chaos", "total": "-" + _won(amount, decimals)}] + refunds
                order.amount_refunded += amount
                order.amount_total = total
                b.woocommerce(f"woocommerce-refund-{order_id}/{refund_id}", "order.updated",
                              payload("processing", t, list(refunds)))
        if fate in ("cancel", "partial+cancel"):
            t = b.after(t)
            order.cancelled = True
            b.woocommerce(f"woocommerce-cancel-{order_id}", "order.updated",
                          payload(b.rng.choice(["refunded", "cancelled"]), t, list(refunds)))
    _engagement(b, member, "admin")


# -- Cafe24 ----------------------------------------------------------------------------------


def _cafe24_member(b: _Builder, budget_events: int) -> None:
    n = b.next_id()
    user = f"c24u{b.tag}x{n}"
    member = f"cafe24:{user}"
    email = f"{user}@Example.kr"
    b.members.append(member)
    budget = SPEND_BUDGET
    cancel_later: list[tuple[str, datetime, _Order]] = []
    for _ in range(b.rng.choices([1, 2, 3], [3, 3, 2])[0]):
        order_id = f"2026{b.tag:05d}-{b.next_id():07d}"
        for _ in range(20):
            price = b.price(5_000, 150_000)
            membership = b.discount(price)
            coupon = b.discount(price - membership)
            mileage = b.rng.choice([0, 0, 0, 500, 1000])
            mileage = min(mileage, price - membership - coupon)
            shipping = b.rng.choice([0, 2500, 3000])
            for_goods = price - membership - coupon - mileage
            if 1_000 <= for_goods <= budget:
                break
        else:
            break
        budget -= for_goods
        paid = for_goods + shipping  # actual_payment_amount
        recent = b.rng.random() < 0.4
        paid_at = b.purchase_time(recent)
        order = _Order(member, recent, [1], share_out([for_goods]), for_goods)
        b.orders.append(order)
        resource = {
            "mall_id": "krshop01", "event_shop_no": "1", "event_code": "paid_order",
            "order_id": order_id, "order_place_id": "self", "currency": "KRW",
            "order_date": _kst_naive(paid_at - timedelta(minutes=5)), "member_id": user,
            "buyer_name": "홍길동", "buyer_email": email, "paid": "T",
            "payment_date": _kst_naive(paid_at) if b.rng.random() < 0.7 else _kst(paid_at),
            "payment_method": "card", "order_price_amount": _won(price, True),
            "membership_discount_amount": _won(membership, True),
            "coupon_discount_amount": _won(coupon, True),
            "mileage_spent_amount": _won(mileage, True), "actual_payment_amount": _won(paid, True),
            "shipping_fee": _won(shipping, True), "shipping_status": "F", "cancel_date": "",
        }
        if b.rng.random() < 0.3:
            # Order placed, not paid yet: acknowledged without effect.
            b.cafe24(f"cafe24-placed-{order_id}", {"event_no": 90023, "resource": {
                **resource, "event_code": "order_placed", "paid": "F", "payment_date": "",
                "order_date": _kst_naive(paid_at - timedelta(minutes=5))}})
        b.cafe24(f"cafe24-paid-{order_id}", {"event_no": b.rng.choice([90023, 90025]), "resource": resource})
        fate = b.fate()
        t = paid_at
        if fate in ("partial", "partial+cancel"):
            # Refunds of the goods, as shares of what they were paid; the one that makes the
            # goods whole returns the shipping with them, and a refund of shipping alone
            # (a return event) is acknowledged without effect.
            amounts = b.amount_refunds(for_goods, b.rng.choice([1, 1, 2]))
            if shipping and b.rng.random() < 0.1:
                amounts.append(0)
            for amount in amounts:
                t = b.after(t)
                claim = f"C{b.tag:05d}-{b.next_id():07d}"
                order.amount_refunded += amount
                order.amount_total = for_goods
                whole = amount == 0 or order.amount_refunded >= for_goods
                shipping_back = shipping if whole else 0
                if amount and b.rng.random() < 0.5:
                    # Refund completed (names the member and what was paid, not the shipping).
                    b.cafe24(f"cafe24-refund-{order_id}/{claim}", {"event_no": 90029, "resource": {
                        "mall_id": "krshop01", "event_shop_no": "1", "order_id": order_id,
                        "member_id": user, "currency": "KRW", "claim_code": claim,
                        "refund_amount": _won(amount + shipping_back, True),
                        "actual_payment_amount": _won(paid, True), "refund_date": _kst_naive(t)}})
                else:
                    # Return completed: no member (found through the order), the price and the
                    # discounts (written negative), and the shipping it returns.
                    b.cafe24(f"cafe24-return-{order_id}/{claim}", {"event_no": 90160, "resource": {
                        "mall_id": "krshop01", "event_shop_no": "1", "order_id": order_id,
                        "claim_code": claim, "order_price_amount": _won(price, True),
                        "refund_amount": _won(amount + shipping_back, True), "shipping_fee": _won(shipping, True),
                        "refund_shipping_fee": _won(shipping_back, True),
                        "coupon_discount_amount": "-" + _won(coupon, True),
                        "membership_discount_amount": "-" + _won(membership, True),
                        "mileage_spent_amount": _won(mileage, True), "point_used": "0.00",
                        "return_date": _kst_naive(t)}})
        if fate in ("cancel", "partial+cancel"):
            t = b.after(t)
            order.cancelled = True
            cancel_later.append((order_id, t, order))
    # Cancellations: one by one, or (when there are several) as one bulk event.
    if len(cancel_later) >= 2 and b.rng.random() < 0.5:
        ids = ",".join(o for o, _, _ in cancel_later)
        t = max(t for _, t, _ in cancel_later)
        b.cafe24(f"cafe24-bulkcancel-{ids}", {"event_no": 90072, "resource": {
            "mall_id": "krshop01", "event_shop_no": "1", "order_id": ids, "member_id": user,
            "currency": "KRW", "cancel_date": _kst_naive(t)}})
    else:
        for order_id, t, _ in cancel_later:
            b.cafe24(f"cafe24-cancel-{order_id}", {"event_no": 90026, "resource": {
                "mall_id": "krshop01", "event_shop_no": "1", "event_code": "cancellation_complete",
                "order_id": order_id, "currency": "KRW", "member_id": user, "paid": "T",
                "cancel_date": _kst_naive(t)}})
    _engagement(b, member, "admin")


# -- POS and admin envelopes -----------------------------------------------------------------


def _envelope_member(b: _Builder, kind: str, budget_events: int) -> None:
    n = b.next_id()
    member = f"pos-{b.tag}-{n}" if kind == "pos" else f"m-{b.tag}-{n}"
    platform = {"platform": "pos"} if kind == "pos" else {}
    b.members.append(member)
    budget = SPEND_BUDGET
    for _ in range(b.rng.choices([1, 2, 3], [3, 3, 2])[0]):
        order_id = f"{kind}{b.tag}-{b.next_id()}"

        def make_line(i):
            q = b.rng.randint(1, 5)
            price = b.price(1_000, 40_000)
            disc = b.discount(q * price)
            gift = b.rng.random() < 0.06
            category = "gift_card" if (not gift and b.rng.random() < 0.06) else b.rng.choice(
                ["apparel", "food", "beauty"])
            excluded = gift or category in EXCLUDED_CATEGORIES
            return {"line_id": str(i + 1), "q": q, "price": price, "discount": disc, "gift": gift,
                    "category": category, "eligible": 0 if excluded else q * price - disc}

        made = _new_order(b, budget, make_line, member)
        if made is None:
            break
        lines, order, at = made
        budget -= order.eligible
        recent = order.recent
        b.orders.append(order)
        shipping = b.rng.choice([0, 0, 3000]) if kind == "admin" else 0
        purchase_id = f"{kind}-{order_id}-sale"
        b.envelope(f"{kind}-paid-{order_id}", kind, "purchase.completed", purchase_id, member, at, {
            "order_id": order_id, "currency": "KRW", "channel": "store" if kind == "pos" else "online",
            "shipping": str(shipping), "tax": "0", "taxes_included": True, **platform,
            "lines": [{"line_id": line["line_id"], "sku": f"S{line['line_id']}", "category": line["category"],
                       "quantity": line["q"], "unit_price": str(line["price"]),
                       "discount": str(line["discount"]), "gift_card": line["gift"]} for line in lines],
        })
        fate = b.fate()
        t = at
        by_amount = b.rng.random() < 0.3
        if fate in ("partial", "partial+cancel"):
            order_total = sum(line["q"] * line["price"] - line["discount"] for line in lines) + shipping
            refunds = (b.amount_refunds(order_total, b.rng.choice([1, 2])) if by_amount
                       else [None] * b.rng.choice([1, 1, 2]))
            for amount in refunds:
                t = b.after(t)
                refund_id = f"r{b.next_id()}"
                if amount is not None:
                    order.amount_refunded += amount
                    order.amount_total = order_total
                    data = {"order_id": order_id, "refund_id": refund_id, "amount": str(amount),
                            "order_total": str(order_total), **platform}
                else:
                    units = b.partial_units(order.quantities, order.units_refunded)
                    if not units:
                        break
                    data = {"order_id": order_id, "refund_id": refund_id, **platform,
                            "lines": [{"line_id": lines[i]["line_id"], "quantity": u} for i, u in units]}
                b.envelope(f"{kind}-refund-{order_id}/{refund_id}", kind, "purchase.refunded",
                           f"{kind}-{order_id}-refund-{refund_id}", member, t, data)
        if fate in ("cancel", "partial+cancel"):
            t = b.after(t)
            order.cancelled = True
            b.envelope(f"{kind}-cancel-{order_id}", kind, "purchase.cancelled", f"{kind}-{order_id}-cancel",
                       member, t, {"order_id": order_id, "reason": "customer", **platform})
    if b.rng.random() < 0.1:
        # A refund of an order never sent: parked on its order record for ever, no effect.
        ghost = f"{kind}{b.tag}-{b.next_id()}"
        b.envelope(f"{kind}-orphanrefund-{ghost}/r1", kind, "purchase.refunded", f"{kind}-{ghost}-refund-r1",
                   member, b.after(b.purchase_time(True)),
                   {"order_id": ghost, "refund_id": "r1", "lines": [{"line_id": "1", "quantity": 1}], **platform})
    if b.rng.random() < 0.5:
        at = b.engagement_time()
        b.actions.append((member, "signup", at))
        b.envelope(f"{kind}-signup-{member}", kind, "engagement.recorded", f"{kind}-signup-{member}",
                   member, at, {"action": "signup", "ref": f"signup-{member}", **platform})
    _engagement(b, member, kind)


def _engagement(b: _Builder, member: str, kind: str) -> None:
    """Engagement for any member, sent by `kind` ("admin" or "pos"): another signup (a no-op
    if the member has one), reviews (over the monthly limit too), photo reviews, birthdays,
    an unrewarded share, and grants."""
    platform = {"platform": "pos"} if kind == "pos" else {}
    tag = member.replace(":", "-")

    def send(action: str, at: datetime, extra: dict | None = None) -> None:
        i = b.next_id()
        event_id = f"{kind}-{action}-{tag}-{i}"
        b.actions.append((member, action, at))
        b.envelope(f"{kind}-{action}-{tag}-{i}", kind, "engagement.recorded", event_id, member, at,
                   {"action": action, "ref": f"{action}-{i}", **platform, **(extra or {})})

    r = b.rng.random
    if r() < 0.15:
        send("signup", b.engagement_time())
    if r() < 0.35:
        around = b.engagement_time()
        for _ in range(b.rng.choice([1, 2, 3, 5, 6, 8])):
            send("review", b.engagement_time(around))
    if r() < 0.12:
        around = b.engagement_time()
        for _ in range(b.rng.randint(1, 7)):
            send("photo_review", b.engagement_time(around))
    if r() < 0.1:
        for _ in range(b.rng.randint(1, 2)):
            send("birthday", b.engagement_time())
    if r() < 0.1:
        send("share", b.engagement_time())
    if r() < 0.12 and kind == "admin":
        points = b.rng.choice([100, 500, 1234, 3000])
        i = b.next_id()
        at = b.engagement_time()
        b.grants.append((member, points))
        b.envelope(f"admin-grant-{tag}-{i}", "admin", "points.granted", f"grant-{tag}-{i}", member, at,
                   {"points": points, "reason": f"{points} points goodwill"})


_CHANNELS = [
    ("shopify", lambda b, left: _shopify_member(b, left), 3),
    ("woocommerce", lambda b, left: _woo_member(b, left), 2),
    ("cafe24", lambda b, left: _cafe24_member(b, left), 2),
    ("pos", lambda b, left: _envelope_member(b, "pos", left), 2),
    ("admin", lambda b, left: _envelope_member(b, "admin", left), 2),
]


def build_scenario(seed: int, events: int = 300, now: datetime | None = None,
                   copies: int = COPIES) -> Scenario:
    """Members on every channel until about `events` logical events exist; each is delivered
    `copies` times (byte-identical bodies, new delivery ids), all shuffled by `seed`."""
    assert copies >= 1, copies
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)
    b = _Builder(seed, now)
    # Every channel at least once, then by weight.
    order = [c for c in _CHANNELS]
    while len(b.logical) < events:
        if order:
            _, make, _ = order.pop(0)
        else:
            _, make, _ = b.rng.choices(_CHANNELS, [w for _, _, w in _CHANNELS])[0]
        make(b, events - len(b.logical))
    deliveries = []
    for d in b.logical:
        for copy in range(copies):
            headers = dict(d.headers)
            # Platforms resend under new delivery ids: only the body is the same.
            if d.kind == "shopify":
                headers["X-Shopify-Webhook-Id"] = f"{d.key}-{copy}-{b.rng.getrandbits(32):08x}"
                headers["X-Shopify-Event-Id"] = f"{b.rng.getrandbits(48)}"
            elif d.kind == "woocommerce":
                headers["X-WC-Webhook-Delivery-ID"] = str(b.rng.getrandbits(31))
                headers["X-WC-Webhook-ID"] = "12"
            elif d.kind == "cafe24":
                headers["X-Trace-ID"] = f"{b.rng.getrandbits(64):016x}"
            deliveries.append(Delivery(d.key, d.kind, d.method, d.path, d.body, headers))
    b.rng.shuffle(deliveries)
    return Scenario(
        program=PROGRAM,
        secrets=dict(b.secrets),
        deliveries=deliveries,
        expected=_expected(b.orders, b.actions, b.grants, b.members),
        logical_events=len(b.logical),
    )


def composition(scenario: Scenario) -> dict[str, int]:
    """Logical events per kind and effect (`shopify-refund`, `admin-review`...), members per
    channel, and `early-reversals`: refunds and cancellations whose first copy arrives before
    the first copy of their order's payment (WooCommerce refunds carry their order, so they
    never count)."""
    first: dict[str, int] = {}
    for i, d in enumerate(scenario.deliveries):
        first.setdefault(d.key, i)
    out: Counter = Counter()
    for key, position in first.items():
        kind, effect, rest = key.split("-", 2)
        out[f"{kind}-{effect}"] += 1
        if effect in ("refund", "return", "cancel", "bulkcancel") and not (
                kind == "woocommerce" and effect == "refund"):
            paid_of = [f"{kind}-paid-{o}" for o in rest.split("/")[0].split(",")]
            if any(first.get(p, -1) > position for p in paid_of):
                out["early-reversals"] += 1
    for member in scenario.expected:
        channel = member.split(":")[0] if ":" in member else member.split("-")[0]
        out[f"members:{channel}"] += 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# Sending and checking


def render(delivery: Delivery, scenario: Scenario, admin_token: str,
           now: datetime | None = None) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path, headers, body) ready to send: adds `Authorization: Bearer` for admin
    deliveries and a fresh `X-Loyalty-Signature` (t=<unix>,v1=<hex HMAC of "t.body">) for POS,
    computed at send time since POS signatures expire after 5 minutes. Shopify/WooCommerce
    signatures (base64 HMAC-SHA256 of the body) and Cafe24's X-Api-Key are already in headers."""
    headers = dict(delivery.headers)
    if delivery.kind == "admin":
        headers["Authorization"] = f"Bearer {admin_token}"
    elif delivery.kind == "pos":
        t = int((now or datetime.now(timezone.utc)).timestamp())
        secret = scenario.secrets[secret_variable(scenario.program, "pos")]
        headers["X-Loyalty-Signature"] = pos_signature(secret, delivery.body, t)
    return delivery.method, delivery.path, headers, delivery.body


def _request(base_url: str, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(base_url.rstrip("/") + path, data=body, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# Retries by cause ("connection", "5xx", "429"), for reports; shared by every thread.
RETRIES: Counter = Counter()
_RETRIES_LOCK = threading.Lock()


def send_until_accepted(base_url: str, delivery: Delivery, scenario: Scenario, admin_token: str,
                        attempts: int = 30, webhook_url: str | None = None) -> int:
    """Sends like a platform: retries on 5xx, 429 and connection errors with a short backoff
    (0.2-1 s), re-signing every attempt; returns the final status. Any other 4xx is returned at
    once (the caller treats it as a failure: every generated delivery is valid). Webhooks go to
    `webhook_url` when the deployment has one of its own (a function URL), else to `base_url`."""
    status = 0
    for attempt in range(attempts):
        method, path, headers, body = render(delivery, scenario, admin_token)
        base = webhook_url if webhook_url and path.startswith("/webhooks/") else base_url
        try:
            status, _ = _request(base, method, path, headers, body, timeout=10.0)
        except (OSError, http.client.HTTPException):  # refused, reset, timed out: server down
            status = 0
        if 200 <= status < 300:
            return status
        if 400 <= status < 500 and status != 429:
            return status
        with _RETRIES_LOCK:
            RETRIES["connection" if status == 0 else "429" if status == 429 else "5xx"] += 1
        time.sleep(random.uniform(0.2, min(1.0, 0.2 + 0.1 * attempt)))
    return status


def _get_json(base_url: str, path: str, admin_token: str, attempts: int = 8) -> tuple[int, dict]:
    """A GET as a client reads: a 5xx, a 429 or a reset (the faults, an instance crashed by them)
    is read again a few times; any other answer is returned at once."""
    for attempt in range(attempts):
        try:
            status, body = _request(base_url, "GET", path, {"Authorization": f"Bearer {admin_token}"})
        except (OSError, http.client.HTTPException):
            if attempt == attempts - 1:
                raise
            time.sleep(0.3)
            continue
        if (status >= 500 or status == 429) and attempt < attempts - 1:
            time.sleep(0.3)
            continue
        try:
            return status, json.loads(body or b"null") or {}
        except ValueError:
            return status, {"raw": body[:200].decode(errors="replace")}
    raise AssertionError("unreachable: the last attempt returns or raises")


def check(base_url: str, scenario: Scenario, admin_token: str) -> list[str]:
    """Compares every member's balance and pending (admin member view) with `expected`, and
    checks that the ledger sums to the view: sum(points) == balance, sum(pending) == pending.

    Provisional ledger entries are counted. DESIGN §3/§6: reads are "as of now": the view
    applies what time alone has changed (a release whose date has passed, an expiry) before any
    job writes it, and the first ledger page lists exactly those not-yet-written changes as
    entries marked `"provisional": true`. So the view's balance is the stored sum plus the
    provisional entries; leaving them out would break the invariant as soon as a release is due
    and no job has run (`--jobs-every 0`). The scenario has none due, so normally there are
    none, but the check stays right if the run is slow or is replayed later."""
    problems = []
    program = urllib.parse.quote(scenario.program, safe="")
    for member, want in sorted(scenario.expected.items()):
        m = urllib.parse.quote(member, safe=":")
        try:
            status, view = _get_json(base_url, f"/v1/programs/{program}/members/{m}", admin_token)
        except OSError as e:
            problems.append(f"{member}: view unreachable: {e}")
            continue
        unknown = status == 404 and str(view.get("type", "")).endswith("/unknown-member")
        if status != 200 and not unknown:
            problems.append(f"{member}: GET member view -> {status} {view}")
            continue
        if unknown:
            # No event of it took effect: it has no account, and no ledger to walk.
            if want != {"balance": 0, "pending": 0}:
                problems.append(f"{member}: expected balance {want['balance']} pending {want['pending']}, got no account")
            continue
        got = {"balance": view.get("balance"), "pending": view.get("pending")}
        if got != want:
            problems.append(f"{member}: expected balance {want['balance']} pending {want['pending']}, "
                            f"got balance {got['balance']} pending {got['pending']}")
        points = pending = 0
        cursor = None
        pages = 0
        while True:
            query = "limit=100" + (f"&cursor={urllib.parse.quote(cursor, safe='')}" if cursor else "")
            try:
                status, page = _get_json(base_url, f"/v1/programs/{program}/members/{m}/ledger?{query}",
                                         admin_token)
            except OSError as e:
                problems.append(f"{member}: ledger unreachable: {e}")
                break
            if status != 200:
                problems.append(f"{member}: GET ledger -> {status} {page}")
                break
            for entry in page.get("entries", []):
                points += entry["points"]
                pending += entry["pending"]
            cursor = page.get("next_cursor")
            pages += 1
            if not cursor or pages > 1000:
                break
        if (points, pending) != (got["balance"], got["pending"]):
            problems.append(f"{member}: ledger sums to points {points} pending {pending}, "
                            f"view says balance {got['balance']} pending {got['pending']}")
    return problems
