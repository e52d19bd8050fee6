//! Erasing a member (`DELETE .../members/{m}`, `loyalty member erase`): the person goes, the
//! amounts stay (`domain::erasure`).
//!
//! A resumable sequence, each step idempotent:
//! 1. the member's points are forfeited with an entry and its account is marked erased with a
//!    random pseudonym (one conditional write, under the marker `erase`);
//! 2. the ledger is copied, its texts pseudonymised, to an account of the pseudonym, in commits
//!    of at most [`COPY_CHUNK`] entries each under its own marker; these add nothing to the books,
//!    which counted the entries when they were first written;
//! 3. parked and rejected events that hold one of its identities, and the stored answers to
//!    its app's requests, are deleted while the identities are still there to name them;
//! 4. members it referred (itself or a member merged into it) keep that they were referred,
//!    no longer by whom (`domain::erasure::ERASED_REFERRER`): no reward goes to its id later;
//! 5. everything under the member's id is deleted (ledger, markers, orders, redemptions,
//!    identities and their links, coupons, and the account last), and so are the members merged
//!    into it.
//!
//! Run again after an interruption, it finds the pseudonym on the account and carries on: the
//! account is the last thing to go, so whatever an interrupted run left, its mark is there too.

use serde::Serialize;

use super::{Contention, ServiceError, Services};
use crate::domain::books::BooksAdd;
use crate::domain::erasure::{erased_name, new_pseudonym, pseudonymised, replaced, Erasure};
use crate::domain::{Account, Change, DueDates, EventContext, LedgerEntry, Program, Source};
use crate::ports::{
    identity_member, Commit, CommitError, EventMarker, APP_LINK, ORDER_LINK, REDEMPTION_LINK,
};

/// Ledger entries copied per commit, inside one DynamoDB transaction with the account.
const COPY_CHUNK: usize = 90;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    pub member: String,
    /// The id the kept account and ledger have now.
    pub pseudonym: String,
    /// Available and pending points forfeited.
    pub forfeited: i64,
    pub forfeited_pending: i64,
    /// Available points paid out in money instead (`[erasure] outstanding = "pay_out"`).
    pub paid_out: i64,
    /// Points the member owed (after a clawback took more than it had), forgiven.
    pub debt_written_off: i64,
    /// Ledger entries kept under the pseudonym.
    pub entries: usize,
    pub identities: usize,
    /// Members merged into this one, erased with it.
    pub merged: usize,
    /// Parked and rejected events deleted because they named the member.
    pub events: usize,
    /// Stored answers to the member's own requests from its app (idempotency records) deleted.
    pub requests: usize,
    /// Members it referred, who no longer name it.
    pub referees: usize,
    /// Begun by an earlier run that stopped: that run forfeited (this one reports 0), and the
    /// counts are of what was left to do.
    pub resumed: bool,
}

/// What step 1 of an erasure gave up: available points, pending points, points paid out in
/// money, and debt forgiven.
#[derive(Debug, Clone, Copy)]
struct Forfeit {
    points: i64,
    pending: i64,
    paid: i64,
    debt: i64,
}

/// How identities appear in stored texts and payloads: as `kind:value` (member ids) and as the
/// bare value (a webhook's email field).
pub(crate) fn identity_names(aliases: &[(String, String)]) -> Vec<String> {
    aliases
        .iter()
        .flat_map(|(kind, value)| [format!("{kind}:{value}"), value.clone()])
        .collect()
}

/// The names events may carry for a member with these identities, as member ids: `kind:value`,
/// an app's subject alone (orders' and redemptions' links name no one).
fn member_names(member: &str, aliases: &[(String, String)]) -> Vec<String> {
    let identities = aliases
        .iter()
        .filter(|(kind, _)| ![ORDER_LINK, REDEMPTION_LINK].contains(&kind.as_str()))
        .map(|(kind, value)| identity_member(kind, value));
    std::iter::once(member.to_string())
        .chain(identities)
        .collect()
}

/// The names of the links of a member's orders (`order:shopify#5550001`), from its file's
/// order records, which are kept by the same keys.
fn order_names(file: &crate::ports::MemberFile) -> impl Iterator<Item = String> + '_ {
    file.orders
        .iter()
        .map(|(key, _)| identity_member(ORDER_LINK, key))
}

/// The member a merge's first step moved this member into, as its entry names it.
fn merged_into_named(entry: &LedgerEntry) -> Option<String> {
    if entry.source.rule.as_deref() != Some("merge") {
        return None;
    }
    let id = entry.source.event_id.as_deref().unwrap_or(&entry.id);
    let into = id.strip_prefix("merge-into-")?;
    let into = into.split('#').next().unwrap_or(into);
    (!into.is_empty()).then(|| into.to_string())
}

/// Each name paired with what stands for it in kept texts.
fn stand_ins_of(names: &[String], stand_in: &str) -> Vec<(String, String)> {
    names
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| (n.clone(), stand_in.to_string()))
        .collect()
}

/// The token subjects the member's app may call with: its `app` identities, and the member id
/// itself (a subject with no link). Its own requests' stored answers are kept under them.
fn app_subjects(member: &str, aliases: &[(String, String)]) -> Vec<String> {
    let linked = aliases.iter().filter(|(kind, _)| kind == APP_LINK);
    std::iter::once(member.to_string())
        .chain(linked.map(|(_, subject)| subject.clone()))
        .collect()
}

fn marker(id: &str) -> EventMarker {
    EventMarker {
        source: "erase".into(),
        event_id: id.to_string(),
    }
}

impl Services {
    /// Erases `member`, with the operator's reason (kept with the pseudonymous record).
    pub async fn erase_member(
        &self,
        program_id: &str,
        member: &str,
        reason: &str,
        by: &str,
    ) -> Result<ErasureReport, ServiceError> {
        let program = self.program(program_id).await?;
        let reason = super::operator_reason(reason, "invalid-reason")?;
        let (account, forfeit) = match self.forfeit(&program, member, &reason, by).await {
            Err(ServiceError::NotFound {
                problem: "unknown-member",
                ..
            }) => return Err(self.nothing_to_erase(&program.id, member).await),
            other => other?,
        };
        let Some(erasure) = account.erased.clone() else {
            return Err(ServiceError::Internal(
                "the erasure was not recorded".into(),
            ));
        };
        let file = self.store.member_file(&program.id, member).await?;
        let mut names: Vec<String> = vec![member.to_string()];
        names.extend(identity_names(&file.aliases));
        if let Some((_, value)) = member.split_once(':') {
            names.push(value.to_string());
        }
        let mut principals = app_subjects(member, &file.aliases);
        let mut erased_names = member_names(member, &file.aliases);
        // Its orders' links too: a refund of one of them, which names no customer, delivered
        // again later, is left out rather than parked for an order no one has any more.
        erased_names.extend(order_names(&file));
        // Members merged into it are named in its ledger (`Merged from …`, and the merge's
        // entry id): known before the ledger is kept, each under a stand-in of its own (also
        // for its identities, which the merge moved to this member).
        let mut stand_ins = Vec::new();
        let mut merged_files = Vec::new();
        for (k, merged) in account.merged_from.iter().enumerate() {
            let other = self.store.member_file(&program.id, merged).await?;
            let mut theirs = vec![merged.clone()];
            theirs.extend(identity_names(&other.aliases));
            stand_ins.extend(stand_ins_of(
                &theirs,
                &format!("{}-{}", erasure.pseudonym, k + 1),
            ));
            names.extend(theirs);
            principals.extend(app_subjects(merged, &other.aliases));
            erased_names.extend(member_names(merged, &other.aliases));
            erased_names.extend(order_names(&other));
            merged_files.push((merged, other));
        }
        stand_ins.extend(stand_ins_of(&names, &erasure.pseudonym));
        // Longest first, so that a name inside another is not replaced in it; a name stands
        // for the first member it was found under.
        stand_ins.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        stand_ins.dedup_by(|later, first| later.0 == first.0);
        let mut kept = erasure.clone();
        kept.reason = replaced(&kept.reason, &stand_ins);
        let entries = self
            .keep_ledger(&program, member, &account, &kept, &stand_ins)
            .await?;
        // Remembered before anything under them goes (a run again after that would no longer
        // know the identities): an event from before the erasure that names one of them (a
        // reconcile, a redrive, a replay) makes no member again.
        let digests: Vec<String> = erased_names
            .iter()
            .map(|name| erased_name(&program.id, name))
            .collect();
        self.store
            .note_erased(&program.id, &digests, erasure.at)
            .await?;
        let coupons: Vec<String> = file.coupons.iter().map(|c| c.code.clone()).collect();
        let identities = file.aliases.len();
        // Short names (`m-1`) would match other members' payloads; ids and identities that
        // name a person are longer than that.
        names.retain(|n| n.chars().count() >= 5);
        names.sort();
        names.dedup();
        // Before the identities go: a run again after them would no longer know their names.
        let forgotten = self
            .store
            .forget_payloads(&program.id, &names, &principals)
            .await?;
        let referrers: Vec<String> = std::iter::once(member.to_string())
            .chain(account.merged_from.iter().cloned())
            .collect();
        // By the member id itself, however short (the payload search above leaves short names
        // out): approved later, a request would credit whoever has the id by then.
        let approvals = self.forget_approvals(&program.id, &referrers).await?;
        let referees = self.forget_as_referrer(&program, &referrers).await?;
        for (merged, other) in merged_files {
            let codes: Vec<String> = other.coupons.iter().map(|c| c.code.clone()).collect();
            self.store.erase_member(&program.id, merged, &codes).await?;
        }
        self.store
            .erase_member(&program.id, member, &coupons)
            .await?;
        let (events, requests) = (forgotten.events + approvals, forgotten.requests);
        tracing::info!(program = %program.id, pseudonym = %erasure.pseudonym, entries, events, requests, "member erased");
        Ok(ErasureReport {
            member: member.to_string(),
            pseudonym: erasure.pseudonym,
            forfeited: forfeit.map_or(0, |f| f.points),
            forfeited_pending: forfeit.map_or(0, |f| f.pending),
            paid_out: forfeit.map_or(0, |f| f.paid),
            debt_written_off: forfeit.map_or(0, |f| f.debt),
            entries,
            identities,
            merged: account.merged_from.len(),
            events,
            requests,
            referees,
            resumed: forfeit.is_none(),
        })
    }

    /// The latest erasure of one of `names` (member ids, identities as `kind:value`), if any:
    /// an event from before it is the erased person's (`domain::erasure::before_erasure`).
    pub(crate) async fn erasure_of(
        &self,
        program: &str,
        names: &[String],
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, crate::ports::StoreError> {
        // Each once: a batch read refuses a key named twice.
        let mut digests: Vec<String> = names
            .iter()
            .map(|name| erased_name(program, name))
            .collect();
        digests.sort_unstable();
        digests.dedup();
        self.store.erased_at(program, &digests).await
    }

    /// Why a member with no account cannot be erased: it was, on a day it says (support asked
    /// twice for one person, or an erasure retried after its answer was lost), or no one has
    /// that id.
    async fn nothing_to_erase(&self, program: &str, member: &str) -> ServiceError {
        match self.erasure_of(program, &[member.to_string()]).await {
            Ok(Some(at)) => ServiceError::NotFound {
                problem: "unknown-member",
                detail: format!(
                    "member {member:?} was erased on {}; nothing of it is left to erase",
                    at.format("%Y-%m-%d %H:%M UTC")
                ),
            },
            _ => ServiceError::unknown_member(member),
        }
    }

    /// Refuses a member's own request that would open an account for `member` with a token
    /// issued before the name was erased ([`refuse_token_before_erasure`]).
    pub(crate) async fn refuse_erased_caller(
        &self,
        program: &str,
        member: &str,
        token_issued_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), ServiceError> {
        let erased = self
            .erasure_of(program, std::slice::from_ref(&member.to_string()))
            .await?;
        refuse_token_before_erasure(erased, token_issued_at, self.clock.now())
    }

    /// A new account for `member`, which remembers when its id was erased before, if it was
    /// (an operator's adjustment or a profile of a customer who came back): the erased
    /// person's older events stay dropped once the id has an account again.
    pub(crate) async fn opened_account(
        &self,
        program: &Program,
        member: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Account, ServiceError> {
        let erased_before = self
            .erasure_of(&program.id, std::slice::from_ref(&member.to_string()))
            .await?;
        Ok(Account {
            erased_before,
            ..Account::open(program, member, now)
        })
    }

    /// Step 4: the members referred by one of `referrers` keep that they were referred, not by
    /// whom. Returns how many were changed.
    async fn forget_as_referrer(
        &self,
        program: &Program,
        referrers: &[String],
    ) -> Result<usize, ServiceError> {
        let mut changed = 0;
        for referrer in referrers {
            for referee in self.store.referees(&program.id, referrer).await? {
                if self.forget_referrer_of(program, &referee, referrer).await? {
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    /// Whether `referee` named `referrer` (and no longer does).
    async fn forget_referrer_of(
        &self,
        program: &Program,
        referee: &str,
        referrer: &str,
    ) -> Result<bool, ServiceError> {
        let mut contention = Contention::new();
        loop {
            let state = self.store.load_member(&program.id, referee, &[]).await?;
            let Some(account) = state.account.as_ref() else {
                return Ok(false);
            };
            let Some(updated) = account.forget_referrer(referrer) else {
                return Ok(false);
            };
            let change = Change::unchanged(updated);
            let now = self.clock.now();
            match self
                .commit(Commit::new(program, referee, Some(account), change, now))
                .await
            {
                Ok(()) => return Ok(true),
                Err(CommitError::Store(e)) => return Err(e.into()),
                Err(_) => {}
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(referee)))
                .await?;
        }
    }

    /// Step 1: the account marked erased, its points forfeited. Returns the account and the
    /// points forfeited now (none when it was marked before).
    async fn forfeit(
        &self,
        program: &Program,
        member: &str,
        reason: &str,
        by: &str,
    ) -> Result<(Account, Option<Forfeit>), ServiceError> {
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let account = self.existing_account(&program.id, member).await?;
            if account.erased.is_some() {
                return Ok((account, None));
            }
            // A member merged into one erased before the merge finished is merged into no one:
            // it is erased on its own.
            if let Some(into) = account.merged_into() {
                if self
                    .store
                    .load_member(&program.id, into, &[])
                    .await?
                    .account
                    .is_some()
                {
                    return Err(ServiceError::Conflict {
                        problem: "member-merged",
                        detail: format!("{member} was merged into {into}; erase {into}"),
                    });
                }
            }
            let erasure = Erasure {
                pseudonym: new_pseudonym(),
                at: now,
                reason: reason.to_string(),
                by: by.to_string(),
            };
            let ctx = EventContext::new("erase", now, now).with_source(Source {
                admin: Some(by.to_string()),
                rule: Some("erasure".into()),
                ..Source::default()
            });
            let change =
                account
                    .erase(program, erasure, &ctx)
                    .map_err(|e| ServiceError::Conflict {
                        problem: "erasure-refused",
                        detail: e.to_string(),
                    })?;
            let gone = |kind| {
                change
                    .entries
                    .iter()
                    .filter(|e| e.kind == kind)
                    .fold((0, 0), |(p, q), e| (p - e.points, q - e.pending))
            };
            let (net, pending) = gone(crate::domain::EntryKind::Forfeit);
            let (paid, _) = gone(crate::domain::EntryKind::Payout);
            // The forfeit entry gives up the lots and forgives any debt in one (as the books
            // count it): apart, neither hides the other in the answer.
            let lots: i64 = change
                .entries
                .iter()
                .filter(|e| e.kind == crate::domain::EntryKind::Forfeit)
                .flat_map(|e| e.lots.iter())
                .map(|share| share.points)
                .sum();
            let forfeit = Forfeit {
                points: -lots,
                pending,
                paid,
                debt: -(net + lots),
            };
            let erased = change.account.clone();
            let commit = Commit {
                marker: Some(marker("erase")),
                ..Commit::new(program, member, Some(&account), change, now)
            };
            match self.commit(commit).await {
                Ok(()) => return Ok((erased, Some(forfeit))),
                Err(CommitError::Store(e)) => return Err(e.into()),
                Err(_) => {}
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(member)))
                .await?;
        }
    }

    /// Step 2: the ledger under the pseudonym, oldest first, its texts pseudonymised.
    async fn keep_ledger(
        &self,
        program: &Program,
        member: &str,
        erased: &Account,
        erasure: &Erasure,
        stand_ins: &[(String, String)],
    ) -> Result<usize, ServiceError> {
        let mut read: Vec<LedgerEntry> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .store
                .ledger_page(&program.id, member, 100, cursor.as_deref())
                .await?;
            read.extend(page.entries);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        // A member merged into another that was erased before the merge finished names it in
        // its merge's entry ("Merged into …", `merge-into-…`); by then nothing else here knows
        // that member (a resumed run's account no longer says where it went), the ledger does.
        let mut stand_ins = stand_ins.to_vec();
        for entry in &read {
            if let Some(into) = merged_into_named(entry) {
                stand_ins.push((into, format!("{}-into", erasure.pseudonym)));
            }
        }
        stand_ins.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        stand_ins.dedup_by(|later, first| later.0 == first.0);
        let mut entries: Vec<LedgerEntry> =
            read.iter().map(|e| pseudonymised(e, &stand_ins)).collect();
        entries.reverse();
        let count = entries.len();
        for (n, chunk) in entries.chunks(COPY_CHUNK).enumerate() {
            self.keep_chunk(program, erased, erasure, n, chunk.to_vec())
                .await?;
        }
        Ok(count)
    }

    async fn keep_chunk(
        &self,
        program: &Program,
        erased: &Account,
        erasure: &Erasure,
        part: usize,
        entries: Vec<LedgerEntry>,
    ) -> Result<(), ServiceError> {
        let pseudonym = &erasure.pseudonym;
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let kept = self
                .store
                .load_member(&program.id, pseudonym, &[])
                .await?
                .account;
            let account = kept.clone().unwrap_or_else(|| Account {
                member: pseudonym.clone(),
                profile: Default::default(),
                merged_from: Vec::new(),
                erased: Some(erasure.clone()),
                version: 0,
                ..erased.clone()
            });
            let commit = Commit {
                marker: Some(marker(&format!("erase-copy-{part}"))),
                entries: entries.clone(),
                // Counted in the books when first written; the kept account is no member.
                books: BooksAdd::default(),
                due: DueDates::default(),
                ..Commit::new(
                    program,
                    pseudonym,
                    kept.as_ref(),
                    Change::unchanged(account),
                    now,
                )
            };
            // The metrics, like the books, counted these entries when they were first written.
            match self.commit_copy(commit).await {
                Ok(()) | Err(CommitError::Duplicate) => return Ok(()),
                Err(CommitError::Store(e)) => return Err(e.into()),
                Err(_) => {}
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(pseudonym)))
                .await?;
        }
    }
}

/// A member's token issued at or before the erasure of the name it speaks for is the erased
/// person's, kept by an app that was not told: it opens no account again (a profile or a
/// campaign's exposure would write the person back). A token issued after it is the person
/// signing in again, who comes back as a new member, as an event after the erasure does; a
/// token that does not say when it was issued cannot tell, and is refused for an erased name;
/// nor can one that says a time still to come (past the clocks' leeway): only its issuer could
/// sign it, but a token issued before the erasure with such a time would pass for one after.
pub(crate) fn refuse_token_before_erasure(
    erased_at: Option<chrono::DateTime<chrono::Utc>>,
    token_issued_at: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), ServiceError> {
    let told = token_issued_at.filter(|&issued| issued <= now + CLOCK_LEEWAY);
    match erased_at {
        Some(erased) if told.is_none_or(|issued| issued <= erased) => {
            Err(ServiceError::Unauthorized {
                problem: "token-before-erasure",
                detail:
                    "the member this token speaks for was erased after it was issued; sign in again"
                        .to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// How far ahead of this process's clock an issuer's may be.
const CLOCK_LEEWAY: chrono::Duration = chrono::Duration::minutes(5);

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn a_token_dated_ahead_cannot_say_it_came_after_an_erasure() {
        // GIVEN a name erased an hour ago
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let erased = Some(now - Duration::hours(1));
        let refused = |issued: Option<_>| refuse_token_before_erasure(erased, issued, now).is_err();
        // WHEN tokens say when they were issued THEN one from before is refused, and one from
        // after is the person coming back, also when the issuer's clock is a little ahead
        assert!(refused(Some(now - Duration::hours(2))));
        assert!(!refused(Some(now - Duration::minutes(30))));
        assert!(!refused(Some(now + Duration::minutes(4))));
        // AND one dated further ahead tells nothing, as one without a date (before: a year
        // ahead passed for after the erasure)
        assert!(refused(Some(now + Duration::days(365))));
        assert!(refused(None));
        // AND a name never erased is no reason to refuse any
        assert!(refuse_token_before_erasure(None, Some(now + Duration::days(365)), now).is_ok());
    }
}
