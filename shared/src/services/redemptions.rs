//! Spending points: redemptions with an `Idempotency-Key`, the coupons the shop checks and
//! consumes, operators' reversals and adjustments.
//!
//! A redemption is one conditional transaction: the account (conditioned on its version), the
//! ledger entry, the redemption, its coupon and the idempotency record of the request. A retry
//! with the same key and body finds the record and gets the stored answer; two requests racing
//! with one key cannot both commit, because the record is conditioned on not existing.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{Contention, ServiceError, Services};
use crate::domain::{AccountError, EventContext, Program, Source};
use crate::envelope::{Envelope, ENVELOPE_VERSION};
use crate::ids::IdKind;
use crate::ports::{
    Commit, CommitError, Consumption, Coupon, IdempotencyRecord, MemberState, OutboxMessage,
    QueueName, Redemption, RedemptionStatus, Reversal, REDEMPTION_LINK,
};

/// How long an idempotency key is remembered.
pub(crate) const KEY_DAYS: i64 = 7;

/// Members merged into the caller's whose answers to the request's key are looked for, at most.
const MERGED_ASKED: usize = 16;

/// What a redemption starts from ([`Services::redeemer`]).
struct Redeemer {
    program: Arc<Program>,
    goals: Vec<String>,
    state: MemberState,
    /// The idempotency record of the request, when one was asked for.
    earlier: Option<IdempotencyRecord>,
}

/// Who asked, with which key, for what: the idempotency record of a request.
struct RequestId<'a> {
    principal: &'a str,
    key: &'a str,
    hash: &'a str,
}

impl RequestId<'_> {
    fn record(&self, answer: &Answer, now: DateTime<Utc>) -> IdempotencyRecord {
        IdempotencyRecord {
            principal: self.principal.to_string(),
            key: self.key.to_string(),
            request_hash: self.hash.to_string(),
            status: answer.status,
            response: answer.body.to_string(),
            expires_at: now + Duration::days(KEY_DAYS),
        }
    }
}

/// An answer to replay: the status and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemRequest {
    reward: String,
    /// Pay with points: how many points, and the shop's order they pay towards.
    #[serde(default)]
    points: Option<i64>,
    #[serde(default)]
    order_ref: Option<String>,
}

/// The reward id of paying with points at checkout.
pub const PAY_WITH_POINTS: &str = "pay-with-points";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustRequest {
    points: i64,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumeRequest {
    order_ref: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReverseRequest {
    reason: String,
}

/// A reward as the member sees it in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogEntry {
    pub id: String,
    pub name: String,
    /// Spelt as in the program file (`fixed_discount`, ...).
    pub kind: crate::domain::program::RewardKind,
    pub cost: i64,
    /// The member has the points for it now.
    pub affordable: bool,
    /// The tier it needs, if any, and whether the member is below it.
    pub min_tier: Option<String>,
    pub locked: bool,
}

/// What the shop sees when it checks a coupon code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CouponView {
    pub code: String,
    pub valid: bool,
    /// `valid`, `consumed`, `expired`, `revoked`, or `suspended` (its member is, for now).
    pub status: &'static str,
    pub reward: String,
    pub member: String,
    pub redemption: String,
    pub expires_at: DateTime<Utc>,
    pub order_ref: Option<String>,
}

fn digest(body: &Value) -> String {
    // serde_json's maps are ordered, so the same request in another key order is the same.
    let canonical = body.to_string();
    Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    body: &[u8],
    problem: &'static str,
) -> Result<(T, Value), ServiceError> {
    super::require_object(body, problem)?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ServiceError::invalid(problem, format!("the body is not JSON: {e}")))?;
    // Read from the bytes, not the value: a field given twice is refused, as in events, rather
    // than the last one winning.
    let parsed =
        serde_json::from_slice(body).map_err(|e| ServiceError::invalid(problem, e.to_string()))?;
    Ok((parsed, value))
}

/// `points` at `value_minor` per `per` points, rounded down; refused when the money would
/// not fit the amounts' bound (10^13 minor units), which a checkout could not take anyway.
fn checkout_value(points: i64, value_minor: i64, per: i64) -> Result<i64, ServiceError> {
    let value = i128::from(points) * i128::from(value_minor) / i128::from(per.max(1));
    i64::try_from(value)
        .ok()
        .filter(|value| *value <= crate::domain::limits::MAX_AMOUNT)
        .ok_or_else(|| {
            ServiceError::invalid(
                "invalid-redemption",
                format!("{points} points are worth more than a checkout can take off"),
            )
        })
}

/// An adjustment larger than one operator may make in a whole day: no day would ever take it.
pub(crate) fn refuse_past_any_day(
    program: &crate::domain::Program,
    points: i64,
) -> Result<(), ServiceError> {
    match program.safeguards.operator_daily_points {
        Some(limit) if points.saturating_abs() > limit => Err(ServiceError::Conflict {
            problem: "operator-daily-limit",
            detail: format!(
                "{} points are more than one operator may adjust in a day ({limit}): split the adjustment, or raise safeguards.operator_daily_points",
                points.saturating_abs()
            ),
        }),
        _ => Ok(()),
    }
}

/// The books' counter of what an operator adjusted on a day (`safeguards.operator_daily_points`).
pub(crate) fn operator_counter(by: &str) -> String {
    format!("a|{by}")
}

/// Adds an adjustment to its operator's counter of the day, in the adjustment's own commit.
/// Where the program limits what an operator adjusts in a day, the commit also adds it to the
/// operator's quota of the day, on condition that it stays within `limit` (an approved
/// adjustment counts for the operator who asked for it).
pub(crate) fn count_for_operator(
    commit: &mut Commit,
    program: &crate::domain::Program,
    by: &str,
    points: i64,
    limit: i64,
) {
    let slot = commit.books.counts.entry(operator_counter(by)).or_insert(0);
    let points = points.saturating_abs();
    *slot = slot.saturating_add(points);
    if program.safeguards.operator_daily_points.is_some() {
        if let Some(day) = commit.books.day {
            commit.quota = Some(crate::ports::Quota {
                name: operator_counter(by),
                day,
                add: points,
                limit,
            });
        }
    }
}

/// What a redemption of a catalogue reward spends: the reward's cost, or for a donation the
/// points the member chose.
struct Spend {
    points: i64,
    reason: String,
    donation: Option<Given>,
}

/// A donation's cause and the money it gives, in the books of the day (`g|{cause}` points and
/// `gv|{cause}` minor units) so that the donations report reads counters, not members.
struct Given {
    cause: String,
    amount_minor: i64,
    /// The same in major units, as a decimal string.
    amount: String,
}

impl Given {
    fn count(&self, commit: &mut Commit, points: i64) {
        for (name, value) in [
            (donation_points_counter(&self.cause), points),
            (donation_money_counter(&self.cause), self.amount_minor),
        ] {
            let slot = commit.books.counts.entry(name).or_insert(0);
            *slot = slot.saturating_add(value);
        }
    }
}

/// The books' counters of what a cause was given on a day.
pub fn donation_points_counter(cause: &str) -> String {
    format!("g|{cause}")
}
pub fn donation_money_counter(cause: &str) -> String {
    format!("gv|{cause}")
}

impl Spend {
    fn of(
        program: &Program,
        reward: &crate::domain::program::Reward,
        points: Option<i64>,
    ) -> Result<Spend, ServiceError> {
        let Some(donation) = &reward.donation else {
            // A catalog reward costs what the program says: `points`, when sent, must say the
            // same (an app showing an old price is told), never a number that is not used.
            if let Some(points) = points.filter(|p| *p != reward.cost) {
                return Err(ServiceError::invalid(
                    "invalid-redemption",
                    format!(
                        "{} costs {} points, not {points}: send its cost or no points",
                        reward.id, reward.cost
                    ),
                ));
            }
            return Ok(Spend {
                points: reward.cost,
                reason: format!("Redeemed {} points for {}", reward.cost, reward.name),
                donation: None,
            });
        };
        let points = points.ok_or_else(|| {
            ServiceError::invalid(
                "invalid-redemption",
                format!(
                    "a donation names its points (at least {})",
                    donation.min_points
                ),
            )
        })?;
        if points < donation.min_points || points > crate::domain::limits::MAX_POINTS {
            return Err(ServiceError::invalid(
                "invalid-donation",
                format!(
                    "a donation to {} is from {} to {} points",
                    donation.cause,
                    donation.min_points,
                    crate::domain::limits::MAX_POINTS
                ),
            ));
        }
        let currency = program.currency;
        let amount_minor = donation.money_minor(points, currency).ok_or_else(|| {
            ServiceError::invalid(
                "invalid-donation",
                format!(
                    "{points} points are not a whole amount of {currency} at {} points per unit",
                    donation.points_per_unit
                ),
            )
        })?;
        let amount = currency.format_amount(amount_minor);
        Ok(Spend {
            points,
            reason: format!(
                "Donated {points} points to {} ({amount} {currency})",
                donation.cause
            ),
            donation: Some(Given {
                cause: donation.cause.clone(),
                amount_minor,
                amount,
            }),
        })
    }
}

/// A coupon code: 20 characters of 122 random bits, in groups a cashier can read out.
pub(crate) fn coupon_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bits = uuid::Uuid::new_v4().as_u128();
    let mut code = String::with_capacity(24);
    for i in 0..20 {
        if i > 0 && i % 5 == 0 {
            code.push('-');
        }
        code.push(char::from(ALPHABET[(bits % 32) as usize]));
        bits /= 32;
    }
    code
}

fn insufficient(e: AccountError) -> ServiceError {
    match e {
        AccountError::InsufficientPoints { .. } => ServiceError::Conflict {
            problem: "insufficient-points",
            detail: e.to_string(),
        },
        other => ServiceError::invalid("invalid-redemption", other.to_string()),
    }
}

/// 409 for a member whose erasure has begun (what is written now would outlive it) or who
/// was merged into another (it keeps no points of its own: points given or taken back here
/// would be seen by no one, the survivor included).
/// A suspended member spends nothing, by a reward or at checkout, until resumed.
fn refuse_suspended(account: &crate::domain::Account) -> Result<(), ServiceError> {
    match account.suspended {
        Some(_) => Err(ServiceError::Forbidden {
            problem: "member-suspended",
            detail: "the member is suspended and can redeem nothing until resumed".into(),
        }),
        None => Ok(()),
    }
}

pub(crate) fn refuse_closed(account: &crate::domain::Account) -> Result<(), ServiceError> {
    if account.erased.is_some() {
        return Err(ServiceError::Conflict {
            problem: "member-erased",
            detail: "the member's personal data is being erased; nothing more is written to it"
                .into(),
        });
    }
    match account.merged_into() {
        Some(into) => Err(ServiceError::Conflict {
            problem: "member-merged",
            detail: format!(
                "{} was merged into {into}; its points, and any change to them, are {into}'s",
                account.member
            ),
        }),
        None => Ok(()),
    }
}

/// The answer stored for `key`, or 422 when the key was used with another request, or the
/// record found is another caller's (where the store's key joins caller and key as text, a
/// subject `a#b` with key `c` and a subject `a` with key `b#c` meet: never answer one with the
/// other's coupon).
fn stored_answer(
    record: IdempotencyRecord,
    (principals, key): (&[&str], &str),
    hash: &str,
) -> Result<Answer, ServiceError> {
    if !principals.contains(&record.principal.as_str()) || record.key != key {
        return Err(ServiceError::Unprocessable {
            problem: "idempotency-key-reused",
            detail: format!("Idempotency-Key {key:?} cannot be used by this caller; send another"),
        });
    }
    if record.request_hash != hash {
        return Err(ServiceError::Unprocessable {
            problem: "idempotency-key-reused",
            detail: format!("Idempotency-Key {key:?} was used with a different request"),
        });
    }
    let body = serde_json::from_str(&record.response)
        .map_err(|e| ServiceError::Internal(format!("stored answer is corrupt: {e}")))?;
    Ok(Answer {
        status: record.status,
        body,
    })
}

impl Services {
    /// The stored answer for `key`, or 422 when the key was used with another request.
    async fn replay(
        &self,
        program: &str,
        principal: &str,
        key: &str,
        hash: &str,
    ) -> Result<Option<Answer>, ServiceError> {
        let record = self
            .store
            .idempotency_record(program, principal, key)
            .await?;
        record
            .map(|r| stored_answer(r, (&[principal], key), hash))
            .transpose()
    }

    /// `POST /v1/programs/{program}/me/redemptions`: spends points on a reward, once per key.
    /// Keys are the member's (`member`, as the caller's token resolved): a retry sent under
    /// another identity of the same member (an app's, its own id) finds the first answer. An
    /// answer stored under the token's `subject` (by earlier versions, or by a member merged
    /// since, whose token now resolves to the survivor) is found too.
    pub async fn redeem(
        &self,
        program_id: &str,
        member: &str,
        subject: &str,
        key: Option<&str>,
        body: &[u8],
    ) -> Result<Answer, ServiceError> {
        let principal = member;
        let principals = [member, subject];
        let key = key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ServiceError::invalid(
                    "idempotency-key-required",
                    "an Idempotency-Key header is required",
                )
            })?;
        let parsed = parse::<RedeemRequest>(body, "invalid-redemption")
            .map(|(request, value): (_, Value)| (request, digest(&value)));
        // An earlier answer to this key is read with the member: one read, warm or cold (see
        // `redeemer`).
        let asked = parsed.as_ref().ok().map(|_| (&principals[..], key));
        let Redeemer {
            program,
            goals,
            state: first,
            earlier,
        } = self.redeemer(program_id, member, asked).await?;
        let (request, hash) = parsed?;
        if let Some(record) = earlier {
            return stored_answer(record, (&principals, key), &hash);
        }
        // Asked by a member merged into this one since (its token, under any identity, now
        // resolves here): the answer is under the merged member's id. Survivors of a merge
        // only pay these reads.
        let merged = first
            .account
            .as_ref()
            .map_or(&[][..], |a| &a.merged_from[..]);
        // The latest merges first: a key lives a week, so a retry comes from a recent one.
        for from in merged.iter().rev().take(MERGED_ASKED) {
            if let Some(answer) = self.replay(&program.id, from, key, &hash).await? {
                return Ok(answer);
            }
        }
        let request_id = RequestId {
            principal,
            key,
            hash: &hash,
        };
        IdKind::Reward.check(&request.reward)?;
        if request.reward == PAY_WITH_POINTS {
            return self
                .hold_points(&program, member, &request, &request_id, first)
                .await;
        }
        let reward = program
            .rewards
            .iter()
            .find(|r| r.id == request.reward)
            .ok_or_else(|| ServiceError::NotFound {
                problem: "unknown-reward",
                detail: format!("program {} has no reward {:?}", program.id, request.reward),
            })?
            .clone();
        if request.order_ref.is_some() {
            return Err(ServiceError::invalid(
                "invalid-redemption",
                format!("order_ref is for {PAY_WITH_POINTS}, not for {}", reward.id),
            ));
        }
        let spend = Spend::of(&program, &reward, request.points)?;
        let mut first = Some(first);
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let state = match first.take() {
                Some(state) => state,
                None => {
                    self.store
                        .load_member_with(&program.id, member, &[], &goals)
                        .await?
                }
            };
            let account = state
                .account
                .clone()
                .unwrap_or_else(|| crate::domain::Account::open(&program, member, now));
            refuse_closed(&account)?;
            refuse_suspended(&account)?;
            check_tier_lock(&program, &account, reward.min_tier.as_deref())?;
            check_membership(&program, &account, &reward, now)?;
            let id = uuid::Uuid::new_v4().simple().to_string();
            let ctx = EventContext::new(format!("redeem-{id}"), now, now).with_source(Source {
                rule: Some(format!("reward:{}", reward.id)),
                redemption: Some(id.clone()),
                ..Source::default()
            });
            let (change, taken) = account
                .redeem(&program, spend.points, &spend.reason, &ctx)
                .map_err(insufficient)?;
            let mut redemption = Redemption {
                id: id.clone(),
                member: member.to_string(),
                reward: reward.id.clone(),
                points: spend.points,
                status: RedemptionStatus::Issued,
                code: None,
                expires_at: None,
                taken,
                created_at: now,
                reversal: None,
                order_ref: None,
            };
            let balance = change.account.balance;
            let mut commit = Commit::new(&program, member, state.account.as_ref(), change, now);
            let answer = match &spend.donation {
                Some(given) => {
                    redemption.status = RedemptionStatus::Donated;
                    given.count(&mut commit, spend.points);
                    Answer {
                        status: 201,
                        body: json!({
                            "id": id, "status": "donated", "reward": reward.id,
                            "points": spend.points, "cause": given.cause,
                            "amount": given.amount, "balance": balance,
                        }),
                    }
                }
                None => {
                    let expires_at = program.coupon_expiry(now);
                    let code = coupon_code();
                    redemption.code = Some(code.clone());
                    redemption.expires_at = Some(expires_at);
                    commit.coupon = Some(Coupon {
                        code: code.clone(),
                        member: member.to_string(),
                        redemption: id.clone(),
                        reward: reward.id.clone(),
                        expires_at,
                        consumed: None,
                        revoked: false,
                    });
                    Answer {
                        status: 201,
                        body: json!({
                            "id": id, "status": "issued", "reward": reward.id,
                            "points": spend.points, "code": code, "expires_at": expires_at,
                            "balance": balance,
                        }),
                    }
                }
            };
            commit.redemption = Some(redemption);
            commit.idempotency = Some(request_id.record(&answer, now));
            commit
                .outbox
                .push(reward_issued(&program, member, &answer.body, now));
            (commit.assignments, commit.counters) = count_redemption(member, &state, &goals);
            match self.commit(commit).await {
                Ok(()) => return Ok(answer),
                // The same key committed first (a concurrent retry): answer as it did.
                Err(CommitError::Duplicate) => {
                    if let Some(answer) = self.replay(&program.id, principal, key, &hash).await? {
                        return Ok(answer);
                    }
                }
                Err(
                    CommitError::VersionConflict
                    | CommitError::CouponConsumed
                    | CommitError::OverQuota,
                ) => {}
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(member)))
                .await?;
        }
    }

    /// Pay with points: holds `points` for the shop's order until it captures them, voids
    /// them, or the hold expires (`pay_with_points.hold_minutes`).
    async fn hold_points(
        &self,
        program: &Program,
        member: &str,
        request: &RedeemRequest,
        request_id: &RequestId<'_>,
        first: MemberState,
    ) -> Result<Answer, ServiceError> {
        let rules = program
            .pay_with_points
            .ok_or_else(|| ServiceError::NotFound {
                problem: "unknown-reward",
                detail: format!("program {} does not take points at checkout", program.id),
            })?;
        let points = request.points.unwrap_or(0);
        if points < rules.min_points.max(1) {
            return Err(ServiceError::invalid(
                "invalid-redemption",
                format!("points must be at least {}", rules.min_points.max(1)),
            ));
        }
        let order_ref = request
            .order_ref
            .as_deref()
            .ok_or_else(|| ServiceError::invalid("invalid-redemption", "order_ref is required"))?;
        IdKind::Order.check(order_ref)?;
        crate::domain::limits::check_points("points", points)
            .map_err(|e| ServiceError::invalid("invalid-redemption", e.to_string()))?;
        if let Some(account) = &first.account {
            refuse_closed(account)?;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        // The shop captures by redemption id alone: remember whose it is.
        self.store
            .put_alias(&program.id, REDEMPTION_LINK, &id, member)
            .await?;
        let mut first = Some(first);
        let mut contention = Contention::new();
        let held: Result<Answer, ServiceError> = async {
            loop {
                let now = self.clock.now();
                let state = match first.take() {
                    Some(state) => state,
                    None => self.store.load_member(&program.id, member, &[]).await?,
                };
                let account = state
                    .account
                    .clone()
                    .unwrap_or_else(|| crate::domain::Account::open(program, member, now));
                refuse_closed(&account)?;
                refuse_suspended(&account)?;
                let expires_at = now + Duration::minutes(i64::from(rules.hold_minutes));
                let ctx = EventContext::new(format!("hold-{id}"), now, now).with_source(Source {
                    rule: Some(PAY_WITH_POINTS.into()),
                    redemption: Some(id.clone()),
                    order_id: Some(order_ref.to_string()),
                    ..Source::default()
                });
                let change = account
                    .hold(program, &id, order_ref, points, expires_at, &ctx)
                    .map_err(insufficient)?;
                let taken = change
                    .account
                    .holds
                    .last()
                    .map(|h| h.taken.clone())
                    .unwrap_or_default();
                // What the points are worth at checkout, in minor units, rounded down: in 128 bits,
                // since points (up to 10^12) times a value (up to 10^13) passes 64.
                let value = checkout_value(points, rules.value_minor, rules.points)?;
                let answer = Answer {
                    status: 201,
                    body: json!({
                        "id": id, "status": "held", "reward": PAY_WITH_POINTS, "points": points,
                        "code": null, "expires_at": expires_at, "balance": change.account.balance,
                        "order_ref": order_ref, "value": value, "currency": program.currency.to_string(),
                    }),
                };
                let mut commit = Commit::new(program, member, state.account.as_ref(), change, now);
                commit.redemption = Some(Redemption {
                    id: id.clone(),
                    member: member.to_string(),
                    reward: PAY_WITH_POINTS.into(),
                    points,
                    status: RedemptionStatus::Held,
                    code: None,
                    expires_at: Some(expires_at),
                    taken,
                    created_at: now,
                    reversal: None,
                    order_ref: Some(order_ref.to_string()),
                });
                commit.idempotency = Some(request_id.record(&answer, now));
                commit
                    .outbox
                    .push(reward_issued(program, member, &answer.body, now));
                match self.commit(commit).await {
                    Ok(()) => return Ok(answer),
                    Err(CommitError::Duplicate) => {
                        let replayed = self
                            .replay(
                                &program.id,
                                request_id.principal,
                                request_id.key,
                                request_id.hash,
                            )
                            .await?;
                        if let Some(answer) = replayed {
                            return Ok(answer);
                        }
                    }
                    Err(
                        CommitError::VersionConflict
                        | CommitError::CouponConsumed
                        | CommitError::OverQuota,
                    ) => {}
                    Err(CommitError::Store(e)) => return Err(e.into()),
                }
                contention
                    .again(|| format!("member {}", crate::telemetry::member_ref(member)))
                    .await?;
            }
        }
        .await;
        // A hold refused, or another request's answered instead, leaves no link: an erasure
        // begun meanwhile may have swept the member's links before this one landed, and the
        // link would name the member after it. (Not when it is unknown whether it committed.)
        let refused = match &held {
            Ok(answer) => answer.body["id"] != id.as_str(),
            Err(e) => !matches!(
                e,
                ServiceError::Unavailable(_) | ServiceError::Busy(_) | ServiceError::Internal(_)
            ),
        };
        if refused {
            self.store
                .remove_alias(&program.id, REDEMPTION_LINK, &id, member)
                .await?;
        }
        held
    }

    /// Admin: the shop captures (`capture = true`) or voids a pay-with-points hold. Capturing
    /// twice is the same capture; a hold that expired, or was voided, cannot be captured (409).
    /// `POST .../redemptions/{id}/void`: the checkout was given up; the points come back.
    pub async fn void_hold(
        &self,
        program_id: &str,
        id: &str,
        by: &str,
    ) -> Result<Value, ServiceError> {
        self.settle_hold_for(program_id, id, None, by).await
    }

    /// `POST .../redemptions/{id}/capture` with `{"order_ref"}`: the hold is captured for the
    /// order it was made for, once. A capture naming another order is refused (409
    /// `hold-for-another-order`): one hold never pays for two checkouts, however often it is
    /// presented.
    pub async fn capture_hold(
        &self,
        program_id: &str,
        id: &str,
        body: &[u8],
        by: &str,
    ) -> Result<Value, ServiceError> {
        let (request, _): (CaptureRequest, Value) = parse(body, "invalid-capture")?;
        IdKind::Order
            .check(&request.order_ref)
            .map_err(|e| ServiceError::invalid("invalid-capture", e.to_string()))?;
        self.settle_hold_for(program_id, id, Some(&request.order_ref), by)
            .await
    }

    /// Captures (`capture` names the order) or voids (`None`) a hold.
    async fn settle_hold_for(
        &self,
        program_id: &str,
        id: &str,
        capture: Option<&str>,
        by: &str,
    ) -> Result<Value, ServiceError> {
        let program = self.program(program_id).await?;
        let unknown = || ServiceError::NotFound {
            problem: "unknown-redemption",
            detail: format!("no pay-with-points hold {id}"),
        };
        let member = self
            .store
            .resolve_alias(&program.id, REDEMPTION_LINK, id)
            .await?
            .ok_or_else(unknown)?;
        let wanted = if capture.is_some() {
            RedemptionStatus::Captured
        } else {
            RedemptionStatus::Voided
        };
        let mut contention = Contention::new();
        loop {
            // The account before the redemption, as in a reversal: a capture or void committed
            // between the two reads fails this one's commit.
            let state = self.store.load_member(&program.id, &member, &[]).await?;
            let mut redemption = self
                .store
                .redemption(&program.id, &member, id)
                .await?
                .ok_or_else(unknown)?;
            // A hold made before its redemption kept the order has it on the account while
            // it is open.
            let held_for = redemption.order_ref.clone().or_else(|| {
                state.account.as_ref().and_then(|a| {
                    a.holds
                        .iter()
                        .find(|h| h.redemption == id)
                        .map(|h| h.order_ref.clone())
                })
            });
            let settled = json!({"id": id, "status": status_name(wanted),
                "points": redemption.points, "order_ref": held_for});
            match (capture, held_for.as_deref()) {
                (Some(named), Some(held)) if named != held => {
                    return Err(ServiceError::Conflict {
                        problem: "hold-for-another-order",
                        detail: format!(
                            "hold {id} pays for order {held:?}, not {named:?}; each checkout holds its own points"
                        ),
                    })
                }
                _ => {}
            }
            if redemption.status == wanted {
                return Ok(settled);
            }
            let now = self.clock.now();
            let account = state.account.ok_or_else(unknown)?;
            // A capture spends the held points, as using a coupon does: not while suspended
            // (a void gives them back, and goes on).
            if capture.is_some() {
                refuse_suspended(&account)?;
            }
            let ctx = EventContext::new(format!("{}-{id}", status_name(wanted)), now, now)
                .with_source(Source {
                    rule: Some(PAY_WITH_POINTS.into()),
                    redemption: Some(id.to_string()),
                    admin: Some(by.to_string()),
                    ..Source::default()
                });
            let change = if capture.is_some() {
                account.capture_hold(&program, id, &ctx)
            } else {
                let reason = format!(
                    "The shop voided the hold of {} points; points returned",
                    redemption.points
                );
                account.void_hold(&program, id, &reason, &ctx)
            };
            let Some(change) = change else {
                // Say what closed it: a shop retrying its capture of a hold an operator has
                // since reversed must not look for an expiry.
                let closed = match redemption.status {
                    RedemptionStatus::Reversed => "captured, then reversed".to_string(),
                    RedemptionStatus::Captured => "captured".to_string(),
                    _ => format!(
                        "voided, or expired at {}",
                        redemption
                            .expires_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_default()
                    ),
                };
                return Err(ServiceError::Conflict {
                    problem: "hold-closed",
                    detail: format!("hold {id} is no longer open ({closed})"),
                });
            };
            redemption.status = wanted;
            let mut commit = Commit::new(&program, &member, Some(&account), change, now);
            commit.redemption = Some(redemption);
            match self.commit(commit).await {
                Ok(()) => return Ok(settled),
                Err(
                    CommitError::VersionConflict
                    | CommitError::Duplicate
                    | CommitError::CouponConsumed
                    | CommitError::OverQuota,
                ) => {}
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(&member)))
                .await?;
        }
    }

    /// `GET .../me/redemptions/{id}` (the member's own) and the admin view.
    pub async fn redemption(
        &self,
        program: &str,
        member: &str,
        id: &str,
    ) -> Result<Redemption, ServiceError> {
        let program = self.program(program).await?;
        let mut redemption = self
            .store
            .redemption(&program.id, member, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                problem: "unknown-redemption",
                detail: format!("no redemption {id} for this member"),
            })?;
        // A hold not captured by its expiry is void, whether or not a job has written it yet.
        let now = self.clock.now();
        if redemption.status == RedemptionStatus::Held
            && redemption.expires_at.is_some_and(|t| t <= now)
        {
            redemption.status = RedemptionStatus::Voided;
        }
        Ok(redemption)
    }

    /// What a redemption starts from: the program, the running campaigns whose goal is a
    /// redemption, the member with their assignments in those, and the idempotency record of
    /// the request `asked` (principal, key), read with the member.
    ///
    /// When the campaigns are not cached (a cold start, or every `PROGRAM_CACHE_TTL`), the
    /// member is read beside them, without assignments, and read again with them only if a
    /// campaign has a redemption goal: one wait instead of two, and one read more only then.
    async fn redeemer(
        &self,
        program_id: &str,
        member: &str,
        asked: Option<(&[&str], &str)>,
    ) -> Result<Redeemer, ServiceError> {
        let read = |campaigns: Vec<String>| async move {
            match asked {
                Some((principals, key)) => {
                    self.store
                        .load_member_and_request(program_id, member, &campaigns, principals, key)
                        .await
                }
                None => self
                    .store
                    .load_member_with(program_id, member, &[], &campaigns)
                    .await
                    .map(|state| (state, None)),
            }
        };
        let ahead = self.cached_campaigns(program_id).is_none();
        let (program, first) =
            futures_util::future::join(self.program_with_campaigns(program_id), async {
                if !ahead {
                    return None;
                }
                Some(read(Vec::new()).await)
            })
            .await;
        let program = program?;
        let goals = self.redemption_goals(&program.id, self.clock.now()).await?;
        let (state, earlier) = match first {
            Some(Ok(read)) if goals.is_empty() => read,
            Some(Ok((_, earlier))) => {
                let state = self
                    .store
                    .load_member_with(&program.id, member, &[], &goals)
                    .await?;
                (state, earlier)
            }
            _ => read(goals.clone()).await?,
        };
        Ok(Redeemer {
            program,
            goals,
            state,
            earlier,
        })
    }

    /// The running campaigns whose goal is a redemption.
    async fn redemption_goals(
        &self,
        program: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, ServiceError> {
        Ok(self
            .campaigns_at(program, now)
            .await?
            .into_iter()
            .filter(|(_, c)| c.goal == crate::campaigns::Goal::Redemption)
            .map(|(id, _)| id)
            .collect())
    }

    /// Admin: gives a redemption's points back to their original lots, with a reason, once.
    pub async fn reverse_redemption(
        &self,
        program_id: &str,
        member: &str,
        id: &str,
        by: &str,
        body: &[u8],
    ) -> Result<Value, ServiceError> {
        let program = self.program(program_id).await?;
        let (request, _): (ReverseRequest, Value) = parse(body, "invalid-reversal")?;
        if request.reason.trim().is_empty() {
            return Err(ServiceError::invalid(
                "invalid-reversal",
                "a reversal needs a reason",
            ));
        }
        let mut contention = Contention::new();
        loop {
            // The account first: every change of a redemption's status commits its account,
            // so a status read after the account is at least as new as the version the commit
            // is conditioned on, and a reversal committed meanwhile fails this one's commit.
            let state = self.store.load_member(&program.id, member, &[]).await?;
            let mut redemption = self.redemption(&program.id, member, id).await?;
            match redemption.status {
                RedemptionStatus::Issued | RedemptionStatus::Captured => {}
                RedemptionStatus::Reversed => {
                    return Err(ServiceError::Conflict {
                        problem: "already-reversed",
                        detail: format!("redemption {id} has already been reversed"),
                    })
                }
                RedemptionStatus::Held | RedemptionStatus::Voided => {
                    return Err(ServiceError::Conflict {
                        problem: "not-reversible",
                        detail: format!("redemption {id} is a hold: void it instead"),
                    })
                }
                RedemptionStatus::Donated => {
                    return Err(ServiceError::Conflict {
                        problem: "not-reversible",
                        detail: format!(
                            "redemption {id} is a donation: the brand owes it to the cause"
                        ),
                    })
                }
            }
            let now = self.clock.now();
            let account = state
                .account
                .ok_or_else(|| ServiceError::Internal(format!("redemption {id} has no account")))?;
            refuse_closed(&account)?;
            let ctx = EventContext::new(format!("reverse-{id}"), now, now).with_source(Source {
                rule: Some(format!("reward:{}", redemption.reward)),
                redemption: Some(id.to_string()),
                admin: Some(by.to_string()),
                ..Source::default()
            });
            let reason = format!(
                "Redemption of {} reversed: {}",
                redemption.reward,
                request.reason.trim()
            );
            let change = account
                .reverse_redemption(&program, &redemption.taken, &reason, &ctx)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            let balance = change.account.balance;
            redemption.status = RedemptionStatus::Reversed;
            redemption.reversal = Some(Reversal {
                reason: request.reason.trim().to_string(),
                by: by.to_string(),
                at: now,
            });
            let mut commit = Commit::new(&program, member, Some(&account), change, now);
            commit.revoke_coupon = redemption.code.clone();
            commit.redemption = Some(redemption);
            match self.commit(commit).await {
                Ok(()) => {
                    return Ok(json!({"id": id, "status": "reversed", "balance": balance}));
                }
                Err(CommitError::CouponConsumed) => {
                    return Err(ServiceError::Conflict {
                        problem: "coupon-consumed",
                        detail: format!("the coupon of redemption {id} has been used at the till"),
                    })
                }
                Err(
                    CommitError::VersionConflict | CommitError::Duplicate | CommitError::OverQuota,
                ) => {}
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(member)))
                .await?;
        }
    }

    /// Admin: an operator's correction of the balance, with a reason. With an
    /// `Idempotency-Key`, a retry gets the first answer and adjusts once.
    pub async fn adjust(
        &self,
        program_id: &str,
        member: &str,
        by: &str,
        key: Option<&str>,
        body: &[u8],
    ) -> Result<Answer, ServiceError> {
        let program = self.program(program_id).await?;
        let (request, value): (AdjustRequest, Value) = parse(body, "invalid-adjustment")?;
        let hash = digest(&json!({"member": member, "request": value}));
        let key = key.map(str::trim).filter(|k| !k.is_empty());
        if let Some(key) = key {
            if let Some(answer) = self.replay(&program.id, by, key, &hash).await? {
                return Ok(answer);
            }
            if let Some(answer) = self.earlier_approval(&program.id, by, key, &hash).await? {
                return Ok(answer);
            }
        }
        if let Some(above) = program.safeguards.adjustment_approval_above {
            if request.points.unsigned_abs() > above.unsigned_abs() {
                if request.reason.trim().is_empty() {
                    return Err(ServiceError::invalid(
                        "invalid-adjustment",
                        "an adjustment needs a reason",
                    ));
                }
                crate::domain::limits::check_points("points", request.points)
                    .map_err(|e| ServiceError::invalid("invalid-adjustment", e.to_string()))?;
                // Approved, it counts for the one who asked: refused now rather than waiting
                // for an approval that could only be refused.
                refuse_past_any_day(&program, request.points)?;
                self.check_operator_limit(&program, by, request.points)
                    .await?;
                return self
                    .request_approval(
                        &program.id,
                        member,
                        request.points,
                        request.reason.trim(),
                        by,
                        key.map(|key| (key, hash.as_str())),
                    )
                    .await;
            }
        }
        self.check_operator_limit(&program, by, request.points)
            .await?;
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let state = self.store.load_member(&program.id, member, &[]).await?;
            let account = match state.account.clone() {
                Some(account) => account,
                None => self.opened_account(&program, member, now).await?,
            };
            self.refuse_closed_named(&program.id, &account).await?;
            let id = uuid::Uuid::new_v4().simple().to_string();
            let ctx = EventContext::new(format!("adjust-{id}"), now, now).with_source(Source {
                admin: Some(by.to_string()),
                ..Source::default()
            });
            let change = account
                .adjust(&program, request.points, request.reason.trim(), &ctx)
                .map_err(|e| match e {
                    AccountError::InsufficientPoints { .. } => insufficient(e),
                    other => ServiceError::invalid("invalid-adjustment", other.to_string()),
                })?;
            let answer = Answer {
                status: 201,
                body: json!({"id": id, "points": request.points, "balance": change.account.balance}),
            };
            let mut commit = Commit::new(&program, member, state.account.as_ref(), change, now);
            let limit = program.safeguards.operator_daily_points.unwrap_or(i64::MAX);
            count_for_operator(&mut commit, &program, by, request.points, limit);
            commit.idempotency = key.map(|key| IdempotencyRecord {
                principal: by.to_string(),
                key: key.to_string(),
                request_hash: hash.clone(),
                status: answer.status,
                response: answer.body.to_string(),
                expires_at: now + Duration::days(KEY_DAYS),
            });
            match self.commit(commit).await {
                Ok(()) => return Ok(answer),
                Err(CommitError::Duplicate) => {
                    if let Some(answer) = match key {
                        Some(key) => self.replay(&program.id, by, key, &hash).await?,
                        None => None,
                    } {
                        return Ok(answer);
                    }
                }
                // Concurrent adjustments took the operator to the limit since the check.
                Err(CommitError::OverQuota) => {
                    self.check_operator_limit(&program, by, request.points)
                        .await?;
                    return Err(ServiceError::Conflict {
                        problem: "operator-daily-limit",
                        detail: format!("{by}'s adjustments of the day would pass the daily limit (ask another operator, or tomorrow)"),
                    });
                }
                Err(CommitError::VersionConflict | CommitError::CouponConsumed) => {}
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(member)))
                .await?;
        }
    }

    /// Refuses an adjustment that would take its operator past the program's daily limit.
    pub(crate) async fn check_operator_limit(
        &self,
        program: &crate::domain::Program,
        by: &str,
        points: i64,
    ) -> Result<(), ServiceError> {
        let Some(limit) = program.safeguards.operator_daily_points else {
            return Ok(());
        };
        let day = crate::domain::calendar::local_date(program.time_zone, self.clock.now());
        let used = self
            .store
            .book_counter(&program.id, day, &operator_counter(by))
            .await?;
        if used.saturating_add(points.saturating_abs()) > limit {
            return Err(ServiceError::Conflict {
                problem: "operator-daily-limit",
                detail: format!(
                    "{by} has adjusted {used} points on {day}; {} more would pass the daily limit of {limit} (ask another operator, or tomorrow)",
                    points.saturating_abs()
                ),
            });
        }
        Ok(())
    }

    /// `GET .../me/rewards`: the catalog with what the member can afford and what is locked.
    pub async fn catalog(
        &self,
        program_id: &str,
        member: &str,
    ) -> Result<Vec<CatalogEntry>, ServiceError> {
        let program = self.program(program_id).await?;
        let view = self.member_view(&program.id, member).await?;
        Ok(program
            .rewards
            .iter()
            .map(|r| {
                let locked = tier_lock(&program, &view.tier.id, r.min_tier.as_deref()).is_some();
                CatalogEntry {
                    id: r.id.clone(),
                    name: r.name.clone(),
                    kind: r.kind,
                    cost: r.cost,
                    affordable: view.balance >= r.cost,
                    min_tier: r.min_tier.clone(),
                    locked,
                }
            })
            .collect())
    }

    /// Admin: what the shop's till sees for a code.
    pub async fn check_coupon(
        &self,
        program: &str,
        code: &str,
    ) -> Result<CouponView, ServiceError> {
        let program = self.program(program).await?;
        let coupon = self
            .store
            .coupon(&program.id, code)
            .await?
            .ok_or_else(|| unknown_coupon(code))?;
        let mut view = coupon_view(&coupon, self.clock.now());
        // Checked as the till's use of it will be: a suspended member's coupon is not good now
        // (and one whose member cannot be read is not called good either).
        if view.valid {
            match self.refuse_suspended_coupon(&program.id, &coupon).await {
                Ok(()) => {}
                Err(ServiceError::Forbidden { .. }) => {
                    view.valid = false;
                    view.status = "suspended";
                }
                Err(e) => return Err(e),
            }
        }
        Ok(view)
    }

    /// Admin: uses a coupon at the till, once (a retry for the same order is the same use).
    pub async fn consume_coupon(
        &self,
        program: &str,
        code: &str,
        body: &[u8],
    ) -> Result<CouponView, ServiceError> {
        let program = self.program(program).await?;
        let order_ref = parse::<ConsumeRequest>(body, "invalid-consumption")?
            .0
            .order_ref;
        IdKind::Order.check(&order_ref)?;
        let now = self.clock.now();
        if let Some(coupon) = self.store.coupon(&program.id, code).await? {
            self.refuse_suspended_coupon(&program.id, &coupon).await?;
        }
        let conflict =
            |problem: &'static str, detail: String| ServiceError::Conflict { problem, detail };
        match self
            .store
            .consume_coupon(&program.id, code, &order_ref, now)
            .await?
        {
            Consumption::Consumed(coupon) => Ok(coupon_view(&coupon, now)),
            Consumption::NotFound => Err(unknown_coupon(code)),
            Consumption::AlreadyConsumed(c) => Err(conflict(
                "coupon-consumed",
                format!(
                    "coupon {code} was used for order {}",
                    c.consumed.map(|c| c.order_ref).unwrap_or_default()
                ),
            )),
            Consumption::Expired(c) => Err(conflict(
                "coupon-expired",
                format!("coupon {code} expired at {}", c.expires_at),
            )),
            Consumption::Revoked(_) => Err(conflict(
                "coupon-revoked",
                format!("coupon {code} was revoked (its redemption was reversed)"),
            )),
        }
    }
}

impl Services {
    /// A suspended member redeems nothing: a coupon of theirs not yet used is not used at the
    /// till either until they are resumed (one used already is answered as before).
    async fn refuse_suspended_coupon(
        &self,
        program: &str,
        coupon: &Coupon,
    ) -> Result<(), ServiceError> {
        if coupon.consumed.is_some() {
            return Ok(());
        }
        // A coupon of a member merged since is the survivor's: its suspension holds it.
        match self.end_of_chain(program, &coupon.member, |_| {}).await? {
            Some(account) => refuse_suspended(&account),
            None => Ok(()),
        }
    }
}

/// The tier a reward needs when the member's tier is below it.
fn tier_lock<'p>(program: &'p Program, tier: &str, min_tier: Option<&str>) -> Option<&'p str> {
    let (needed, locked_at) = min_tier.and_then(|t| program.tier(t))?;
    let current = program.tier(tier).map_or(0, |(i, _)| i);
    (current < needed).then_some(locked_at.id.as_str())
}

fn check_tier_lock(
    program: &Program,
    account: &crate::domain::Account,
    min_tier: Option<&str>,
) -> Result<(), ServiceError> {
    match tier_lock(program, &account.tier.id, min_tier) {
        Some(tier) => Err(ServiceError::Forbidden {
            problem: "tier-locked",
            detail: format!("this reward needs the {tier} tier"),
        }),
        None => Ok(()),
    }
}

/// A members-only reward needs the paid membership's benefits today.
fn check_membership(
    program: &Program,
    account: &crate::domain::Account,
    reward: &crate::domain::program::Reward,
    now: DateTime<Utc>,
) -> Result<(), ServiceError> {
    let today = crate::domain::calendar::local_date(program.time_zone, now);
    if !reward.members_only || account.has_membership(program.membership.as_ref(), today) {
        return Ok(());
    }
    let name = program
        .membership
        .as_ref()
        .map_or("the membership", |m| m.name.as_str());
    Err(ServiceError::Forbidden {
        problem: "members-only",
        detail: format!("reward {} is for members of {name}", reward.id),
    })
}

fn unknown_coupon(code: &str) -> ServiceError {
    ServiceError::NotFound {
        problem: "unknown-coupon",
        detail: format!("no coupon {code}"),
    }
}

fn coupon_view(coupon: &Coupon, now: DateTime<Utc>) -> CouponView {
    let status = if coupon.consumed.is_some() {
        "consumed"
    } else if coupon.revoked {
        "revoked"
    } else if coupon.expired(now) {
        "expired"
    } else {
        "valid"
    };
    CouponView {
        code: coupon.code.clone(),
        valid: status == "valid",
        status,
        reward: coupon.reward.clone(),
        member: coupon.member.clone(),
        redemption: coupon.redemption.clone(),
        expires_at: coupon.expires_at,
        order_ref: coupon.consumed.as_ref().map(|c| c.order_ref.clone()),
    }
}

fn status_name(status: RedemptionStatus) -> &'static str {
    match status {
        RedemptionStatus::Issued => "issued",
        RedemptionStatus::Reversed => "reversed",
        RedemptionStatus::Held => "held",
        RedemptionStatus::Captured => "captured",
        RedemptionStatus::Voided => "voided",
        RedemptionStatus::Donated => "donated",
    }
}

/// A capture of a pay-with-points hold: the order it pays for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureRequest {
    order_ref: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileRequest {
    #[serde(default)]
    birthday: Option<String>,
    #[serde(default)]
    anniversary: Option<chrono::NaiveDate>,
}

impl Services {
    /// `PATCH .../me/profile`: the member's birthday (`MM-DD`) and anniversary (`YYYY-MM-DD`, a
    /// day already past), each changed at most once in 365 days. Asked with a member token
    /// issued at `token_issued_at` (if it says): a name erased since opens no account
    /// ([`super::erasure::refuse_token_before_erasure`]).
    pub async fn update_profile(
        &self,
        program_id: &str,
        member: &str,
        body: &[u8],
        token_issued_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<crate::domain::Profile, ServiceError> {
        let program = self.program(program_id).await?;
        let (request, _): (ProfileRequest, Value) = parse(body, "invalid-profile")?;
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let today = crate::domain::calendar::local_date(program.time_zone, now);
            let state = self.store.load_member(&program.id, member, &[]).await?;
            let account = match state.account.clone() {
                Some(account) => account,
                None => {
                    let opened = self.opened_account(&program, member, now).await?;
                    super::erasure::refuse_token_before_erasure(
                        opened.erased_before,
                        token_issued_at,
                        now,
                    )?;
                    opened
                }
            };
            // Merged away (its app link not moved yet) or being erased: the save would be
            // lost, or personal data written into an erasure.
            refuse_closed(&account)?;
            let updated = account
                .update_profile(request.birthday.as_deref(), request.anniversary, today)
                .map_err(|e| match e {
                    AccountError::Invalid(detail) if detail.contains("can be changed again") => {
                        ServiceError::Conflict {
                            problem: if detail.starts_with("the anniversary") {
                                "anniversary-recently-changed"
                            } else {
                                "birthday-recently-changed"
                            },
                            detail,
                        }
                    }
                    other => ServiceError::invalid("invalid-profile", other.to_string()),
                })?;
            if state.account.is_some() && updated == account {
                return Ok(updated.profile);
            }
            let profile = updated.profile.clone();
            let change = crate::domain::Change::unchanged(updated);
            let commit = Commit::new(&program, member, state.account.as_ref(), change, now);
            match self.commit(commit).await {
                Ok(()) => return Ok(profile),
                Err(
                    CommitError::VersionConflict
                    | CommitError::Duplicate
                    | CommitError::CouponConsumed
                    | CommitError::OverQuota,
                ) => {}
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(member)))
                .await?;
        }
    }
}

/// Tells the brand's integrations, through the outbox of the redemption's commit.
pub(crate) fn reward_issued(
    program: &Program,
    member: &str,
    body: &Value,
    at: DateTime<Utc>,
) -> OutboxMessage {
    let message = Envelope {
        replay: None,
        resumed: None,
        reviewed_by: None,
        trace: crate::telemetry::trace::current(),
        kind: "reward.issued".into(),
        version: ENVELOPE_VERSION,
        id: format!("reward-issued-{}", body["id"].as_str().unwrap_or_default()),
        program: program.id.clone(),
        member: member.to_string(),
        occurred_at: at,
        data: body.clone(),
    };
    OutboxMessage::new(QueueName::Notify, message)
}

/// A redemption counted in each running redemption-goal campaign the member is assigned to: a
/// converter on their first, written with the redemption (the assignment conditionally).
fn count_redemption(
    member: &str,
    state: &crate::ports::MemberState,
    campaigns: &[String],
) -> (
    Vec<crate::ports::AssignmentWrite>,
    Vec<crate::ports::CounterAdd>,
) {
    campaigns
        .iter()
        .filter_map(|id| state.assignments.get(id))
        .map(|stored| {
            let mut after = stored.clone();
            after.redemptions = stored.redemptions.saturating_add(1);
            let add = crate::ports::CounterAdd {
                campaign: stored.counted_in().to_string(),
                shard: crate::ports::counter_shard(member),
                counts: crate::report::VariantCounts {
                    variant: stored.variant.clone(),
                    converters: i64::from(stored.redemptions == 0),
                    ..Default::default()
                },
            };
            let write = crate::ports::AssignmentWrite {
                assignment: after,
                expected: Some(stored.clone()),
                read_revision: None,
            };
            (write, add)
        })
        .unzip()
}
