//! Reconciliation with a shop platform: its orders and refunds, read from its API, compared
//! with what the engine applied; what is missing is sent as the very events its webhooks would
//! have produced (same ids), so whatever arrives twice counts once.

use serde::Serialize;

use super::{ServiceError, Services};
use crate::ports::{EventMarker, ORDER_LINK};
use crate::webhooks::{MemberRef, PlatformEvent};

/// What reconciliation found for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reconciled {
    pub event: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub order_id: String,
    pub member: Option<String>,
    /// `present` (applied before), `missing` (a dry run), `sent`, or `refused` with the reason.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Services {
    /// Each event in turn: applied already (its marker is there), or sent now. One event that
    /// cannot be sent (refused) or cannot be looked at now (failed, to be tried again) is
    /// reported and the others go on.
    pub async fn reconcile_events(
        &self,
        program: &str,
        events: Vec<PlatformEvent>,
        dry_run: bool,
    ) -> Result<Vec<Reconciled>, ServiceError> {
        let program = self.program(program).await?;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let (id, kind, order_id) = (
                event.id.clone(),
                event.kind.to_string(),
                text_field(&event, "order_id"),
            );
            out.push(
                self.reconcile_event(&program.id, event, dry_run)
                    .await
                    .unwrap_or_else(|e| Reconciled {
                        event: id,
                        kind,
                        order_id,
                        member: None,
                        status: "failed",
                        reason: Some(e.to_string()),
                    }),
            );
        }
        Ok(out)
    }

    async fn reconcile_event(
        &self,
        program: &str,
        event: PlatformEvent,
        dry_run: bool,
    ) -> Result<Reconciled, ServiceError> {
        let member = self.known_member(program, &event).await?;
        let field = |name: &str| text_field(&event, name);
        let marker = EventMarker {
            source: field("platform"),
            event_id: event.id.clone(),
        };
        // The marker of an order's event may be kept on the order's record.
        let order_keys: Vec<String> = Some(field("order_id"))
            .filter(|id| !id.is_empty())
            .map(|id| crate::envelope::order_key(&marker.source, &id))
            .into_iter()
            .collect();
        let present = match &member {
            Some(m) => {
                let state = self
                    .store
                    .load_member_for_event(program, m, &marker, &order_keys, &[])
                    .await?;
                state.seen
                    || order_keys.iter().any(|key| {
                        state
                            .orders
                            .get(key)
                            .is_some_and(|order| had_effect(order, event.kind, &field("refund_id")))
                    })
            }
            None => false,
        };
        let mut found = Reconciled {
            event: event.id.clone(),
            kind: event.kind.to_string(),
            order_id: field("order_id"),
            member,
            status: "present",
            reason: None,
        };
        // An event an operator cancelled (held for review, or waiting while its member was
        // suspended) is kept among the rejected events, and marked as taken with no effect:
        // it is reported as what it is, and never sent again (it would apply what the
        // operator refused where its marker is missing: a member it was cancelled for before
        // this version, one with no account then).
        if let Some(rejected) = self
            .store
            .rejected_event(program, &event.id)
            .await?
            .filter(|r| r.reason.starts_with(super::rejections::CANCELLED_BY))
        {
            found.status = "rejected";
            found.reason = Some(rejected.reason);
            return Ok(found);
        }
        // A guest order's refund (an unpaid order's cancellation) whose order credited no
        // one is dropped when sent: a dry run does not count it missing either.
        if !present && dry_run && !self.worth_ingesting(program, &mut event.clone()).await? {
            return Ok(found);
        }
        if !present {
            found.status = "missing";
            if !dry_run {
                match self.ingest_events(program, vec![event]).await {
                    // Dropped with nothing to take back (a guest order's refund): none missing.
                    Ok(ids) if ids.is_empty() => found.status = "present",
                    Ok(_) => found.status = "sent",
                    Err(
                        e @ (ServiceError::Invalid { .. } | ServiceError::Unprocessable { .. }),
                    ) => {
                        found.status = "refused";
                        found.reason = Some(e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(found)
    }

    /// The event's member as far as the store knows it, read only (a dry run writes nothing).
    async fn known_member(
        &self,
        program: &str,
        event: &PlatformEvent,
    ) -> Result<Option<String>, ServiceError> {
        let identity = match &event.member {
            MemberRef::Order(key) => {
                return Ok(self.store.resolve_alias(program, ORDER_LINK, key).await?)
            }
            MemberRef::Identity(identity) => identity,
        };
        // An order's events belong to the member its payment credited, whoever the order
        // names now (as ingesting them decides).
        let (platform, order) = (text_field(event, "platform"), text_field(event, "order_id"));
        if !platform.is_empty() && !order.is_empty() {
            let key = crate::envelope::order_key(&platform, &order);
            if let Some(credited) = self.store.resolve_alias(program, ORDER_LINK, &key).await? {
                return Ok(Some(credited));
            }
        }
        let Some(own) = identity.split_once(':') else {
            return Ok(Some(identity.clone()));
        };
        let (own, other) = self.identity_members(program, event, own).await?;
        Ok(Some(own.or(other).unwrap_or_else(|| identity.clone())))
    }
}

/// A text field of an event's data, or empty.
fn text_field(event: &PlatformEvent, name: &str) -> String {
    event
        .data
        .get(name)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A reconciliation over a window of time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub orders: u64,
    pub results: Vec<Reconciled>,
    /// Why the platform's pages stopped before the window's end, if they did: the orders
    /// read until then are reconciled and reported; the rest were not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<String>,
}

impl ReconcileReport {
    pub fn count(&self, status: &str) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }
}

#[cfg(feature = "platform-api")]
impl Services {
    /// Reads every order changed in `[after, before)` from the platform, page by page, and
    /// reconciles each. A page the platform does not give (after its retries) ends the
    /// reading: what was read until then is reconciled and reported, and the report says why
    /// the rest is unread.
    pub async fn reconcile_platform(
        &self,
        program: &str,
        api: &crate::platforms::OrderApi,
        after: chrono::DateTime<chrono::Utc>,
        before: chrono::DateTime<chrono::Utc>,
        dry_run: bool,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<ReconcileReport, ServiceError> {
        let mut report = ReconcileReport::default();
        // Each order as read (id and modification time): a page read again after another
        // (see `OrderApi::following`) passes over what it already reconciled; an order that
        // changed meanwhile is reconciled again, as it is now.
        let mut read = std::collections::HashSet::new();
        let mut next = Some(api.first_page(after, before));
        while let Some(url) = next {
            let (page, more) = match api.page(&url).await {
                Ok(page) => page,
                Err(reason) => {
                    report.unread = Some(format!(
                        "the platform gave no more orders after {}: {reason}",
                        report.orders
                    ));
                    break;
                }
            };
            let fresh: Vec<&serde_json::Value> = page
                .iter()
                .filter(|order| read.insert(order_version(order)))
                .collect();
            next = api.following(&url, &page, fresh.len(), more);
            for order in fresh {
                report.orders += 1;
                progress(report.orders);
                // An order that cannot be read is reported, and the others go on.
                let events = match api.events(order) {
                    Ok(events) => events,
                    Err(reason) => {
                        let id = order.get("id").map(|v| v.to_string()).unwrap_or_default();
                        report.results.push(Reconciled {
                            event: format!("order-{}", id.trim_matches('"')),
                            kind: ORDER_LINK.into(),
                            order_id: id.trim_matches('"').to_string(),
                            member: None,
                            status: "refused",
                            reason: Some(reason),
                        });
                        continue;
                    }
                };
                report
                    .results
                    .extend(self.reconcile_events(program, events, dry_run).await?);
            }
        }
        Ok(report)
    }
}

/// An order as read: its id and when it was last modified (either platform's field).
#[cfg(feature = "platform-api")]
fn order_version(order: &serde_json::Value) -> String {
    let field = |name: &str| order.get(name).map(|v| v.to_string()).unwrap_or_default();
    if order.get("id").is_none() {
        // Refused as unreadable, each on its own.
        return order.to_string();
    }
    format!(
        "{}|{}{}",
        field("id"),
        field("date_modified_gmt"),
        field("updated_at")
    )
}

/// The scheduled job that reconciles every program with each platform it has API credentials
/// for (in AWS, hourly: WooCommerce never retries a failed webhook).
pub const RECONCILE_JOB: &str = "reconcile-platforms";

/// Where a program's API credentials for a platform are kept (SSM in AWS), as JSON.
#[cfg(feature = "platform-api")]
#[async_trait::async_trait]
pub trait PlatformKeys: Send + Sync {
    async fn api_credentials(
        &self,
        program: &str,
        platform: crate::webhooks::Platform,
    ) -> Result<Option<String>, crate::ports::StoreError>;
}

/// One program and platform of a scheduled reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileRun {
    pub program: String,
    pub platform: String,
    /// The window read: orders changed in `[after, before)`.
    pub after: Option<chrono::DateTime<chrono::Utc>>,
    pub before: Option<chrono::DateTime<chrono::Utc>>,
    pub orders: u64,
    pub present: usize,
    pub sent: usize,
    pub refused: usize,
    /// Orders that could not be looked at now: the window is read again by the next run.
    pub failed: usize,
    pub error: Option<String>,
}

/// Each run reads from where the last one ended, less this, so that an order changed while
/// the last one read is not missed.
#[cfg(feature = "platform-api")]
const OVERLAP_MINUTES: i64 = 60;
/// How far back a program's first run reads.
#[cfg(feature = "platform-api")]
const FIRST_RUN_HOURS: i64 = 24;

#[cfg(feature = "platform-api")]
impl Services {
    /// The scheduled job: every program (or one), every platform it has credentials for. One
    /// that fails is reported and retried by the next run; the others go on. What is missing
    /// is sent through the outbox, as an operator's command would.
    pub async fn reconcile_platforms(
        &self,
        keys: &dyn PlatformKeys,
        program: Option<&str>,
    ) -> Result<Vec<ReconcileRun>, ServiceError> {
        let programs = match program {
            Some(p) => vec![p.to_string()],
            None => self.store.program_ids().await?,
        };
        let outbox = Services::new(
            self.store.clone(),
            std::sync::Arc::new(crate::queue::outbox::OutboxQueue::new(self.store.clone())),
            self.clock.clone(),
        );
        let mut runs = Vec::new();
        for program in programs {
            for platform in crate::platforms::RECONCILED {
                let mut run = ReconcileRun {
                    program: program.clone(),
                    platform: platform.as_str().to_string(),
                    ..ReconcileRun::default()
                };
                match outbox
                    .reconcile_window(keys, &program, platform, &mut run)
                    .await
                {
                    Ok(true) => runs.push(run),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(program, platform = %platform, error = %e, "reconciliation failed; the next run retries it");
                        run.error = Some(e.to_string());
                        runs.push(run);
                    }
                }
            }
        }
        Ok(runs)
    }

    /// One program and platform; `false` when it has no credentials (nothing to do).
    async fn reconcile_window(
        &self,
        keys: &dyn PlatformKeys,
        program: &str,
        platform: crate::webhooks::Platform,
        run: &mut ReconcileRun,
    ) -> Result<bool, ServiceError> {
        let Some(text) = keys.api_credentials(program, platform).await? else {
            return Ok(false);
        };
        let credentials = crate::platforms::ApiCredentials::from_json(platform, &text)
            .map_err(|e| ServiceError::invalid("invalid-credentials", e))?;
        let api = crate::platforms::OrderApi::new(platform, &credentials)
            .map_err(|e| ServiceError::invalid("invalid-credentials", e))?;
        let job = format!("{RECONCILE_JOB}-{platform}");
        let now = self.clock.now();
        let last = self
            .store
            .job_progress(program, &job)
            .await?
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        let after = match last {
            Some(t) => t - chrono::Duration::minutes(OVERLAP_MINUTES),
            None => now - chrono::Duration::hours(FIRST_RUN_HOURS),
        };
        run.after = Some(after);
        run.before = Some(now);
        let report = self
            .reconcile_platform(program, &api, after, now, false, &|_| {})
            .await?;
        run.orders = report.orders;
        run.present = report.count("present");
        run.sent = report.count("sent");
        run.refused = report.count("refused");
        run.failed = report.count("failed");
        tracing::info!(program, platform = %platform, orders = run.orders, sent = run.sent, refused = run.refused, failed = run.failed, "reconciled");
        if let Some(unread) = report.unread {
            run.error = Some(format!("{unread}; the next run reads the window again"));
            return Ok(true);
        }
        // Read again from the same start while an order failed; what was sent is not sent
        // twice (its marker is there by then).
        if run.failed > 0 {
            run.error = Some(format!(
                "{} orders could not be looked at; the next run reads the window again",
                run.failed
            ));
            return Ok(true);
        }
        self.store
            .save_job_progress(program, &job, Some(&now.to_rfc3339()))
            .await?;
        Ok(true)
    }
}

/// Whether the order's record shows the event's effect, when its marker is elsewhere: a merge
/// copies the record to the survivor and leaves the marker with the member merged away.
fn had_effect(order: &crate::domain::OrderRecord, kind: &str, refund_id: &str) -> bool {
    match kind {
        // Held for review counts as there: an operator decides it.
        "purchase.completed" => {
            order.earned.is_some() || order.applied.contains(crate::domain::orders::PAYMENT_HELD)
        }
        "purchase.refunded" => !refund_id.is_empty() && order.applied.contains(refund_id),
        "purchase.cancelled" => order.applied.contains("cancel"),
        _ => false,
    }
}
