//! Merging two members who are one person (`POST .../members/{survivor}/merge`, `loyalty member
//! merge`).
//!
//! A resumable sequence of conditional writes, each idempotent, so an interruption anywhere
//! loses and doubles nothing (`domain::merge`):
//! 1. the other member is emptied into a snapshot on its own account, marked merged, with a
//!    `member.merge` message in the same commit: if this process dies, the message finishes
//!    the merge through the earn queue;
//! 2. the survivor receives the snapshot and the first order records, under a marker named after
//!    the other member; the remaining order records and the redemptions follow in commits of
//!    their own, each under its own marker;
//! 3. the other member's identities move to the survivor, and its own id becomes one of them.
//!
//! Asked again, each step finds its marker and the merge reports what it did the first time.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::{Contention, ServiceError, Services};
use crate::domain::{
    Account, AccountError, Change, EventContext, Merged, OrderRecord, Program, Source,
};
use crate::envelope::{Envelope, ENVELOPE_VERSION};
use crate::ports::{
    Commit, CommitError, EventMarker, OutboxMessage, QueueName, Redemption, StoreError,
};

/// The kind of the message that finishes a merge (internal: refused on the events route).
pub const MEMBER_MERGE: &str = "member.merge";

/// Order records and redemptions copied per commit: well inside the 100 items of one
/// DynamoDB transaction, with the account and its entries.
const COPY_CHUNK: usize = 80;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergeReport {
    pub survivor: String,
    pub merged: String,
    /// Available and pending points moved.
    pub points: i64,
    pub pending: i64,
    pub orders: usize,
    pub redemptions: usize,
    pub identities: usize,
    /// The survivor's balance after the merge.
    pub balance: i64,
    /// `true` when this request found the merge done (or begun) before.
    pub repeated: bool,
}

/// The body of a merge request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeRequest {
    from: String,
    reason: String,
}

fn merge_marker(step: &str) -> EventMarker {
    EventMarker {
        source: "merge".into(),
        event_id: step.to_string(),
    }
}

fn refused(e: AccountError) -> ServiceError {
    ServiceError::Conflict {
        problem: "merge-refused",
        detail: e.to_string(),
    }
}

/// The longest chain of merges followed to its end (A into B, B into C, ...).
pub(super) const MAX_MERGE_HOPS: usize = 16;

impl Services {
    /// `POST .../members/{survivor}/merge` with `{"from", "reason"}`: `from` may be an id or
    /// an identity linked to one.
    pub async fn merge_request(
        &self,
        program: &str,
        survivor: &str,
        by: &str,
        body: &[u8],
    ) -> Result<MergeReport, ServiceError> {
        let (request, _): (MergeRequest, _) = super::redemptions::parse(body, "invalid-merge")?;
        self.merge_named(program, survivor, &request.from, &request.reason, by)
            .await
    }

    /// Merges the member `named` (an id, or an identity linked to one) into `survivor`. An
    /// identity that leads to the survivor already (moved by an earlier merge) is a repeat.
    pub async fn merge_named(
        &self,
        program: &str,
        survivor: &str,
        named: &str,
        reason: &str,
        by: &str,
    ) -> Result<MergeReport, ServiceError> {
        let from = self.merge_source(program, named).await?;
        if from == survivor && named != survivor {
            let program = self.program(program).await?;
            let balance = self.existing_member(&program, survivor).await?.balance;
            return Ok(MergeReport {
                survivor: survivor.to_string(),
                merged: named.to_string(),
                points: 0,
                pending: 0,
                orders: 0,
                redemptions: 0,
                identities: 0,
                balance,
                repeated: true,
            });
        }
        self.merge_members(program, survivor, &from, reason, by)
            .await
    }

    /// The member a merge takes from: a member of that id (merged before, asking again), else
    /// the member an identity is linked to.
    pub async fn merge_source(&self, program: &str, raw: &str) -> Result<String, ServiceError> {
        let named = crate::ids::MemberId::parse(raw)?;
        if self
            .store
            .load_member(program, &named, &[])
            .await?
            .account
            .is_some()
        {
            return Ok(named.to_string());
        }
        self.canonical_member(program, &named).await
    }

    /// Merges `from` into `survivor`, with the operator's reason.
    pub async fn merge_members(
        &self,
        program_id: &str,
        survivor: &str,
        from: &str,
        reason: &str,
        by: &str,
    ) -> Result<MergeReport, ServiceError> {
        let program = self.program(program_id).await?;
        if survivor == from {
            return Err(ServiceError::Conflict {
                problem: "merge-refused",
                detail: "a member cannot be merged into itself".into(),
            });
        }
        let reason = super::operator_reason(reason, "invalid-merge")?;
        let repeated = self
            .merge_out(&program, survivor, from, &reason, by)
            .await?;
        let mut report = self.complete_merge(&program, survivor, from).await?;
        report.repeated = repeated;
        Ok(report)
    }

    /// Step 1. Returns `true` when the other member had been merged into the survivor before.
    async fn merge_out(
        &self,
        program: &Program,
        survivor: &str,
        from: &str,
        reason: &str,
        by: &str,
    ) -> Result<bool, ServiceError> {
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let target = self.existing_member(program, survivor).await?;
            if let Some(into) = target.merged_into() {
                let last = self.survivor_of(&program.id, into).await;
                return Err(ServiceError::Conflict {
                    problem: "member-merged",
                    detail: format!("{survivor} was merged into {into}; merge into {last}"),
                });
            }
            let other = self.existing_member(program, from).await?;
            match other.merged_into() {
                Some(into) if into == survivor => return Ok(true),
                Some(into) => {
                    let last = self.survivor_of(&program.id, into).await;
                    let detail = if last == survivor {
                        format!("{from} was merged into {into}, and {into} into {survivor}: its points are {survivor}'s already")
                    } else {
                        format!("{from} was merged into {into} already (its points are {last}'s)")
                    };
                    return Err(ServiceError::Conflict {
                        problem: "member-merged",
                        detail,
                    });
                }
                None => {}
            }
            // A person being forgotten is neither merged into nor merged from: what moved would
            // outlive the erasure, or be deleted with it unforfeited.
            for (member, account) in [(survivor, &target), (from, &other)] {
                if account.erased.is_some() {
                    return Err(ServiceError::Conflict {
                        problem: "member-erased",
                        detail: format!("{member} is being erased; nothing is merged with it"),
                    });
                }
            }
            // A suspended member's events wait under its own id: merged, nothing would ever
            // release them (a resume of a merged member is refused, the survivor's releases
            // its own).
            if other.suspended.is_some() {
                return Err(ServiceError::Conflict {
                    problem: "merge-refused",
                    detail: format!(
                        "{from} is suspended and its events wait for a resume; resume it (applying or cancelling them) before the merge"
                    ),
                });
            }
            if !target.holds.is_empty() {
                return Err(ServiceError::Conflict {
                    problem: "merge-refused",
                    detail: format!(
                        "{survivor} has points held for a checkout; capture or void the hold first"
                    ),
                });
            }
            let step = format!("merge-into-{survivor}");
            let ctx = EventContext::new(step.clone(), now, now).with_source(Source {
                admin: Some(by.to_string()),
                rule: Some("merge".into()),
                ..Source::default()
            });
            let change = other
                .merge_out(program, survivor, reason, by, &ctx)
                .map_err(refused)?;
            let finish = Envelope {
                replay: None,
                resumed: None,
                reviewed_by: None,
                trace: crate::telemetry::trace::current(),
                kind: MEMBER_MERGE.into(),
                version: ENVELOPE_VERSION,
                id: format!("merge-{from}"),
                program: program.id.clone(),
                member: survivor.to_string(),
                occurred_at: now,
                data: json!({ "from": from }),
            };
            let commit = Commit {
                marker: Some(merge_marker(&step)),
                ..Commit::new(program, from, Some(&other), change, now)
            }
            .and_send(vec![OutboxMessage::new(QueueName::Earn, finish)]);
            match self.commit(commit).await {
                Ok(()) => return Ok(false),
                Err(CommitError::Duplicate) => return Ok(true),
                Err(
                    CommitError::VersionConflict
                    | CommitError::CouponConsumed
                    | CommitError::OverQuota,
                ) => {}
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(from)))
                .await?;
        }
    }

    async fn existing_member(
        &self,
        program: &Program,
        member: &str,
    ) -> Result<Account, ServiceError> {
        self.existing_account(&program.id, member).await
    }

    /// Where the points of a member merged into `into` are now: the end of `into`'s chain of
    /// merges (for a message: a chain that cannot be followed to a member names `into`).
    pub(crate) async fn survivor_of(&self, program: &str, into: &str) -> String {
        match self.end_of_chain(program, into, |_| {}).await {
            Ok(Some(account)) => account.member,
            _ => into.to_string(),
        }
    }

    /// Follows `member`'s merges to the account not merged on, or `None` when one on the way is
    /// gone (only an erasure deletes an account, and a member is merged out only into one that
    /// exists, so gone means erased); `seen` is shown every account passed, the last included.
    pub(crate) async fn end_of_chain(
        &self,
        program: &str,
        member: &str,
        mut seen: impl FnMut(&Account),
    ) -> Result<Option<Account>, ServiceError> {
        let mut at = member.to_string();
        for _ in 0..=MAX_MERGE_HOPS {
            let Some(account) = self.store.load_member(program, &at, &[]).await?.account else {
                return Ok(None);
            };
            seen(&account);
            match account.merged_into() {
                None => return Ok(Some(account)),
                Some(next) => at = next.to_string(),
            }
        }
        Err(ServiceError::Internal(format!(
            "{member} was merged on more than {MAX_MERGE_HOPS} times"
        )))
    }

    /// [`super::redemptions::refuse_closed`], naming where a merged member's points are now
    /// rather than the member it was first merged into (which may have been merged on).
    pub(crate) async fn refuse_closed_named(
        &self,
        program: &str,
        account: &Account,
    ) -> Result<(), ServiceError> {
        let refused = super::redemptions::refuse_closed(account);
        let Some(into) = account.merged_into().filter(|_| refused.is_err()) else {
            return refused;
        };
        let last = self.survivor_of(program, into).await;
        if last == into {
            return refused;
        }
        Err(ServiceError::Conflict {
            problem: "member-merged",
            detail: format!(
                "{} was merged into {into}, and {into} on into {last}: its points, and any change to them, are {last}'s",
                account.member
            ),
        })
    }

    /// Steps 2 and 3: what the survivor receives. Idempotent; also run by the earn queue's
    /// consumer for the `member.merge` message, so a merge interrupted after step 1 finishes.
    pub async fn complete_merge(
        &self,
        program: &Program,
        survivor: &str,
        from: &str,
    ) -> Result<MergeReport, ServiceError> {
        let other = self.existing_member(program, from).await?;
        let Some(merged) = other.merged.clone().filter(|m| m.into == survivor) else {
            return Err(ServiceError::Conflict {
                problem: "member-merged",
                detail: format!("{from} has not been merged into {survivor}"),
            });
        };
        // The survivor may have been merged on itself since step 1 (into a third member): the
        // person is where its chain of merges ends, and what this member brings goes there.
        let (end, arrived) = self.end_of_merges(program, survivor, from).await?;
        let Some(survivor) = end.as_deref() else {
            // Merged into one person whose data is gone: this part of them goes too.
            self.erase_member(
                &program.id,
                from,
                "merged into a member who was erased before the merge finished",
                &merged.by,
            )
            .await?;
            return Err(ServiceError::Conflict {
                problem: "member-erased",
                detail: format!(
                    "{survivor} was erased before the merge finished; {from} was erased with it"
                ),
            });
        };
        let file = self.store.member_file(&program.id, from).await?;
        let orders: Vec<(String, OrderRecord)> = file
            .orders
            .into_iter()
            .map(|(key, mut order)| {
                order.moved_from.get_or_insert_with(|| from.to_string());
                (key, order)
            })
            .collect();
        let copies = copy_chunks(orders.clone(), file.redemptions.clone());
        for (n, (orders, redemptions)) in copies.into_iter().enumerate() {
            // Its snapshot (and the first copies, in the same commit) reached a member of the
            // chain, which carries them on to its end: not added again.
            if n == 0 && arrived {
                continue;
            }
            self.merge_in(program, survivor, &merged, n, orders, redemptions)
                .await?;
        }
        let mut identities = file.aliases.clone();
        match from.split_once(':') {
            Some((kind, value)) => identities.push((kind.to_string(), value.to_string())),
            // An id of no kind is its app's token subject: that login now reaches the survivor.
            None => identities.push((crate::ports::APP_LINK.to_string(), from.to_string())),
        }
        identities.sort();
        identities.dedup();
        for (kind, value) in &identities {
            if !self
                .store
                .move_alias(&program.id, kind, value, from, survivor)
                .await?
            {
                tracing::warn!(program = %program.id, kind = %kind, "identity linked to a third member; not moved");
            }
        }
        let balance = self.existing_member(program, survivor).await?.balance;
        Ok(MergeReport {
            survivor: survivor.to_string(),
            merged: from.to_string(),
            points: merged.snapshot.balance,
            pending: merged.snapshot.pending_points(),
            orders: orders.len(),
            redemptions: file.redemptions.len(),
            identities: identities.len(),
            balance,
            repeated: false,
        })
    }

    /// Where a chain of merges from `survivor` ends (see [`Self::end_of_chain`]), and whether a
    /// member of the chain received `from`'s snapshot already (it names `from` among the members
    /// merged into it).
    async fn end_of_merges(
        &self,
        program: &Program,
        survivor: &str,
        from: &str,
    ) -> Result<(Option<String>, bool), ServiceError> {
        let mut arrived = false;
        let end = self
            .end_of_chain(&program.id, survivor, |account| {
                arrived |= account.merged_from.iter().any(|m| m == from);
            })
            .await?;
        Ok((end.map(|account| account.member), arrived))
    }

    /// One commit on the survivor: the first carries the snapshot, every one some copies.
    async fn merge_in(
        &self,
        program: &Program,
        survivor: &str,
        merged: &Merged,
        part: usize,
        orders: Vec<(String, OrderRecord)>,
        redemptions: Vec<Redemption>,
    ) -> Result<(), ServiceError> {
        let from = &merged.snapshot.member;
        let step = match part {
            0 => format!("merge-{from}"),
            n => format!("merge-{from}-part-{n}"),
        };
        let keys: Vec<String> = orders.iter().map(|(key, _)| key.clone()).collect();
        let redemptions: Vec<Redemption> = redemptions
            .into_iter()
            .map(|r| Redemption {
                member: survivor.to_string(),
                ..r
            })
            .collect();
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let state = self.store.load_member(&program.id, survivor, &keys).await?;
            let account = state
                .account
                .ok_or_else(|| ServiceError::unknown_member(survivor))?;
            // What an erased survivor received would be deleted with it, never forfeited: the
            // merge waits until the erasure is done (then it has no survivor to finish into).
            if account.erased.is_some() {
                return Err(ServiceError::Unavailable(StoreError::Transient {
                    message: "the survivor is being erased; the merge waits".into(),
                    source: None,
                }));
            }
            // Merged on meanwhile: the chain is walked again when the merge runs again.
            if account.merged_into().is_some() {
                return Err(ServiceError::Unavailable(StoreError::Transient {
                    message: "the survivor was merged on; the merge follows it".into(),
                    source: None,
                }));
            }
            // Arrived already (a run before this one).
            if part == 0 && account.merged_from.iter().any(|m| m == from) {
                return Ok(());
            }
            let change = if part == 0 {
                let ctx = EventContext::new(step.clone(), now, now).with_source(Source {
                    admin: Some(merged.by.clone()),
                    rule: Some("merge".into()),
                    ..Source::default()
                });
                account.merge_in(program, merged, &ctx).map_err(refused)?
            } else {
                Change::unchanged(account.clone())
            };
            let (change, copies) =
                with_copies(program, &step, change, &orders, &state.orders, now)?;
            let mut outbox = Vec::new();
            if part == 0 {
                // The summed qualifying history may reach a higher tier.
                let check = Envelope::made(
                    &program.id,
                    crate::envelope::TIER_CHECK,
                    format!("tier-check-{step}"),
                    survivor,
                    now,
                    json!({}),
                );
                outbox.push(OutboxMessage::new(QueueName::Tier, check));
            }
            let commit = Commit {
                marker: Some(merge_marker(&step)),
                orders: copies,
                copied_redemptions: redemptions.clone(),
                ..Commit::new(program, survivor, Some(&account), change, now)
            }
            .and_send(outbox);
            if self.commit_marked(commit).await? {
                return Ok(());
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(survivor)))
                .await?;
        }
    }
}

/// The order records a merge's commit copies onto the survivor, and the change with what
/// they bring. An order the survivor has a record of itself keeps it, unless that record only
/// holds refunds parked for want of the purchase: they reached the survivor while the merge
/// was between its steps, and are applied to the copied purchase now (else they would wait
/// for ever, and the order's points stay with the survivor).
fn with_copies(
    program: &Program,
    step: &str,
    mut change: Change,
    orders: &[(String, OrderRecord)],
    own: &BTreeMap<String, OrderRecord>,
    now: DateTime<Utc>,
) -> Result<(Change, BTreeMap<String, OrderRecord>), ServiceError> {
    let mut copies = BTreeMap::new();
    for (i, (key, record)) in orders.iter().enumerate() {
        let parked = match own.get(key) {
            None => {
                copies.insert(key.clone(), record.clone());
                continue;
            }
            Some(own) if own.earned.is_none() && record.earned.is_some() => &own.parked,
            Some(_) => continue,
        };
        let ctx = EventContext::new(format!("{step}-refunds-{i}"), now, now).with_source(Source {
            order_id: Some(record.order_id.clone()),
            rule: Some("merge".into()),
            ..Source::default()
        });
        let applied = change.account.apply_parked(program, record, parked, &ctx);
        change.account = applied.change.account;
        change.entries.extend(applied.change.entries);
        copies.insert(key.clone(), applied.order);
    }
    Ok((change, copies))
}

/// The copies in commits of at most [`COPY_CHUNK`] records, always at least one (the first
/// commit carries the snapshot). Deterministic: the other member no longer changes.
#[allow(clippy::type_complexity)]
fn copy_chunks(
    orders: Vec<(String, OrderRecord)>,
    redemptions: Vec<Redemption>,
) -> Vec<(Vec<(String, OrderRecord)>, Vec<Redemption>)> {
    let mut chunks = vec![(Vec::new(), Vec::new())];
    for order in orders {
        if chunks
            .last()
            .is_some_and(|(o, r)| o.len() + r.len() >= COPY_CHUNK)
        {
            chunks.push((Vec::new(), Vec::new()));
        }
        if let Some((o, _)) = chunks.last_mut() {
            o.push(order);
        }
    }
    for redemption in redemptions {
        if chunks
            .last()
            .is_some_and(|(o, r)| o.len() + r.len() >= COPY_CHUNK)
        {
            chunks.push((Vec::new(), Vec::new()));
        }
        if let Some((_, r)) = chunks.last_mut() {
            r.push(redemption);
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_chunked_within_one_transaction() {
        // GIVEN 170 orders and 5 redemptions
        let orders: Vec<(String, OrderRecord)> = (0..170)
            .map(|i| (format!("pos#{i}"), OrderRecord::default()))
            .collect();
        // WHEN they are chunked
        let chunks = copy_chunks(orders, Vec::new());
        // THEN no chunk passes the limit and none is lost
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|(o, r)| o.len() + r.len() <= COPY_CHUNK));
        assert_eq!(chunks.iter().map(|(o, _)| o.len()).sum::<usize>(), 170);
        // AND nothing to copy is still one commit (the snapshot's)
        assert_eq!(copy_chunks(Vec::new(), Vec::new()).len(), 1);
    }
}
