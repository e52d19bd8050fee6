//! Saving and reading program files (versioned; TOML canonical, JSON accepted).

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Expected, ServiceError, Services};
use crate::domain::program::ProgramError;
use crate::domain::Program;

/// The outcome of saving a program.
#[derive(Debug, Clone)]
pub struct SavedProgram {
    pub program: Arc<Program>,
    /// True when the program did not exist before.
    pub created: bool,
}

/// The format of a program file in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramFormat {
    Toml,
    Json,
}

impl Services {
    /// Validates and saves a new version of a program. The id in the file must match `id`.
    pub async fn put_program(
        &self,
        id: &str,
        text: &str,
        format: ProgramFormat,
    ) -> Result<SavedProgram, ServiceError> {
        self.put_program_expecting(id, text, format, Expected::Any)
            .await
    }

    /// Everything a save of the file would check, against the version saved now, without
    /// saving it: `loyalty serve --program` checks every file before it saves any.
    pub async fn check_program(
        &self,
        id: &str,
        text: &str,
        format: ProgramFormat,
    ) -> Result<Program, ServiceError> {
        let program = checked_program(id, text, format)?;
        if let Some(current) = self.store.get_program(id).await? {
            keeps_what_members_hold(&current.file_json, &program)?;
        }
        Ok(program)
    }

    /// [`Services::put_program`] on condition that the saved version is `expected`: an editor
    /// never overwrites what another saved after it read.
    pub async fn put_program_expecting(
        &self,
        id: &str,
        text: &str,
        format: ProgramFormat,
        expected: Expected,
    ) -> Result<SavedProgram, ServiceError> {
        let what = format!("program {id}");
        let mut program = checked_program(id, text, format)?;
        // The file was checked above: one that could never be saved is 400 whatever is saved;
        // the precondition is checked on the version the write is conditional on.
        let mut file = program.file.clone();
        file.version = None;
        let file_json =
            serde_json::to_string(&file).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let mut contention = super::Contention::new();
        loop {
            let current = self.store.get_program(id).await?;
            let replaced = current.as_ref().map(|p| p.version);
            expected.check(replaced, &what)?;
            if let Some(current) = &current {
                keeps_what_members_hold(&current.file_json, &program)?;
            }
            if let Some(version) = self
                .store
                .put_program(id, &file_json, replaced, self.clock.now())
                .await?
            {
                program.version = version;
                program.file.version = Some(version);
                let program = Arc::new(program);
                self.remember(&program);
                if replaced.is_none() {
                    self.start_jobs_at_creation(&program).await;
                }
                return Ok(SavedProgram {
                    program,
                    created: replaced.is_none(),
                });
            }
            contention.again(|| format!("program {id}")).await?;
        }
    }

    /// A new program's due-date jobs start from the earliest date anything of it can be due
    /// (today less its backdating limit), so their first runs read days that can hold work
    /// instead of the longest catch-up. Best effort: without it a first run reads further
    /// back, which costs more and changes nothing.
    async fn start_jobs_at_creation(&self, program: &Program) {
        let today = crate::domain::calendar::local_date(program.time_zone, self.clock.now());
        let start = today - program.backdating_limit - chrono::Duration::days(1);
        for job in super::jobs::Job::DUE_DATE_JOBS {
            let name = job.name();
            let saved = match self.store.job_progress(&program.id, name).await {
                Ok(None) => {
                    self.store
                        .save_job_progress(&program.id, name, Some(&start.to_string()))
                        .await
                }
                Ok(Some(_)) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = saved {
                tracing::warn!(program = program.id, job = name, error = %e, "job start not saved; its first run reads further back");
            }
        }
    }
}

impl Services {
    /// `GET /v1/programs`: the programs an admin may act in (all, or the one its token is
    /// limited to), with what a console needs to show amounts and dates.
    pub async fn programs_overview(&self, only: Option<&str>) -> Result<Value, ServiceError> {
        let ids = match only {
            Some(id) => vec![id.to_string()],
            None => self.store.program_ids().await?,
        };
        let mut programs = Vec::new();
        for id in ids {
            let program = match self.program(&id).await {
                Ok(p) => p,
                Err(ServiceError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            programs.push(json!({
                "id": program.id,
                "name": program.name,
                "version": program.version,
                "currency": program.currency.to_string(),
                "time_zone": program.time_zone.name(),
                "point_value": program
                    .point_value_micros
                    .map(|m| crate::liability::decimal(i128::from(m), 0)),
                "tier_measure": program.tier_rules.measure,
            }));
        }
        Ok(json!({"programs": programs}))
    }

    /// `GET /v1/programs/{program}/versions`: every saved version, newest first.
    pub async fn program_versions(&self, id: &str) -> Result<Value, ServiceError> {
        let program = self.program(id).await?;
        let versions = self.store.program_versions(&program.id).await?;
        let versions: Vec<Value> = versions
            .into_iter()
            .map(|(version, at)| json!({"version": version, "saved_at": at}))
            .collect();
        Ok(json!({"program": program.id, "versions": versions}))
    }

    /// `GET /v1/programs/{program}/versions/{version}`: a saved version's file, as saved.
    pub async fn program_version(&self, id: &str, version: u32) -> Result<Value, ServiceError> {
        let program = self.program(id).await?;
        let stored = self
            .store
            .program_version(&program.id, version)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                problem: "unknown-version",
                detail: format!("program {} has no version {version}", program.id),
            })?;
        let file: Value = serde_json::from_str(&stored.file_json).map_err(|e| {
            ServiceError::Internal(format!("stored program {id} v{version} is corrupt: {e}"))
        })?;
        Ok(json!({
            "program": program.id,
            "version": stored.version,
            "saved_at": stored.updated_at,
            "file": file,
        }))
    }
}

/// The file parsed, for program `id`, with the rules a save checks beyond the file's own
/// (which a program saved before them is still read without).
fn checked_program(id: &str, text: &str, format: ProgramFormat) -> Result<Program, ServiceError> {
    let parsed = match format {
        ProgramFormat::Toml => Program::from_toml(text),
        ProgramFormat::Json => {
            super::require_object(text.as_bytes(), "malformed-program")?;
            Program::from_json(text)
        }
    };
    let program = parsed.map_err(|e| match e {
        ProgramError::Syntax { .. } => ServiceError::invalid("malformed-program", e.to_string()),
        ProgramError::Invalid(ref errors) => ServiceError::InvalidFields {
            problem: "invalid-program",
            detail: e.to_string(),
            errors: errors.clone(),
        },
    })?;
    if program.id != id {
        return Err(ServiceError::invalid(
            "program-id-mismatch",
            format!(
                "the file is for program {:?}, the path names {id:?}",
                program.id
            ),
        ));
    }
    reviews_judge_a_whole_window(&program)?;
    what_events_and_counters_allow(&program)?;
    Ok(program)
}

/// A custom action's name is one an event can carry (1 to 128 bytes) and no counter of the
/// engine's has (the account counts actions beside them); a tier threshold is within the
/// bounds of any amount (spend) or any points, so that a member's distance to it is a plain
/// subtraction.
fn what_events_and_counters_allow(program: &Program) -> Result<(), ServiceError> {
    use crate::domain::limits::{MAX_AMOUNT, MAX_POINTS};
    use crate::domain::program::{FieldError, Measure};
    let max = crate::envelope::MAX_TEXT_BYTES;
    let mut errors = Vec::new();
    for name in program.file.custom_actions.keys() {
        let field = format!("custom_actions.{name}");
        if name.is_empty() || name.len() > max {
            errors.push(FieldError {
                field,
                message: format!("a name has 1 to {max} bytes"),
            });
        } else if name == crate::domain::safeguards::REFERRALS_REWARDED {
            errors.push(FieldError {
                field,
                message: "is the name of the engine's own referral counter".into(),
            });
        }
    }
    let bound = match program.tier_rules.measure {
        Measure::Spend => MAX_AMOUNT,
        Measure::Points => MAX_POINTS,
    };
    for (i, tier) in program.tiers.iter().enumerate() {
        if tier.threshold > bound {
            errors.push(FieldError {
                field: format!("tiers[{i}].threshold"),
                message: format!("must be at most {bound} (in minor units for spend)"),
            });
        }
    }
    refused_for(errors)
}

/// A save refused for what a check found, field by field (none found: the save goes on).
fn refused_for(errors: Vec<crate::domain::program::FieldError>) -> Result<(), ServiceError> {
    if errors.is_empty() {
        return Ok(());
    }
    Err(ServiceError::InvalidFields {
        problem: "invalid-program",
        detail: errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        errors,
    })
}

/// Anniversary reviews need a window that is whole on any day: a calendar-year window judged
/// on a member's anniversary (10 January) is the few days of the new year, and every tiered
/// member would go down at the first review. Refused when saved (a program saved before is
/// still read as it was).
fn reviews_judge_a_whole_window(program: &Program) -> Result<(), ServiceError> {
    use crate::domain::program::{Review, Window};
    let rules = &program.tier_rules;
    if rules.review != Review::Anniversary || rules.window != Window::CalendarYear {
        return Ok(());
    }
    let message = "an anniversary review judges the window on the member's anniversary: with a calendar-year window that is the days of the year so far; review on 1 January (review = \"calendar_year\") or measure a rolling window (window = \"rolling_12_months\")".to_string();
    refused_for(vec![crate::domain::program::FieldError {
        field: "tier_rules.review".into(),
        message,
    }])
}

/// A new version keeps what members hold under the one it replaces, and what the stored
/// amounts mean:
/// - every tier id: members hold tiers by id, and one whose tier is gone would earn at the
///   lowest tier's multiplier, never be reviewed out of it, and be "upgraded" into a lower one
///   (a tier is renamed by its `name`; thresholds and benefits change freely);
/// - the currency and the tier measure: orders, refunds and the tier buckets are stored as
///   bare numbers in them (a refund of an order in the old currency would be refused for good,
///   won read as cents, spend read as points);
/// - the membership's id and period: paid periods are laid out again with the current period
///   at every payment, and a membership is recognised by its id (one renamed or re-cut would
///   end or reshape what members paid for), nor removed (it would not end: members would hold
///   it still, and a version adding it back would escape both checks).
fn keeps_what_members_hold(current_json: &str, next: &Program) -> Result<(), ServiceError> {
    #[derive(serde::Deserialize)]
    struct Saved {
        #[serde(default)]
        tiers: Vec<SavedId>,
        currency: Option<String>,
        tier_rules: Option<SavedTierRules>,
        membership: Option<SavedMembership>,
    }
    #[derive(serde::Deserialize)]
    struct SavedId {
        id: String,
    }
    #[derive(serde::Deserialize)]
    struct SavedTierRules {
        measure: crate::domain::program::Measure,
    }
    #[derive(serde::Deserialize)]
    struct SavedMembership {
        id: String,
        period_months: u32,
    }
    let Ok(saved) = serde_json::from_str::<Saved>(current_json) else {
        return Ok(());
    };
    let mut errors = Vec::new();
    let mut refuse = |field: &str, message: String| {
        errors.push(crate::domain::program::FieldError {
            field: field.into(),
            message,
        })
    };
    let dropped: Vec<String> = saved
        .tiers
        .into_iter()
        .map(|t| t.id)
        .filter(|id| !next.tiers.iter().any(|t| t.id == *id))
        .collect();
    if !dropped.is_empty() {
        refuse("tiers", format!(
            "tiers {} are in the saved version and not in this one: members may hold them; keep their ids (change a tier's name, threshold or benefits instead)",
            dropped.join(", ")
        ));
    }
    if let Some(currency) = saved
        .currency
        .filter(|c| !c.eq_ignore_ascii_case(&next.file.currency))
    {
        refuse("currency", format!(
            "the saved version is in {currency}: orders, refunds and tier spend are kept in it; a program in another currency is a new program"
        ));
    }
    if let Some(rules) = saved
        .tier_rules
        .filter(|r| r.measure != next.tier_rules.measure)
    {
        refuse("tier_rules.measure", format!(
            "the saved version measures tiers by {}: members' tier progress is kept in it; change thresholds, not the measure",
            format!("{:?}", rules.measure).to_lowercase()
        ));
    }
    if let (Some(paid), None) = (&saved.membership, &next.membership) {
        refuse("membership", format!(
            "the saved version sells membership {:?}: members may hold it, and a version without it would not end it; keep it (its name, price and benefits may change)",
            paid.id
        ));
    }
    if let (Some(paid), Some(next)) = (saved.membership, &next.membership) {
        if paid.id != next.id {
            refuse(
                "membership.id",
                format!(
                    "the saved membership is {:?}: members hold it by id; change its name instead",
                    paid.id
                ),
            );
        }
        if paid.period_months != next.period_months {
            refuse("membership.period_months", format!(
                "the saved membership's period is {} months: members paid for periods of that length",
                paid.period_months
            ));
        }
    }
    refused_for(errors)
}
