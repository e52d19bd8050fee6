//! The KPI report: one pass over the program's members (a job's work at scale, like the
//! audit), plus each campaign's results.

use std::sync::{Arc, Mutex};

use chrono::{Duration, NaiveDate};

use super::{ServiceError, Services};
use crate::domain::calendar::local_date;
use crate::kpis::{KpiCounter, Kpis};
use crate::ports::Walked;

/// The period when none is given: the 30 days ending today.
const DEFAULT_DAYS: i64 = 30;

impl Services {
    pub async fn kpis(
        &self,
        program: &str,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Kpis, ServiceError> {
        let program = self.program(program).await?;
        let today = local_date(program.time_zone, self.clock.now());
        let to = to.unwrap_or(today);
        let from = from.unwrap_or(to - Duration::days(DEFAULT_DAYS - 1));
        if from > to {
            return Err(ServiceError::invalid(
                "invalid-period",
                format!("from {from} is after to {to}"),
            ));
        }
        let counter = Arc::new(Mutex::new(KpiCounter::new(&program, from, to)));
        let mut parts = Vec::new();
        for part in 0..self.store.parts() {
            let (store, counter, id) = (self.store.clone(), counter.clone(), program.id.clone());
            parts.push(tokio::spawn(async move {
                let visit = move |walked: Walked| {
                    let Ok(mut c) = counter.lock() else {
                        return;
                    };
                    match walked {
                        Walked::Member(records) => c.add(&records),
                        // Named, never skipped silently: the figures are short of it.
                        Walked::Unreadable { member, .. } => c.unreadable(member),
                        Walked::Parked(_) => {}
                    }
                };
                store.walk(part, Some(&id), &visit).await
            }));
        }
        for part in parts {
            part.await
                .map_err(|e| ServiceError::Internal(format!("a KPI part failed: {e}")))??;
        }
        let mut campaigns = Vec::new();
        let (start, end) = (
            crate::domain::calendar::start_of_day(program.time_zone, from),
            crate::domain::calendar::start_of_day(program.time_zone, to + Duration::days(1)),
        );
        for (id, campaign) in self.campaign_list(&program.id).await?.iter() {
            if campaign.start < end && campaign.end > start {
                campaigns.push(self.campaign_report(&program.id, id).await?);
            }
        }
        let counter = counter
            .lock()
            .map_err(|_| ServiceError::Internal("the KPI state was poisoned".into()))?
            .clone();
        Ok(counter.finish(campaigns))
    }
}
