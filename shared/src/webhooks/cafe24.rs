//! Cafe24: a static key in `X-Api-Key` (no signature; a wrong key is answered 403, as Cafe24
//! asks) and a body `{"event_no": N, "resource": {...}}`.
//!
//! `event_no` names the kind of event, not the delivery, so every event id derives from the
//! order, the effect and the claim: `cafe24-order-{order}-paid`, `...-cancel`,
//! `...-refund-{claim}`.
//!
//! | event_no | what | effect |
//! |---|---|---|
//! | 90023, 90025 | order placed / payment status changed | earn once when `paid` is `T` |
//! | 90026, 90072 (bulk) | cancellation | reverse what is left |
//! | 90029, 90073 (bulk), 90160 | refund / return completed | reverse the refunded share |
//!
//! Cafe24's order events carry no line items, only order amounts, so an order earns as one line
//! (`order`) on what the member paid in money for the goods: `actual_payment_amount` less
//! `shipping_fee` (points paid with the shop's own mileage earn nothing, like gift cards). Its
//! refunds carry an amount: `refund_amount` less the `refund_shipping_fee` it returns is taken
//! back as its share of what the purchase recorded as paid for the goods. Every refund event of
//! an order (90029 names the payment, 90160 the price and discounts) is measured against that one
//! total, so a return of every item takes back every point and a refund of shipping alone none.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::{MemberRef, Normalised, PlatformEvent, WebhookError};
use crate::domain::Currency;
use crate::envelope::order_key;

pub const API_KEY_HEADER: &str = "x-api-key";
pub const TRACE_HEADER: &str = "x-trace-id";

/// Cafe24 is a Korean platform: times written without a zone are Korea Standard Time.
const KST_SECONDS: i32 = 9 * 3600;

fn invalid(message: impl Into<String>) -> WebhookError {
    WebhookError::Invalid(message.into())
}

/// Compares the delivered key with each configured key, in constant time: their digests, so
/// that the time says nothing of a key's length either. Both are trimmed (a key pasted into a
/// parameter often ends with a newline).
pub fn verify_key(secrets: &[String], key: Option<&str>) -> Result<(), WebhookError> {
    use sha2::{Digest as _, Sha256};
    let key = key.map(str::trim).unwrap_or_default().as_bytes();
    let wanted = Sha256::digest(key);
    let matched = secrets.iter().fold(false, |found, s| {
        let digest = Sha256::digest(s.trim().as_bytes());
        found | bool::from(digest.as_slice().ct_eq(wanted.as_slice()))
    });
    if key.is_empty() || !matched {
        return Err(WebhookError::InvalidApiKey);
    }
    Ok(())
}

fn text<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn required<'a>(value: &'a Value, field: &str) -> Result<&'a str, WebhookError> {
    text(value, field).ok_or_else(|| invalid(format!("resource.{field} is missing")))
}

/// Cafe24 writes amounts as decimal strings ("24680.00"), sometimes as numbers.
fn amount(currency: Currency, value: &Value, field: &str) -> Result<Option<i64>, WebhookError> {
    let parsed = match value.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => currency.parse_amount(s.trim().trim_start_matches('-')),
        Some(Value::Number(n)) => currency.parse_amount(n.to_string().trim_start_matches('-')),
        Some(_) => return Err(invalid(format!("resource.{field} is not an amount"))),
    };
    let minor = parsed.map_err(|e| invalid(format!("resource.{field}: {e}")))?;
    super::bounded(minor, &format!("resource.{field}")).map(Some)
}

/// RFC 3339, or `YYYY-MM-DD HH:MM:SS` in Korea Standard Time.
fn time(resource: &Value, fields: &[&str]) -> Option<DateTime<Utc>> {
    fields.iter().find_map(|f| {
        let t = text(resource, f)?;
        DateTime::parse_from_rfc3339(t)
            .ok()
            .or_else(|| {
                let naive = NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").ok()?;
                FixedOffset::east_opt(KST_SECONDS)?
                    .from_local_datetime(&naive)
                    .single()
            })
            .map(|t| t.with_timezone(&Utc))
    })
}

/// Turns a verified delivery into events. `fallback` is the program's currency, for events that
/// name none (a return completed carries only amounts).
pub fn normalise(
    body: &[u8],
    fallback: Currency,
    now: DateTime<Utc>,
) -> Result<Normalised, WebhookError> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let event_no = payload
        .get("event_no")
        .and_then(|n| {
            n.as_i64()
                .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| invalid("event_no is missing"))?;
    let resource = payload
        .get("resource")
        .filter(|r| r.is_object())
        .ok_or_else(|| invalid("resource is missing"))?;
    let effect = match event_no {
        90023 | 90025 => Effect::Paid,
        90026 | 90072 => Effect::Cancel,
        90029 | 90073 | 90160 => Effect::Refund,
        other => {
            return Ok(Normalised::Ignored(format!(
                "event_no {other} has no effect on points"
            )))
        }
    };
    let orders = required(resource, "order_id")?;
    let listed: Vec<&str> = orders
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    // Bulk events list several orders, comma-separated, with one set of amounts: a
    // cancellation names no amount and applies to each, but a payment or a refund cannot be
    // shared out among its orders (each would be credited or reversed by the whole).
    if listed.len() > 1 && !matches!(effect, Effect::Cancel) {
        return Err(invalid(format!(
            "event_no {event_no} lists {} orders ({orders}) with one amount: it cannot be shared out among them; reconcile them one by one",
            listed.len()
        )));
    }
    let mut events = Vec::new();
    for order_id in listed {
        let event = match effect {
            Effect::Paid => paid(resource, order_id, now)?,
            Effect::Cancel => Some(cancelled(resource, order_id, now)),
            Effect::Refund => refunded(resource, order_id, fallback, now)?,
        };
        events.extend(event);
    }
    if events.is_empty() {
        return Ok(Normalised::Ignored(ignored_reason(
            effect, resource, orders,
        )));
    }
    Ok(Normalised::Events(events))
}

#[derive(Debug, Clone, Copy)]
enum Effect {
    Paid,
    Cancel,
    Refund,
}

fn ignored_reason(effect: Effect, resource: &Value, orders: &str) -> String {
    match (effect, text(resource, "member_id")) {
        (Effect::Paid, None) => {
            format!("order {orders} is a guest checkout: no member to credit")
        }
        (Effect::Refund, _) => format!(
            "the refund of order {orders} returns shipping only: its goods earned the points"
        ),
        _ => format!("order {orders} is not paid yet: nothing to credit"),
    }
}

/// The member of an order event, or the order itself when the event names nobody (a return
/// completed carries only the order and the claim).
fn member(resource: &Value, order_id: &str) -> MemberRef {
    match text(resource, "member_id") {
        Some(member) => MemberRef::Identity(format!("cafe24:{member}")),
        None => MemberRef::Order(order_key("cafe24", order_id)),
    }
}

fn currency(resource: &Value) -> Result<(Currency, &str), WebhookError> {
    let code = required(resource, "currency")?;
    let currency = Currency::from_code(code).map_err(|e| invalid(format!("currency: {e}")))?;
    Ok((currency, code))
}

fn paid(
    resource: &Value,
    order_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<PlatformEvent>, WebhookError> {
    if text(resource, "paid") != Some("T") {
        return Ok(None);
    }
    let Some(member_id) = text(resource, "member_id") else {
        tracing::info!(
            order_id = crate::telemetry::event_ref(order_id),
            platform = "cafe24",
            "guest order acknowledged without points"
        );
        return Ok(None);
    };
    let (currency, code) = currency(resource)?;
    let price = amount(currency, resource, "order_price_amount")?
        .ok_or_else(|| invalid("resource.order_price_amount is missing"))?;
    let paid = amount(currency, resource, "actual_payment_amount")?
        .ok_or_else(|| invalid("resource.actual_payment_amount is missing"))?;
    let shipping = amount(currency, resource, "shipping_fee")?.unwrap_or(0);
    // What was paid in money for the goods; discounts and mileage make up the rest of the price.
    let for_goods = (paid - shipping).clamp(0, price);
    let identities = text(resource, "buyer_email")
        .map(|e| vec![format!("email:{}", e.to_lowercase())])
        .unwrap_or_default();
    Ok(Some(PlatformEvent {
        kind: "purchase.completed",
        id: format!("cafe24-order-{order_id}-paid"),
        member: MemberRef::Identity(format!("cafe24:{member_id}")),
        occurred_at: time(resource, &["payment_date", "order_date"]).unwrap_or(now),
        data: json!({
            "order_id": order_id,
            "currency": code,
            "lines": [{
                "line_id": "order",
                "sku": "",
                "quantity": 1,
                "unit_price": currency.format_amount(price),
                "discount": currency.format_amount(price - for_goods),
            }],
            "shipping": currency.format_amount(shipping),
            "tax": "0",
            // Korean prices include VAT, and it is never subtracted.
            "taxes_included": true,
            "channel": "online",
            "platform": "cafe24",
        }),
        order_key: Some(order_key("cafe24", order_id)),
        identities,
    }))
}

fn cancelled(resource: &Value, order_id: &str, now: DateTime<Utc>) -> PlatformEvent {
    let mut data = json!({"order_id": order_id, "platform": "cafe24", "reason": "cancelled"});
    // An order cancelled unpaid (a bank transfer never made), or a guest's, earned nothing:
    // its cancellation takes back only what a payment credited, and is dropped otherwise
    // rather than kept waiting for a payment (an unpaid order restored and paid must earn).
    if text(resource, "paid") == Some("F") || text(resource, "member_id").is_none() {
        data[super::IF_CREDITED] = Value::Bool(true);
    }
    PlatformEvent {
        kind: "purchase.cancelled",
        id: format!("cafe24-order-{order_id}-cancel"),
        member: member(resource, order_id),
        occurred_at: time(resource, &["cancel_date"]).unwrap_or(now),
        data,
        order_key: None,
        identities: Vec::new(),
    }
}

/// The refund's event: the goods' part of `refund_amount` (less the shipping it returns), as a
/// share of what the order's purchase recorded as paid for its goods; `None` for a refund of
/// shipping alone. (A refund of nothing at all goes on, to be refused as any amount of zero is
/// and kept for an operator.)
fn refunded(
    resource: &Value,
    order_id: &str,
    fallback: Currency,
    now: DateTime<Utc>,
) -> Result<Option<PlatformEvent>, WebhookError> {
    let claim = text(resource, "claim_code")
        .or_else(|| text(resource, "refund_code"))
        .ok_or_else(|| invalid("resource.claim_code is missing"))?;
    let currency = match text(resource, "currency") {
        Some(_) => currency(resource)?.0,
        None => fallback,
    };
    let refund = amount(currency, resource, "refund_amount")?
        .ok_or_else(|| invalid("resource.refund_amount is missing"))?;
    let shipping_back = amount(currency, resource, "refund_shipping_fee")?.unwrap_or(0);
    let goods = refund.saturating_sub(shipping_back).max(0);
    if goods == 0 && shipping_back > 0 {
        return Ok(None);
    }
    Ok(Some(PlatformEvent {
        kind: "purchase.refunded",
        id: format!("cafe24-order-{order_id}-refund-{claim}"),
        member: member(resource, order_id),
        occurred_at: time(resource, &["refund_date", "return_date", "cancel_date"]).unwrap_or(now),
        data: json!({
            "order_id": order_id,
            "refund_id": claim,
            // No total: the events state the order's total in different ways (the payment with
            // shipping, or the price less discounts), the purchase's record states it once.
            "amount": currency.format_amount(goods),
            // Checked against the program's, as the payment's is.
            "currency": currency.to_string(),
            "platform": "cafe24",
        }),
        order_key: None,
        identities: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn the_api_key_must_match_one_configured_key() {
        let keys = vec!["current".to_string(), "previous".to_string()];
        assert!(verify_key(&keys, Some("current")).is_ok());
        assert!(verify_key(&keys, Some("previous")).is_ok());
        // AND a configured key pasted with a newline still matches
        assert!(verify_key(&["current\n".into()], Some("current")).is_ok());
        assert_eq!(
            verify_key(&keys, Some("curren")),
            Err(WebhookError::InvalidApiKey)
        );
        assert_eq!(verify_key(&keys, None), Err(WebhookError::InvalidApiKey));
        assert_eq!(
            verify_key(&["".into()], Some("")),
            Err(WebhookError::InvalidApiKey)
        );
    }

    #[test]
    fn amounts_past_the_bound_are_refused_by_name() {
        // GIVEN a return whose amount is past 10^13
        let body = json!({"event_no": 90160, "resource": {"order_id": "O-1", "claim_code": "C-1",
            "refund_amount": "9223372036854775807", "refund_shipping_fee": "1"}});
        // WHEN it is read THEN the amount is refused by name, never wrapped
        match normalise(body.to_string().as_bytes(), Currency::KRW, now()) {
            Err(WebhookError::Invalid(detail)) => {
                assert!(detail.contains("resource.refund_amount"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_paid_order_earns_on_what_was_paid_for_the_goods() {
        // GIVEN an order of 62,000 KRW with a 2,000 discount, 3,000 shipping, 63,000 paid
        let body = json!({"event_no": 90025, "resource": {
            "mall_id": "shop", "event_code": "paid_order", "order_id": "20261101-0000012",
            "member_id": "gdhong", "buyer_email": "GD@example.com", "paid": "T", "currency": "KRW",
            "payment_date": "2026-11-01 10:00:00", "order_price_amount": "62000.00",
            "membership_discount_amount": "2000.00", "actual_payment_amount": "63000.00",
            "shipping_fee": "3000.00"}});
        // WHEN it is normalised
        let Normalised::Events(events) =
            normalise(body.to_string().as_bytes(), Currency::KRW, now()).unwrap()
        else {
            panic!("an event")
        };
        // THEN it is one purchase of one line: 62,000 less 2,000 of discount, dated in KST
        let event = &events[0];
        assert_eq!(event.id, "cafe24-order-20261101-0000012-paid");
        assert_eq!(event.member, MemberRef::Identity("cafe24:gdhong".into()));
        assert_eq!(event.data["lines"][0]["unit_price"], "62000");
        assert_eq!(event.data["lines"][0]["discount"], "2000");
        assert_eq!(event.occurred_at.to_rfc3339(), "2026-11-01T01:00:00+00:00");
        assert_eq!(event.identities, vec!["email:gd@example.com".to_string()]);
    }

    #[test]
    fn unpaid_guest_and_unrelated_events_are_acknowledged_without_effect() {
        let unpaid = json!({"event_no": 90023, "resource": {"order_id": "1", "member_id": "m", "paid": "F"}});
        let guest =
            json!({"event_no": 90023, "resource": {"order_id": "1", "member_id": "", "paid": "T"}});
        let shipping = json!({"event_no": 90024, "resource": {"order_id": "1"}});
        for body in [unpaid, guest, shipping] {
            assert!(matches!(
                normalise(body.to_string().as_bytes(), Currency::KRW, now()),
                Ok(Normalised::Ignored(_))
            ));
        }
    }

    #[test]
    fn a_cancellation_of_an_unpaid_or_guest_order_takes_back_only_what_a_payment_credited() {
        // GIVEN cancellations of an unpaid order, of a guest's, and of a member's paid order
        let cancel = |resource: Value| {
            let body = json!({"event_no": 90026, "resource": resource});
            match normalise(body.to_string().as_bytes(), Currency::KRW, now()) {
                Ok(Normalised::Events(events)) => events[0].data.clone(),
                other => panic!("{other:?}"),
            }
        };
        let unpaid = cancel(json!({"order_id": "U-1", "member_id": "m", "paid": "F"}));
        let guest = cancel(json!({"order_id": "G-1", "member_id": "", "paid": "T"}));
        let paid = cancel(json!({"order_id": "P-1", "member_id": "m", "paid": "T"}));
        // THEN the first two are marked to be dropped when their order credited no one, and
        // the paid one waits for its payment as any cancellation
        assert_eq!(unpaid[crate::webhooks::IF_CREDITED], true);
        assert_eq!(guest[crate::webhooks::IF_CREDITED], true);
        assert!(paid.get(crate::webhooks::IF_CREDITED).is_none(), "{paid}");
    }

    #[test]
    fn bulk_cancellations_cancel_every_listed_order_and_refunds_need_their_claim() {
        let bulk =
            json!({"event_no": 90072, "resource": {"order_id": "A-1,A-2", "member_id": "m"}});
        let Ok(Normalised::Events(events)) =
            normalise(bulk.to_string().as_bytes(), Currency::KRW, now())
        else {
            panic!("events")
        };
        let ids: Vec<_> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["cafe24-order-A-1-cancel", "cafe24-order-A-2-cancel"]);
        let no_claim =
            json!({"event_no": 90160, "resource": {"order_id": "A-1", "refund_amount": "100"}});
        assert!(matches!(
            normalise(no_claim.to_string().as_bytes(), Currency::KRW, now()),
            Err(WebhookError::Invalid(_))
        ));
    }

    #[test]
    fn a_bulk_refund_or_payment_with_one_amount_for_several_orders_is_refused() {
        // GIVEN a bulk refund of two orders with one amount, and a payment of two orders
        let refund = json!({"event_no": 90073, "resource": {"order_id": "A-1,A-2",
            "member_id": "m", "claim_code": "C-1", "refund_amount": "10000",
            "actual_payment_amount": "20000", "currency": "KRW"}});
        let paid = json!({"event_no": 90023, "resource": {"order_id": "A-1,A-2",
            "member_id": "m", "paid": "T"}});
        for body in [refund, paid] {
            // WHEN each is read THEN it is refused, naming the orders, rather than applying the
            // whole amount to each
            match normalise(body.to_string().as_bytes(), Currency::KRW, now()) {
                Err(WebhookError::Invalid(detail)) => {
                    assert!(detail.contains("A-1,A-2"), "{detail}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_refund_takes_back_its_goods_and_leaves_the_total_to_the_purchase() {
        // GIVEN refunds of an order (each event states its total its own way, or not at all)
        let refund = |event_no: u32, amount: &str, shipping_back: Option<&str>| {
            let mut resource = json!({"order_id": "C-1", "member_id": "u1", "claim_code": "CL-1",
                "currency": "KRW", "actual_payment_amount": "62000.00", "shipping_fee": "3000.00",
                "refund_amount": amount});
            if let Some(back) = shipping_back {
                resource["refund_shipping_fee"] = json!(back);
            }
            json!({"event_no": event_no, "resource": resource})
        };
        for (body, goods) in [
            // WHEN every item is refunded THEN the goods' amount, with no total of the event's
            (refund(90160, "59000.00", Some("0.00")), "59000"),
            // WHEN everything, shipping too THEN the goods, without the shipping returned
            (refund(90160, "62000.00", Some("3000.00")), "59000"),
            // WHEN a refund completed names no shipping THEN its amount
            (refund(90029, "20000.00", None), "20000"),
        ] {
            let Ok(Normalised::Events(events)) =
                normalise(body.to_string().as_bytes(), Currency::KRW, now())
            else {
                panic!("events")
            };
            let data = &events[0].data;
            assert_eq!(data["amount"].as_str(), Some(goods), "{body}");
            assert!(data.get("order_total").is_none(), "{data}");
        }
        // WHEN the shipping alone is refunded THEN the delivery is acknowledged without effect
        let shipping = refund(90160, "3000.00", Some("3000.00")).to_string();
        assert!(matches!(
            normalise(shipping.as_bytes(), Currency::KRW, now()),
            Ok(Normalised::Ignored(_))
        ));
        // WHEN nothing at all is refunded THEN it goes on, to be refused as an amount of zero
        let nothing = refund(90029, "0.00", None).to_string();
        let Ok(Normalised::Events(events)) = normalise(nothing.as_bytes(), Currency::KRW, now())
        else {
            panic!("events")
        };
        assert_eq!(events[0].data["amount"], "0");
    }

    #[test]
    fn a_return_completed_finds_its_member_through_the_order() {
        // GIVEN Cafe24's return-completed sample: 38,000 with a 3,000 coupon, 35,000 refunded
        let body = json!({"event_no": 90160, "resource": {"mall_id": "m", "order_id": "O-1",
            "claim_code": "C-1", "currency": "KRW", "order_price_amount": "38000.00",
            "refund_amount": "35000.00", "shipping_fee": "0.00",
            "coupon_discount_amount": "-3000.00", "point_used": "0.00"}});
        let Ok(Normalised::Events(events)) =
            normalise(body.to_string().as_bytes(), Currency::KRW, now())
        else {
            panic!("events")
        };
        // THEN the amount refunded is taken back, and the member is found through the order
        assert_eq!(events[0].data["amount"], "35000");
        assert_eq!(
            events[0].member,
            MemberRef::Order(order_key("cafe24", "O-1"))
        );
    }
}
