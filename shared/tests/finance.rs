//! The books, the liability report and the audit, through the services on the embedded store,
//! with the clock moved across a year so that points really expire.

mod common;

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use common::Recorder;
use loyalty_core::domain::calendar::YearMonth;
use loyalty_core::liability::LiabilityReport;
use loyalty_core::ports::{AliasStore, FixedClock, MemberStore, QueueName, ScheduleStore};
use loyalty_core::services::audit::AuditReport;
use loyalty_core::services::jobs::Job;
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

const KR_SHOP: &str = include_str!("../../examples/kr-shop.toml");

struct Stack {
    services: Services,
    store: SqliteStore,
    queue: Arc<Recorder>,
    clock: Arc<FixedClock>,
    path: std::path::PathBuf,
}

/// Noon in Seoul on a day.
fn seoul_noon(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 3, 0, 0).unwrap()
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

async fn stack(name: &str) -> Stack {
    let path =
        std::env::temp_dir().join(format!("loyalty-finance-{name}-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let store = SqliteStore::open(&path).unwrap();
    let queue = Arc::new(Recorder::default());
    let clock = FixedClock::at(seoul_noon(2026, 3, 10));
    let services = Services::new(Arc::new(store.clone()), queue.clone(), clock.clone());
    services
        .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
        .await
        .unwrap();
    Stack {
        services,
        store,
        queue,
        clock,
        path,
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Stack {
    async fn at(&self, when: DateTime<Utc>) {
        self.clock.set(when);
    }

    async fn drain(&self) {
        loop {
            self.services.relay_waiting(1000).await.unwrap();
            let next = {
                let mut sent = self.queue.0.lock().unwrap();
                (!sent.is_empty()).then(|| sent.remove(0))
            };
            let Some((queue, message)) = next else { return };
            let body = serde_json::to_string(&message).unwrap();
            match queue {
                QueueName::Earn => {
                    self.services.process_earn(&body).await.unwrap();
                }
                QueueName::Tier => {
                    self.services.process_tier_check(&body).await.unwrap();
                }
                QueueName::Notify => {}
            }
        }
    }

    async fn event(&self, event: serde_json::Value) {
        self.services
            .process_earn(&event.to_string())
            .await
            .unwrap();
        self.drain().await;
    }

    async fn purchase(&self, member: &str, order: &str, lines: &[(&str, i64, i64)]) {
        let lines: Vec<_> = lines
            .iter()
            .map(|(id, qty, price)| json!({"line_id": id, "quantity": qty, "unit_price": price.to_string()}))
            .collect();
        self.event(json!({
            "type": "purchase.completed", "version": 1, "id": format!("ev-{order}"),
            "program": "kr-shop", "member": member, "occurred_at": self.clock_now(),
            "data": {"order_id": order, "currency": "KRW", "lines": lines}
        }))
        .await;
    }

    async fn refund(&self, member: &str, order: &str, refund: &str, line: &str, qty: i64) {
        self.event(json!({
            "type": "purchase.refunded", "version": 1, "id": format!("ev-{refund}"),
            "program": "kr-shop", "member": member, "occurred_at": self.clock_now(),
            "data": {"order_id": order, "refund_id": refund, "lines": [{"line_id": line, "quantity": qty}]}
        }))
        .await;
    }

    async fn cancel(&self, member: &str, order: &str) {
        self.event(json!({
            "type": "purchase.cancelled", "version": 1, "id": format!("ev-cancel-{order}"),
            "program": "kr-shop", "member": member, "occurred_at": self.clock_now(),
            "data": {"order_id": order}
        }))
        .await;
    }

    fn clock_now(&self) -> String {
        use loyalty_core::ports::Clock;
        self.clock.now().to_rfc3339()
    }

    async fn adjust(&self, member: &str, points: i64) {
        let body = json!({"points": points, "reason": "goodwill"}).to_string();
        self.services
            .adjust("kr-shop", member, "ops", None, body.as_bytes())
            .await
            .unwrap();
    }

    async fn redeem(&self, member: &str, reward: &str) -> String {
        let body = json!({"reward": reward}).to_string();
        let key = format!("{member}-{reward}-{}", self.clock_now());
        let answer = self
            .services
            .redeem("kr-shop", member, member, Some(&key), body.as_bytes())
            .await
            .unwrap();
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body["id"].as_str().unwrap().to_string()
    }

    async fn reverse(&self, member: &str, id: &str) {
        let body = json!({"reason": "the coupon never reached the member"}).to_string();
        self.services
            .reverse_redemption("kr-shop", member, id, "ops", body.as_bytes())
            .await
            .unwrap();
    }

    async fn job(&self, job: Job, date: NaiveDate) {
        self.services
            .run_job(job, "kr-shop", Some(date), &|_| {})
            .await
            .unwrap();
        self.drain().await;
    }

    async fn report(&self, as_of: NaiveDate) -> LiabilityReport {
        self.services
            .liability("kr-shop", Some(as_of))
            .await
            .unwrap()
    }

    async fn audit(&self) -> AuditReport {
        self.services
            .audit(Some("kr-shop"), Arc::new(|_| {}))
            .await
            .unwrap()
    }

    /// Σ balance, Σ lots and Σ pending over every member, as each one sees it now.
    async fn members_now(&self) -> (i64, i64, i64) {
        use loyalty_core::ports::Clock;
        let program = self.services.program("kr-shop").await.unwrap();
        let page = self
            .store
            .members_page("kr-shop", None, 1000)
            .await
            .unwrap();
        let (mut balance, mut lots, mut pending) = (0, 0, 0);
        for member in page.members {
            let account = self
                .store
                .load_member("kr-shop", &member, &[])
                .await
                .unwrap()
                .account
                .unwrap();
            let view = account.as_of(&program, self.clock.now()).account;
            balance += view.balance;
            lots += view.lots.total();
            pending += view.pending_points();
        }
        (balance, lots, pending)
    }
}

/// The invariants every liability report keeps, whatever the history.
fn assert_reconciles(report: &LiabilityReport) {
    let by_month: i64 = report.by_expiry_month.iter().map(|m| m.points).sum();
    assert_eq!(
        by_month, report.outstanding,
        "expiry months sum to outstanding"
    );
    assert_eq!(report.net, report.outstanding - report.owed);
    let mut opening = 0;
    for m in &report.movements {
        assert_eq!(
            m.opening, opening,
            "{} opens where the month before closed",
            m.month
        );
        assert_eq!(
            m.opening + m.issued - m.redeemed - m.expired - m.clawed_back + m.adjusted,
            m.closing,
            "{} moves from its opening to its closing",
            m.month
        );
        assert_eq!(m.issued, m.issued_by_kind.values().sum::<i64>());
        opening = m.closing;
    }
    assert_eq!(
        opening, report.net,
        "the last closing is the sum of the balances"
    );
    let tiers: i64 = report.by_tier.iter().map(|t| t.points).sum();
    assert_eq!(tiers, report.outstanding, "the tiers hold every lot");
    let pending: i64 = report
        .pending_by_release_month
        .iter()
        .map(|m| m.points)
        .sum();
    assert_eq!(pending, report.pending);
}

fn assert_clean(audit: &AuditReport) {
    assert!(audit.violations.is_empty(), "{:#?}", audit.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_reconcile_with_every_account_through_a_year_of_mixed_work() {
    // GIVEN a shop whose members buy, get refunds, cancel, redeem, have a redemption given
    // back and receive operators' adjustments, in March 2026
    let s = stack("mixed").await;
    s.purchase("m-1", "o-1", &[("a", 2, 30_000), ("b", 1, 40_000)])
        .await;
    s.purchase("m-2", "o-2", &[("a", 1, 59_000)]).await;
    s.adjust("m-3", 8_000).await;
    s.at(seoul_noon(2026, 3, 12)).await;
    s.refund("m-1", "o-1", "r-1", "a", 1).await;
    s.purchase("m-4", "o-4", &[("a", 3, 20_000)]).await;
    s.refund("m-5", "o-5", "r-5", "a", 1).await; // arrives before its order: parked
    s.purchase("m-5", "o-5", &[("a", 2, 25_000)]).await;
    s.at(seoul_noon(2026, 3, 20)).await;
    s.job(Job::ReleasePending, day(2026, 3, 20)).await;
    s.cancel("m-4", "o-4").await;
    let issued = s.redeem("m-3", "coupon-5000").await;
    s.at(seoul_noon(2026, 4, 2)).await;
    s.reverse("m-3", &issued).await;
    s.redeem("m-3", "free-shipping").await;
    s.adjust("m-2", -100).await;
    s.purchase("m-2", "o-22", &[("a", 1, 120_000)]).await;

    // THEN the audit finds nothing wrong, its sums are the books', and the report reconciles
    let audit = s.audit().await;
    assert_clean(&audit);
    assert_eq!(audit.members, 5);
    let report = s.report(day(2026, 4, 2)).await;
    assert_reconciles(&report);
    let (balance, lots, pending) = s.members_now().await;
    assert_eq!(report.net, balance);
    assert_eq!(report.outstanding, lots);
    assert_eq!(report.pending, pending);
    let sums = &audit.programs["kr-shop"];
    assert_eq!(sums.members.lots, sums.books.lots);
    assert_eq!(
        sums.members.balance, report.net,
        "nothing has matured unwritten yet"
    );
    assert_eq!(report.members, 5);
    assert_eq!(
        report.value.as_deref(),
        Some(report.outstanding.to_string().as_str())
    );

    // WHEN the year turns: the March 2026 points last until 2027-03-31
    let march: i64 = report
        .by_expiry_month
        .iter()
        .filter(|m| m.month == YearMonth::new(2027, 3))
        .map(|m| m.points)
        .sum();
    assert!(march > 0, "{report:#?}");
    s.at(seoul_noon(2027, 3, 31)).await;
    let last_day = s.report(day(2027, 3, 31)).await;
    s.at(seoul_noon(2027, 4, 1)).await;
    let next_day = s.report(day(2027, 4, 1)).await;

    // THEN they are outstanding on their last day and expired in the next day's report,
    // before any job has run
    assert_reconciles(&last_day);
    assert_reconciles(&next_day);
    assert!(last_day
        .by_expiry_month
        .iter()
        .any(|m| m.month == YearMonth::new(2027, 3) && m.points == march));
    assert!(next_day
        .by_expiry_month
        .iter()
        .all(|m| m.month != YearMonth::new(2027, 3)));
    assert_eq!(next_day.outstanding, last_day.outstanding - march);
    let april = next_day.movements.last().unwrap();
    assert_eq!(april.month, YearMonth::new(2027, 4));
    assert_eq!(april.expired, march);
    assert_eq!(next_day.provisional.expired, march);
    let (balance, lots, _) = s.members_now().await;
    assert_eq!((next_day.net, next_day.outstanding), (balance, lots));

    // WHEN the expiry job writes what the report foresaw
    s.job(Job::ExpirePoints, day(2027, 4, 1)).await;
    let written = s.report(day(2027, 4, 1)).await;

    // THEN the report is the same, now from written entries, and the audit is still clean
    assert_eq!(written.outstanding, next_day.outstanding);
    assert_eq!(written.movements, next_day.movements);
    assert_eq!(written.provisional.expired, 0);
    let audit = s.audit().await;
    assert_clean(&audit);
    let sums = &audit.programs["kr-shop"];
    assert_eq!(sums.members.balance, written.net);
    assert_eq!(sums.members.lots, written.outstanding);

    // AND the cohorts say where each month's points went
    let march_cohort = written
        .breakage
        .cohorts
        .iter()
        .find(|c| c.month == YearMonth::new(2026, 3))
        .unwrap();
    assert_eq!(march_cohort.outstanding, 0);
    assert!(march_cohort.matured && march_cohort.expired > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_closes_the_same_in_every_report_made_after_it_whenever_the_jobs_ran() {
    // GIVEN 1,000 points given in October 2025, which last until 31 October 2026, and a
    // purchase at 23:30 on 23 November in Seoul, whose points are released at 23:30 on 30
    // November (seven days later)
    let s = stack("month-end").await;
    s.at(seoul_noon(2025, 10, 15)).await;
    s.adjust("m-2", 1_000).await;
    s.at(Utc.with_ymd_and_hms(2026, 11, 23, 14, 30, 0).unwrap())
        .await;
    s.purchase("m-1", "o-1", &[("a", 1, 50_000)]).await;
    // WHEN November is reported on its last day, before any job ran
    s.at(Utc.with_ymd_and_hms(2026, 11, 30, 14, 45, 0).unwrap())
        .await;
    let on_the_day = s.report(day(2026, 11, 30)).await;
    // AND the jobs write the release at 00:10 on 1 December, and the expiry only on 2
    // December (its job failed through November)
    s.at(Utc.with_ymd_and_hms(2026, 11, 30, 15, 10, 0).unwrap())
        .await;
    s.job(Job::ReleasePending, day(2026, 12, 1)).await;
    s.at(seoul_noon(2026, 12, 2)).await;
    s.job(Job::ExpirePoints, day(2026, 12, 2)).await;
    // AND November is reported again on 1 and 2 December
    let next_day = s.report(day(2026, 12, 1)).await;
    let later = s.report(day(2026, 12, 2)).await;
    // THEN November closes the same in all three (before: the release and the expiry,
    // written in December, left November for December in the later reports), and each
    // reconciles
    let november = |r: &LiabilityReport| {
        r.movements
            .iter()
            .find(|m| m.month == YearMonth::new(2026, 11))
            .cloned()
            .unwrap()
    };
    assert_eq!(
        (november(&on_the_day).issued, november(&on_the_day).expired),
        (500, 1_000),
        "{on_the_day:#?}"
    );
    assert_eq!(november(&next_day), november(&on_the_day));
    assert_eq!(november(&later), november(&on_the_day));
    for report in [&on_the_day, &next_day, &later] {
        assert_reconciles(report);
    }
    // AND December has neither, and the audit is clean
    let december = later.movements.last().unwrap();
    assert_eq!(
        (december.month, december.issued, december.expired),
        (YearMonth::new(2026, 12), 0, 0)
    );
    assert_eq!(later.provisional, Default::default());
    assert_clean(&s.audit().await);
}

#[tokio::test]
async fn a_member_erased_before_is_said_to_be_so_when_asked_again() {
    // GIVEN m-1 with points, erased
    let s = stack("erased-twice").await;
    s.adjust("m-1", 500).await;
    let erase = |member: &'static str| {
        s.services
            .erase_member("kr-shop", member, "asked to be forgotten", "ops")
    };
    erase("m-1").await.unwrap();
    // WHEN support asks for the same erasure again, and for an id no one has
    let again = erase("m-1").await.unwrap_err().to_string();
    let unknown = erase("m-404").await.unwrap_err().to_string();
    // THEN the first says it was erased and when (before: "does not exist", as for a typo),
    // the second that it does not exist
    assert!(again.contains("was erased on 20"), "{again}");
    assert!(unknown.contains("does not exist"), "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_member_s_debt_is_written_off_not_counted_as_points_forfeited() {
    // GIVEN m-1, whose 1,000 released points were spent and whose order was then refunded
    // (kr-shop lets a clawback go below zero: m-1 owes 1,000), and m-2 with 500 points
    let s = stack("write-off").await;
    s.purchase("m-1", "o-1", &[("a", 1, 100_000)]).await;
    s.adjust("m-2", 500).await;
    s.at(seoul_noon(2026, 3, 20)).await;
    s.job(Job::ReleasePending, day(2026, 3, 20)).await;
    s.adjust("m-1", -1_000).await;
    s.refund("m-1", "o-1", "r-1", "a", 1).await;
    let owed = s.report(day(2026, 3, 20)).await;
    assert_eq!((owed.owed, owed.net), (1_000, -500));
    // WHEN both are erased
    let mut pseudonyms = Vec::new();
    let mut answers = Vec::new();
    for member in ["m-1", "m-2"] {
        let erased = s
            .services
            .erase_member("kr-shop", member, "asked to be forgotten", "ops")
            .await
            .unwrap();
        answers.push((erased.forfeited, erased.debt_written_off));
        pseudonyms.push(erased.pseudonym);
    }
    // THEN each erasure's answer says the same: m-1 gave up nothing and was forgiven 1,000
    // (before: "forfeited": -1000), m-2 gave up 500
    assert_eq!(answers, [(0, 1_000), (500, 0)]);
    // THEN March shows m-2's 500 forfeited and m-1's 1,000 of debt written off (before: 500
    // "forfeited" less 1,000, -500), and the month adds up to nothing left
    let report = s.report(day(2026, 3, 20)).await;
    let march = report.movements.last().unwrap().clone();
    assert_eq!(
        (march.forfeited, march.debt_written_off),
        (500, 1_000),
        "{march:?}"
    );
    assert!(march.adds_up(), "{march:?}");
    assert_eq!((march.closing, report.owed, report.net), (0, 0, 0));
    assert_clean(&s.audit().await);
    // AND the ledger says what was forgiven
    let page = s
        .store
        .ledger_page("kr-shop", &pseudonyms[0], 1, None)
        .await
        .unwrap();
    assert!(
        page.entries[0]
            .reason
            .contains("a debt of 1000 points forgiven"),
        "{:?}",
        page.entries[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_changed_behind_the_ledger_is_named_with_the_difference() {
    // GIVEN two members with points
    let s = stack("corrupt").await;
    s.purchase("m-1", "o-1", &[("a", 1, 50_000)]).await;
    s.adjust("m-2", 1_000).await;
    assert_clean(&s.audit().await);

    // WHEN m-2's balance is raised by 7 in the store, behind the ledger's back
    let conn = rusqlite::Connection::open(&s.path).unwrap();
    let changed = conn
        .execute(
            "UPDATE accounts SET body = json_set(body, '$.balance', json_extract(body, '$.balance') + 7)
             WHERE program = 'kr-shop' AND member = 'm-2'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);

    // AND an audit asked for through the API runs as a job on the tier queue and keeps its report
    let run = s.services.request_audit("kr-shop", "ops").await.unwrap();
    assert_eq!(run.status, "queued");
    s.drain().await;
    let done = s.services.audit_run("kr-shop", &run.id).await.unwrap();
    assert_eq!(done.status, "done");
    let stored = done.report.unwrap();
    assert_eq!(stored["members"], 2);
    assert!(stored["violations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["member"] == "m-2" && v["rule"] == "balance" && v["difference"] == 7));

    // THEN the audit names m-2, the rule and the difference, and the books disagree too
    let audit = s.audit().await;
    let balance: Vec<_> = audit
        .violations
        .iter()
        .filter(|v| v.rule == "balance")
        .collect();
    assert_eq!(balance.len(), 1, "{:#?}", audit.violations);
    assert_eq!(balance[0].member.as_deref(), Some("m-2"));
    assert_eq!(balance[0].difference, Some(7));
    assert!(audit
        .violations
        .iter()
        .any(|v| v.rule == "books" && v.difference == Some(-7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_of_members_all_lost_are_named_by_the_audit() {
    // GIVEN two members with points, whose accounts are then lost (a bad restore)
    let s = stack("lost").await;
    s.purchase("m-1", "o-1", &[("a", 1, 50_000)]).await;
    s.adjust("m-2", 1_000).await;
    assert_clean(&s.audit().await);
    let conn = rusqlite::Connection::open(&s.path).unwrap();
    let lost = conn
        .execute("DELETE FROM accounts WHERE program = 'kr-shop'", [])
        .unwrap();
    assert_eq!(lost, 2);
    // WHEN the program is audited
    let audit = s.audit().await;
    // THEN its books are compared all the same, and they say two members are missing
    assert_eq!(audit.members, 0);
    assert!(
        audit.violations.iter().any(|v| v.rule == "books"
            && v.detail.starts_with("members")
            && v.difference == Some(2)),
        "{:#?}",
        audit.violations
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_out_of_the_function_s_time_is_kept_as_failed_with_what_to_do() {
    // GIVEN an audit asked for through the API
    let s = stack("audit-time").await;
    s.adjust("m-1", 1_000).await;
    let run = s.services.request_audit("kr-shop", "ops").await.unwrap();
    // WHEN the tier queue's consumer runs it with no time left
    let no_time = std::time::Instant::now().checked_sub(std::time::Duration::from_secs(1));
    loyalty_core::services::audit::INVOCATION_DEADLINE
        .scope(no_time, s.drain())
        .await;
    // THEN the run is failed, saying why and what to do, and its message is not retried
    let failed = s.services.audit_run("kr-shop", &run.id).await.unwrap();
    assert_eq!(failed.status, "failed", "{failed:?}");
    let error = failed.report.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("loyalty audit --program kr-shop"), "{error}");
    assert!(s.queue.0.lock().unwrap().is_empty());
    // AND another asked with time enough is done
    let run = s.services.request_audit("kr-shop", "ops").await.unwrap();
    s.drain().await;
    let done = s.services.audit_run("kr-shop", &run.id).await.unwrap();
    assert_eq!(done.status, "done");
    // AND 31 days after it finished it is gone (its report names members)
    let finished = done.finished_at.unwrap();
    s.clock.set(finished + chrono::Duration::days(31));
    assert!(matches!(
        s.services.audit_run("kr-shop", &run.id).await,
        Err(loyalty_core::services::ServiceError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_of_a_future_day_is_refused() {
    let s = stack("future").await;
    let refused = s
        .services
        .liability("kr-shop", Some(day(2026, 3, 11)))
        .await;
    assert!(refused.is_err());
    let today = s.report(day(2026, 3, 10)).await;
    assert_eq!(today.outstanding, 0);
    assert!(today.movements.is_empty());
}

impl Stack {
    async fn action(&self, member: &str, action: &str, reference: &str) {
        self.event(json!({
            "type": "engagement.recorded", "version": 1, "id": format!("ev-{reference}"),
            "program": "kr-shop", "member": member, "occurred_at": self.clock_now(),
            "data": {"action": action, "ref": reference}
        }))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpis_of_a_small_history_are_the_figures_counted_by_hand() {
    // GIVEN five members and what they did in March and April 2026
    let s = stack("kpis").await;
    s.purchase("m-a", "a-1", &[("1", 1, 50_000)]).await; // 10 March: 500 points
    s.at(seoul_noon(2026, 3, 20)).await;
    s.adjust("m-a", 3_000).await;
    s.at(seoul_noon(2026, 4, 2)).await;
    s.purchase("m-b", "b-1", &[("1", 1, 100_000)]).await; // first purchase, 1,000
    s.at(seoul_noon(2026, 4, 5)).await;
    s.purchase("m-a", "a-2", &[("1", 1, 50_000)]).await; // 500
    s.at(seoul_noon(2026, 4, 10)).await;
    s.purchase("m-c", "c-1", &[("1", 1, 30_000)]).await; // first purchase, 300
    s.at(seoul_noon(2026, 4, 11)).await;
    s.action("m-c", "review", "rv-1").await; // 500
    s.at(seoul_noon(2026, 4, 15)).await;
    s.action("m-d", "signup", "su-1").await; // 1,000, never buys
    s.at(seoul_noon(2026, 4, 16)).await;
    s.redeem("m-a", "free-shipping").await; // 3,000 spent
    s.at(seoul_noon(2026, 4, 20)).await;
    s.purchase("m-b", "b-2", &[("1", 1, 20_000)]).await; // bought again after 18 days, 200
    s.at(seoul_noon(2026, 4, 25)).await;
    s.purchase("m-e", "e-1", &[("1", 1, 400_000)]).await; // 4,000, then SILVER
    s.at(seoul_noon(2026, 4, 30)).await;

    // WHEN April's KPIs are asked for
    let k = s
        .services
        .kpis("kr-shop", Some(day(2026, 4, 1)), Some(day(2026, 4, 30)))
        .await
        .unwrap();

    // THEN they are what was counted by hand
    assert_eq!((k.members, k.new_members), (5, 4), "m-a joined in March");
    assert_eq!((k.active_30, k.active_90), (4, 4), "m-d never bought");
    assert_eq!(
        (k.repurchase.numerator, k.repurchase.denominator),
        (1, 3),
        "of b, c and e who first bought in April, only b bought again"
    );
    assert_eq!(k.repurchase.rate.as_deref(), Some("0.3333"));
    assert_eq!((k.orders, k.order_points), (5, 6_000));
    assert_eq!(k.points_per_order.as_deref(), Some("1200.00"));
    assert_eq!(
        (k.redemption.numerator, k.redemption.denominator),
        (3_000, 7_500),
        "6,000 for April's orders + 500 review + 1,000 signup issued; 3,000 redeemed"
    );
    assert_eq!(k.redemption.rate.as_deref(), Some("0.4000"));
    assert_eq!(k.engagement.get("review"), Some(&1));
    assert_eq!(k.engagement.get("signup"), Some(&1));
    assert_eq!(k.engagement.len(), 2);
    assert_eq!(k.tiers.get("WELCOME"), Some(&4));
    assert_eq!(k.tiers.get("SILVER"), Some(&1));
    assert_eq!(k.tier_moves.get("WELCOME→SILVER"), Some(&1));
    assert_eq!(k.tier_moves.len(), 1);

    // WHEN m-c buys again on 5 May, within 90 days of its first purchase, and April's KPIs
    // are asked for once more
    s.at(seoul_noon(2026, 5, 5)).await;
    s.purchase("m-c", "c-2", &[("1", 1, 30_000)]).await;
    let later = s
        .services
        .kpis("kr-shop", Some(day(2026, 4, 1)), Some(day(2026, 4, 30)))
        .await
        .unwrap();
    // THEN m-c bought again (as far as seen today), and April's activity is unchanged
    assert_eq!(
        (later.repurchase.numerator, later.repurchase.denominator),
        (2, 3)
    );
    assert_eq!((later.active_30, later.orders), (4, 5));
}

#[tokio::test]
async fn kpis_name_the_members_they_could_not_read() {
    // GIVEN three members who bought in March, one of whose stored account is unreadable
    let s = stack("kpis-unreadable").await;
    for (member, order) in [("m-a", "a-1"), ("m-b", "b-1"), ("m-c", "c-1")] {
        s.purchase(member, order, &[("1", 1, 50_000)]).await;
    }
    let conn = rusqlite::Connection::open(&s.path).unwrap();
    let changed = conn
        .execute(
            "UPDATE accounts SET body = '{not json' WHERE program = 'kr-shop' AND member = 'm-b'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    // WHEN March's KPIs are asked for
    let k = s
        .services
        .kpis("kr-shop", Some(day(2026, 3, 1)), Some(day(2026, 3, 31)))
        .await
        .unwrap();
    // THEN the two readable members are counted and the third is named, not skipped silently
    assert_eq!((k.members, k.orders), (2, 2));
    assert_eq!(k.unreadable, ["m-b"]);
    let json = serde_json::to_value(&k).unwrap();
    assert_eq!(json["unreadable"], json!(["m-b"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_five_thousand_entries_holds_them_all_and_reads_them_a_page_at_a_time() {
    use futures_util::StreamExt;
    // GIVEN a member with 5,000 ledger entries, a purchase, a redemption and an identity
    let s = stack("export").await;
    s.purchase("m-1", "o-1", &[("a", 1, 59_000)]).await;
    for i in 0..4_998 {
        s.adjust("m-1", if i % 2 == 0 { 10 } else { -5 }).await;
    }
    s.redeem("m-1", "free-shipping").await;
    s.store
        .put_alias("kr-shop", "email", "m1@example.com", "m-1")
        .await
        .unwrap();
    let total = s
        .store
        .ledger_page("kr-shop", "m-1", 100, None)
        .await
        .unwrap();
    assert!(total.next_cursor.is_some());

    // WHEN it is exported
    let before = s.store.operations();
    let mut chunks = std::pin::pin!(s.services.export_member("kr-shop", "m-1").await.unwrap());
    let mut document = String::new();
    let mut sizes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        sizes.push(chunk.matches("\"kind\":").count());
        document.push_str(&chunk);
    }
    let reads = s.store.operations() - before;

    // THEN the document holds every entry once, with the rest of what is held about m-1
    let export: serde_json::Value = serde_json::from_str(&document).unwrap();
    let ledger = export["ledger"].as_array().unwrap();
    assert_eq!(ledger.len(), 5_000);
    let ids: std::collections::BTreeSet<&str> =
        ledger.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5_000);
    assert_eq!(export["member"], "m-1");
    assert_eq!(export["orders"].as_array().unwrap().len(), 1);
    assert_eq!(export["redemptions"].as_array().unwrap().len(), 1);
    assert_eq!(export["coupons"].as_array().unwrap().len(), 1);
    assert_eq!(export["aliases"][0]["value"], "m1@example.com");
    let balance: i64 = ledger.iter().map(|e| e["points"].as_i64().unwrap()).sum();
    assert_eq!(export["account"]["balance"].as_i64().unwrap(), balance);
    // AND it was read and written a page at a time: no chunk held more than a page
    assert!(sizes.iter().all(|n| *n <= 100), "{sizes:?}");
    assert!(sizes.len() >= 50, "{} chunks", sizes.len());
    assert!(reads >= 50, "{reads} reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_after_a_job_run_ahead_of_the_calendar_is_clean() {
    // GIVEN a purchase whose points are pending for its return window, released by a job run
    // as of a week and a day later (said so: ahead of the calendar, to try the program out)
    let s = stack("ahead").await;
    s.purchase("m-1", "o-1", &[("a", 1, 59_000)]).await;
    s.services
        .run_job(
            Job::ReleasePending,
            "kr-shop",
            loyalty_core::services::jobs::JobDate::Ahead(day(2026, 3, 18)),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        s.services
            .member_view("kr-shop", "m-1")
            .await
            .unwrap()
            .balance,
        590
    );
    // WHEN the books are audited today
    let audit = s.audit().await;
    // THEN they agree with the member (before: the books were read up to today and missed the
    // release dated the 18th, and every audit failed until that day came)
    assert_clean(&audit);
}

#[tokio::test]
async fn points_that_arrive_after_their_lot_ended_expire_in_the_month_they_were_issued() {
    // GIVEN kr-shop with points kept one month and purchases pending 60 days: m-2 buys on
    // 31 January (released 1 April into the lot of 28 February, ended by then)
    let s = stack("born-expired").await;
    s.at(seoul_noon(2026, 1, 31)).await;
    let short = KR_SHOP
        .replace("months = 12 ", "months = 1 ")
        .replace("pending_days = 7 ", "pending_days = 60 ");
    s.services
        .put_program("kr-shop", &short, ProgramFormat::Toml)
        .await
        .unwrap();
    s.purchase("m-2", "o-2", &[("1", 1, 20_000)]).await;
    // WHEN on 1 April a till's purchase of 5 January reaches m-1 (available at once, into the
    // same lot), and the report is made before any job has run
    s.at(seoul_noon(2026, 4, 1)).await;
    s.event(json!({
        "type": "purchase.completed", "version": 1, "id": "ev-o-1", "program": "kr-shop",
        "member": "m-1", "occurred_at": seoul_noon(2026, 1, 5).to_rfc3339(),
        "data": {"order_id": "o-1", "currency": "KRW",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": "10000"}]}
    }))
    .await;
    let before = s.report(day(2026, 4, 1)).await;
    // THEN no month closes below zero: both are issued and expire in April (before: March,
    // the month after the lot's last day, expired 300 points issued only in April)
    let month = |r: &LiabilityReport, y: i32, m: u32| {
        r.movements
            .iter()
            .find(|mv| mv.month == YearMonth::new(y, m))
            .cloned()
    };
    for mv in &before.movements {
        assert!(mv.closing >= 0, "{mv:?}");
    }
    // (a month that moved nothing has no row)
    let march = month(&before, 2026, 3).map(|m| (m.issued, m.expired));
    assert!(matches!(march, None | Some((0, 0))), "{march:?}");
    let april = month(&before, 2026, 4).expect("April");
    assert_eq!((april.issued, april.expired), (300, 300), "{april:?}");
    // WHEN the jobs write what the report projected THEN the report does not change
    s.job(Job::ReleasePending, day(2026, 4, 1)).await;
    s.job(Job::ExpirePoints, day(2026, 4, 1)).await;
    let after = s.report(day(2026, 4, 1)).await;
    assert_eq!(after.movements, before.movements);
    assert_reconciles(&after);
    // AND the members agree with the books
    let audit = s.audit().await;
    assert!(audit.violations.is_empty(), "{:?}", audit.violations);
}
