//! WooCommerce: `X-WC-Webhook-Signature` (base64 HMAC-SHA256 of the body) on `order.created` and
//! `order.updated`. WooCommerce does not retry, and its delivery ids are not stable, so every
//! event id derives from the order and the effect.
//!
//! An order whose status is `processing` or `completed` earns (once); `refunded` or `cancelled`
//! reverses what is left. Its `refunds` list carries totals but no lines, so a partial refund
//! takes back the same share of every line as it is of the order's total (shipping and tax
//! included, as WooCommerce counts them).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{json, Value};

use super::{MemberRef, Normalised, PlatformEvent, WebhookError};
use crate::domain::Currency;
use crate::envelope::order_key;

pub const SIGNATURE_HEADER: &str = "x-wc-webhook-signature";
pub const TOPIC_HEADER: &str = "x-wc-webhook-topic";

fn invalid(message: impl Into<String>) -> WebhookError {
    WebhookError::Invalid(message.into())
}

/// The form-encoded ping WooCommerce sends, unsigned, when a webhook is saved.
pub fn is_ping(body: &[u8], signed: bool) -> bool {
    !signed && body.starts_with(b"webhook_id=")
}

fn text<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

/// A required id (see [`super::platform_id`]).
fn id(value: &Value, field: &str) -> Result<String, WebhookError> {
    super::platform_id(value, field)?.ok_or_else(|| invalid(format!("{field} is missing")))
}

/// WooCommerce's `*_gmt` times have no zone: they are UTC.
fn gmt(order: &Value, fields: &[&str]) -> Option<DateTime<Utc>> {
    fields.iter().find_map(|f| {
        let t = text(order, f)?;
        NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
            .ok()
            .map(|n| n.and_utc())
    })
}

fn money(currency: Currency, value: &Value, field: &str, what: &str) -> Result<i64, WebhookError> {
    let text = text(value, field).unwrap_or("0");
    let minor = currency
        .parse_amount(text)
        .map_err(|e| invalid(format!("{what}.{field}: {e}")))?;
    super::bounded(minor, &format!("{what}.{field}"))
}

pub fn normalise(topic: &str, body: &[u8], now: DateTime<Utc>) -> Result<Normalised, WebhookError> {
    if topic != "order.created" && topic != "order.updated" {
        return Ok(Normalised::Ignored(format!(
            "topic {topic:?} has no effect on points"
        )));
    }
    let order: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let order_id = id(&order, "id")?;
    let status = text(&order, "status").ok_or_else(|| invalid("status is missing"))?;
    let customer = super::platform_id(&order, "customer_id")?.unwrap_or_else(|| "0".into());
    // A guest order credits no one; its refunds and cancellation go to whoever its payment
    // credited, if anyone (staff may have made a customer's order a guest's since).
    let guest = customer == "0";
    let member = match guest {
        true => MemberRef::Order(order_key("woocommerce", &order_id)),
        false => MemberRef::Identity(format!("woocommerce:{customer}")),
    };
    let occurred_at = gmt(&order, &["date_paid_gmt", "date_created_gmt"]).unwrap_or(now);
    // An order not paid when cancelled (WooCommerce cancels unpaid orders after a while, and
    // takes a payment for them later; cash on delivery is paid on completion) takes back only
    // what a payment credited: kept waiting, it would take back a later payment. So do a
    // guest order's refunds: its payment credited no one, unless the order was a customer's.
    let not_paid = order.get("date_paid_gmt").is_some_and(Value::is_null);
    let mut normalised = match status {
        "processing" | "completed" if guest => {
            match paid(&order, &order_id, member, occurred_at, now)? {
                Normalised::Events(events) => {
                    let refunds: Vec<PlatformEvent> = events
                        .into_iter()
                        .filter(|e| e.kind != "purchase.completed")
                        .collect();
                    match refunds.is_empty() {
                        true => Normalised::Ignored(format!(
                            "order {order_id} is a guest checkout: no member to credit"
                        )),
                        false => Normalised::Events(refunds),
                    }
                }
                ignored => ignored,
            }
        }
        "processing" | "completed" => paid(&order, &order_id, member, occurred_at, now)?,
        "refunded" | "cancelled" => Normalised::Events(vec![PlatformEvent {
            kind: "purchase.cancelled",
            id: format!("woocommerce-order-{order_id}-cancel"),
            member,
            occurred_at: gmt(&order, &["date_modified_gmt"]).unwrap_or(now),
            data: json!({"order_id": order_id, "platform": "woocommerce", "reason": status}),
            order_key: None,
            identities: Vec::new(),
        }]),
        other => Normalised::Ignored(format!(
            "order {order_id} is {other}: nothing to credit yet"
        )),
    };
    if let Normalised::Events(events) = &mut normalised {
        for event in events.iter_mut().filter(|e| e.kind != "purchase.completed") {
            if guest || (not_paid && event.kind == "purchase.cancelled") {
                if let Some(data) = event.data.as_object_mut() {
                    data.insert(super::IF_CREDITED.into(), Value::Bool(true));
                }
            }
        }
    }
    Ok(normalised)
}

/// An order as `wp-json/wc/v3/orders` gives it, turned into the events its `order.updated`
/// webhook produces, with the same ids (WooCommerce's webhooks deliver that same document).
pub fn order_events(order: &Value, now: DateTime<Utc>) -> Result<Vec<PlatformEvent>, WebhookError> {
    let body = serde_json::to_vec(order).map_err(|e| invalid(e.to_string()))?;
    Ok(match normalise("order.updated", &body, now)? {
        Normalised::Events(events) => events,
        Normalised::Ignored(_) => Vec::new(),
    })
}

/// What the order's negative fee lines take off, in minor units (with their tax where prices
/// include it); positive fees are charges that earn nothing, as shipping.
fn negative_fees(order: &Value, currency: Currency, with_tax: bool) -> Result<i64, WebhookError> {
    let mut off: i64 = 0;
    let fees = order.get("fee_lines").and_then(Value::as_array);
    for (i, fee) in fees.into_iter().flatten().enumerate() {
        let what = format!("fee_lines[{i}]");
        let mut total = money(currency, fee, "total", &what)?;
        if with_tax {
            total += money(currency, fee, "total_tax", &what)?;
        }
        off = off.saturating_add((-total).max(0));
    }
    Ok(off)
}

fn paid(
    order: &Value,
    order_id: &str,
    member: MemberRef,
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Normalised, WebhookError> {
    let code = text(order, "currency").ok_or_else(|| invalid("currency is missing"))?;
    let currency = Currency::from_code(code).map_err(|e| invalid(format!("currency: {e}")))?;
    // Line amounts exclude tax; where prices include tax, it is part of what the member paid.
    let with_tax = order
        .get("prices_include_tax")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let items = order
        .get("line_items")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("line_items is missing"))?;
    let mut lines = Vec::with_capacity(items.len());
    // Each line's discount, and what it came to after it.
    let mut discounts: Vec<(i64, i64)> = Vec::with_capacity(items.len());
    // What the lines came to after their discounts: the share a refund takes when the order's
    // total says nothing (a gift card paid all of it).
    let mut lines_total: i64 = 0;
    for (i, item) in items.iter().enumerate() {
        let what = format!("line_items[{i}]");
        let mut before = money(currency, item, "subtotal", &what)?;
        let mut after = money(currency, item, "total", &what)?;
        if with_tax {
            before += money(currency, item, "subtotal_tax", &what)?;
            after += money(currency, item, "total_tax", &what)?;
        }
        let quantity = item
            .get("quantity")
            .and_then(Value::as_i64)
            .filter(|q| *q > 0)
            .ok_or_else(|| invalid(format!("{what}.quantity is missing")))?;
        // A subtotal that does not divide into whole minor units per unit keeps its units (a
        // membership bought three periods at once is three periods, a per-unit bonus counts
        // each): the unit price is rounded up and what that adds goes into the line's discount,
        // so that the line still comes to what was paid.
        let unit_price = before.div_euclid(quantity) + i64::from(before.rem_euclid(quantity) != 0);
        let rounding = unit_price.saturating_mul(quantity) - before;
        lines_total = lines_total.saturating_add(after.max(0));
        lines.push(json!({
            "line_id": id(item, "id")?,
            "sku": text(item, "sku").unwrap_or(""),
            "quantity": quantity,
            "unit_price": currency.format_amount(unit_price),
        }));
        discounts.push(((before - after).max(0) + rounding, after.max(0)));
    }
    // A negative fee (a discount for paying by bank transfer, a plugin's cart discount) lowers
    // what the lines were paid: spread over them in proportion to what each came to.
    let fees_off = negative_fees(order, currency, with_tax)?.min(lines_total);
    let shares = if fees_off > 0 {
        let numerators: Vec<i128> = discounts
            .iter()
            .map(|(_, after)| i128::from(*after) * i128::from(fees_off))
            .collect();
        crate::domain::earning::apportion(&numerators, i128::from(lines_total))
            .ok_or_else(|| invalid("the fees do not fit the lines"))?
    } else {
        vec![0; discounts.len()]
    };
    for ((line, (discount, _)), share) in lines.iter_mut().zip(&discounts).zip(shares) {
        line["discount"] = json!(currency.format_amount(discount + share));
    }
    let total = money(currency, order, "total", "order")?;
    let mut events = vec![PlatformEvent {
        kind: "purchase.completed",
        id: format!("woocommerce-order-{order_id}-paid"),
        member: member.clone(),
        occurred_at,
        data: json!({
            "order_id": order_id,
            "currency": code,
            "lines": lines,
            "shipping": text(order, "shipping_total").unwrap_or("0"),
            "tax": text(order, "total_tax").unwrap_or("0"),
            "taxes_included": with_tax,
            "channel": "online",
            "platform": "woocommerce",
        }),
        order_key: Some(order_key("woocommerce", order_id)),
        identities: text(order.get("billing").unwrap_or(&Value::Null), "email")
            .filter(|e| !e.is_empty())
            .map(|e| vec![format!("email:{}", e.to_lowercase())])
            .unwrap_or_default(),
    }];
    for refund in order
        .get("refunds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let refund_id = id(refund, "id")?;
        // WooCommerce writes refund totals as negative amounts.
        let amount = money(currency, refund, "total", "refunds")?.abs();
        let of = if total > 0 { total } else { lines_total };
        if amount == 0 || of == 0 {
            continue;
        }
        events.push(PlatformEvent {
            kind: "purchase.refunded",
            id: format!("woocommerce-order-{order_id}-refund-{refund_id}"),
            member: member.clone(),
            occurred_at: gmt(order, &["date_modified_gmt"]).unwrap_or(now),
            data: json!({
                "order_id": order_id,
                "refund_id": refund_id,
                "amount": currency.format_amount(amount),
                "order_total": currency.format_amount(of),
                // Checked against the program's, as the payment's is.
                "currency": code,
                "platform": "woocommerce",
            }),
            order_key: None,
            identities: Vec::new(),
        });
    }
    Ok(Normalised::Events(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(total: &str, refunds: &str) -> Vec<u8> {
        include_str!("../../../tests/fixtures/woocommerce/order-processing.json")
            .replace("__STATUS__", "processing")
            .replace("__PAID_AT__", "2026-11-20T10:00:00")
            .replace("__MODIFIED_AT__", "2026-11-22T10:00:00")
            .replace("__REFUNDS__", refunds)
            .replace("\"total\": \"75.19\"", &format!("\"total\": \"{total}\""))
            .into_bytes()
    }

    fn refund_of(body: &[u8]) -> Value {
        let Ok(Normalised::Events(events)) = normalise("order.updated", body, Utc::now()) else {
            panic!("events")
        };
        events
            .into_iter()
            .find(|e| e.kind == "purchase.refunded")
            .expect("a refund")
            .data
    }

    #[test]
    fn an_order_or_customer_id_written_as_a_float_is_refused() {
        // GIVEN a processing order, and the same with its id or its customer's as a float
        let plain: Value = serde_json::from_slice(&order("75.19", "[]")).expect("json");
        for (field, written) in [
            ("id", json!(plain["id"].as_f64())),
            ("customer_id", json!(plain["customer_id"].as_f64())),
            ("customer_id", json!(-5)),
        ] {
            let mut other = plain.clone();
            other[field] = written.clone();
            // WHEN it is delivered THEN it is refused (before: another order, credited again)
            let outcome = normalise("order.updated", other.to_string().as_bytes(), Utc::now());
            assert!(
                matches!(&outcome, Err(WebhookError::Invalid(m)) if m.contains("whole number")),
                "{field} = {written}: {outcome:?}"
            );
        }
        let plain = normalise("order.updated", plain.to_string().as_bytes(), Utc::now());
        assert!(matches!(plain, Ok(Normalised::Events(_))), "{plain:?}");
    }

    #[test]
    fn a_line_whose_subtotal_does_not_divide_by_its_units_keeps_them() {
        // GIVEN a line of three units for $100.00 (not a whole number of cents each), $90.00
        // after its discount
        let body = String::from_utf8(order("75.19", "[]"))
            .unwrap()
            .replacen("\"quantity\": 2", "\"quantity\": 3", 1)
            .replacen("\"subtotal\": \"50.00\"", "\"subtotal\": \"100.00\"", 1)
            .replacen("\"total\": \"45.00\"", "\"total\": \"90.00\"", 1);
        let Ok(Normalised::Events(events)) =
            normalise("order.updated", body.as_bytes(), Utc::now())
        else {
            panic!("events")
        };
        // WHEN it is read THEN it is three units at $33.34, and its discount takes the $0.02
        // of rounding with the $10.00: the line comes to $90.00 as paid
        let line = &events[0].data["lines"][0];
        assert_eq!(
            (
                line["quantity"].as_i64(),
                line["unit_price"].as_str(),
                line["discount"].as_str()
            ),
            (Some(3), Some("33.34"), Some("10.02"))
        );
    }

    #[test]
    fn a_negative_fee_is_taken_off_the_lines_in_proportion_and_a_positive_one_earns_nothing() {
        // GIVEN the order's lines of $45.00 (after $5.00 off) and $19.99, with a $6.50 discount
        // for paying by bank transfer as a negative fee, and a $3.00 handling fee
        let body = String::from_utf8(order("71.69", "[]")).unwrap().replacen(
            "\"shipping_lines\":",
            r#""fee_lines": [{"id": 9, "name": "Bank transfer", "total": "-6.50", "total_tax": "0.00"},
                             {"id": 10, "name": "Handling", "total": "3.00", "total_tax": "0.00"}],
               "shipping_lines":"#,
            1,
        );
        let Ok(Normalised::Events(events)) =
            normalise("order.updated", body.as_bytes(), Utc::now())
        else {
            panic!("events")
        };
        // WHEN it is read THEN the $6.50 is spread over the lines by what each came to ($4.50
        // and $2.00, the cent left over to the larger remainder): they come to what was paid
        let discounts: Vec<&str> = events[0].data["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["discount"].as_str().unwrap())
            .collect();
        assert_eq!(discounts, ["9.50", "2.00"]);
    }

    #[test]
    fn a_refund_of_an_order_a_gift_card_paid_takes_its_share_of_the_lines() {
        // GIVEN an order whose total is nothing (a gift card paid it: $45.00 and $19.99 of
        // lines), with a refund of $19.99
        let refunds = r#"[{"id": 801, "reason": "", "total": "-19.99"}]"#;
        // WHEN it is read THEN the refund is the lines' share, not passed over
        let data = refund_of(&order("0.00", refunds));
        assert_eq!(
            (data["amount"].as_str(), data["order_total"].as_str()),
            (Some("19.99"), Some("64.99"))
        );
        // AND with a total, the total is the whole as before
        let data = refund_of(&order("75.19", refunds));
        assert_eq!(data["order_total"], "75.19");
    }
}
