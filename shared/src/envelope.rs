//! Messages between the functions (DESIGN §5): a versioned JSON envelope around typed data.
//!
//! The same parsing runs when an event is submitted (so bad input is refused with 400 before it
//! is queued) and when earn processes it (so a message that slipped through is rejected as
//! permanent, never retried forever).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::earning::{Purchase, PurchaseLine};
use crate::domain::limits::{MAX_AMOUNT, MAX_LINES, MAX_POINTS, MAX_QUANTITY};
use crate::domain::money::Currency;
use crate::domain::orders::{RefundLine, RefundScope, Reversal};
use crate::domain::program::Program;
use crate::ids::{IdError, IdKind};

pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub id: String,
    pub program: String,
    /// Always the canonical member id: aliases are resolved before a message is queued.
    pub member: String,
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    pub data: serde_json::Value,
    /// Set on an operator's replay of a rejected event (the replay's number): the event keeps
    /// its id, so it can never take effect twice, but the queues see a new message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<u32>,
    /// Set when the event waited while its member was suspended and was sent again on resume
    /// (the resume's time, in milliseconds): the queues see a new message, the marker still
    /// stops a second effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<i64>,
    /// Set when an operator released the event from review (it was held over a safeguard's
    /// limit): the operator's name. The safeguard does not hold it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    /// The trace of the request or webhook the event came from (X-Ray's root id): every
    /// message that follows from it carries it on, and every log line about it names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl Envelope {
    /// An envelope as a caller sent it; the refusal names the field that was wrong (`occurred_at:
    /// ...`), and says what a time must be, since a time without its offset is the usual slip
    /// and serde's own words for it ("premature end of input") name neither.
    pub fn from_body(body: &[u8]) -> Result<Envelope, String> {
        let mut reader = serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(&mut reader).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let data = matches!(inner.classify(), serde_json::error::Category::Data);
            match field.as_str() {
                "occurred_at" if data => format!(
                    "occurred_at: {inner} (an RFC 3339 time with its offset, e.g. 2026-11-30T23:30:00+09:00)"
                ),
                "." => inner.to_string(),
                _ if data => format!("{field}: {inner}"),
                _ => inner.to_string(),
            }
        })
    }

    /// The fields only the operators' routes write (a replay, a resume, a release from review)
    /// that this envelope sets: a caller setting them would skip the daily limit's hold under a
    /// made-up reviewer's name, or choose a new deduplication id for the queues.
    pub fn operators_fields(&self) -> Vec<&'static str> {
        [
            ("replay", self.replay.is_some()),
            ("resumed", self.resumed.is_some()),
            ("reviewed_by", self.reviewed_by.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect()
    }
}

/// Says which fields of [`Envelope::operators_fields`] a submitted event set.
pub fn operators_fields_refusal(set: &[&str]) -> String {
    format!(
        "{} set by the operators' routes only, never in a submitted event",
        set.join(", ") + if set.len() == 1 { " is" } else { " are" }
    )
}

/// The most bytes a queue takes in one message body (SQS's own limit on the queues the
/// template makes).
pub const MAX_MESSAGE_BYTES: usize = 262_144;

/// The most bytes an event may have when it is accepted (its envelope, encoded): what is added
/// to it later (the canonical member in place of an alias or an order's placeholder, a replay's
/// or a resume's mark, the trace) fits in the room left below [`MAX_MESSAGE_BYTES`].
pub const MAX_EVENT_BYTES: usize = MAX_MESSAGE_BYTES - 4_096;

/// The envelope as a queue's message body. SQS takes only XML's characters, which leave out
/// U+FFFE and U+FFFF; JSON writes both unescaped, and a message holding one would be refused
/// for good (a stream shard of the relay stuck behind it), so they are written as escapes,
/// which read back as the same text. They can only stand inside a string: everything JSON
/// writes outside strings is ASCII.
pub fn message_body(envelope: &Envelope) -> serde_json::Result<String> {
    let body = serde_json::to_string(envelope)?;
    if !body.contains(['\u{fffe}', '\u{ffff}']) {
        return Ok(body);
    }
    Ok(body
        .replace('\u{fffe}', "\\ufffe")
        .replace('\u{ffff}', "\\uffff"))
}

impl Envelope {
    /// A message the engine writes itself (a tier check, a notice, a merge's step): no
    /// operator's marks, and the trace of the work that made it.
    pub fn made(
        program: &str,
        kind: &str,
        id: String,
        member: &str,
        occurred_at: DateTime<Utc>,
        data: serde_json::Value,
    ) -> Envelope {
        Envelope {
            replay: None,
            resumed: None,
            reviewed_by: None,
            trace: crate::telemetry::trace::current(),
            kind: kind.to_string(),
            version: ENVELOPE_VERSION,
            id,
            program: program.to_string(),
            member: member.to_string(),
            occurred_at,
            data,
        }
    }

    /// FIFO group: one member's events are processed in order.
    pub fn group(&self) -> String {
        format!("{}#{}", self.program, self.member)
    }

    /// The message's identity across the deployment. Event ids are unique only within a
    /// program (two shops may both have a WooCommerce order 1001), so every queue that
    /// deduplicates does so on this, never on the bare id. The suffixes of a replay, a resume
    /// and a release from review follow a '#', which no event id holds: an event whose id
    /// ends like a suffix (`x/replay-1`) is never taken for another's replay.
    pub fn dedup_id(&self) -> String {
        let mut id = format!("{}/{}", self.program, self.id);
        if let Some(n) = self.replay {
            id += &format!("#replay-{n}");
        }
        if let Some(at) = self.resumed {
            id += &format!("#resumed-{at}");
        }
        if self.reviewed_by.is_some() {
            id += "#reviewed";
        }
        id
    }
}

/// The type of a purchase event.
pub const PURCHASE: &str = "purchase.completed";

/// Asks the tier queue's consumer whether a member has crossed a threshold.
pub const TIER_CHECK: &str = "tier.check";

/// The event types the earn function processes.
pub const EARN_TYPES: &[&str] = &[
    PURCHASE,
    "purchase.refunded",
    "purchase.cancelled",
    "engagement.recorded",
    "points.granted",
    "membership.paid",
];

/// Why an event is refused for good: a problem type and a message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct EventError {
    pub problem: &'static str,
    pub detail: String,
}

fn invalid(message: impl Into<String>) -> EventError {
    EventError {
        problem: "invalid-event",
        detail: message.into(),
    }
}

/// The platform an event names, `api` when it names none; it becomes part of keys.
fn platform_of(platform: Option<String>) -> Result<String, EventError> {
    let platform = platform.unwrap_or_else(|| "api".into());
    IdKind::Platform.check(&platform)?;
    Ok(platform)
}

/// The other member a referral names keeps to the member-id rule: it becomes a key (the
/// referrer's reward goes to it).
fn referral_party(field: &str, member: &str) -> Result<(), EventError> {
    IdKind::Member.check(member).map_err(|e| EventError {
        problem: e.kind.problem(),
        detail: format!("data.{field}: {e}"),
    })
}

impl From<IdError> for EventError {
    fn from(e: IdError) -> EventError {
        EventError {
            problem: e.kind.problem(),
            detail: e.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurchaseData {
    order_id: String,
    currency: String,
    lines: Vec<LineData>,
    #[serde(default)]
    shipping: Option<String>,
    #[serde(default)]
    tax: Option<String>,
    #[serde(default)]
    taxes_included: Option<bool>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    platform: Option<String>,
}

/// `membership.paid`: a payment of the program's membership fee made outside an order of the
/// shop (a till, a subscription service). It is a purchase of the membership's SKU.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipPaidData {
    order_id: String,
    currency: String,
    /// What was paid for all the periods, in major units.
    amount: String,
    #[serde(default = "one")]
    periods: i64,
    #[serde(default)]
    platform: Option<String>,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineData {
    line_id: String,
    #[serde(default)]
    sku: String,
    #[serde(default)]
    category: String,
    quantity: i64,
    unit_price: String,
    #[serde(default)]
    discount: Option<String>,
    #[serde(default)]
    gift_card: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundData {
    order_id: String,
    refund_id: String,
    #[serde(default)]
    currency: Option<String>,
    /// The refunded units of named lines...
    #[serde(default)]
    lines: Vec<RefundLineData>,
    /// ...or, for platforms that name no lines, the amount refunded: of `order_total` when
    /// given, else of what the order's purchase was paid for its goods (lines after discounts,
    /// tax charged on top; shipping apart).
    #[serde(default)]
    amount: Option<String>,
    #[serde(default)]
    order_total: Option<String>,
    #[serde(default)]
    platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundLineData {
    line_id: String,
    quantity: i64,
    #[serde(default)]
    sku: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelData {
    order_id: String,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngagementData {
    action: String,
    #[serde(rename = "ref")]
    reference: String,
    /// For `custom` actions: which one.
    #[serde(default)]
    name: Option<String>,
    /// For `referral`: `referrer` (the member who referred) or `referee`.
    #[serde(default)]
    role: Option<String>,
    /// For a `referral` recorded on the new member: who referred them.
    #[serde(default)]
    referrer: Option<String>,
    #[serde(default)]
    referee: Option<String>,
    #[serde(default)]
    platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantData {
    points: i64,
    #[serde(default)]
    campaign: Option<String>,
    /// The campaign variant that granted the points (counted as its cost).
    #[serde(default)]
    variant: Option<String>,
    /// Where the campaign counts them, when not under its id: a later randomisation's
    /// counters (`{campaign}~…`), which a campaign's grant names.
    #[serde(default)]
    counted_in: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// An earn-queue event, checked and converted to domain types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarnEvent {
    Purchase {
        platform: String,
        purchase: Purchase,
    },
    Refund {
        platform: String,
        reversal: Reversal,
    },
    Engagement(Engagement),
    Grant {
        points: i64,
        campaign: Option<String>,
        variant: Option<String>,
        /// Where the campaign counts the points, when not under its id.
        counted_in: Option<String>,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engagement {
    Action {
        action: String,
        platform: String,
    },
    /// The new member was referred by `referrer` (recorded at their signup).
    Referred {
        referrer: String,
    },
    /// Pay the referrer: `referee` made a first purchase.
    ReferrerReward {
        referee: String,
    },
}

impl EarnEvent {
    /// Where the event's id comes from, for its dedup marker.
    pub fn source(&self) -> &str {
        match self {
            EarnEvent::Purchase { platform, .. } | EarnEvent::Refund { platform, .. } => platform,
            EarnEvent::Engagement(Engagement::Action { platform, .. }) => platform,
            EarnEvent::Engagement(_) => "referral",
            EarnEvent::Grant { .. } => "campaign",
        }
    }

    /// The order record the event concerns, if any (`{platform}#{order id}`).
    pub fn order_key(&self) -> Option<String> {
        match self {
            EarnEvent::Purchase { platform, purchase } => {
                Some(order_key(platform, &purchase.order_id))
            }
            EarnEvent::Refund { platform, reversal } => {
                Some(order_key(platform, &reversal.order_id))
            }
            _ => None,
        }
    }
}

pub fn order_key(platform: &str, order_id: &str) -> String {
    format!("{platform}#{order_id}")
}

fn from_data<T: serde::de::DeserializeOwned>(
    kind: &str,
    data: &serde_json::Value,
) -> Result<T, EventError> {
    serde_json::from_value(data.clone()).map_err(|e| invalid(format!("{kind} data: {e}")))
}

fn required(field: &str, value: &str) -> Result<(), EventError> {
    if value.trim().is_empty() {
        return Err(invalid(format!("data.{field} must not be empty")));
    }
    within_text(field, value)
}

/// The most bytes of a name an event gives for a line or an action's reference: they are kept
/// on the order's record and in entries, which must stay within one item. (A SKU is the
/// platform's: Shopify allows 255 characters, WooCommerce any; only the event's size bounds
/// it.)
pub const MAX_TEXT_BYTES: usize = 128;

fn within_text(field: &str, value: &str) -> Result<(), EventError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(invalid(format!(
            "data.{field} has {} bytes; at most {MAX_TEXT_BYTES} are allowed",
            value.len()
        )));
    }
    Ok(())
}

fn currency_of(program: &Program, code: &str) -> Result<Currency, EventError> {
    let currency = Currency::from_code(code).map_err(|e| invalid(format!("data.currency: {e}")))?;
    if currency != program.currency {
        return Err(invalid(format!(
            "data.currency is {currency}, but program {} uses {}",
            program.id, program.currency
        )));
    }
    Ok(currency)
}

fn amount_of(currency: Currency, field: &str, text: &str) -> Result<i64, EventError> {
    // `-0` too: a sign where none may be is a mistake in what was sent, not a zero. (An
    // event's only: a program stored with one is still read.)
    if text.starts_with('-') {
        return Err(invalid(format!(
            "{field} must not be negative (got {text:?})"
        )));
    }
    let minor = currency
        .parse_non_negative(text)
        .map_err(|e| invalid(format!("{field}: {e}")))?;
    if minor > MAX_AMOUNT {
        return Err(invalid(format!(
            "{field} must be at most {MAX_AMOUNT} minor units (got {text:?})"
        )));
    }
    Ok(minor)
}

/// Units of a line: at least one, at most [`MAX_QUANTITY`].
fn quantity_of(field: &str, quantity: i64) -> Result<i64, EventError> {
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return Err(invalid(format!(
            "{field} must be between 1 and {MAX_QUANTITY} (got {quantity})"
        )));
    }
    Ok(quantity)
}

fn lines_within(count: usize) -> Result<(), EventError> {
    if count > MAX_LINES {
        return Err(invalid(format!(
            "data.lines has {count} lines; an order may have at most {MAX_LINES}"
        )));
    }
    Ok(())
}

/// Checks the envelope itself: version, ids, the program of the path.
pub fn check_envelope(envelope: &Envelope, program: &Program) -> Result<(), EventError> {
    if envelope.version != ENVELOPE_VERSION {
        return Err(invalid(format!(
            "version {} is not supported (expected {ENVELOPE_VERSION})",
            envelope.version
        )));
    }
    if envelope.program != program.id {
        return Err(invalid(format!(
            "program {:?} does not match the program of the path, {:?}",
            envelope.program, program.id
        )));
    }
    IdKind::Event.check(&envelope.id)?;
    IdKind::Member.check(&envelope.member)?;
    Ok(())
}

/// The membership lines of an order (the program's membership SKU) buy at most
/// [`MAX_MEMBERSHIP_PERIODS`](crate::domain::limits::MAX_MEMBERSHIP_PERIODS) periods: more is
/// refused, never cut (the fee of the periods cut would buy nothing).
fn membership_periods_within(program: &Program, purchase: &Purchase) -> Result<(), EventError> {
    let Some(rules) = &program.membership else {
        return Ok(());
    };
    let periods: i64 = purchase
        .lines
        .iter()
        .filter(|l| l.sku == rules.sku)
        .map(|l| l.quantity)
        .sum();
    let most = crate::domain::limits::MAX_MEMBERSHIP_PERIODS;
    if periods > most {
        return Err(invalid(format!(
            "data.lines of SKU {} buy {periods} membership periods, more than {most} in one order",
            rules.sku
        )));
    }
    Ok(())
}

/// Parses an earn-queue envelope into a domain event, checking everything that can be checked
/// without state.
pub fn parse_earn_event(envelope: &Envelope, program: &Program) -> Result<EarnEvent, EventError> {
    check_envelope(envelope, program)?;
    let data = &envelope.data;
    match envelope.kind.as_str() {
        PURCHASE => {
            let d: PurchaseData = from_data(&envelope.kind, data)?;
            IdKind::Order.check(&d.order_id)?;
            let currency = currency_of(program, &d.currency)?;
            if d.lines.is_empty() {
                return Err(invalid("data.lines must list at least one line"));
            }
            lines_within(d.lines.len())?;
            let mut lines = Vec::with_capacity(d.lines.len());
            for (i, l) in d.lines.iter().enumerate() {
                required(&format!("lines[{i}].line_id"), &l.line_id)?;
                lines.push(PurchaseLine {
                    line_id: l.line_id.clone(),
                    sku: l.sku.clone(),
                    category: l.category.clone(),
                    quantity: quantity_of(&format!("data.lines[{i}].quantity"), l.quantity)?,
                    unit_price: amount_of(
                        currency,
                        &format!("data.lines[{i}].unit_price"),
                        &l.unit_price,
                    )?,
                    discount: match &l.discount {
                        Some(t) => amount_of(currency, &format!("data.lines[{i}].discount"), t)?,
                        None => 0,
                    },
                    gift_card: l.gift_card,
                });
            }
            let purchase = Purchase {
                order_id: d.order_id.clone(),
                currency,
                lines,
                shipping: match &d.shipping {
                    Some(t) => amount_of(currency, "data.shipping", t)?,
                    None => 0,
                },
                tax: match &d.tax {
                    Some(t) => amount_of(currency, "data.tax", t)?,
                    None => 0,
                },
            };
            // Tax the prices include is paid with the lines, not on top of them.
            let purchase = Purchase {
                tax: if d.taxes_included == Some(true) {
                    0
                } else {
                    purchase.tax
                },
                ..purchase
            };
            let _ = &d.channel;
            membership_periods_within(program, &purchase)?;
            // Catch line problems (discount above the total, duplicate line ids) now, not in earn.
            crate::domain::earning::purchase_points(
                &program.purchase,
                program.currency,
                &purchase,
                10_000,
                &[],
            )
            .map_err(|e| invalid(format!("data.{e}")))?;
            Ok(EarnEvent::Purchase {
                platform: platform_of(d.platform)?,
                purchase,
            })
        }
        "membership.paid" => {
            let d: MembershipPaidData = from_data(&envelope.kind, data)?;
            let rules = program
                .membership
                .as_ref()
                .ok_or_else(|| invalid(format!("program {} has no membership", program.id)))?;
            IdKind::Order.check(&d.order_id)?;
            let currency = currency_of(program, &d.currency)?;
            let most = crate::domain::limits::MAX_MEMBERSHIP_PERIODS;
            if !(1..=most).contains(&d.periods) {
                return Err(invalid(format!(
                    "data.periods must be between 1 and {most}"
                )));
            }
            let periods = d.periods;
            let amount = amount_of(currency, "data.amount", &d.amount)?;
            if amount % periods != 0 {
                return Err(invalid("data.amount must divide evenly over data.periods"));
            }
            let purchase = Purchase {
                order_id: d.order_id,
                currency,
                lines: vec![PurchaseLine {
                    line_id: "membership".into(),
                    sku: rules.sku.clone(),
                    category: String::new(),
                    quantity: periods,
                    unit_price: amount / periods,
                    discount: 0,
                    gift_card: false,
                }],
                shipping: 0,
                tax: 0,
            };
            Ok(EarnEvent::Purchase {
                platform: platform_of(d.platform)?,
                purchase,
            })
        }
        "purchase.refunded" => {
            let d: RefundData = from_data(&envelope.kind, data)?;
            IdKind::Order.check(&d.order_id)?;
            // Part of the refund's entry ids and of the order record's applied list: the rule
            // of order ids.
            if !IdKind::Order.accepts(&d.refund_id) {
                return Err(invalid(format!(
                    "data.refund_id must be {}",
                    IdKind::Order.rule()
                )));
            }
            if d.refund_id == "cancel" {
                return Err(invalid(
                    "data.refund_id \"cancel\" is reserved for cancellations",
                ));
            }
            if let Some(code) = &d.currency {
                currency_of(program, code)?;
            }
            let scope = match (d.lines.is_empty(), &d.amount, &d.order_total) {
                (false, None, None) => {
                    lines_within(d.lines.len())?;
                    for (i, l) in d.lines.iter().enumerate() {
                        quantity_of(&format!("data.lines[{i}].quantity"), l.quantity)?;
                        within_text(&format!("lines[{i}].line_id"), &l.line_id)?;
                    }
                    RefundScope::lines(
                        d.lines
                            .into_iter()
                            .map(|l| RefundLine {
                                line_id: l.line_id,
                                quantity: l.quantity,
                                sku: l.sku,
                            })
                            .collect(),
                    )
                }
                (true, Some(amount), Some(total)) => {
                    let currency = program.currency;
                    let amount = amount_of(currency, "data.amount", amount)?;
                    let total = amount_of(currency, "data.order_total", total)?;
                    if amount == 0 || total == 0 {
                        return Err(invalid("data.amount and data.order_total must be greater than zero"));
                    }
                    RefundScope::Share { amount, total }
                }
                // Of what the order was paid, as its purchase recorded it.
                (true, Some(amount), None) => {
                    let amount = amount_of(program.currency, "data.amount", amount)?;
                    if amount == 0 {
                        return Err(invalid("data.amount must be greater than zero"));
                    }
                    RefundScope::Amount { amount }
                }
                _ => {
                    return Err(invalid(
                        "a refund lists data.lines, or gives data.amount (with data.order_total when it is a share of a total other than the one paid), not both",
                    ))
                }
            };
            Ok(EarnEvent::Refund {
                platform: platform_of(d.platform)?,
                reversal: Reversal {
                    order_id: d.order_id,
                    refund_id: d.refund_id,
                    scope,
                    event_id: envelope.id.clone(),
                    occurred_at: envelope.occurred_at,
                },
            })
        }
        "purchase.cancelled" => {
            let d: CancelData = from_data(&envelope.kind, data)?;
            IdKind::Order.check(&d.order_id)?;
            let _ = d.reason;
            Ok(EarnEvent::Refund {
                platform: platform_of(d.platform)?,
                reversal: Reversal {
                    order_id: d.order_id,
                    refund_id: "cancel".into(),
                    scope: RefundScope::Rest,
                    event_id: envelope.id.clone(),
                    occurred_at: envelope.occurred_at,
                },
            })
        }
        "engagement.recorded" => {
            let d: EngagementData = from_data(&envelope.kind, data)?;
            required("ref", &d.reference)?;
            let platform = platform_of(d.platform.clone())?;
            let engagement = match d.action.as_str() {
                "referral" => match (d.role.as_deref(), d.referrer, d.referee) {
                    (Some("referee") | None, Some(referrer), None) => {
                        referral_party("referrer", &referrer)?;
                        Engagement::Referred { referrer }
                    }
                    (Some("referrer") | None, None, Some(referee)) => {
                        referral_party("referee", &referee)?;
                        Engagement::ReferrerReward { referee }
                    }
                    _ => {
                        return Err(invalid(
                            "a referral names either data.referrer (on the new member) or data.referee (on the referrer)",
                        ))
                    }
                },
                "custom" => {
                    let name = d.name.filter(|n| !n.is_empty()).ok_or_else(|| invalid("a custom action needs data.name"))?;
                    within_text("name", &name)?;
                    Engagement::Action { action: name, platform }
                }
                known if crate::domain::program::KNOWN_ACTIONS.contains(&known) => Engagement::Action {
                    action: known.to_string(),
                    platform,
                },
                other => {
                    return Err(invalid(format!(
                        "data.action {other:?} is not one of signup, review, photo_review, share, referral, birthday, anniversary, custom"
                    )))
                }
            };
            Ok(EarnEvent::Engagement(engagement))
        }
        "points.granted" => {
            let d: GrantData = from_data(&envelope.kind, data)?;
            if d.points <= 0 || d.points > MAX_POINTS {
                return Err(invalid(format!(
                    "data.points must be between 1 and {MAX_POINTS} (got {})",
                    d.points
                )));
            }
            if let Some(campaign) = &d.campaign {
                IdKind::Campaign.check(campaign)?;
            }
            if let Some(variant) = &d.variant {
                IdKind::Variant.check(variant)?;
            }
            if let Some(counters) = &d.counted_in {
                let of_campaign = d.campaign.as_deref().is_some_and(|c| {
                    counters
                        .strip_prefix(c)
                        .and_then(|rest| rest.strip_prefix('~'))
                        .is_some_and(|rest| {
                            rest.len() <= 32
                                && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'~')
                        })
                });
                if !of_campaign {
                    return Err(invalid(
                        "data.counted_in names the counters of a later randomisation of data.campaign: {campaign}~{bucket version}~{seed hash}",
                    ));
                }
            }
            let reason = d
                .reason
                .unwrap_or_else(|| format!("{} points granted", d.points));
            if reason.chars().count() > crate::services::MAX_REASON {
                return Err(invalid(format!(
                    "data.reason must be at most {} characters",
                    crate::services::MAX_REASON
                )));
            }
            Ok(EarnEvent::Grant {
                points: d.points,
                reason,
                campaign: d.campaign,
                variant: d.variant,
                counted_in: d.counted_in,
            })
        }
        other => Err(invalid(format!(
            "type {other:?} is not one of {}",
            EARN_TYPES.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str) -> Envelope {
        serde_json::from_value(serde_json::json!({
            "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
            "member": "m-1", "occurred_at": "2026-11-01T00:00:00Z", "data": {}
        }))
        .unwrap()
    }

    #[test]
    fn a_body_that_is_no_envelope_is_refused_naming_the_field() {
        let body = |occurred_at: &str, extra: &str| {
            format!(
                r#"{{"type": "purchase.completed", "version": 1, "id": "e-1", "program": "kr-shop",
                    "member": "m-1", "occurred_at": "{occurred_at}", "data": {{}}{extra}}}"#
            )
        };
        // GIVEN a time without its offset WHEN it is read THEN the refusal names the field and
        // what a time must be (before: "premature end of input at line 1 column 125")
        let refused = Envelope::from_body(body("2026-11-30T23:30:00", "").as_bytes()).unwrap_err();
        assert!(
            refused.starts_with("occurred_at: ") && refused.contains("with its offset"),
            "{refused}"
        );
        // AND a field of the wrong kind is named too, an unknown one as serde says it
        let version =
            body("2026-11-30T23:30:00Z", "").replace("\"version\": 1", "\"version\": \"1\"");
        let refused = Envelope::from_body(version.as_bytes()).unwrap_err();
        assert!(refused.starts_with("version: "), "{refused}");
        let extra = body("2026-11-30T23:30:00Z", r#", "colour": "red""#);
        let refused = Envelope::from_body(extra.as_bytes()).unwrap_err();
        assert!(refused.contains("unknown field `colour`"), "{refused}");
        // AND a whole envelope is read as before
        let read = Envelope::from_body(body("2026-11-30T23:30:00+09:00", "").as_bytes()).unwrap();
        assert_eq!(read.occurred_at.to_rfc3339(), "2026-11-30T14:30:00+00:00");
    }

    #[test]
    fn a_replay_never_shares_its_deduplication_id_with_another_event() {
        // GIVEN event x replayed once, and an event whose id is x's replay suffix
        let mut replay = envelope("x");
        replay.replay = Some(1);
        let lookalike = envelope("x/replay-1");
        // WHEN the queues deduplicate them THEN they are two messages
        assert_ne!(replay.dedup_id(), lookalike.dedup_id());
        // AND a resumed or reviewed event differs from the plain one and from each other
        let mut resumed = envelope("x");
        resumed.resumed = Some(1);
        let mut reviewed = envelope("x");
        reviewed.reviewed_by = Some("ops".into());
        let ids = [envelope("x"), replay, resumed, reviewed].map(|e| e.dedup_id());
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 4, "{ids:?}");
    }

    #[test]
    fn an_amount_of_an_event_refuses_a_minus_sign_even_on_zero() {
        // GIVEN a purchase whose line's price is "-0", and one whose price is "0"
        let program =
            Program::from_toml(include_str!("../../examples/kr-shop.toml")).expect("kr-shop");
        let priced = |price: &str| {
            let mut e = envelope("p");
            e.data = serde_json::json!({"order_id": "o-1", "currency": "KRW",
                "lines": [{"line_id": "1", "quantity": 1, "unit_price": price}]});
            parse_earn_event(&e, &program)
        };
        // WHEN they are read THEN "-0" is refused (before: read as 0) and "0" is taken
        assert!(priced("-0").is_err());
        assert!(priced("0").is_ok());
    }

    #[test]
    fn a_grant_counts_only_in_a_randomisation_of_its_own_campaign() {
        // GIVEN grants of campaign gift naming where they count
        let program =
            Program::from_toml(include_str!("../../examples/kr-shop.toml")).expect("kr-shop");
        let grant = |campaign: &str, counted_in: &str| {
            let mut e = envelope("g");
            e.kind = "points.granted".into();
            e.data =
                serde_json::json!({"points": 10, "campaign": campaign, "counted_in": counted_in});
            parse_earn_event(&e, &program)
        };
        // WHEN one names a later randomisation of gift THEN it counts there
        assert!(matches!(
            grant("gift", "gift~1~0a1b2c3d"),
            Ok(EarnEvent::Grant { counted_in: Some(c), .. }) if c == "gift~1~0a1b2c3d"
        ));
        // AND one naming another campaign's counters, or a campaign's own id, is refused
        for (campaign, counted_in) in [
            ("gift", "gifts~1~0a1b2c3d"),
            ("gift", "other~1"),
            ("gift", "gift"),
        ] {
            assert!(grant(campaign, counted_in).is_err(), "{counted_in}");
        }
    }

    /// What SQS takes in a message body: XML's characters.
    fn sqs_takes(c: char) -> bool {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
            || c >= '\u{10000}'
    }

    #[test]
    fn a_message_body_holds_only_what_sqs_takes_and_reads_back_the_same() {
        // GIVEN an event whose member and data hold U+FFFE and U+FFFF, which JSON writes raw
        let mut event = envelope("e-1");
        event.member = "m-\u{ffff}".into();
        event.data = serde_json::json!({"sku": "a\u{fffe}\\\u{ffff}b", "note": "é 🎁 \u{1}"});
        // WHEN it is written as a message body
        let body = message_body(&event).unwrap();
        // THEN every character is one SQS takes
        assert!(body.chars().all(sqs_takes), "{body:?}");
        // AND the body reads back as the same event
        assert_eq!(serde_json::from_str::<Envelope>(&body).unwrap(), event);
        // AND an event without them is written as JSON writes it
        assert_eq!(
            message_body(&envelope("e-2")).unwrap(),
            serde_json::to_string(&envelope("e-2")).unwrap()
        );
    }
}
