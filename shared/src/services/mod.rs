//! Services: load state, call the domain, commit with a condition, publish what follows.
//!
//! The Lambda handlers and `loyalty serve` call these same functions; only the adapters behind
//! the ports differ.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::{Account, Program};
use crate::ports::{Clock, Queue, Store, StoreError};

pub mod audit;
pub mod batch;
mod batch_commit;
pub mod campaign_tick;
pub mod campaigns;
pub mod dead_letters;
pub mod earn;
pub mod erasure;
pub mod events;
pub mod export;
pub mod finance;
pub mod identities;
pub mod import;
pub mod jobs;
pub mod kpis;
pub mod members;
pub mod membership;
pub mod merge;
pub mod outbox;
pub mod programs;
pub mod reconcile;
pub mod redemptions;
pub mod rejections;
pub mod safeguards;
pub mod suspension;
pub mod webhooks;

/// How long a container trusts its cached copy of a program before reading it again. A program
/// saved through this process is seen at once; other containers see it within this time.
const PROGRAM_CACHE_TTL: Duration = Duration::from_secs(30);

/// How long a process may act on a campaign list read before a save: [`PROGRAM_CACHE_TTL`].
pub(crate) fn campaign_cache_life() -> chrono::Duration {
    chrono::Duration::from_std(PROGRAM_CACHE_TTL).unwrap_or(chrono::Duration::seconds(30))
}

/// Attempts at an optimistic write (load, decide, commit on a condition) before giving up: the
/// queue then redelivers the message, or the HTTP caller gets a 503 with `Retry-After`.
const COMMIT_ATTEMPTS: u32 = 16;
/// The first pause after a conflict; each later one may be twice as long, up to the cap.
const BACKOFF_BASE_MS: u64 = 2;
const BACKOFF_CAP_MS: u64 = 200;

/// The retry budget of one optimistic write, shared by every write path. After each conflict
/// (someone else committed first) `again` pauses a random time up to a growing ceiling ("full
/// jitter", so that writers who collided do not collide again in step) and, once the budget is
/// spent, gives up with [`ServiceError::Busy`]: never a 500 for contention.
#[derive(Debug, Default)]
pub(crate) struct Contention {
    attempts: u32,
    redirects: u32,
}

/// Parked events (`(event id, envelope)`) in the order they happened, then by id: a store may
/// list them by id (DynamoDB sorts by key), and a member's events are applied in the order
/// they happened. One whose time cannot be read goes last, and is refused when read.
pub(crate) fn in_order_of_occurrence(mut parked: Vec<(String, String)>) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Occurred {
        occurred_at: chrono::DateTime<chrono::Utc>,
    }
    parked.sort_by_cached_key(|(id, body)| {
        let at = serde_json::from_str::<Occurred>(body).map(|o| o.occurred_at);
        (at.map_or((1, None), |at| (0, Some(at))), id.clone())
    });
    parked
}

/// What a writer expects of the saved version it replaces: the `If-Match` (one of some
/// versions, or `*` for any) or `If-None-Match: *` (none) of its request, or nothing (`Any`,
/// last writer wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Any,
    Absent,
    Exists,
    /// One of these versions; none (the request named only tags this API never gives, or weak
    /// ones, which a write never matches) is always refused.
    OneOf(Vec<u32>),
}

impl Expected {
    /// Refuses `current` (the saved version, if any) when it is not what was expected.
    pub(crate) fn check(&self, current: Option<u32>, what: &str) -> Result<(), ServiceError> {
        let holds = match self {
            Expected::Any => true,
            Expected::Absent => current.is_none(),
            Expected::Exists => current.is_some(),
            Expected::OneOf(versions) => current.is_some_and(|c| versions.contains(&c)),
        };
        if holds {
            return Ok(());
        }
        let wanted = match self {
            Expected::OneOf(versions) if versions.is_empty() => {
                "a version this API never gives".to_string()
            }
            Expected::OneOf(versions) => {
                let versions: Vec<String> = versions.iter().map(u32::to_string).collect();
                format!("version {}", versions.join(" or "))
            }
            Expected::Exists => "a saved version".to_string(),
            _ => "nothing saved".to_string(),
        };
        let saved = match current {
            Some(v) => format!("version {v} is saved"),
            None => "nothing is saved".to_string(),
        };
        Err(ServiceError::PreconditionFailed {
            problem: "version-changed",
            detail: format!("{what}: the request expected {wanted}, but {saved}; read it again"),
        })
    }
}

/// The longest reason an operator may give (characters), as the API document says.
pub const MAX_REASON: usize = 500;

/// An operator's reason, trimmed: required, and at most [`MAX_REASON`] characters.
pub(crate) fn operator_reason(reason: &str, problem: &'static str) -> Result<String, ServiceError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(ServiceError::invalid(
            problem,
            format!("a reason of 1 to {MAX_REASON} characters is required"),
        ));
    }
    Ok(reason.to_string())
}

/// Merges followed from a merged member to its survivor (a member merged into one that was
/// merged in turn) before giving up.
const MERGE_HOPS: u32 = 8;

impl Contention {
    pub(crate) fn new() -> Contention {
        Contention::default()
    }

    /// Call after an attempt that must be made again; `what` names what kept changing.
    pub(crate) async fn again(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<(), ServiceError> {
        self.attempts += 1;
        if self.attempts >= COMMIT_ATTEMPTS {
            return Err(ServiceError::Busy(format!("{} kept changing", what())));
        }
        let ceiling = BACKOFF_BASE_MS
            .saturating_mul(1 << self.attempts.min(16))
            .min(BACKOFF_CAP_MS);
        let pause =
            u64::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(ceiling + 1)).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        Ok(())
    }

    /// Call when the member turned out to be merged into another, before trying that one.
    pub(crate) fn redirected(&mut self, what: impl FnOnce() -> String) -> Result<(), ServiceError> {
        self.redirects += 1;
        if self.redirects > MERGE_HOPS {
            return Err(ServiceError::Internal(format!(
                "{}: more than {MERGE_HOPS} merges to follow",
                what()
            )));
        }
        Ok(())
    }
}

/// Why a service call failed, in terms a caller can act on. The HTTP layer maps each to a status
/// and a problem type.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{detail}")]
    NotFound {
        problem: &'static str,
        detail: String,
    },
    #[error("{detail}")]
    Invalid {
        problem: &'static str,
        detail: String,
    },
    /// A document refused field by field: every problem, each naming its field.
    #[error("{detail}")]
    InvalidFields {
        problem: &'static str,
        detail: String,
        errors: Vec<crate::domain::program::FieldError>,
    },
    #[error("{detail}")]
    Conflict {
        problem: &'static str,
        detail: String,
    },
    #[error("{detail}")]
    Unprocessable {
        problem: &'static str,
        detail: String,
    },
    #[error("{detail}")]
    Unauthorized {
        problem: &'static str,
        detail: String,
    },
    #[error("{detail}")]
    Forbidden {
        problem: &'static str,
        detail: String,
    },
    /// The version the request expected is not the one saved (`If-Match`, 412).
    #[error("{detail}")]
    PreconditionFailed {
        problem: &'static str,
        detail: String,
    },
    #[error("temporarily unavailable: {0}")]
    Unavailable(#[source] StoreError),
    /// Contention or a queue that refused a message: worth retrying soon (503, `Retry-After`).
    #[error("busy: {0}")]
    Busy(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(problem: &'static str, detail: impl Into<String>) -> Self {
        ServiceError::Invalid {
            problem,
            detail: detail.into(),
        }
    }

    /// 404: the member has no account.
    pub fn unknown_member(member: &str) -> Self {
        ServiceError::NotFound {
            problem: "unknown-member",
            detail: format!("member {member:?} does not exist"),
        }
    }

    pub fn unknown_program(program: &str) -> Self {
        ServiceError::NotFound {
            problem: "unknown-program",
            detail: format!("program {program:?} does not exist"),
        }
    }
}

/// A JSON request body must be an object: serde would read a struct from an array too, by
/// position, which no client means.
pub(crate) fn require_object(body: &[u8], problem: &'static str) -> Result<(), ServiceError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ServiceError::invalid(
            problem,
            "the body must be a JSON object",
        )),
    }
}

/// An event too large for one queue message is refused when it is accepted: a queue would
/// refuse it for good, and every retry of the delivery with it.
pub(crate) fn fits_a_message(envelope: &crate::envelope::Envelope) -> Result<(), ServiceError> {
    use crate::envelope::{message_body, MAX_EVENT_BYTES};
    let bytes = message_body(envelope)
        .map_err(|e| ServiceError::Internal(format!("cannot encode the event: {e}")))?
        .len();
    if bytes > MAX_EVENT_BYTES {
        return Err(ServiceError::invalid(
            "event-too-large",
            format!("the event takes {bytes} bytes as a message; at most {MAX_EVENT_BYTES}"),
        ));
    }
    Ok(())
}

impl From<crate::ids::IdError> for ServiceError {
    fn from(e: crate::ids::IdError) -> Self {
        ServiceError::invalid(e.kind.problem(), e.to_string())
    }
}

impl From<crate::ports::QueueError> for ServiceError {
    fn from(e: crate::ports::QueueError) -> Self {
        // serve's queue is in its store: a disk that refuses to write is that, not contention.
        let message = e.to_string();
        match e.source.map(|source| source.downcast::<StoreError>()) {
            Some(Ok(store)) if matches!(*store, StoreError::DiskFault { .. }) => {
                ServiceError::Unavailable(*store)
            }
            _ => ServiceError::Busy(message),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            e if e.passes() => ServiceError::Unavailable(e),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

/// The services with their ports. Built once per process (or Lambda container).
pub struct Services {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub clock: Arc<dyn Clock>,
    programs: Mutex<HashMap<String, (Instant, Arc<Program>)>>,
    /// Each program's campaigns, trusted for as long as a program.
    campaigns: Mutex<HashMap<String, (Instant, CampaignList)>>,
    /// The programs listed during init ([`Services::list_programs`]): they existed then, and
    /// programs are never deleted. A program saved later is simply not in it.
    listed: Mutex<HashSet<String>>,
    /// The queues' dead letters, where this process may see them (`loyalty serve`, and the
    /// member-api function when the template gives it the dead-letter queues).
    dead_letters: Option<Arc<dyn crate::ports::DeadLetters>>,
}

fn count_conflict(program: &str) {
    use crate::telemetry::metrics;
    metrics::add(metrics::COMMIT_CONFLICTS, &[("program", program)], 1);
}

/// The points a commit's entries issue, redeem, return, expire, claw back, credit and debit
/// (adjustments), for the metrics.
fn points_moved(
    entries: &[crate::domain::LedgerEntry],
) -> Vec<(crate::telemetry::metrics::Metric, u64)> {
    use crate::domain::EntryKind;
    use crate::telemetry::metrics::{
        Metric, POINTS_CLAWED_BACK, POINTS_CREDITED, POINTS_DEBITED, POINTS_EXPIRED, POINTS_ISSUED,
        POINTS_REDEEMED, POINTS_RETURNED,
    };
    let mut moved: Vec<(Metric, u64)> = Vec::new();
    for entry in entries {
        let (metric, points) = match entry.kind {
            EntryKind::Earn | EntryKind::Pending => {
                (POINTS_ISSUED, entry.points.max(0) + entry.pending.max(0))
            }
            EntryKind::Redeem => (POINTS_REDEEMED, -entry.points.min(0)),
            EntryKind::Reverse => (POINTS_RETURNED, entry.points.max(0)),
            EntryKind::Expire => (POINTS_EXPIRED, -entry.points.min(0)),
            EntryKind::Adjust if entry.points > 0 => (POINTS_CREDITED, entry.points),
            EntryKind::Adjust => (POINTS_DEBITED, -entry.points),
            EntryKind::Clawback => (
                POINTS_CLAWED_BACK,
                -entry.points.min(0) - entry.pending.min(0),
            ),
            _ => continue,
        };
        let points = u64::try_from(points).unwrap_or(0);
        match moved.iter_mut().find(|(m, _)| *m == metric) {
            Some((_, sum)) => *sum += points,
            None => moved.push((metric, points)),
        }
    }
    moved
}

/// A program's campaigns, by id.
pub(crate) type CampaignList = Arc<Vec<(String, crate::campaigns::Campaign)>>;

impl Services {
    /// Writes a commit, and counts what it did: the points it moved by kind, or the conflict
    /// that refused it (the caller reloads and retries).
    pub(crate) async fn commit(
        &self,
        commit: crate::ports::Commit,
    ) -> Result<(), crate::ports::CommitError> {
        use crate::telemetry::metrics;
        let program = commit.program.clone();
        let moved = points_moved(&commit.entries);
        let result = self.store.commit(commit).await;
        match &result {
            Ok(()) => {
                for (metric, points) in moved {
                    metrics::add(metric, &[("program", &program)], points);
                }
            }
            Err(crate::ports::CommitError::VersionConflict) => count_conflict(&program),
            Err(_) => {}
        }
        result
    }

    /// [`crate::ports::MemberStore::commit`] of entries counted when they were first written
    /// (an erasure's copy under its pseudonym): its conflicts are counted, its points not again.
    pub(crate) async fn commit_copy(
        &self,
        commit: crate::ports::Commit,
    ) -> Result<(), crate::ports::CommitError> {
        let program = commit.program.clone();
        let result = self.store.commit(commit).await;
        if matches!(result, Err(crate::ports::CommitError::VersionConflict)) {
            count_conflict(&program);
        }
        result
    }

    /// [`crate::ports::MemberStore::commit_together`], with the same metrics as
    /// [`Services::commit`].
    pub(crate) async fn commit_together(
        &self,
        commits: Vec<crate::ports::Commit>,
    ) -> Result<(), crate::ports::CommitError> {
        use crate::telemetry::metrics;
        let moved: Vec<_> = commits
            .iter()
            .map(|c| (c.program.clone(), points_moved(&c.entries)))
            .collect();
        let result = self.store.commit_together(commits).await;
        if result.is_ok() {
            for (program, moved) in moved {
                for (metric, points) in moved {
                    metrics::add(metric, &[("program", &program)], points);
                }
            }
        }
        result
    }

    /// Commits a change marked by its event: `true` when it is written, now or before (its
    /// marker is there), `false` on a conflict of any kind (reload and try again).
    pub(crate) async fn commit_marked(
        &self,
        commit: crate::ports::Commit,
    ) -> Result<bool, ServiceError> {
        use crate::ports::CommitError;
        match self.commit(commit).await {
            Ok(()) | Err(CommitError::Duplicate) => Ok(true),
            Err(
                CommitError::VersionConflict | CommitError::CouponConsumed | CommitError::OverQuota,
            ) => Ok(false),
            Err(CommitError::Store(e)) => Err(e.into()),
        }
    }

    /// Sends a message to a queue, counting the sends the queue refused.
    pub(crate) async fn send_to(
        &self,
        queue: crate::ports::QueueName,
        message: &crate::envelope::Envelope,
    ) -> Result<(), crate::ports::QueueError> {
        let sent = self.queue.send(queue, message).await;
        if sent.is_err() {
            crate::telemetry::metrics::add(
                crate::telemetry::metrics::QUEUE_SEND_FAILURES,
                &[("program", &message.program)],
                1,
            );
        }
        sent
    }

    pub fn new(store: Arc<dyn Store>, queue: Arc<dyn Queue>, clock: Arc<dyn Clock>) -> Services {
        Services {
            store,
            queue,
            clock,
            programs: Mutex::new(HashMap::new()),
            campaigns: Mutex::new(HashMap::new()),
            listed: Mutex::new(HashSet::new()),
            dead_letters: None,
        }
    }

    /// The member's account, or 404 `unknown-member`: for operations on a member that must
    /// exist (merge, suspension, erasure, export).
    pub(crate) async fn existing_account(
        &self,
        program: &str,
        member: &str,
    ) -> Result<Account, ServiceError> {
        self.store
            .load_member(program, member, &[])
            .await?
            .account
            .ok_or_else(|| ServiceError::unknown_member(member))
    }

    /// The same services, able to count and redrive the queues' dead letters.
    pub fn with_dead_letters(mut self, dead_letters: Arc<dyn crate::ports::DeadLetters>) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// The current program, from the cache when fresh.
    pub async fn program(&self, id: &str) -> Result<Arc<Program>, ServiceError> {
        if let Some(program) = self.cached(id) {
            return Ok(program);
        }
        let stored = self.store.get_program(id).await?;
        self.adopt(id, stored)
    }

    /// The program as stored, parsed and cached; unknown when it is not there.
    fn adopt(
        &self,
        id: &str,
        stored: Option<crate::ports::StoredProgram>,
    ) -> Result<Arc<Program>, ServiceError> {
        let stored = stored.ok_or_else(|| ServiceError::unknown_program(id))?;
        let mut program = Program::from_json(&stored.file_json)
            .map_err(|e| ServiceError::Internal(format!("stored program {id} is invalid: {e}")))?;
        program.version = stored.version;
        program.file.version = Some(stored.version);
        let program = Arc::new(program);
        self.remember(&program);
        Ok(program)
    }

    /// The program read afresh with what `parts` names, in one round trip: its campaigns go
    /// to the cache (those of a program that is not there are not kept), and the job's progress
    /// is returned. For a cold start, whose every wait is a round trip.
    pub(crate) async fn program_head(
        &self,
        id: &str,
        parts: crate::ports::HeadParts<'_>,
    ) -> Result<(Arc<Program>, Option<String>), ServiceError> {
        let head = self.store.program_head(id, parts).await?;
        let program = self.adopt(id, head.program)?;
        if parts.campaigns {
            // A corrupt campaign is left uncached, so that the read that needs it says so.
            if let Ok(list) = parse_campaigns(head.campaigns) {
                self.remember_campaigns(id, list);
            }
        }
        Ok((program, head.progress))
    }

    /// Notes the programs that exist, as listed during init.
    pub fn list_programs(&self, ids: Vec<String>) {
        if let Ok(mut listed) = self.listed.lock() {
            listed.extend(ids);
        }
    }

    /// Whether the program was listed during init or is cached: it exists.
    pub(crate) fn known_program(&self, id: &str) -> bool {
        self.cached(id).is_some() || self.listed.lock().is_ok_and(|l| l.contains(id))
    }

    /// The program's campaigns if the cache holds them and they are fresh.
    pub(crate) fn cached_campaigns(&self, program: &str) -> Option<CampaignList> {
        let cache = self.campaigns.lock().ok()?;
        let (at, list) = cache.get(program)?;
        (at.elapsed() < PROGRAM_CACHE_TTL).then(|| Arc::clone(list))
    }

    fn cached(&self, id: &str) -> Option<Arc<Program>> {
        let cache = self.programs.lock().ok()?;
        let (at, program) = cache.get(id)?;
        (at.elapsed() < PROGRAM_CACHE_TTL).then(|| Arc::clone(program))
    }

    /// The program's campaigns, from the cache when fresh (else one query).
    pub(crate) async fn campaign_list(&self, program: &str) -> Result<CampaignList, ServiceError> {
        if let Some(list) = self.cached_campaigns(program) {
            return Ok(list);
        }
        let list = parse_campaigns(self.store.campaigns(program).await?)?;
        self.remember_campaigns(program, Arc::clone(&list));
        Ok(list)
    }

    fn remember_campaigns(&self, program: &str, list: CampaignList) {
        if let Ok(mut cache) = self.campaigns.lock() {
            cache.insert(program.to_string(), (Instant::now(), list));
        }
    }

    /// The program with its campaigns cached: read in one round trip when the program is not
    /// cached (a cold start, or every [`PROGRAM_CACHE_TTL`]), for the operations that need
    /// both. A cached program's campaigns are read again only once they are stale (a failure
    /// then shows at the read that needs them).
    pub(crate) async fn program_with_campaigns(
        &self,
        id: &str,
    ) -> Result<Arc<Program>, ServiceError> {
        let Some(program) = self.cached(id) else {
            let parts = crate::ports::HeadParts {
                campaigns: true,
                job: None,
            };
            return Ok(self.program_head(id, parts).await?.0);
        };
        let _warmed = self.campaign_list(id).await;
        Ok(program)
    }

    /// Forgets a program's cached campaigns (after one is saved here).
    pub(crate) fn forget_campaigns(&self, program: &str) {
        if let Ok(mut cache) = self.campaigns.lock() {
            cache.remove(program);
        }
    }

    fn remember(&self, program: &Arc<Program>) {
        if let Ok(mut cache) = self.programs.lock() {
            cache.insert(program.id.clone(), (Instant::now(), Arc::clone(program)));
        }
    }
}

/// Campaigns as stored, (id, JSON), parsed.
fn parse_campaigns(stored: Vec<(String, String)>) -> Result<CampaignList, ServiceError> {
    let mut list = Vec::with_capacity(stored.len());
    for (id, json) in stored {
        let campaign = parse_stored_campaign(&id, &json)?;
        list.push((id, campaign));
    }
    Ok(Arc::new(list))
}

/// A campaign as stored; one that cannot be read is the store's fault, not the caller's.
pub(crate) fn parse_stored_campaign(
    id: &str,
    json: &str,
) -> Result<crate::campaigns::Campaign, ServiceError> {
    crate::campaigns::Campaign::from_stored(json)
        .map_err(|e| ServiceError::Internal(format!("stored campaign {id} is corrupt: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contention_gives_up_with_busy_once_its_budget_is_spent() {
        // GIVEN a write that conflicts every time
        let mut contention = Contention::new();
        let mut attempts = 1;
        // WHEN it is tried again after each conflict
        let outcome = loop {
            match contention.again(|| "member m-1".to_string()).await {
                Ok(()) => attempts += 1,
                Err(e) => break e,
            }
        };
        // THEN it was tried the budgeted number of times, and ends busy (a 503), never internal
        assert_eq!(attempts, COMMIT_ATTEMPTS);
        assert!(matches!(&outcome, ServiceError::Busy(m) if m == "member m-1 kept changing"));
        let response = axum::response::IntoResponse::into_response(
            crate::api::problem::Problem::from(outcome),
        );
        assert_eq!(
            response.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(response.headers()["retry-after"], "1");
    }

    #[test]
    fn parked_events_are_released_in_the_order_they_happened_not_by_id() {
        // GIVEN events parked while a member was suspended, listed by id as DynamoDB lists them
        let event = |id: &str, at: &str| {
            (
                id.to_string(),
                format!(r#"{{"id": "{id}", "occurred_at": "{at}"}}"#),
            )
        };
        let parked = vec![
            event("a-refund", "2026-12-03T10:00:00Z"),
            event("b-unreadable", "not a time"),
            event("c-purchase", "2026-12-01T10:00:00Z"),
            event("d-second", "2026-12-03T10:00:00Z"),
        ];
        // WHEN they are put in order
        let ids: Vec<String> = super::in_order_of_occurrence(parked)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        // THEN the first to happen goes first, ties by id, and one without a time last
        assert_eq!(ids, ["c-purchase", "a-refund", "d-second", "b-unreadable"]);
    }
}
