//! Shopify: `X-Shopify-Hmac-Sha256` (base64 HMAC-SHA256 of the raw body) and the topics
//! `orders/paid`, `refunds/create`, `orders/cancelled` and `customers/create`.
//!
//! Amounts are read from shop money (`*_set.shop_money.amount`, or the plain fields), never
//! presentment money: points follow what the shop was paid in its own currency. Event ids are
//! derived from the order and the effect, so a redelivery under a new webhook id is still the
//! same event.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{MemberRef, Normalised, PlatformEvent, WebhookError};
use crate::domain::Currency;

pub const HMAC_HEADER: &str = "x-shopify-hmac-sha256";
pub const TOPIC_HEADER: &str = "x-shopify-topic";
pub const TRIGGERED_AT_HEADER: &str = "x-shopify-triggered-at";

fn invalid(message: impl Into<String>) -> WebhookError {
    WebhookError::Invalid(message.into())
}

/// A required id (see [`super::platform_id`]).
fn id(value: &Value, field: &str) -> Result<String, WebhookError> {
    super::platform_id(value, field)?.ok_or_else(|| invalid(format!("{field} is missing")))
}

/// A shop-money amount: `{field}_set.shop_money.amount`, else the plain `{field}`.
fn shop_amount<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value
        .get(format!("{field}_set"))
        .and_then(|s| s.pointer("/shop_money/amount"))
        .and_then(Value::as_str)
        .or_else(|| value.get(field).and_then(Value::as_str))
}

fn time(value: &Value, fields: &[&str]) -> Option<DateTime<Utc>> {
    fields.iter().find_map(|f| {
        value
            .get(*f)
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    })
}

fn minor(currency: Currency, text: &str, what: &str) -> Result<i64, WebhookError> {
    let minor = currency
        .parse_amount(text)
        .map_err(|e| invalid(format!("{what}: {e}")))?;
    super::bounded(minor, what)
}

/// Turns a verified delivery into events. `triggered_at` is the header of the same name.
pub fn normalise(
    topic: &str,
    body: &[u8],
    triggered_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Normalised, WebhookError> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let fallback = triggered_at.unwrap_or(now);
    match topic {
        "orders/paid" => paid(&payload, fallback),
        "orders/cancelled" => cancelled(&payload, fallback),
        "refunds/create" => refund(&payload, fallback),
        "customers/create" => customer(&payload, fallback),
        other => Ok(Normalised::Ignored(format!(
            "topic {other:?} has no effect on points"
        ))),
    }
}

/// An order as the Admin REST API gives it (`orders.json?status=any`, refunds included) turned
/// into the events its webhooks produce, with the same ids: `orders/paid` once paid, then
/// `refunds/create` for each refund, then `orders/cancelled` if it was cancelled.
pub fn order_events(order: &Value, now: DateTime<Utc>) -> Result<Vec<PlatformEvent>, WebhookError> {
    let mut events = Vec::new();
    if is_test(order) {
        return Ok(events);
    }
    let mut add = |normalised: Normalised| {
        if let Normalised::Events(found) = normalised {
            events.extend(found);
        }
    };
    let paid = matches!(
        order.get("financial_status").and_then(Value::as_str),
        Some("paid" | "partially_refunded" | "refunded")
    );
    if paid {
        add(self::paid(order, now)?);
    }
    for refund in order
        .get("refunds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add(self::refund(refund, now)?);
    }
    if order.get("cancelled_at").is_some_and(|c| !c.is_null()) {
        add(cancelled(order, now)?);
    }
    Ok(events)
}

/// The order's customer; none for a guest. A customer whose id is not one refuses the delivery
/// (taken for a guest, its payment would credit no one).
fn customer_of(order: &Value) -> Result<Option<String>, WebhookError> {
    match order.get("customer") {
        Some(customer) if !customer.is_null() => super::platform_id(customer, "id"),
        _ => Ok(None),
    }
}

/// Whether Shopify marks the order as a test (test mode of the payment provider, the Bogus
/// gateway): no money moved, so it earns nothing, and nothing of it is taken back.
fn is_test(order: &Value) -> bool {
    order.get("test").and_then(Value::as_bool) == Some(true)
}

fn paid(order: &Value, fallback: DateTime<Utc>) -> Result<Normalised, WebhookError> {
    let order_id = id(order, "id")?;
    if is_test(order) {
        return Ok(Normalised::Ignored(format!(
            "order {order_id} is a test order: no money moved"
        )));
    }
    let Some(customer) = customer_of(order)? else {
        // A platform's order number; an order id sent as an address or a phone number is not
        // kept as such.
        let order_id = crate::telemetry::event_ref(&order_id);
        tracing::info!(order_id, "guest order acknowledged without points");
        return Ok(Normalised::Ignored(format!(
            "order {order_id} is a guest checkout: no member to credit"
        )));
    };
    let code = order
        .get("currency")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("currency is missing"))?;
    let currency = Currency::from_code(code).map_err(|e| invalid(format!("currency: {e}")))?;
    let items = order
        .get("line_items")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("line_items is missing"))?;
    let refunded = refunded_units(order)?;
    let mut lines = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let price = shop_amount(item, "price")
            .ok_or_else(|| invalid(format!("line_items[{i}].price is missing")))?;
        let ordered = item
            .get("quantity")
            .and_then(Value::as_i64)
            .ok_or_else(|| invalid(format!("line_items[{i}].quantity is missing")))?;
        let line_id = id(item, "id")?;
        let quantity = paid_units(item, ordered, refunded.get(&line_id).copied());
        if quantity == 0 {
            // Removed by an order edit: never paid for, and no refund will take it back.
            continue;
        }
        // Discount allocations include the line's share of order-level discounts.
        let mut discount = 0;
        match item.get("discount_allocations").and_then(Value::as_array) {
            Some(allocations) if !allocations.is_empty() => {
                for a in allocations {
                    let amount = shop_amount(a, "amount").ok_or_else(|| {
                        invalid(format!(
                            "line_items[{i}].discount_allocations amount is missing"
                        ))
                    })?;
                    discount += minor(currency, amount, &format!("line_items[{i}] discount"))?;
                }
            }
            _ => {
                if let Some(amount) = shop_amount(item, "total_discount") {
                    discount = minor(currency, amount, &format!("line_items[{i}].total_discount"))?;
                }
            }
        }
        if quantity < ordered {
            discount = kept_discount(discount, quantity, ordered);
        }
        lines.push(json!({
            "line_id": line_id,
            "sku": item.get("sku").and_then(Value::as_str).unwrap_or(""),
            "category": item.get("product_type").and_then(Value::as_str).unwrap_or(""),
            "quantity": quantity,
            "unit_price": price,
            "discount": currency.format_amount(discount),
            "gift_card": item.get("gift_card").and_then(Value::as_bool).unwrap_or(false),
        }));
    }
    if lines.is_empty() {
        return Ok(Normalised::Ignored(format!(
            "order {order_id}: every line was removed by an order edit, nothing was paid for"
        )));
    }
    let mut shipping = 0;
    for line in order
        .get("shipping_lines")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(amount) = shop_amount(line, "price") {
            shipping += minor(currency, amount, "shipping_lines price")?;
        }
    }
    let tax = shop_amount(order, "total_tax").unwrap_or("0");
    let identities = order
        .get("customer")
        .and_then(|c| c.get("email"))
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(|e| vec![format!("email:{}", e.to_lowercase())])
        .unwrap_or_default();
    Ok(Normalised::Events(vec![PlatformEvent {
        kind: "purchase.completed",
        id: format!("shopify-order-{order_id}-paid"),
        member: MemberRef::Identity(format!("shopify:{customer}")),
        occurred_at: time(order, &["processed_at", "created_at"]).unwrap_or(fallback),
        data: json!({
            "order_id": order_id,
            "currency": code,
            "lines": lines,
            "shipping": currency.format_amount(shipping),
            "tax": tax,
            "taxes_included": order.get("taxes_included").and_then(Value::as_bool).unwrap_or(false),
            "channel": "online",
            "platform": "shopify",
        }),
        order_key: Some(crate::envelope::order_key("shopify", &order_id)),
        identities,
    }]))
}

/// The units of each line that the order's refunds returned (`refunds` of an order from the
/// Admin API; a webhook's order has none when it is paid).
fn refunded_units(order: &Value) -> Result<std::collections::HashMap<String, i64>, WebhookError> {
    let mut units = std::collections::HashMap::new();
    let refunds = order.get("refunds").and_then(Value::as_array);
    for refund in refunds.into_iter().flatten() {
        let items = refund.get("refund_line_items").and_then(Value::as_array);
        for item in items.into_iter().flatten() {
            let quantity = item.get("quantity").and_then(Value::as_i64).unwrap_or(0);
            if quantity > 0 {
                let line = id(item, "line_item_id")?;
                let sum: &mut i64 = units.entry(line).or_default();
                *sum = sum.saturating_add(quantity);
            }
        }
    }
    Ok(units)
}

/// The units of a line that were paid for: `current_quantity` (what order edits and refunds
/// left) with the refunded units added back, since their refunds take their points back; the
/// ordered quantity when the field is absent (API versions before 2024-01).
fn paid_units(item: &Value, ordered: i64, refunded: Option<i64>) -> i64 {
    match item.get("current_quantity").and_then(Value::as_i64) {
        Some(current) if ordered > 0 => current
            .max(0)
            .saturating_add(refunded.unwrap_or(0))
            .min(ordered),
        _ => ordered,
    }
}

/// A line's discount for the units kept of those ordered, rounded up: the discount of removed
/// units never makes the kept ones earn more.
fn kept_discount(discount: i64, kept: i64, ordered: i64) -> i64 {
    let (discount, kept, ordered) = (i128::from(discount), i128::from(kept), i128::from(ordered));
    let share = (discount * kept + ordered - 1).div_euclid(ordered);
    i64::try_from(share).unwrap_or(i64::MAX)
}

fn cancelled(order: &Value, fallback: DateTime<Utc>) -> Result<Normalised, WebhookError> {
    let order_id = id(order, "id")?;
    // The signature covers the body, not the topic header: a cancellation's body says so
    // itself, so a signed order of another topic sent under this one takes nothing back.
    if order.get("cancelled_at").is_none_or(Value::is_null) {
        return Ok(Normalised::Ignored(format!(
            "order {order_id} has no cancelled_at: it is not cancelled"
        )));
    }
    if is_test(order) {
        return Ok(Normalised::Ignored(format!(
            "order {order_id} is a test order: it earned nothing"
        )));
    }
    let customer = customer_of(order)?;
    let mut data = json!({"order_id": order_id, "platform": "shopify"});
    // A guest's order (which earns nothing) or one never paid takes back only what a payment
    // credited, and is dropped otherwise rather than parked for a payment that never comes.
    let unpaid = matches!(
        order.get("financial_status").and_then(Value::as_str),
        Some("pending" | "authorized" | "voided" | "expired")
    );
    if customer.is_none() || unpaid {
        data[super::IF_CREDITED] = Value::Bool(true);
    }
    let member = match customer {
        Some(customer) => MemberRef::Identity(format!("shopify:{customer}")),
        None => MemberRef::Order(crate::envelope::order_key("shopify", &order_id)),
    };
    Ok(Normalised::Events(vec![PlatformEvent {
        kind: "purchase.cancelled",
        id: format!("shopify-order-{order_id}-cancel"),
        member,
        occurred_at: time(order, &["cancelled_at", "updated_at"]).unwrap_or(fallback),
        data,
        order_key: None,
        identities: Vec::new(),
    }]))
}

fn refund(refund: &Value, fallback: DateTime<Utc>) -> Result<Normalised, WebhookError> {
    let refund_id = id(refund, "id")?;
    let order_id = id(refund, "order_id")?;
    // A refund names no order flag; its transactions say whether they were tests.
    let transactions = refund.get("transactions").and_then(Value::as_array);
    if transactions.is_some_and(|t| {
        !t.is_empty()
            && t.iter()
                .all(|t| t.get("test").and_then(Value::as_bool) == Some(true))
    }) {
        return Ok(Normalised::Ignored(format!(
            "refund {refund_id} of order {order_id} is a test: the order earned nothing"
        )));
    }
    let mut lines = Vec::new();
    for (i, item) in refund
        .get("refund_line_items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let quantity = item.get("quantity").and_then(Value::as_i64).unwrap_or(0);
        if quantity > 0 {
            let line_id = id(item, "line_item_id")
                .map_err(|_| invalid(format!("refund_line_items[{i}].line_item_id is missing")))?;
            // The SKU finds the line of an order imported from Shopify's export, which
            // names no line ids.
            let sku = item
                .get("line_item")
                .and_then(|l| l.get("sku"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut line = json!({"line_id": line_id, "quantity": quantity});
            if !sku.is_empty() {
                line["sku"] = json!(sku);
            }
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return amount_refund(refund, &refund_id, &order_id, fallback);
    }
    Ok(Normalised::Events(vec![PlatformEvent {
        kind: "purchase.refunded",
        id: format!("shopify-order-{order_id}-refund-{refund_id}"),
        // Shopify's refund payload carries no customer: the order's member is looked up.
        member: MemberRef::Order(crate::envelope::order_key("shopify", &order_id)),
        occurred_at: time(refund, &["processed_at", "created_at"]).unwrap_or(fallback),
        data: json!({"order_id": order_id, "refund_id": refund_id, "lines": lines, "platform": "shopify"}),
        order_key: None,
        identities: Vec::new(),
    }]))
}

/// A refund of money alone (no line items: a goodwill refund, a price adjustment): what its
/// successful refund transactions returned, less what its shipping refunds returned (shipping
/// never earned), taken back as a share of what the order was paid for its goods. Shopify
/// states no order total with it: the order's record has it. Nothing left (a refund of
/// shipping alone) takes back nothing.
fn amount_refund(
    refund: &Value,
    refund_id: &str,
    order_id: &str,
    fallback: DateTime<Utc>,
) -> Result<Normalised, WebhookError> {
    let refunds: Vec<&Value> = refund
        .get("transactions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("kind").and_then(Value::as_str) == Some("refund"))
        .filter(|t| {
            t.get("status")
                .and_then(Value::as_str)
                .is_none_or(|s| s == "success")
        })
        .collect();
    let Some(code) = refunds
        .first()
        .and_then(|t| t.get("currency"))
        .and_then(Value::as_str)
    else {
        return Ok(Normalised::Ignored(format!(
            "refund {refund_id} returns no line items and no money: it takes back no points"
        )));
    };
    let currency = Currency::from_code(code).map_err(|e| invalid(format!("currency: {e}")))?;
    let mut returned = 0i64;
    for (i, t) in refunds.iter().enumerate() {
        if t.get("currency").and_then(Value::as_str) != Some(code) {
            return Err(invalid(format!(
                "transactions[{i}] is in another currency than the refund's first"
            )));
        }
        let amount = t.get("amount").and_then(Value::as_str).unwrap_or("0");
        returned = returned.saturating_add(minor(currency, amount, "transactions amount")?);
    }
    let mut shipping = 0i64;
    for adjustment in refund
        .get("order_adjustments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.get("kind").and_then(Value::as_str) == Some("shipping_refund"))
    {
        // Its tax is stated apart, and returned with it in the transactions.
        for field in ["amount", "tax_amount"] {
            let amount = money_in(adjustment, field, code).unwrap_or("0");
            let amount = amount.trim_start_matches('-');
            let what = format!("order_adjustments {field}");
            shipping = shipping.saturating_add(minor(currency, amount, &what)?);
        }
    }
    let amount = returned.saturating_sub(shipping);
    if amount <= 0 {
        return Ok(Normalised::Ignored(format!(
            "refund {refund_id} returns no line items and only shipping: it takes back no points"
        )));
    }
    Ok(Normalised::Events(vec![PlatformEvent {
        kind: "purchase.refunded",
        id: format!("shopify-order-{order_id}-refund-{refund_id}"),
        member: MemberRef::Order(crate::envelope::order_key("shopify", order_id)),
        occurred_at: time(refund, &["processed_at", "created_at"]).unwrap_or(fallback),
        data: json!({
            "order_id": order_id,
            "refund_id": refund_id,
            "amount": currency.format_amount(amount),
            // Checked against the program's: money returned in another currency (a
            // presentment currency) is refused with that reason, never taken as the shop's.
            "currency": code,
            "platform": "shopify",
        }),
        order_key: None,
        identities: Vec::new(),
    }]))
}

/// `{field}_set`'s money in currency `code` (shop or presentment money), else the plain
/// `{field}`.
fn money_in<'a>(value: &'a Value, field: &str, code: &str) -> Option<&'a str> {
    let set = value.get(format!("{field}_set"));
    ["shop_money", "presentment_money"]
        .iter()
        .filter_map(|which| set.and_then(|s| s.get(*which)))
        .find(|money| money.get("currency_code").and_then(Value::as_str) == Some(code))
        .and_then(|money| money.get("amount"))
        .and_then(Value::as_str)
        .or_else(|| value.get(field).and_then(Value::as_str))
}

fn customer(customer: &Value, fallback: DateTime<Utc>) -> Result<Normalised, WebhookError> {
    let customer_id = id(customer, "id")?;
    let identities = customer
        .get("email")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(|e| vec![format!("email:{}", e.to_lowercase())])
        .unwrap_or_default();
    Ok(Normalised::Events(vec![PlatformEvent {
        kind: "engagement.recorded",
        id: format!("shopify-customer-{customer_id}-signup"),
        member: MemberRef::Identity(format!("shopify:{customer_id}")),
        occurred_at: time(customer, &["created_at"]).unwrap_or(fallback),
        data: json!({"action": "signup", "ref": format!("shopify-customer-{customer_id}"), "platform": "shopify"}),
        order_key: None,
        identities,
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Value {
        let text = include_str!("../../../tests/fixtures/shopify/orders-paid.json")
            .replace("__OCCURRED_AT__", "2026-12-01T10:00:00Z");
        serde_json::from_str(&text).expect("fixture")
    }

    fn lines(events: &[PlatformEvent]) -> Vec<(String, i64, String)> {
        events[0].data["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|l| {
                (
                    l["line_id"].as_str().unwrap_or("").to_string(),
                    l["quantity"].as_i64().unwrap_or(0),
                    l["discount"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn an_id_written_as_a_float_is_refused_not_read_as_another_order_or_customer() {
        // GIVEN a paid order as Shopify sends it, and the same order with its id, then its
        // customer's, written as a float or past 64 bits
        let plain = order();
        let now = Utc::now();
        let sent =
            |order: &Value| normalise("orders/paid", order.to_string().as_bytes(), None, now);
        let Ok(Normalised::Events(events)) = sent(&plain) else {
            panic!("the plain order earns")
        };
        assert_eq!(events[0].id, format!("shopify-order-{}-paid", plain["id"]));
        for (pointer, written) in [
            ("/id", json!(plain["id"].as_f64())),
            ("/customer/id", json!(plain["customer"]["id"].as_f64())),
            ("/customer/id", json!(18_446_744_073_709_551_616.0_f64)),
            ("/customer/id", json!(-5)),
        ] {
            let mut other = plain.clone();
            *other.pointer_mut(pointer).expect("field") = written.clone();
            // WHEN it is delivered THEN it is refused, naming the field (before: an order
            // `...-9300001.0-paid` credited a second time, customers sharing one member)
            let outcome = sent(&other);
            assert!(
                matches!(&outcome, Err(WebhookError::Invalid(m)) if m.contains("whole number")),
                "{pointer} = {written}: {outcome:?}"
            );
        }
    }

    #[test]
    fn an_order_from_the_api_earns_its_refunded_units_once_and_its_removed_ones_never() {
        // GIVEN an order read from the Admin API: of two tees one was refunded (current_quantity
        // 1, and a refund of 1), and the cap was removed by an edit with no refund
        let mut order = order();
        order["financial_status"] = json!("partially_refunded");
        order["line_items"][0]["current_quantity"] = json!(1);
        order["line_items"][1]["current_quantity"] = json!(0);
        order["refunds"] = json!([{
            "id": 9001, "order_id": order["id"],
            "refund_line_items": [{"line_item_id": 466157049, "quantity": 1}]
        }]);
        let now = Utc::now();
        // WHEN it is turned into events
        let events = order_events(&order, now).expect("events");
        // THEN the payment earns both tees (the refund takes one back) with their whole
        // discount, and not the cap; the refund returns one tee
        assert_eq!(events.len(), 2);
        assert_eq!(
            lines(&events),
            vec![("466157049".to_string(), 2, "3000".to_string())]
        );
        assert_eq!(events[1].kind, "purchase.refunded");
        assert_eq!(events[1].data["lines"][0]["quantity"], 1);
    }

    #[test]
    fn a_paid_order_without_current_quantity_earns_what_was_ordered() {
        // GIVEN an order of an API version without current_quantity
        // WHEN it is paid
        let Normalised::Events(events) = paid(&order(), Utc::now()).expect("paid") else {
            panic!("no events");
        };
        // THEN every ordered unit earns
        assert_eq!(
            lines(&events),
            vec![
                ("466157049".to_string(), 2, "3000".to_string()),
                ("518995019".to_string(), 1, "0".to_string())
            ]
        );
    }

    #[test]
    fn a_test_order_earns_nothing_by_webhook_or_by_reconcile() {
        // GIVEN an order Shopify marks as a test (a test card, the Bogus gateway)
        let mut order = order();
        order["test"] = json!(true);
        order["cancelled_at"] = json!("2026-12-01T11:00:00Z");
        let body = order.to_string();
        // WHEN it is delivered paid or cancelled, and when reconcile reads it
        for topic in ["orders/paid", "orders/cancelled"] {
            let normalised = normalise(topic, body.as_bytes(), None, Utc::now()).expect(topic);
            // THEN it is acknowledged and makes no event
            assert!(matches!(normalised, Normalised::Ignored(_)), "{topic}");
        }
        assert!(order_events(&order, Utc::now()).expect("events").is_empty());
        // AND its refund, whose transactions are tests, is not kept waiting for it
        let mut refund: Value = serde_json::from_str(
            &include_str!("../../../tests/fixtures/shopify/refunds-create.json")
                .replace("__OCCURRED_AT__", "2026-12-01T10:00:00Z"),
        )
        .expect("fixture");
        refund["transactions"][0]["test"] = json!(true);
        let normalised = normalise(
            "refunds/create",
            refund.to_string().as_bytes(),
            None,
            Utc::now(),
        )
        .expect("refund");
        assert!(
            matches!(normalised, Normalised::Ignored(_)),
            "{normalised:?}"
        );
        // AND the same order not marked as a test earns
        order["test"] = json!(false);
        assert!(matches!(
            paid(&order, Utc::now()).expect("paid"),
            Normalised::Events(_)
        ));
    }

    #[test]
    fn a_body_that_is_not_a_cancellation_cancels_nothing() {
        // GIVEN a paid order's signed body (its signature covers the body, not the topic)
        let body = order().to_string();
        // WHEN it is sent under orders/cancelled
        let normalised =
            normalise("orders/cancelled", body.as_bytes(), None, Utc::now()).expect("normalised");
        // THEN it takes nothing back
        assert!(
            matches!(normalised, Normalised::Ignored(_)),
            "{normalised:?}"
        );
    }

    #[test]
    fn a_guest_s_or_an_unpaid_order_s_cancellation_takes_back_only_what_was_credited() {
        // GIVEN the fixture's cancellation of a customer's paid order, a guest's, and one
        // never paid
        let fixture: Value = serde_json::from_str(
            &include_str!("../../../tests/fixtures/shopify/orders-cancelled.json")
                .replace("__OCCURRED_AT__", "2026-12-01T10:00:00Z"),
        )
        .expect("fixture");
        let mut guest = fixture.clone();
        guest.as_object_mut().expect("order").remove("customer");
        let mut unpaid = fixture.clone();
        unpaid["financial_status"] = json!("voided");
        // WHEN each is normalised
        let data = |order: &Value| match cancelled(order, Utc::now()).expect("cancelled") {
            Normalised::Events(events) => events[0].data.clone(),
            other => panic!("{other:?}"),
        };
        // THEN the guest's and the unpaid one's are taken only if a payment credited someone
        // (dropped, not parked for ever), and the paid one's as it comes
        assert_eq!(data(&guest)[super::super::IF_CREDITED], true);
        assert_eq!(data(&unpaid)[super::super::IF_CREDITED], true);
        assert!(data(&fixture).get(super::super::IF_CREDITED).is_none());
    }

    #[test]
    fn a_refund_names_each_line_s_sku_when_shopify_gives_it() {
        // GIVEN the refund of the cap, whose line Shopify describes with its SKU
        let text = include_str!("../../../tests/fixtures/shopify/refunds-create.json")
            .replace("__OCCURRED_AT__", "2026-12-01T10:00:00Z");
        // WHEN it is normalised
        let Normalised::Events(events) =
            normalise("refunds/create", text.as_bytes(), None, Utc::now()).expect("refund")
        else {
            panic!("no events");
        };
        // THEN the line carries Shopify's id and the SKU (which finds an imported line)
        assert_eq!(
            events[0].data["lines"],
            json!([{"line_id": "518995019", "quantity": 1, "sku": "CAP-NVY"}])
        );
    }

    /// The fixture's refund with no line items, returning `transactions` with these
    /// `order_adjustments`.
    fn money_refund(transactions: Value, adjustments: Value) -> Normalised {
        let text = include_str!("../../../tests/fixtures/shopify/refunds-create.json")
            .replace("__OCCURRED_AT__", "2026-12-01T10:00:00Z");
        let mut refund: Value = serde_json::from_str(&text).expect("fixture");
        refund["refund_line_items"] = json!([]);
        refund["transactions"] = transactions;
        refund["order_adjustments"] = adjustments;
        let body = refund.to_string();
        normalise("refunds/create", body.as_bytes(), None, Utc::now()).expect("refund")
    }

    #[test]
    fn a_refund_of_money_alone_takes_back_what_it_returned_for_the_goods() {
        // GIVEN a refund of no line items that returned 25,000 in two transactions (one
        // failed, not counted) and 3,000 of shipping, in shop money
        let shipping = json!([{"kind": "shipping_refund", "amount": "-3000",
            "amount_set": {"shop_money": {"amount": "-3000", "currency_code": "KRW"},
                           "presentment_money": {"amount": "-2.22", "currency_code": "USD"}}}]);
        let transactions = json!([
            {"kind": "refund", "status": "success", "amount": "20000", "currency": "KRW"},
            {"kind": "refund", "status": "failure", "amount": "9000", "currency": "KRW"},
            {"kind": "refund", "status": "success", "amount": "5000", "currency": "KRW"}]);
        // WHEN it is normalised
        let Normalised::Events(events) = money_refund(transactions, shipping) else {
            panic!("no events");
        };
        // THEN it refunds 22,000 of the order (its goods' share), in its currency, no lines
        let data = &events[0].data;
        assert_eq!(
            (data["amount"].as_str(), data["currency"].as_str()),
            (Some("22000"), Some("KRW"))
        );
        assert!(data.get("lines").is_none() && data.get("order_total").is_none());
        // AND a refund of the shipping alone, with its tax, takes back nothing
        let shipping_only = json!([{"kind": "refund", "amount": "3300", "currency": "KRW"}]);
        let taxed = json!([{"kind": "shipping_refund", "amount": "-3000", "tax_amount": "-300"}]);
        assert!(matches!(
            money_refund(shipping_only, taxed),
            Normalised::Ignored(_)
        ));
        // AND neither does one that returned no money
        assert!(matches!(
            money_refund(json!([]), json!([])),
            Normalised::Ignored(_)
        ));
    }

    #[test]
    fn an_order_whose_every_line_was_removed_earns_nothing() {
        // GIVEN an order whose lines were all removed before it was paid
        let mut order = order();
        order["line_items"][0]["current_quantity"] = json!(0);
        order["line_items"][1]["current_quantity"] = json!(0);
        // WHEN it is paid THEN it is acknowledged and makes no event
        assert!(matches!(
            paid(&order, Utc::now()).expect("paid"),
            Normalised::Ignored(_)
        ));
    }

    #[test]
    fn a_kept_share_of_a_discount_is_rounded_up() {
        assert_eq!(kept_discount(3000, 1, 2), 1500);
        assert_eq!(kept_discount(1000, 1, 3), 334);
        assert_eq!(kept_discount(0, 1, 3), 0);
        assert_eq!(
            kept_discount(crate::domain::limits::MAX_AMOUNT, 999_999, 1_000_000),
            9_999_990_000_000
        );
    }
}
