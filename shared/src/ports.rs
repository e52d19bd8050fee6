//! The ports the services talk to: state, queues and the clock.
//!
//! Adapters: DynamoDB and SQS in AWS, SQLite (state and a durable local queue) for `loyalty
//! serve`. Both state adapters pass the same conformance suite (`tests/` of this crate), so the
//! services cannot tell them apart.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::books::BooksAdd;
use crate::domain::{Account, DueDates, DueJob, LedgerEntry, LotShare, OrderRecord};
use crate::envelope::Envelope;

/// Why a store or queue operation failed. The adapter's own error is kept as the source, so an
/// operator sees the SDK's or SQLite's message, and callers can still match on the kind.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: throttling, a busy database, a network blip.
    #[error("store temporarily unavailable: {message}")]
    Transient {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("store failed: {message}")]
    Failed {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The disk under the store fails (full, or an I/O error): it passes once an operator frees
    /// space or mends it, so it is retried, later rather than soon.
    #[error("the store's disk failed: {message}")]
    DiskFault {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Stored data that does not decode (a bug or a manual edit), never retried.
    #[error("stored item {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    /// A write no store makes as it is (more items than one transaction holds, an item larger
    /// than the table takes): the same write again is refused again.
    #[error("the store cannot write this: {message}")]
    Unfit { message: String },
}

impl StoreError {
    pub fn failed(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Failed {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether the failure passes by itself, so that the same operation later may succeed.
    pub fn passes(&self) -> bool {
        matches!(
            self,
            StoreError::Transient { .. } | StoreError::DiskFault { .. }
        )
    }

    pub fn transient(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Transient {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// Why a conditional commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The event marker exists: this event already had its effect.
    #[error("duplicate event")]
    Duplicate,
    /// The account changed since it was loaded; reload and retry.
    #[error("account version conflict")]
    VersionConflict,
    /// The coupon to revoke was consumed meanwhile.
    #[error("the coupon has been consumed")]
    CouponConsumed,
    /// The commit's [`Quota`] would pass its limit.
    #[error("the quota would pass its limit")]
    OverQuota,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A program file as stored, with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredProgram {
    pub version: u32,
    /// The program file as JSON (the canonical TOML is converted on the way in).
    pub file_json: String,
    pub updated_at: DateTime<Utc>,
}

/// What a cold start reads of a program before anything else: its current version and, as
/// asked, its campaigns and one job's saved progress ([`ProgramStore::program_head`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramHead {
    pub program: Option<StoredProgram>,
    /// (id, JSON), as [`CampaignStore::campaigns`] lists them; empty unless asked for.
    pub campaigns: Vec<(String, String)>,
    /// The named job's saved progress, as [`ScheduleStore::job_progress`] reads it.
    pub progress: Option<String>,
}

/// What [`ProgramStore::program_head`] reads beside the program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadParts<'a> {
    pub campaigns: bool,
    /// A job whose progress is read.
    pub job: Option<&'a str>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberState {
    /// `None` for a member never seen before.
    pub account: Option<Account>,
    /// The order records asked for that exist, by order key.
    pub orders: BTreeMap<String, OrderRecord>,
    /// The member's recorded campaign assignments among those asked for, by campaign.
    pub assignments: BTreeMap<String, Assignment>,
    /// The event asked about already had its effect on this member (its marker exists); only
    /// [`MemberStore::load_member_for_event`] says so.
    pub seen: bool,
    /// The revision of each order record read, for a store that keeps one (0: none yet). A
    /// commit written from a read that may be a moment old names them in
    /// [`Commit::order_revisions`].
    pub order_revisions: BTreeMap<String, u64>,
    /// The revision of each assignment read, likewise, by campaign: such a commit names it in
    /// [`AssignmentWrite::read_revision`].
    pub assignment_revisions: BTreeMap<String, u64>,
    /// For a member with no account, when its id was erased, if it was: set by earn (stores
    /// leave it `None`), kept by the account the event opens ([`Account::erased_before`]).
    pub erased_before: Option<DateTime<Utc>>,
}

impl MemberState {
    /// `writes` naming each assignment's revision as read (0: none), to commit from this read.
    pub fn with_revisions(&self, writes: Vec<AssignmentWrite>) -> Vec<AssignmentWrite> {
        let read = |campaign: &str| self.assignment_revisions.get(campaign).copied();
        writes
            .into_iter()
            .map(|write| AssignmentWrite {
                read_revision: Some(read(&write.assignment.campaign).unwrap_or(0)),
                ..write
            })
            .collect()
    }

    /// The revisions, as read, of the order records a commit writes (0 for one not read: absent).
    pub fn revisions_of<'a>(
        &self,
        orders: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, u64> {
        orders
            .into_iter()
            .map(|key| {
                (
                    key.clone(),
                    self.order_revisions.get(key).copied().unwrap_or(0),
                )
            })
            .collect()
    }
}

/// A member's variant in a campaign, recorded at the first assignment and kept (sticky) until
/// the campaign's seed changes or its bucket version rises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub campaign: String,
    pub variant: String,
    pub hash_seed: String,
    pub bucket_version: u32,
    pub assigned_at: DateTime<Utc>,
    /// Purchases in the campaign's window since the assignment, and their eligible amount:
    /// what the variant counters need to count converters once and revenue per member.
    #[serde(default)]
    pub purchases: u32,
    #[serde(default)]
    pub revenue: i64,
    /// A bonus effect pays on the next purchase only.
    #[serde(default)]
    pub bonus_paid: bool,
    /// Rewards redeemed since the assignment (what a `redemption` goal counts).
    #[serde(default)]
    pub redemptions: u32,
    /// Where the campaign counts it ([`crate::campaigns::Campaign::counters_for`]) when not
    /// under the campaign's own id: an assignment of a later randomisation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub counters: String,
}

impl Assignment {
    /// A fresh assignment to `variant`, with nothing counted yet.
    pub fn new(
        campaign: &str,
        variant: &str,
        seed: &str,
        bucket_version: u32,
        at: DateTime<Utc>,
    ) -> Assignment {
        Assignment {
            campaign: campaign.to_string(),
            variant: variant.to_string(),
            hash_seed: seed.to_string(),
            bucket_version,
            assigned_at: at,
            purchases: 0,
            revenue: 0,
            bonus_paid: false,
            redemptions: 0,
            counters: String::new(),
        }
    }

    /// The assignment counted under `counters`, its campaign's counters for the randomisation
    /// it is made in.
    pub fn counted_as(mut self, counters: String) -> Assignment {
        self.counters = if counters == self.campaign {
            String::new()
        } else {
            counters
        };
        self
    }

    /// Where its campaign counts it.
    pub fn counted_in(&self) -> &str {
        if self.counters.is_empty() {
            &self.campaign
        } else {
            &self.counters
        }
    }

    /// The assignment in place of `earlier` (one made under another seed or bucket version): a
    /// bonus the member was paid in the campaign stays paid, so a re-randomised member is not
    /// paid it twice.
    pub fn replacing(mut self, earlier: Option<&Assignment>) -> Assignment {
        self.bonus_paid |= earlier.is_some_and(|a| a.bonus_paid);
        self
    }
}

/// An assignment written with a member's commit (a purchase, a refund or a redemption counted
/// in it), on condition that the stored one is still `expected` (`None`: none stored), compared
/// on seed, bucket version and purchases. A refund or a redemption leaves the purchases as they
/// were, so after a read that may be a moment old the store compares the revision as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentWrite {
    pub assignment: Assignment,
    pub expected: Option<Assignment>,
    /// For a commit made from a read that may be a moment old: the assignment's revision as
    /// read ([`MemberState::assignment_revisions`]; 0: none). A store that keeps revisions
    /// writes the assignment only if it still has that one, else the commit fails as a
    /// conflict. `None`: the account's version guards it (a current read).
    pub read_revision: Option<u64>,
}

/// How many shards each variant's counters are spread over: a popular campaign's purchases
/// never all update one item.
pub const COUNTER_SHARDS: u32 = 8;

/// The counter shard a member's changes go to (stable per member; a batch's commits written
/// together add to the shard of their first).
pub fn counter_shard(member: &str) -> u32 {
    crate::bucketing::fnv32a(member) % COUNTER_SHARDS
}

/// The campaign whose counters `counters` are: its own id, or a later randomisation's
/// `{id}~…` ([`crate::campaigns::Campaign::counters_for`]).
pub fn campaign_of_counters(counters: &str) -> &str {
    counters.split('~').next().unwrap_or(counters)
}

/// Additions to one variant's counters, in one shard, written with the change they count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterAdd {
    /// The counters: the campaign's id, or a later randomisation's.
    pub campaign: String,
    pub shard: u32,
    pub counts: crate::report::VariantCounts,
}

impl CounterAdd {
    /// One member newly assigned to the assignment's variant.
    pub fn assigned(member: &str, assignment: &Assignment) -> CounterAdd {
        CounterAdd {
            campaign: assignment.counted_in().to_string(),
            shard: counter_shard(member),
            counts: crate::report::VariantCounts {
                variant: assignment.variant.clone(),
                assigned: 1,
                ..Default::default()
            },
        }
    }
}

impl Assignment {
    /// Still valid for a campaign hashed with `seed` at `bucket_version`.
    pub fn holds_for(&self, seed: &str, bucket_version: u32) -> bool {
        self.hash_seed == seed && self.bucket_version >= bucket_version
    }
}

/// Marks an event as applied, in the same transaction as its effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMarker {
    /// Where the event id comes from (`api`, `shopify`, a job name...): ids are unique per source.
    pub source: String,
    pub event_id: String,
}

/// One conditional write of a member's state: all of it or nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub program: String,
    pub member: String,
    /// The version loaded; `None` when the account must not exist yet.
    pub expected_version: Option<u64>,
    /// The new account; the store writes it with `version = expected + 1` (or 1).
    pub account: Account,
    pub entries: Vec<LedgerEntry>,
    pub marker: Option<EventMarker>,
    /// The order the marked event is about (a purchase's, a refund's), whose record the
    /// commit writes (stores refuse it otherwise): a store may keep the marker on that record
    /// instead of an item of its own. [`MemberStore::load_member_for_event`] given the order's
    /// key finds it there.
    pub marker_order: Option<String>,
    /// Order records to write, by order key.
    pub orders: BTreeMap<String, OrderRecord>,
    /// For a commit made from a read that may be a moment old
    /// ([`MemberStore::load_member_for_event_cheaply`]): each order record's revision as read
    /// (0: absent). A store that keeps revisions writes a record only if it still has that one,
    /// else the commit fails as a conflict (or as a duplicate, when the record holds the
    /// marker). Empty: the account's version alone guards the records (a current read). Earn
    /// names them after a current read too, where the condition holds anyway; the cost is on a
    /// cancelled commit, which then reads the marker to tell a repeat from a conflict.
    pub order_revisions: BTreeMap<String, u64>,
    /// When each scheduled job next has work for the member (`Account::due_dates`): the store
    /// indexes the account under these dates, in the same write.
    pub due: DueDates,
    /// A redemption written or updated with the debit (or the reversal) it records.
    pub redemption: Option<Redemption>,
    /// Redemptions copied from a member merged into this one (written as they are).
    pub copied_redemptions: Vec<Redemption>,
    /// A new coupon (must not exist yet).
    pub coupon: Option<Coupon>,
    /// Revokes this coupon code, on condition that it has not been consumed.
    pub revoke_coupon: Option<String>,
    /// The API idempotency record of the request that made this change (must not exist yet).
    pub idempotency: Option<IdempotencyRecord>,
    /// Campaign assignments updated by this change (conditional, see [`AssignmentWrite`]).
    pub assignments: Vec<AssignmentWrite>,
    /// Campaign counters the change adds to.
    pub counters: Vec<CounterAdd>,
    /// Messages that follow from this change, written with it and relayed afterwards.
    pub outbox: Vec<OutboxMessage>,
    /// What the change adds to the program's books (`domain::books`).
    pub books: BooksAdd,
    /// A limit the change counts against, checked by the commit itself.
    pub quota: Option<Quota>,
}

/// A running total of a day that a change adds to on condition that it stays within its
/// limit: checked in the commit, because a check before it lets concurrent changes pass the
/// limit together (an operator's adjustments of the day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// What is counted (`a|{operator}`), one total per program and day.
    pub name: String,
    pub day: chrono::NaiveDate,
    /// Never negative.
    pub add: i64,
    pub limit: i64,
}

impl Quota {
    /// The most the total may hold before the change for it to stay within the limit.
    pub fn room(&self) -> i64 {
        self.limit.saturating_sub(self.add)
    }
}

impl Commit {
    /// How many items it writes: DynamoDB holds at most 100 in one transaction, and every store
    /// refuses more, so that they agree.
    pub fn items(&self) -> usize {
        1 + self.entries.len()
            + usize::from(self.marker.is_some())
            + self.orders.len()
            + usize::from(self.redemption.is_some())
            + self.copied_redemptions.len()
            + usize::from(self.coupon.is_some())
            + usize::from(self.revoke_coupon.is_some())
            + usize::from(self.idempotency.is_some())
            + self.assignments.len()
            + self.counters.len()
            + self.outbox.len()
            + usize::from(!self.books.is_empty())
            + usize::from(self.quota.is_some())
    }

    /// A commit of an account change from `before` (`None`: a new member) and its entries,
    /// recorded at `at`, with its due dates and what it adds to the books, and nothing else.
    pub fn new(
        program: &crate::domain::Program,
        member: &str,
        before: Option<&Account>,
        change: crate::domain::Change,
        at: DateTime<Utc>,
    ) -> Commit {
        let outbox = follow_ups_of(program, member, &change, at);
        let mut due = change.account.due_dates(program);
        // Work due since a day already past (a notice owed since a refund put a tier below its
        // threshold weeks before its review, points imported that expire within the warning
        // days, a backdated purchase whose points were last usable before it was recorded) is
        // indexed today: each job reads on from its last run, never back. Birthdays and
        // anniversaries are indexed by day of the year, not by date.
        let today = crate::domain::calendar::local_date(program.time_zone, at);
        for date in [
            &mut due.release,
            &mut due.expire,
            &mut due.review,
            &mut due.notice,
        ] {
            *date = date.map(|d| d.max(today));
        }
        Commit {
            program: program.id.clone(),
            member: member.to_string(),
            expected_version: before.map(|a| a.version),
            books: BooksAdd::between(program, before, &change.account, &change.entries, at),
            due,
            account: change.account,
            entries: change.entries,
            marker: None,
            marker_order: None,
            orders: BTreeMap::new(),
            order_revisions: BTreeMap::new(),
            redemption: None,
            copied_redemptions: Vec::new(),
            coupon: None,
            revoke_coupon: None,
            idempotency: None,
            assignments: Vec::new(),
            counters: Vec::new(),
            outbox,
            quota: None,
        }
    }
}

impl Commit {
    /// Adds messages of the caller's own to those the change implies.
    pub fn and_send(mut self, messages: Vec<OutboxMessage>) -> Commit {
        self.outbox.extend(messages);
        self
    }
}

/// What a change implies whichever path writes it (an earn, a job, a redemption): the
/// referrer's reward once a referred member's first order is past its return window, and a tier
/// check when released purchases count towards an upgrade only now.
fn follow_ups_of(
    program: &crate::domain::Program,
    member: &str,
    change: &crate::domain::Change,
    at: DateTime<Utc>,
) -> Vec<OutboxMessage> {
    let envelope = |kind: &str, id: String, member: &str, data: serde_json::Value| Envelope {
        replay: None,
        resumed: None,
        reviewed_by: None,
        trace: crate::telemetry::trace::current(),
        kind: kind.to_string(),
        version: crate::envelope::ENVELOPE_VERSION,
        id,
        program: program.id.clone(),
        member: member.to_string(),
        occurred_at: at,
        data,
    };
    let mut outbox = Vec::new();
    if let Some(referrer) = &change.referrer {
        let data = serde_json::json!({"action": "referral", "ref": member, "referee": member});
        let reward = envelope(
            "engagement.recorded",
            crate::ids::digested_event_id("referral", &[member]),
            referrer,
            data,
        );
        outbox.push(OutboxMessage::new(QueueName::Earn, reward));
    }
    let released = change
        .entries
        .iter()
        .filter(|e| e.kind == crate::domain::EntryKind::Release && !e.provisional);
    if program.tier_rules.upgrade_after_return_window {
        if let Some(first) = released.into_iter().next() {
            let id = format!("tier-check-{}", first.id.replace('#', "-"));
            let check = envelope(
                crate::envelope::TIER_CHECK,
                id,
                member,
                serde_json::json!({}),
            );
            outbox.push(OutboxMessage::new(QueueName::Tier, check));
        }
    }
    outbox
}

/// A message that follows from a change (a tier check, a referrer's reward, a notice, a released
/// parked event). It is written in the change's own commit and relayed to its queue afterwards,
/// at least once, under a deduplication id fixed here: a crash between the commit and the send
/// delays the message, it never loses or doubles it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxMessage {
    pub queue: QueueName,
    pub envelope: Envelope,
}

impl OutboxMessage {
    pub fn new(queue: QueueName, envelope: Envelope) -> OutboxMessage {
        OutboxMessage { queue, envelope }
    }

    /// Unique within the deployment: the queue and the message's program-scoped id. Kept in
    /// the partition of the member it is about, so that its key follows from the message.
    pub fn key(&self) -> String {
        format!("{}#{}", self.queue.as_str(), self.envelope.dedup_id())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedemptionStatus {
    Issued,
    Reversed,
    /// Pay with points: held until the shop captures or voids it, or it expires.
    Held,
    Captured,
    Voided,
    /// Points given to a cause: final, never reversed (the brand owes the cause).
    Donated,
}

/// A redemption, kept under its member: what was spent, from which lots (so that a reversal
/// returns each share to its lot), and its coupon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redemption {
    pub id: String,
    pub member: String,
    pub reward: String,
    pub points: i64,
    pub status: RedemptionStatus,
    pub code: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub taken: Vec<LotShare>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub reversal: Option<Reversal>,
    /// The order a pay-with-points hold pays for: a capture names it, and one for another
    /// order is refused (absent on holds made before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_ref: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversal {
    pub reason: String,
    pub by: String,
    pub at: DateTime<Utc>,
}

/// A coupon the shop checks and consumes at the till, found by its code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    pub code: String,
    pub member: String,
    pub redemption: String,
    pub reward: String,
    pub expires_at: DateTime<Utc>,
    /// The order it was used for, once consumed.
    #[serde(default)]
    pub consumed: Option<Consumed>,
    /// Revoked by a reversal of its redemption.
    #[serde(default)]
    pub revoked: bool,
}

impl Coupon {
    /// Past its last second: `expires_at` names the last second a coupon is good for (23:59:59
    /// of its last local day), the whole of that second included.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        coupon_second(now) > self.expires_at
    }
}

/// The whole second `now` falls in, against which a coupon's last second is compared.
pub fn coupon_second(now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    now.trunc_subsecs(0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumed {
    pub order_ref: String,
    pub at: DateTime<Utc>,
}

/// What became of an attempt to consume a coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumption {
    /// Consumed now, or earlier for the same order (a retry).
    Consumed(Coupon),
    AlreadyConsumed(Coupon),
    Expired(Coupon),
    Revoked(Coupon),
    NotFound,
}

/// The stored answer to an API request with an `Idempotency-Key`, written in the same
/// transaction as its effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// Who sent it (the token's subject): keys are per caller. The first field: an erasure on
    /// DynamoDB tells a caller's records by how their stored body begins.
    pub principal: String,
    pub key: String,
    /// A digest of the request, to tell a retry from a reuse of the key.
    pub request_hash: String,
    pub status: u16,
    pub response: String,
    pub expires_at: DateTime<Utc>,
}

/// A page of the ledger, newest recorded first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntry>,
    /// Opaque; pass back to get the next (older) page. `None` on the last page.
    pub next_cursor: Option<String>,
}

/// An event refused for good (bad input, or a program that lacks what it names), kept with
/// its reason for operators, who may replay it once the program is mended. One record per
/// event: refused again, it keeps its count of replays and takes the new reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedEvent {
    pub program: String,
    pub event_id: String,
    pub at: DateTime<Utc>,
    pub reason: String,
    pub payload: String,
    /// Times an operator has replayed it.
    #[serde(default)]
    pub replays: u32,
    /// The last replay, unless it was refused again since.
    #[serde(default)]
    pub replayed_at: Option<DateTime<Utc>>,
    /// The operator of that replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_by: Option<String>,
    /// The identities a platform's delivery names (`webhooks::names_in`), kept beside its raw
    /// body so that an erasure and a member's export find it; empty for an event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// A page of rejected events, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectedPage {
    pub events: Vec<RejectedEvent>,
    /// Opaque; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Where a page of rejected events goes on: after this event (the same text in every adapter).
pub fn rejected_cursor(event: &RejectedEvent) -> String {
    format!(
        "{}|{}",
        event
            .at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        event.event_id
    )
}

/// Reads a cursor of [`rejected_cursor`]; `None` when it is not one.
pub fn parse_rejected_cursor(cursor: &str) -> Option<(DateTime<Utc>, String)> {
    let (at, id) = cursor.split_once('|')?;
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    crate::ids::IdKind::Event
        .accepts(id)
        .then(|| (at, id.to_string()))
}

#[async_trait]
pub trait ProgramStore: Send + Sync {
    async fn get_program(&self, program: &str) -> Result<Option<StoredProgram>, StoreError>;
    /// The program with what `parts` names, read together: what `get_program`,
    /// [`CampaignStore::campaigns`] and [`ScheduleStore::job_progress`] return, in one round
    /// trip where the store keeps them side by side (DynamoDB: one query of the program's
    /// partition, strongly consistent). Without the program, nothing else is returned.
    async fn program_head(
        &self,
        program: &str,
        parts: HeadParts<'_>,
    ) -> Result<ProgramHead, StoreError>;
    /// Saves a new version: `expected` is the version replaced (`None` = must be new). Returns
    /// the new version, or `Ok(None)` when someone else saved first.
    async fn put_program(
        &self,
        program: &str,
        file_json: &str,
        expected: Option<u32>,
        at: DateTime<Utc>,
    ) -> Result<Option<u32>, StoreError>;
    /// Every saved version of a program, newest first: (version, saved at).
    async fn program_versions(
        &self,
        program: &str,
    ) -> Result<Vec<(u32, DateTime<Utc>)>, StoreError>;
    /// One saved version, as it was saved.
    async fn program_version(
        &self,
        program: &str,
        version: u32,
    ) -> Result<Option<StoredProgram>, StoreError>;
}

#[async_trait]
pub trait MemberStore: Send + Sync {
    /// The account and the named order records, in one read.
    async fn load_member(
        &self,
        program: &str,
        member: &str,
        order_keys: &[String],
    ) -> Result<MemberState, StoreError> {
        self.load_member_with(program, member, order_keys, &[])
            .await
    }
    /// The account, the named order records and the member's assignments in the named
    /// campaigns, in one read (what earn needs for a purchase).
    async fn load_member_with(
        &self,
        program: &str,
        member: &str,
        order_keys: &[String],
        campaigns: &[String],
    ) -> Result<MemberState, StoreError>;
    /// [`MemberStore::load_member_with`], and whether the event of `marker` already had its
    /// effect: a duplicate delivery then costs this read and no write. Stores that can read the
    /// marker in the same request do. Given order keys, the event is an order's, committed with
    /// [`Commit::marker_order`] the first of them, and a store that keeps such markers on the
    /// order's record looks there alone. (A marker of its own from before that is not seen; the
    /// order's record still makes the event's repeat a no-op.)
    async fn load_member_for_event(
        &self,
        program: &str,
        member: &str,
        marker: &EventMarker,
        order_keys: &[String],
        campaigns: &[String],
    ) -> Result<MemberState, StoreError> {
        let mut state = self
            .load_member_with(program, member, order_keys, campaigns)
            .await?;
        state.seen = self.has_marker(program, member, marker).await?;
        Ok(state)
    }
    /// [`MemberStore::load_member_for_event`], possibly a moment old, for fewer read units where
    /// a store has such reads (DynamoDB: half). Safe only for a caller that commits with
    /// [`Commit::order_revisions`] and [`AssignmentWrite::read_revision`] from this read, reads
    /// again currently what it decides on outside the commit (an assignment it did not find:
    /// [`MemberStore::load_assignments`]), and reads again with `load_member_for_event` after a
    /// conflict. A store whose reads are all
    /// current answers `load_member_for_event`.
    async fn load_member_for_event_cheaply(
        &self,
        program: &str,
        member: &str,
        marker: &EventMarker,
        order_keys: &[String],
        campaigns: &[String],
    ) -> Result<MemberState, StoreError> {
        self.load_member_for_event(program, member, marker, order_keys, campaigns)
            .await
    }
    /// The member's assignments in `campaigns` (with their revisions), current: what a purchase
    /// read a moment old found no assignment of, or none that holds, it reads again, since
    /// whether it counts in such a campaign is decided outside its commit. Only
    /// [`MemberState::assignments`] and [`MemberState::assignment_revisions`] are answered.
    async fn load_assignments(
        &self,
        program: &str,
        member: &str,
        campaigns: &[String],
    ) -> Result<MemberState, StoreError> {
        self.load_member_with(program, member, &[], campaigns).await
    }
    async fn commit(&self, commit: Commit) -> Result<(), CommitError>;
    /// Several members' commits at once: all or none where the store can (DynamoDB: one
    /// transaction, their books added up in one write); a store that cannot commits them one
    /// after the other and stops at the first error. After an error each member is as before
    /// or as its commit left it, and nothing says which: the caller reloads them and commits
    /// one at a time.
    async fn commit_together(&self, commits: Vec<Commit>) -> Result<(), CommitError> {
        for commit in commits {
            self.commit(commit).await?;
        }
        Ok(())
    }
    /// Whether [`MemberStore::commit_together`] writes all of its commits or none of them, so
    /// that after an error each commit may be sent again alone as it was.
    fn commits_together_atomically(&self) -> bool {
        false
    }
    async fn ledger_page(
        &self,
        program: &str,
        member: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<LedgerPage, StoreError>;
    /// Whether the marker is there as an item of its own. A marker kept on its order's record
    /// ([`Commit::marker_order`]) is seen by [`MemberStore::load_member_for_event`] only.
    async fn has_marker(
        &self,
        program: &str,
        member: &str,
        marker: &EventMarker,
    ) -> Result<bool, StoreError>;
}

/// The alias kind that links an order key (`shopify#1001`) to the member who placed it, for
/// refunds that name no customer. Not an identity of the member: a store may keep it apart.
pub const ORDER_LINK: &str = "order";

/// The alias kind that leads from a redemption's id to its member, for the shop's checks of a
/// redemption by id. Not an identity an operator links.
pub const REDEMPTION_LINK: &str = "redemption";

/// The alias kind that links the subject of an app's token to its member; a subject with no
/// such link is the member id itself.
pub const APP_LINK: &str = "app";

/// A member named by an identity, in the form identities are linked in: an email's address
/// trimmed and in lower case (`email:Ann@Example.com` is `email:ann@example.com`), as the link
/// route, the imports and the platforms' adapters keep it. Anything else as given.
pub fn plain_identity(member: &str) -> String {
    match member.split_once(':') {
        Some(("email", address)) => crate::imports::email(address)
            .map(|address| format!("email:{address}"))
            .unwrap_or_else(|_| member.to_string()),
        _ => member.to_string(),
    }
}

/// The member id an identity stands for where nothing links it, as events name members:
/// `kind:value`, and an app's subject alone.
pub fn identity_member(kind: &str, value: &str) -> String {
    match kind {
        APP_LINK => value.to_string(),
        _ => format!("{kind}:{value}"),
    }
}

/// A link as a delivery finds it: the member it leads to, and, for an order's link, whether
/// events are parked waiting for it (a refund that came before its order). An identity's link
/// is never awaited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Linked {
    pub member: Option<String>,
    pub awaited: bool,
}

/// What linking an order found: `written` is false when the order is linked to another
/// member; `awaited` says whether events were parked for the order, read in the same write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLinked {
    pub written: bool,
    pub awaited: bool,
}

/// Links each identity with a write of its own ([`AliasStore::put_alias`]), all at once.
pub async fn put_each<S: AliasStore + ?Sized>(
    store: &S,
    program: &str,
    identities: &[(&str, &str)],
    member: &str,
) -> Result<Vec<bool>, StoreError> {
    futures_util::future::try_join_all(
        identities
            .iter()
            .map(|(kind, value)| store.put_alias(program, kind, value, member)),
    )
    .await
}

#[async_trait]
pub trait AliasStore: Send + Sync {
    /// The canonical member for an identity (`app`, `email`, `shopify`...), if linked.
    async fn resolve_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError>;
    /// The same answer, possibly a moment old: enough to skip a link that is already there (a
    /// stale miss only writes the link again, under the link's own condition), and to take a
    /// customer's member from a link found, but never to make a new member from a miss (read
    /// that again with `resolve_alias`). A store whose reads are all current answers
    /// `resolve_alias`.
    async fn linked_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError> {
        self.resolve_alias(program, kind, value).await
    }
    /// [`AliasStore::linked_alias`] of several identities (`(kind, value)`, each named once),
    /// answered in their order, each order's link with whether events await it. A store that
    /// can read them in one request does; one that cannot tell whether events await an order
    /// answers that they do, and the caller looks.
    async fn linked_aliases(
        &self,
        program: &str,
        links: &[(&str, &str)],
    ) -> Result<Vec<Linked>, StoreError> {
        futures_util::future::try_join_all(links.iter().map(|(kind, value)| async move {
            Ok(Linked {
                member: self.linked_alias(program, kind, value).await?,
                awaited: *kind == ORDER_LINK,
            })
        }))
        .await
    }
    /// [`AliasStore::resolve_alias`] of several identities (`(kind, value)`, each named once),
    /// answered in their order, current: what a new member is made from. A store that can read
    /// them in one request does.
    async fn resolve_aliases(
        &self,
        program: &str,
        links: &[(&str, &str)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        futures_util::future::try_join_all(
            links
                .iter()
                .map(|(kind, value)| self.resolve_alias(program, kind, value)),
        )
        .await
    }
    /// Links an order to its member, as [`AliasStore::put_alias`] does, and says in the same
    /// write whether events were parked waiting for it (see [`ParkingStore::park_for_order`]):
    /// the order's delivery looks for them only then. Linked to another member, the order is
    /// left as it is and answered awaited, so that the caller looks.
    async fn link_order(
        &self,
        program: &str,
        order_key: &str,
        member: &str,
    ) -> Result<OrderLinked, StoreError>;
    /// Links an identity to a member; `false` when it is already linked to another member.
    async fn put_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        member: &str,
    ) -> Result<bool, StoreError>;
    /// Links several identities (never an order) to one member, as [`AliasStore::put_alias`]
    /// does each, in one write where the store can; one answer per identity, in order.
    async fn put_aliases(
        &self,
        program: &str,
        identities: &[(&str, &str)],
        member: &str,
    ) -> Result<Vec<bool>, StoreError> {
        put_each(self, program, identities, member).await
    }
    /// Moves an identity from one member to another (a merge), or links it to `to` if it is
    /// linked to no one; `false` when it is linked to a third member.
    async fn move_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        from: &str,
        to: &str,
    ) -> Result<bool, StoreError>;
    /// Unlinks an identity from a member (an erasure); nothing when it is linked to another.
    async fn remove_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        member: &str,
    ) -> Result<(), StoreError>;
}

#[async_trait]
pub trait RejectStore: Send + Sync {
    /// Records an event refused for good, or records it again with its new reason (keeping
    /// its count of replays).
    async fn reject(&self, rejected: &RejectedEvent) -> Result<(), StoreError>;
    /// Rejected events of a program, newest first, `limit` at a time. A cursor that is not
    /// one of [`rejected_cursor`] is refused as `Failed` by the caller before it gets here.
    async fn rejected_page(
        &self,
        program: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<RejectedPage, StoreError>;
    async fn rejected(
        &self,
        program: &str,
        limit: usize,
    ) -> Result<Vec<RejectedEvent>, StoreError> {
        Ok(self.rejected_page(program, limit, None).await?.events)
    }
    async fn rejected_event(
        &self,
        program: &str,
        event_id: &str,
    ) -> Result<Option<RejectedEvent>, StoreError>;
    /// Marks a rejected event replayed for the `mark.number`-th time (it had been one time
    /// fewer) and adds its message to the outbox, in one write. `false` when another replay
    /// came first or the record is gone.
    async fn replay_rejected(
        &self,
        program: &str,
        event_id: &str,
        mark: &ReplayMark,
        message: &OutboxMessage,
    ) -> Result<bool, StoreError>;
}

/// An operator's replay of a rejected event, as the event keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayMark {
    /// How many times it has been replayed, this one included.
    pub number: u32,
    pub at: DateTime<Utc>,
    pub by: String,
}

impl ReplayMark {
    /// The rejected event as this replay leaves it.
    pub fn apply(&self, event: &mut RejectedEvent) {
        event.replays = self.number;
        event.replayed_at = Some(self.at);
        event.replayed_by = Some(self.by.clone());
    }
}

/// Events that arrived before the order that names their member (a Shopify refund carries no
/// customer, only the order): kept by order until the order's payment is seen.
#[async_trait]
pub trait ParkingStore: Send + Sync {
    async fn park(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
        body: &str,
    ) -> Result<(), StoreError>;
    /// Parks an event until its order is linked, then marks the order's link awaited, and
    /// answers the member the order is linked to by now (the caller then releases the event
    /// itself). The order's delivery links the order in one write that reads the mark
    /// ([`AliasStore::link_order`]): whichever of the two writes comes second sees the other,
    /// so a parked event is never left behind by both.
    async fn park_for_order(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
        body: &str,
    ) -> Result<Option<String>, StoreError>;
    /// The events parked for an order, as `(event id, body)`.
    async fn parked(
        &self,
        program: &str,
        order_key: &str,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Moves one parked event into the outbox, in one write: it leaves the parking only when
    /// its message is sure to be relayed. Moving it again (or one already gone) is harmless:
    /// false says this call did not move it (it was gone).
    async fn release_parked(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
        message: &OutboxMessage,
    ) -> Result<bool, StoreError>;
    /// Drops one parked event (an operator cancelled it); dropping it again is harmless: false
    /// says this call did not drop it (it was gone).
    async fn discard_parked(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
    ) -> Result<bool, StoreError>;
}

/// The messages written by commits and not yet relayed.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Up to `limit` messages waiting to be relayed, oldest first where the store knows the
    /// order (the local relay; an operator's sweep in AWS, where the table's stream relays).
    async fn outbox(&self, limit: usize) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Forgets a message once its queue has it; forgetting it twice is harmless.
    async fn relayed(&self, message: &OutboxMessage) -> Result<(), StoreError>;
    /// Writes a message that follows from no change of state (an operator's command feeding
    /// a queue it cannot reach directly), to be relayed like the others. Writing the same
    /// message twice leaves one.
    async fn enqueue(&self, message: &OutboxMessage) -> Result<(), StoreError>;
    /// Shows a waiting message to the change feed again, for a relay that missed its first
    /// showing (DynamoDB's stream keeps records 24 hours). A message relayed meanwhile is left
    /// gone. A store whose relay reads the outbox itself (SQLite) has nothing to do.
    async fn wake(&self, _message: &OutboxMessage) -> Result<(), StoreError> {
        Ok(())
    }
    /// Up to `limit` messages that rode along the entries of their commit instead of waiting
    /// (a store whose change feed relays them: DynamoDB's stream), of entries recorded in
    /// `recorded`. They are never forgotten: this is what an operator resends after the relay
    /// was down longer than the feed keeps records. A store that makes every message wait has
    /// none.
    async fn carried(
        &self,
        _recorded: std::ops::Range<DateTime<Utc>>,
        _limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        Ok(Vec::new())
    }
}

/// A page of member ids and where the next page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberPage {
    pub members: Vec<String>,
    /// Opaque; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// What the scheduled jobs read: the sparse due-date index, the members of a program for a
/// full pass, and each job's own progress (so that a run resumes and a missed day is caught up).
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// How many shards each due date is spread over (a due date is never one hot partition).
    fn due_shards(&self) -> u32;
    /// Members indexed as due for `job` on exactly `date`, in `shard`.
    async fn due_members(
        &self,
        program: &str,
        job: DueJob,
        date: chrono::NaiveDate,
        shard: u32,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, StoreError>;
    /// Every member of a program, a page at a time (a full pass: `recalculate-tiers`). A page
    /// may be empty and still have a next cursor: the pass goes on from it.
    async fn members_page(
        &self,
        program: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, StoreError>;
    /// Every program id.
    async fn program_ids(&self) -> Result<Vec<String>, StoreError>;
    /// A job's saved progress (the last date it completed, or a cursor), if any.
    async fn job_progress(&self, program: &str, job: &str) -> Result<Option<String>, StoreError>;
    async fn save_job_progress(
        &self,
        program: &str,
        job: &str,
        progress: Option<&str>,
    ) -> Result<(), StoreError>;
}

/// Redemptions, coupons and API idempotency records (written through `MemberStore::commit`).
#[async_trait]
pub trait RedemptionStore: MemberStore {
    async fn redemption(
        &self,
        program: &str,
        member: &str,
        id: &str,
    ) -> Result<Option<Redemption>, StoreError>;
    async fn coupon(&self, program: &str, code: &str) -> Result<Option<Coupon>, StoreError>;
    /// Consumes a coupon once, conditionally: not consumed (or consumed for this same order),
    /// not revoked, not expired at `now`.
    async fn consume_coupon(
        &self,
        program: &str,
        code: &str,
        order_ref: &str,
        now: DateTime<Utc>,
    ) -> Result<Consumption, StoreError>;
    async fn idempotency_record(
        &self,
        program: &str,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// [`MemberStore::load_member_with`] (no order records) and the
    /// [`RedemptionStore::idempotency_record`] of a request under the first of `principals`
    /// that has one, read together where the store can (DynamoDB: one BatchGetItem): what a
    /// redemption reads before it commits.
    async fn load_member_and_request(
        &self,
        program: &str,
        member: &str,
        campaigns: &[String],
        principals: &[&str],
        key: &str,
    ) -> Result<(MemberState, Option<IdempotencyRecord>), StoreError> {
        let records = async {
            for principal in principals {
                if let Some(record) = self.idempotency_record(program, principal, key).await? {
                    return Ok(Some(record));
                }
            }
            Ok(None)
        };
        let (state, record) = futures_util::future::join(
            self.load_member_with(program, member, &[], campaigns),
            records,
        )
        .await;
        Ok((state?, record?))
    }
}

/// Campaign files, versioned per campaign.
#[async_trait]
pub trait CampaignStore: Send + Sync {
    /// The campaign's JSON and version, if it exists.
    async fn campaign(&self, program: &str, id: &str) -> Result<Option<(u32, String)>, StoreError>;
    /// Saves a new version: `expected` is the version replaced (`None` = must be new). Returns
    /// the new version, or `Ok(None)` when someone else saved first.
    async fn put_campaign(
        &self,
        program: &str,
        id: &str,
        json: &str,
        expected: Option<u32>,
    ) -> Result<Option<u32>, StoreError>;
    /// Every campaign of a program, as (id, JSON), in one read.
    async fn campaigns(&self, program: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Records an assignment unless one that still holds (same seed, bucket version not lower)
    /// is there; returns the one stored and whether it is the one given. A new record counts
    /// one member assigned to its variant and adds `message` (what follows from it: a
    /// campaign's grant) to the outbox, in the same write. Nothing is recorded (`None`) when
    /// the member's account is being erased, or is gone though the caller read it
    /// (`account_seen`): the erasure's deletes are not outlived by an assignment, and no grant
    /// is written for a member being erased.
    async fn record_assignment(
        &self,
        program: &str,
        member: &str,
        assignment: &Assignment,
        account_seen: bool,
        message: Option<&OutboxMessage>,
    ) -> Result<Option<(Assignment, bool)>, StoreError>;
    /// A campaign's counters per variant, summed over the shards.
    async fn campaign_counts(
        &self,
        program: &str,
        campaign: &str,
    ) -> Result<Vec<crate::report::VariantCounts>, StoreError>;
}

/// The program's books (`domain::books`), written by `MemberStore::commit`.
#[async_trait]
pub trait BooksStore: Send + Sync {
    /// Every counter of every day up to and including `until`, summed over the shards, by day.
    async fn book_rows(
        &self,
        program: &str,
        until: chrono::NaiveDate,
    ) -> Result<Vec<crate::domain::books::BookRow>, StoreError>;
    /// One counter of one day, summed over the shards (0 when never written).
    async fn book_counter(
        &self,
        program: &str,
        day: chrono::NaiveDate,
        name: &str,
    ) -> Result<i64, StoreError>;
}

/// What is kept under one member, as read by a walk over the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberRecords {
    pub program: String,
    pub member: String,
    pub account: Option<Account>,
    /// Oldest recorded first.
    pub entries: Vec<LedgerEntry>,
    pub orders: Vec<OrderRecord>,
}

/// An event parked until its order is seen, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEvent {
    pub program: String,
    pub order_key: String,
    pub event_id: String,
    pub body: String,
}

/// What a walk over the store finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Walked {
    Member(Box<MemberRecords>),
    Parked(ParkedEvent),
    /// A member whose records cannot be read: named, so that the walk goes on.
    Unreadable {
        program: String,
        member: String,
        detail: String,
    },
}

/// Everything about a member apart from the account and the ledger (a member export).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemberFile {
    /// Order records by order key.
    pub orders: Vec<(String, OrderRecord)>,
    pub redemptions: Vec<Redemption>,
    pub coupons: Vec<Coupon>,
    pub assignments: Vec<Assignment>,
    /// Identities linked to the member, as `(kind, value)`.
    pub aliases: Vec<(String, String)>,
}

/// Reads the whole store (the audit), or everything about one member (an export).
#[async_trait]
pub trait RecordsStore: Send + Sync {
    /// How many parts a walk can be split into and read in parallel.
    fn parts(&self) -> u32;
    /// Walks one part: every member whole (one at a time, so memory stays bounded by the
    /// largest member) and every parked event, of one program or all.
    async fn walk(
        &self,
        part: u32,
        program: Option<&str>,
        visit: &(dyn Fn(Walked) + Send + Sync),
    ) -> Result<(), StoreError>;
    /// Read capacity units consumed by walks so far, where the store counts them.
    fn read_units(&self) -> Option<f64>;
    /// One member's records, read again as consistently as the store can (a walk that is no
    /// snapshot re-reads a member it found wrong before saying so).
    async fn member_records(
        &self,
        program: &str,
        member: &str,
    ) -> Result<MemberRecords, StoreError>;
    async fn member_file(&self, program: &str, member: &str) -> Result<MemberFile, StoreError>;
}

/// An audit asked for through the API and run as a job, with its report once done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRun {
    pub id: String,
    /// `queued`, `running`, `done` or `failed` (the report is then `{"error": ...}`).
    pub status: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// The audit's report (`services::audit::AuditReport` as JSON) once done.
    #[serde(default)]
    pub report: Option<serde_json::Value>,
}

/// How long an audit's run is kept after it finished (or was asked for): its report names
/// members, and a member erased since must not stay named for ever (DynamoDB's time to live
/// deletes it; `loyalty serve`'s housekeeping does on SQLite).
pub const AUDITS_KEPT_DAYS: i64 = 30;

impl AuditRun {
    /// Until when the run is kept.
    pub fn kept_until(&self) -> DateTime<Utc> {
        self.finished_at.unwrap_or(self.requested_at) + chrono::Duration::days(AUDITS_KEPT_DAYS)
    }
}

/// Audits run as jobs: the request is written with the message that starts it.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Writes a new audit (its id must be new) and, in the same write, the message that
    /// starts it, relayed like any outbox message.
    async fn request_audit(
        &self,
        program: &str,
        run: &AuditRun,
        message: &OutboxMessage,
    ) -> Result<(), StoreError>;
    async fn audit_run(&self, program: &str, id: &str) -> Result<Option<AuditRun>, StoreError>;
    async fn save_audit_run(&self, program: &str, run: &AuditRun) -> Result<(), StoreError>;
}

/// Erasing a member's personal data.
#[async_trait]
pub trait ErasureStore: Send + Sync {
    /// Deletes everything stored under a member (account, ledger, event markers, orders,
    /// redemptions, assignments, due dates), its identities with their links, and the coupons
    /// named. The account goes last: until everything else is gone, its erasure mark leads a
    /// run of the erasure again to the rest.
    async fn erase_member(
        &self,
        program: &str,
        member: &str,
        coupons: &[String],
    ) -> Result<(), StoreError>;
    /// The rejected events of a program whose stored payload holds one of `needles` as a whole
    /// JSON string, found as [`Self::forget_payloads`] finds them (a member's export): a read
    /// of every rejected event, whatever its day.
    async fn rejected_naming(
        &self,
        program: &str,
        needles: &[String],
    ) -> Result<Vec<RejectedEvent>, StoreError>;
    /// Deletes the parked and rejected events of a program whose stored payload holds one of
    /// `needles` as a whole JSON string, and the idempotency records of the requests sent by one
    /// of `principals` (a member's own app: their answers hold its coupon codes and balance).
    async fn forget_payloads(
        &self,
        program: &str,
        needles: &[String],
        principals: &[String],
    ) -> Result<Forgotten, StoreError>;
    /// The members whose account names `referrer` as the member who referred them (a scan of
    /// the program: erasures are rare, and referrals are kept by the member referred).
    async fn referees(&self, program: &str, referrer: &str) -> Result<Vec<String>, StoreError>;
    /// Remembers that the names of `digests` ([`crate::domain::erasure::erased_name`]) were
    /// erased at `at`, one record each; a name erased again later keeps the later time.
    async fn note_erased(
        &self,
        program: &str,
        digests: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The latest erasure among the names of `digests` (at most 100, each once), read current;
    /// `None` when none was erased.
    async fn erased_at(
        &self,
        program: &str,
        digests: &[String],
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
}

/// What [`ErasureStore::forget_payloads`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Parked and rejected events.
    pub events: usize,
    /// Idempotency records.
    pub requests: usize,
}

/// Everything the services need from state.
pub trait Store:
    ProgramStore
    + MemberStore
    + AliasStore
    + RejectStore
    + ParkingStore
    + ScheduleStore
    + RedemptionStore
    + CampaignStore
    + OutboxStore
    + BooksStore
    + RecordsStore
    + AuditStore
    + ErasureStore
{
}
impl<
        T: ProgramStore
            + MemberStore
            + AliasStore
            + RejectStore
            + ParkingStore
            + ScheduleStore
            + RedemptionStore
            + CampaignStore
            + OutboxStore
            + BooksStore
            + RecordsStore
            + AuditStore
            + ErasureStore,
    > Store for T
{
}

/// The queues of DESIGN §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueName {
    Earn,
    Tier,
    Notify,
}

impl QueueName {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Earn => "earn",
            QueueName::Tier => "tier",
            QueueName::Notify => "notify",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not send to the {queue} queue: {message}")]
pub struct QueueError {
    pub queue: &'static str,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends a message; FIFO queues group by program#member and deduplicate by the message's
    /// program-scoped id ([`Envelope::dedup_id`]).
    async fn send(&self, queue: QueueName, message: &Envelope) -> Result<(), QueueError>;

    /// Sends messages in their order, in as few requests as the queue allows (one by one unless
    /// it says otherwise). On a failure, every message before [`SendAllError::sent`] went out;
    /// the one there did not, and those after it may have.
    async fn send_all(&self, queue: QueueName, messages: &[&Envelope]) -> Result<(), SendAllError> {
        for (sent, message) in messages.iter().enumerate() {
            self.send(queue, message)
                .await
                .map_err(|error| SendAllError { sent, error })?;
        }
        Ok(())
    }
}

/// Where a [`Queue::send_all`] stopped being sure.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {sent} sent)")]
pub struct SendAllError {
    /// How many of the messages, from the first, went out.
    pub sent: usize,
    #[source]
    pub error: QueueError,
}

/// A message its queue gave up on after its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The queue's id for it (SQS's message id; the local queue's deduplication id).
    pub id: String,
    pub body: String,
    /// Why its last attempt failed, where the queue keeps it.
    pub error: Option<String>,
    pub attempts: u32,
    pub at: Option<DateTime<Utc>>,
}

/// The dead-letter queues, for operators: look, count, and move messages back to be processed
/// again. A message moved back keeps its event id, so what had taken effect does not again.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Up to `max` dead letters of `queue`, looked at and left there.
    async fn dead_letters(
        &self,
        queue: QueueName,
        max: usize,
    ) -> Result<Vec<DeadLetter>, QueueError>;
    /// How many dead letters `queue` has (SQS's approximate count).
    async fn dead_letter_count(&self, queue: QueueName) -> Result<u64, QueueError>;
    /// Moves up to `max` dead letters back to `queue`; returns how many moved.
    async fn redrive(&self, queue: QueueName, max: usize) -> Result<usize, QueueError>;
}

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that says what it is told (tests, and `--date` for jobs).
#[derive(Debug, Default)]
pub struct FixedClock(std::sync::Mutex<Option<DateTime<Utc>>>);

impl FixedClock {
    pub fn at(now: DateTime<Utc>) -> Arc<FixedClock> {
        Arc::new(FixedClock(std::sync::Mutex::new(Some(now))))
    }

    pub fn set(&self, now: DateTime<Utc>) {
        if let Ok(mut t) = self.0.lock() {
            *t = Some(now);
        }
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.lock().ok().and_then(|t| *t).unwrap_or_else(Utc::now)
    }
}
