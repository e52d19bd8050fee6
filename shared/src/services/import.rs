//! Balance imports: each row of a file from another programme applied once, as an entry whose
//! id comes from what the row says, so importing the same file again (or saved again, or
//! exported again) changes nothing.

use serde::Serialize;

use super::{Contention, ServiceError, Services};
use crate::domain::import::ImportMode;
use crate::domain::{AccountError, EventContext, Source};
use crate::imports::RowData;
use crate::ports::{Commit, CommitError, EventMarker};

/// What became of one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RowOutcome {
    /// Written (or, in a dry run, would be): the points it moved.
    Applied {
        member: String,
        points: i64,
    },
    /// Nothing to write: imported before, or the balance is already the one stated.
    Unchanged {
        member: String,
        reason: String,
    },
    Refused {
        reason: String,
    },
}

/// Where a row comes from: the file (its name and digest), the row's line and content id
/// (`BalanceRow::content`), and the mode.
#[derive(Debug, Clone)]
pub struct RowOrigin<'a> {
    pub file_name: &'a str,
    pub digest: &'a str,
    pub line: u64,
    pub content: &'a str,
    pub mode: ImportMode,
    /// A dry run writes nothing: the accounts its rows would leave are kept here instead, so
    /// that a member's later rows are checked against its earlier ones, as a real run does.
    pub dry_run: Option<&'a DryRun>,
}

/// The accounts a dry run's rows would leave, by member.
#[derive(Debug, Default)]
pub struct DryRun(std::sync::Mutex<std::collections::HashMap<String, crate::domain::Account>>);

impl DryRun {
    fn account(&self, member: &str) -> Option<crate::domain::Account> {
        self.0.lock().ok()?.get(member).cloned()
    }

    fn keep(&self, account: &crate::domain::Account) {
        if let Ok(mut accounts) = self.0.lock() {
            accounts.insert(account.member.clone(), account.clone());
        }
    }
}

impl RowOrigin<'_> {
    /// The entry's marker: in `add` mode the same row content and rank give the same one, so
    /// that no file saved again credits twice; in `set` mode (which a second run leaves as it
    /// is anyway) the file and the line, so that a later file may set a balance back to one an
    /// earlier file stated.
    fn marker(&self) -> EventMarker {
        match self.mode {
            ImportMode::Add => EventMarker {
                source: "import".into(),
                event_id: format!("import-{}-{}", self.mode.as_str(), self.content),
            },
            ImportMode::Set => self.marker_by_line(),
        }
    }

    /// The marker earlier versions wrote, from the file's bytes and the row's line: a row
    /// applied under it is imported before too.
    fn marker_by_line(&self) -> EventMarker {
        EventMarker {
            source: "import".into(),
            event_id: format!(
                "import-{}-{}-{}",
                self.digest,
                self.mode.as_str(),
                self.line
            ),
        }
    }
}

impl Services {
    /// Applies one row of a balance file to its member (found by id, by email alias, or new).
    /// Failures of the row itself are `Refused`; only store failures are errors.
    pub async fn import_balance(
        &self,
        program_id: &str,
        by: &str,
        origin: &RowOrigin<'_>,
        row: &RowData,
    ) -> Result<RowOutcome, ServiceError> {
        let program = self.program(program_id).await?;
        let marker = origin.marker();
        if let Some(named) = &row.named_as {
            if self.imported_before(&program.id, named, origin).await? {
                return Ok(unchanged(named.clone(), "imported before"));
            }
        }
        let (mut member, mut to_link) = match self.import_member(&program.id, row).await? {
            Ok(found) => found,
            Err(reason) => return Ok(RowOutcome::Refused { reason }),
        };
        // A balance stated for a member merged away (its id now leads to the survivor) is not
        // the survivor's, which holds the other's points too: set to it, the survivor's own
        // would go.
        if let Some(refusal) = self
            .set_for_merged(&program.id, origin, row, &member)
            .await?
        {
            return Ok(refusal);
        }
        let reason = format!("imported from {}, row {}", origin.file_name, origin.line);
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let state = self.store.load_member(&program.id, &member, &[]).await?;
            // A member merged into another is the survivor's; one being erased takes nothing.
            if let Some(into) = state.account.as_ref().and_then(|a| a.merged_into()) {
                // Imported before the merge: the row's marker stayed here, its points moved on.
                if self.imported_before(&program.id, &member, origin).await? {
                    return Ok(unchanged(member, "imported before"));
                }
                if origin.mode == ImportMode::Set {
                    return Ok(merged_away(&member, into));
                }
                contention
                    .redirected(|| format!("member {}", crate::telemetry::member_ref(&member)))?;
                member = into.to_string();
                continue;
            }
            if state.account.as_ref().is_some_and(|a| a.erased.is_some()) {
                return Ok(RowOutcome::Refused {
                    reason: format!("member {member} is being erased"),
                });
            }
            // The commit is conditional on the marker; a dry run, and the marker of earlier
            // versions, are looked for.
            if self.imported_before(&program.id, &member, origin).await? {
                return Ok(unchanged(member, "imported before"));
            }
            // Imported before into a member merged into this one since: the marker stayed
            // there, the points came here.
            if let Some(account) = &state.account {
                if self
                    .imported_into_merged(&program.id, account, origin)
                    .await?
                {
                    return Ok(unchanged(
                        member,
                        "imported before, into a member merged into it",
                    ));
                }
            }
            // A name erased before: the file (an old export, a run again) is the person's
            // erased data; a new account would bring the person back.
            if state.account.is_none() {
                let mut names = vec![member.clone()];
                names.extend(to_link.iter().map(|email| format!("email:{email}")));
                if let Some(at) = self.erasure_of(&program.id, &names).await? {
                    return Ok(RowOutcome::Refused {
                        reason: format!(
                            "member {member} was erased on {}: its row is not imported (a customer who came back joins by a new event, or under another id)",
                            at.date_naive()
                        ),
                    });
                }
            }
            let rehearsed = origin.dry_run.and_then(|dry| dry.account(&member));
            let account = rehearsed
                .or_else(|| state.account.clone())
                .unwrap_or_else(|| crate::domain::Account::open(&program, &member, now));
            let ctx = EventContext::new(marker.event_id.clone(), now, now).with_source(Source {
                admin: Some(by.to_string()),
                rule: Some("import".into()),
                ..Source::default()
            });
            let change =
                match account.import_balance(&program, origin.mode, &row.balance, &reason, &ctx) {
                    Ok(change) => change,
                    Err(e) => return Ok(refused(e)),
                };
            let points = moved(&change);
            let outcome = match &change.no_op {
                Some(why) if points == 0 => unchanged(member.clone(), why),
                _ => RowOutcome::Applied {
                    member: member.clone(),
                    points,
                },
            };
            if let Some(dry) = origin.dry_run {
                dry.keep(&change.account);
                return Ok(outcome);
            }
            // The email is linked once the row is known to apply: a refused row links nothing
            // (its email would name a member the fixed row is not).
            if let Some(email) = to_link.take() {
                if !self
                    .store
                    .put_alias(&program.id, "email", &email, &member)
                    .await?
                {
                    return Ok(RowOutcome::Refused {
                        reason: format!("email {email} was just linked to another member"),
                    });
                }
            }
            let commit = Commit {
                marker: Some(marker.clone()),
                ..Commit::new(&program, &member, state.account.as_ref(), change, now)
            };
            match self.commit(commit).await {
                Ok(()) => return Ok(outcome),
                Err(CommitError::Duplicate) => return Ok(unchanged(member, "imported before")),
                Err(
                    CommitError::VersionConflict
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

    /// Whether `member` holds the row's marker, or the one earlier versions wrote for it.
    async fn imported_before(
        &self,
        program: &str,
        member: &str,
        origin: &RowOrigin<'_>,
    ) -> Result<bool, ServiceError> {
        // Both forms in either mode: a `set` row applied by a version that named rows by
        // content is imported before too.
        let by_content = EventMarker {
            source: "import".into(),
            event_id: format!("import-{}-{}", origin.mode.as_str(), origin.content),
        };
        for marker in [by_content, origin.marker_by_line()] {
            if self.store.has_marker(program, member, &marker).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a member merged into `account` (or into one merged into it, and so on) holds
    /// the row's marker. Merged members take no commits, so their markers never change.
    async fn imported_into_merged(
        &self,
        program: &str,
        account: &crate::domain::Account,
        origin: &RowOrigin<'_>,
    ) -> Result<bool, ServiceError> {
        /// Members looked at, at most: a member merged from more is not looked at further.
        const MERGED_LOOKED_AT: usize = 64;
        let mut waiting: Vec<String> = account.merged_from.clone();
        let mut looked_at = 0;
        while let Some(merged) = waiting.pop() {
            if looked_at == MERGED_LOOKED_AT {
                break;
            }
            looked_at += 1;
            if self.imported_before(program, &merged, origin).await? {
                return Ok(true);
            }
            let state = self.store.load_member(program, &merged, &[]).await?;
            if let Some(a) = state.account {
                waiting.extend(a.merged_from);
            }
        }
        Ok(false)
    }

    /// The refusal of a set-mode row whose member, named by its id or by its email, was
    /// merged into `member`; `None` for any other row.
    async fn set_for_merged(
        &self,
        program: &str,
        origin: &RowOrigin<'_>,
        row: &RowData,
        member: &str,
    ) -> Result<Option<RowOutcome>, ServiceError> {
        if origin.mode != ImportMode::Set {
            return Ok(None);
        }
        let Some((named, into)) = self.merged_named(program, row, member).await? else {
            return Ok(None);
        };
        // The same file run again: applied before the merge, under the member's own id.
        if self.imported_before(program, &named, origin).await? {
            return Ok(Some(unchanged(named, "imported before")));
        }
        Ok(Some(merged_away(&named, &into)))
    }

    /// Whether a row names, by its id or by its email, a member merged into its `target`
    /// (`import_target`): in set mode it states no one's balance (it is refused, or was
    /// applied before the merge), so the survivor's own row in the same file is its first.
    pub async fn names_merged_away(
        &self,
        program_id: &str,
        row: &RowData,
        target: &str,
    ) -> Result<bool, ServiceError> {
        Ok(self.merged_named(program_id, row, target).await?.is_some())
    }

    /// The member a row names, and the one it was merged into, when the row names one merged
    /// away from `member`.
    async fn merged_named(
        &self,
        program: &str,
        row: &RowData,
        member: &str,
    ) -> Result<Option<(String, String)>, ServiceError> {
        // Named by its id, or by its email alone: a member made by an import from an email is
        // `email:{email}`, and a merge moved that email's link to the survivor.
        let by_email = row.email.as_ref().map(|email| format!("email:{email}"));
        let Some(named) = row
            .member
            .as_deref()
            .or(by_email.as_deref())
            .filter(|m| *m != member)
        else {
            return Ok(None);
        };
        let state = self.store.load_member(program, named, &[]).await?;
        Ok(state
            .account
            .as_ref()
            .and_then(|a| a.merged_into())
            .map(|into| (named.to_string(), into.to_string())))
    }

    /// The member a row names as the store stands now (an id through its identity link, an
    /// email through its link), before any row of the file is applied: rows that name one
    /// member in two ways (an id, and an email linked to it) are then one member's, applied in
    /// the file's order and, in set mode, stated once. `None` for a row that names no one.
    pub async fn import_target(
        &self,
        program_id: &str,
        row: &RowData,
    ) -> Result<Option<String>, ServiceError> {
        Ok(self
            .import_member(program_id, row)
            .await?
            .ok()
            .map(|(member, _)| member))
    }

    /// The row's member: the one named (an id or an alias), else the one its email is linked
    /// to, else a new member `email:{email}`; and the email to link to it, if it is not yet, so
    /// that later orders with that email find it. An email linked to someone else refuses the
    /// row.
    async fn import_member(
        &self,
        program: &str,
        row: &RowData,
    ) -> Result<Result<(String, Option<String>), String>, ServiceError> {
        let by_email = match &row.email {
            Some(email) => self.store.resolve_alias(program, "email", email).await?,
            None => None,
        };
        let member = match (&row.member, &by_email, &row.email) {
            (Some(m), _, _) => self.canonical_member(program, m).await?,
            (None, Some(linked), _) => linked.clone(),
            (None, None, Some(email)) => format!("email:{email}"),
            (None, None, None) => return Ok(Err("neither a member nor an email is given".into())),
        };
        if let (Some(email), Some(linked)) = (&row.email, &by_email) {
            if *linked != member {
                return Ok(Err(format!(
                    "email {email} already belongs to member {linked}, not {member}"
                )));
            }
        }
        let to_link = row.email.clone().filter(|_| by_email.is_none());
        Ok(Ok((member, to_link)))
    }
}

fn merged_away(member: &str, into: &str) -> RowOutcome {
    RowOutcome::Refused {
        reason: format!(
            "member {member} was merged into {into}: its balance is not {into}'s; state {into}'s balance, or add the difference"
        ),
    }
}

fn unchanged(member: String, reason: &str) -> RowOutcome {
    RowOutcome::Unchanged {
        member,
        reason: reason.to_string(),
    }
}

fn refused(e: AccountError) -> RowOutcome {
    RowOutcome::Refused {
        reason: e.to_string(),
    }
}

/// The points a change moved on the balance (tier entries move none).
fn moved(change: &crate::domain::Change) -> i64 {
    change
        .entries
        .iter()
        .filter(|e| e.kind == crate::domain::EntryKind::Adjust)
        .map(|e| e.points)
        .sum()
}

/// Counts of an import, as the summary shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub rows: u64,
    pub applied: u64,
    pub unchanged: u64,
    pub refused: u64,
    pub points_added: i64,
    pub points_removed: i64,
}

impl ImportSummary {
    pub fn count(&mut self, outcome: &RowOutcome) {
        self.rows += 1;
        match outcome {
            RowOutcome::Applied { points, .. } => {
                self.applied += 1;
                if *points >= 0 {
                    self.points_added += points;
                } else {
                    self.points_removed -= points;
                }
            }
            RowOutcome::Unchanged { .. } => self.unchanged += 1,
            RowOutcome::Refused { .. } => self.refused += 1,
        }
    }
}
