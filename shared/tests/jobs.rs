//! Tiers and the scheduled jobs through the services, on the embedded store with a clock the
//! test moves: upgrades after a crossing purchase, reviews, expiry, notices, and a job's cost.

mod common;

use common::{set_account_body, Recorder};

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use loyalty_core::domain::{Account, EntryKind, Program};
use loyalty_core::envelope::Envelope;
use loyalty_core::ports::{
    Commit, FixedClock, MemberStore, ProgramStore, QueueName, ScheduleStore,
};
use loyalty_core::services::jobs::{Job, JobDate};
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
    notices: Mutex<Vec<Envelope>>,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 3, 0, 0).unwrap()
}

async fn stack() -> Stack {
    let store = SqliteStore::memory().unwrap();
    let queue = Arc::new(Recorder::default());
    let clock = FixedClock::at(t0());
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
        notices: Mutex::default(),
    }
}

impl Stack {
    /// Relays the outbox, as the stream or the local relay does, and delivers every queued
    /// message to its consumer, as the event-source mappings do.
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
                QueueName::Notify => self.notices.lock().unwrap().push(message),
            }
        }
    }

    async fn purchase(&self, member: &str, order: &str, krw: i64, occurred_at: DateTime<Utc>) {
        let event = json!({
            "type": "purchase.completed", "version": 1, "id": format!("ev-{order}"),
            "program": "kr-shop", "member": member, "occurred_at": occurred_at,
            "data": {"order_id": order, "currency": "KRW",
                     "lines": [{"line_id": "1", "quantity": 1, "unit_price": krw.to_string()}]}
        });
        self.services
            .process_earn(&event.to_string())
            .await
            .unwrap();
        self.drain().await;
    }

    async fn run(&self, job: Job, date: NaiveDate) -> loyalty_core::services::jobs::JobReport {
        let report = self
            .services
            .run_job(job, "kr-shop", Some(date), &|_| {})
            .await
            .unwrap();
        self.drain().await;
        report
    }

    async fn account(&self, member: &str) -> Account {
        self.store
            .load_member("kr-shop", member, &[])
            .await
            .unwrap()
            .account
            .unwrap()
    }

    /// The points and pending points of every entry of the member's ledger, page by page.
    async fn ledger_sum(&self, member: &str) -> (i64, i64, Vec<EntryKind>) {
        let mut entries = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .ledger_page("kr-shop", member, 1000, cursor.as_deref())
                .await
                .unwrap();
            entries.extend(page.entries);
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        let points = entries.iter().map(|e| e.points).sum();
        let pending = entries.iter().map(|e| e.pending).sum();
        (points, pending, entries.iter().map(|e| e.kind).collect())
    }
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_the_silver_threshold_upgrades_before_the_next_purchase() {
    // GIVEN a member who spends 150,000 then 160,000 KRW (310,000: SILVER is 300,000)
    let s = stack().await;
    s.purchase("m-1", "A", 150_000, t0() - Duration::days(10))
        .await;
    assert_eq!(s.account("m-1").await.tier.id, "WELCOME");
    s.purchase("m-1", "B", 160_000, t0() - Duration::days(9))
        .await;
    // THEN the member is SILVER right after the second purchase is processed, which itself
    // earned at WELCOME (1,600 points)
    let account = s.account("m-1").await;
    assert_eq!(account.tier.id, "SILVER");
    assert_eq!(account.pending_points() + account.balance, 1_500 + 1_600);
    // WHEN the next purchase of 100,000 arrives THEN it earns x1.2: 1,200
    s.purchase("m-1", "C", 100_000, t0() - Duration::days(1))
        .await;
    let account = s.account("m-1").await;
    assert_eq!(account.pending_points() + account.balance, 3_100 + 1_200);
    // AND the member view shows the review date and what keeps SILVER at the review
    let view = s.services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!(view.tier.review_date, Some(date(2027, 3, 10)));
    let keep = view.tier.keep.unwrap();
    assert_eq!((keep.by, keep.needed), (date(2027, 3, 10), 300_000));
    // AND tier.changed went to the notify queue
    assert!(s
        .notices
        .lock()
        .unwrap()
        .iter()
        .any(|n| n.kind == "tier.changed" && n.data["to"] == "SILVER"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_check_that_only_releases_points_announces_no_tier_change() {
    // GIVEN a WELCOME member whose 100,000 KRW purchase waits out its return window
    let s = stack().await;
    s.purchase("m-9", "P", 100_000, t0() - Duration::days(1))
        .await;
    let before = s.account("m-9").await;
    assert!(before.pending_points() > 0);
    // WHEN the window ends and a tier check for the member comes (a redrive, a late message)
    s.clock.set(t0() + Duration::days(10));
    let check = json!({"type": "tier.check", "version": 1, "id": "tier-check-late",
                       "program": "kr-shop", "member": "m-9", "occurred_at": t0(), "data": {}});
    s.services
        .process_tier_check(&check.to_string())
        .await
        .unwrap();
    s.drain().await;
    // THEN the member is still WELCOME and no tier.changed was sent
    assert_eq!(s.account("m-9").await.tier.id, "WELCOME");
    let notices = s.notices.lock().unwrap();
    assert!(
        !notices.iter().any(|n| n.kind == "tier.changed"),
        "{notices:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_dated_after_today_is_refused_and_writes_nothing() {
    // GIVEN a member whose purchase waits out its return window until after today
    let s = stack().await;
    s.purchase("m-8", "F", 100_000, t0() - Duration::days(1))
        .await;
    let before = s.account("m-8").await;
    assert!(before.pending_points() > 0);
    // WHEN release-pending or expire-points is run as of a date after the window's end
    let later = date(2026, 3, 30);
    for job in [Job::ReleasePending, Job::ExpirePoints] {
        let run = s
            .services
            .run_job(job, "kr-shop", Some(later), &|_| {})
            .await;
        // THEN it is refused, and the member's points are as they were
        assert!(
            matches!(
                &run,
                Err(loyalty_core::services::ServiceError::Invalid {
                    problem: "invalid-date",
                    ..
                })
            ),
            "{run:?}"
        );
    }
    assert_eq!(s.account("m-8").await, before);
}

#[test]
fn a_tier_reached_on_29_february_is_reviewed_on_29_february_in_leap_years() {
    // GIVEN kr-shop's anniversary reviews, and a tier reached on 29 February 2024
    let program = Program::from_toml(KR_SHOP).unwrap();
    let since = date(2024, 2, 29);
    // WHEN it is kept at each review THEN the next falls on its anniversary: the 28th in
    // common years, the 29th again in 2028
    let mut review = loyalty_core::domain::tiers::next_review(&program, since);
    let mut reviews = vec![review];
    for _ in 0..4 {
        review = loyalty_core::domain::tiers::review_after(&program, since, review);
        reviews.push(review);
    }
    assert_eq!(
        reviews,
        [
            date(2025, 2, 28),
            date(2026, 2, 28),
            date(2027, 2, 28),
            date(2028, 2, 29),
            date(2029, 2, 28)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_without_spend_lowers_one_level_once() {
    // GIVEN a GOLD member (1,000,000 KRW) whose review date is 2027-03-10
    let s = stack().await;
    s.purchase("m-2", "G", 1_000_000, t0() - Duration::days(10))
        .await;
    assert_eq!(s.account("m-2").await.tier.id, "GOLD");
    // WHEN the clock passes the review date with no qualifying spend, and tier-reviews runs
    let review_day = date(2027, 3, 11);
    s.clock.set(t0() + Duration::days(366));
    let report = s.run(Job::TierReviews, review_day).await;
    // THEN the member drops one level, to SILVER (not to WELCOME), with a tier entry
    let account = s.account("m-2").await;
    assert_eq!(account.tier.id, "SILVER");
    assert_eq!((report.members, report.changed), (1, 1));
    let (_, _, kinds) = s.ledger_sum("m-2").await;
    assert_eq!(kinds.iter().filter(|k| **k == EntryKind::Tier).count(), 2);
    // WHEN the same job runs again for the same date THEN nothing changes
    let again = s.run(Job::TierReviews, review_day).await;
    assert_eq!(again.changed, 0);
    assert_eq!(s.account("m-2").await, account);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_from_13_months_ago_are_expired_by_the_job_as_the_view_already_showed() {
    // GIVEN 590 points earned on 2026-02-28 (last usable day 2027-02-28)
    let s = stack().await;
    s.purchase("m-3", "E", 59_000, t0() - Duration::days(10))
        .await;
    // WHEN the clock moves 13 months on, before any job has run
    s.clock.set(t0() + Duration::days(395));
    // THEN the member view already shows them gone
    let view = s.services.member_view("kr-shop", "m-3").await.unwrap();
    assert_eq!((view.balance, view.pending), (0, 0));
    // WHEN expire-points runs for that day
    let report = s.run(Job::ExpirePoints, date(2027, 4, 9)).await;
    assert_eq!(report.changed, 1);
    // THEN the stored account matches, with one expiry entry for the one lot
    let account = s.account("m-3").await;
    assert_eq!((account.balance, account.pending_points()), (0, 0));
    let (points, pending, kinds) = s.ledger_sum("m-3").await;
    assert_eq!((points, pending), (account.balance, 0));
    assert_eq!(kinds.iter().filter(|k| **k == EntryKind::Expire).count(), 1);
    // AND running it again changes nothing
    assert_eq!(s.run(Job::ExpirePoints, date(2027, 4, 9)).await.changed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_and_notices_are_written_once_each() {
    // GIVEN 590 pending points from 2026-03-09
    let s = stack().await;
    s.purchase("m-4", "N", 59_000, t0() - Duration::days(1))
        .await;
    // WHEN release-pending runs after the return window
    s.clock.set(t0() + Duration::days(7));
    let released = s.run(Job::ReleasePending, date(2026, 3, 17)).await;
    // THEN the points are available
    assert_eq!(released.entries, 1);
    assert_eq!(s.account("m-4").await.balance, 590);
    // WHEN notices run 30 days before the lot ends (last usable day 2027-03-31), twice
    s.clock
        .set(Utc.with_ymd_and_hms(2027, 3, 2, 3, 0, 0).unwrap());
    let first = s.run(Job::Notices, date(2027, 3, 2)).await;
    let second = s.run(Job::Notices, date(2027, 3, 2)).await;
    // THEN points.expiring was sent once, naming the last day and the points
    assert_eq!((first.notices, second.notices), (1, 0));
    let notices = s.notices.lock().unwrap();
    let expiring: Vec<_> = notices
        .iter()
        .filter(|n| n.kind == "points.expiring")
        .collect();
    assert_eq!(expiring.len(), 1);
    assert_eq!(expiring[0].data["points"], 590);
    assert_eq!(expiring[0].data["last_day"], "2027-03-31");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_till_s_hundreds_of_purchases_maturing_on_one_day_are_released_by_one_run() {
    // GIVEN a walk-in till's account with 120 purchases of one day, all pending (one settle
    // writes at most 50 entries)
    let s = stack().await;
    for n in 0..120 {
        s.purchase(
            "walk-in",
            &format!("W{n}"),
            59_000,
            t0() - Duration::days(1),
        )
        .await;
    }
    assert_eq!(s.account("walk-in").await.pending.len(), 120);
    // WHEN release-pending runs once after the return window
    s.clock.set(t0() + Duration::days(7));
    let released = s.run(Job::ReleasePending, date(2026, 3, 17)).await;
    // THEN every purchase is released by that run, the member counted once (before: 50 per
    // run, each saying it was complete)
    assert_eq!(
        (released.members, released.changed, released.entries),
        (1, 1, 120)
    );
    assert!(released.complete);
    let account = s.account("walk-in").await;
    assert!(account.pending.is_empty());
    // AND the balance is what the ledger released: all of it pending before, none now
    let (points, pending, kinds) = s.ledger_sum("walk-in").await;
    assert_eq!((account.balance, pending), (points, 0));
    let releases = kinds.iter().filter(|k| **k == EntryKind::Release).count();
    assert_eq!(releases, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_as_of_a_later_date_leaves_the_days_from_today_to_the_scheduled_runs() {
    // GIVEN release-pending run on 10 March, then as of 30 April (a month ahead, said so)
    let s = stack().await;
    s.run(Job::ReleasePending, date(2026, 3, 10)).await;
    s.services
        .run_job(
            Job::ReleasePending,
            "kr-shop",
            JobDate::Ahead(date(2026, 4, 30)),
            &|_| {},
        )
        .await
        .unwrap();
    // AND a purchase of 10 March afterwards, its points due on 17 March
    s.purchase("m-late", "L", 59_000, t0()).await;
    // WHEN no run happens on 17 March, and the scheduled one of 18 March runs
    s.clock.set(t0() + Duration::days(8));
    let report = s
        .services
        .run_job(Job::ReleasePending, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    s.drain().await;
    // THEN it went over the days since 10 March, and released the points due on the 17th
    assert_eq!(report.from, Some(date(2026, 3, 10)), "{report:?}");
    assert_eq!(s.account("m-late").await.balance, 590);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_owed_since_before_the_last_run_is_sent_by_the_next() {
    // GIVEN the notices job ran on 2027-03-04
    let s = stack().await;
    s.clock
        .set(Utc.with_ymd_and_hms(2027, 3, 4, 3, 0, 0).unwrap());
    s.run(Job::Notices, date(2027, 3, 4)).await;
    // WHEN on 2027-03-05 a purchase of 2026-03-09 arrives late: its 590 points are usable
    // through 2027-03-31, so their warning was due on 2027-03-01, before that run
    s.clock
        .set(Utc.with_ymd_and_hms(2027, 3, 5, 3, 0, 0).unwrap());
    s.purchase("m-late", "L", 59_000, t0() - Duration::days(1))
        .await;
    assert_eq!(s.account("m-late").await.balance, 590);
    // AND the job runs on 2027-03-06
    s.clock
        .set(Utc.with_ymd_and_hms(2027, 3, 6, 3, 0, 0).unwrap());
    let report = s.run(Job::Notices, date(2027, 3, 6)).await;
    // THEN the member is warned, once
    assert_eq!(report.notices, 1, "{report:?}");
    let notices = s.notices.lock().unwrap();
    let expiring: Vec<_> = notices
        .iter()
        .filter(|n| n.kind == "points.expiring" && n.member == "m-late")
        .collect();
    assert_eq!(expiring.len(), 1);
    assert_eq!(expiring[0].data["last_day"], "2027-03-31");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_view_lists_only_releases_that_bring_points() {
    // GIVEN a member with a 50 KRW order (no points) of the day before and a 59,000 KRW one,
    // both pending
    let s = stack().await;
    s.purchase("m-rel", "R-small", 50, t0() - Duration::days(1))
        .await;
    s.purchase("m-rel", "R-big", 59_000, t0()).await;
    // WHEN the member's view is read
    let view = s.services.member_view("kr-shop", "m-rel").await.unwrap();
    // THEN one release is listed: the 590 points
    let releases: Vec<i64> = view.pending_releases.iter().map(|r| r.points).collect();
    assert_eq!(releases, [590]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_day_is_caught_up_by_the_next_run() {
    // GIVEN tier-reviews ran on 2027-03-09, and a GOLD member is due on 2027-03-10
    let s = stack().await;
    s.purchase("m-5", "M", 1_000_000, t0() - Duration::days(10))
        .await;
    s.clock.set(t0() + Duration::days(364));
    s.run(Job::TierReviews, date(2027, 3, 9)).await;
    assert_eq!(s.account("m-5").await.tier.id, "GOLD");
    // WHEN the schedule misses 2027-03-10 and the next run is on 2027-03-12
    s.clock.set(t0() + Duration::days(367));
    let report = s.run(Job::TierReviews, date(2027, 3, 12)).await;
    // THEN the review is done, as of its own date
    assert_eq!(report.from, Some(date(2027, 3, 9)));
    assert_eq!(s.account("m-5").await.tier.id, "SILVER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recalculating_tiers_after_a_threshold_falls_upgrades_once_and_resumes() {
    // GIVEN three members who spent 150,000 KRW each: WELCOME, since SILVER needs 300,000
    let s = stack().await;
    for m in ["r-1", "r-2", "r-3"] {
        s.purchase(m, &format!("O-{m}"), 150_000, t0() - Duration::days(3))
            .await;
    }
    // WHEN SILVER's threshold falls to 100,000
    let lowered = KR_SHOP.replace("threshold = \"300000\"", "threshold = \"100000\"");
    assert_ne!(lowered, KR_SHOP);
    s.services
        .put_program("kr-shop", &lowered, ProgramFormat::Toml)
        .await
        .unwrap();
    // AND a pass that was interrupted after r-1 runs again
    s.store
        .save_job_progress("kr-shop", "recalculate-tiers", Some("r-1"))
        .await
        .unwrap();
    let resumed = s.run(Job::RecalculateTiers, date(2026, 3, 10)).await;
    // THEN it goes on from where it stopped
    assert_eq!((resumed.members, resumed.changed), (2, 2));
    assert_eq!(s.account("r-1").await.tier.id, "WELCOME");
    assert_eq!(s.account("r-3").await.tier.id, "SILVER");
    // WHEN the next pass runs THEN it starts over and upgrades the one left
    let next = s.run(Job::RecalculateTiers, date(2026, 3, 10)).await;
    assert_eq!((next.members, next.changed), (3, 1));
    assert_eq!(s.account("r-1").await.tier.id, "SILVER");
    // AND a further pass changes nothing
    assert_eq!(
        s.run(Job::RecalculateTiers, date(2026, 3, 10))
            .await
            .changed,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recalculating_tiers_writes_nothing_to_an_erased_member() {
    // GIVEN a member who spent 150,000 KRW (WELCOME) and was erased, and another who was not
    let s = stack().await;
    for m in ["gone", "kept"] {
        s.purchase(m, &format!("O-{m}"), 150_000, t0() - Duration::days(3))
            .await;
    }
    let pseudonym = s
        .services
        .erase_member("kr-shop", "gone", "erasure request", "ops")
        .await
        .unwrap()
        .pseudonym;
    s.drain().await;
    let erased = s.account(&pseudonym).await;
    let notices_before = s.notices.lock().unwrap().len();
    // WHEN SILVER's threshold falls to 100,000 and the tiers are recalculated
    let lowered = KR_SHOP.replace("threshold = \"300000\"", "threshold = \"100000\"");
    s.services
        .put_program("kr-shop", &lowered, ProgramFormat::Toml)
        .await
        .unwrap();
    s.run(Job::RecalculateTiers, date(2026, 3, 10)).await;
    // THEN the member kept is upgraded, and the erased member's kept account is untouched: no
    // tier change, no notice about it
    assert_eq!(s.account("kept").await.tier.id, "SILVER");
    assert_eq!(s.account(&pseudonym).await, erased);
    let notices = s.notices.lock().unwrap();
    assert!(
        notices[notices_before..].iter().all(|n| n.member == "kept"),
        "{:?}",
        &notices[notices_before..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_waited_for_the_return_window_is_not_lost_when_the_wait_is_turned_off() {
    // GIVEN upgrades that wait for the return window, and a purchase of today that takes a
    // member past SILVER's 300,000: WELCOME while it may still be returned
    let s = stack().await;
    let waiting = KR_SHOP.replace(
        "[tier_rules]\n",
        "[tier_rules]\nupgrade_after_return_window = true\n",
    );
    assert_ne!(waiting, KR_SHOP);
    s.services
        .put_program("kr-shop", &waiting, ProgramFormat::Toml)
        .await
        .unwrap();
    s.purchase("w-1", "O-w-1", 350_000, t0()).await;
    assert_eq!(s.account("w-1").await.tier.id, "WELCOME");
    // WHEN the program stops waiting, and the tiers are recalculated as README says to
    s.services
        .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
        .await
        .unwrap();
    s.run(Job::RecalculateTiers, date(2026, 3, 10)).await;
    // THEN the purchase counts at once: SILVER, before its points are released
    let account = s.account("w-1").await;
    assert_eq!(account.tier.id, "SILVER");
    assert_eq!(account.pending_points(), 3_500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_drops_a_tier_members_may_hold_is_refused() {
    // GIVEN kr-shop saved, with its VIP tier
    let s = stack().await;
    assert!(KR_SHOP.contains("id = \"VIP\""));
    // WHEN a version renames VIP's id
    let renamed = KR_SHOP.replace("id = \"VIP\"", "id = \"VIP_PLUS\"");
    let refused = s
        .services
        .put_program("kr-shop", &renamed, ProgramFormat::Toml)
        .await;
    // THEN it is refused, naming the tier, and the saved version stays
    match refused {
        Err(loyalty_core::services::ServiceError::InvalidFields { errors, detail, .. }) => {
            assert_eq!(errors[0].field, "tiers");
            assert!(detail.contains("VIP"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(s
        .services
        .program("kr-shop")
        .await
        .unwrap()
        .tier("VIP")
        .is_some());
    // AND a version that keeps its id and moves its threshold is saved
    let named = KR_SHOP.replacen("threshold = \"1000000\"", "threshold = \"900000\"", 1);
    assert_ne!(named, KR_SHOP);
    s.services
        .put_program("kr-shop", &named, ProgramFormat::Toml)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_changes_what_stored_amounts_or_paid_periods_mean_is_refused() {
    // GIVEN kr-shop saved in won, measuring tiers by spend, with a monthly paid membership
    let s = stack().await;
    let membership = "\n[membership]\nid = \"plus\"\nname = \"Plus\"\nprice = \"4900\"\n\
                      period_months = 1\ngrace_days = 7\nsku = \"PLUS-MONTH\"\n";
    let saved = format!("{KR_SHOP}{membership}");
    s.services
        .put_program("kr-shop", &saved, ProgramFormat::Toml)
        .await
        .unwrap();
    let refused = |file: String| {
        let services = &s.services;
        async move {
            match services
                .put_program("kr-shop", &file, ProgramFormat::Toml)
                .await
            {
                Err(loyalty_core::services::ServiceError::InvalidFields { errors, .. }) => {
                    errors.into_iter().map(|e| e.field).collect::<Vec<_>>()
                }
                other => panic!("{other:?}"),
            }
        }
    };
    // WHEN versions change the currency, the tier measure, the membership's id or period
    // THEN each is refused, naming the field
    let usd = saved.replace("currency = \"KRW\"", "currency = \"USD\"");
    assert_eq!(refused(usd).await, ["currency"]);
    let points = saved.replace("measure = \"spend\"", "measure = \"points\"");
    assert_eq!(refused(points).await, ["tier_rules.measure"]);
    let renamed = saved.replace("id = \"plus\"", "id = \"plus2\"");
    assert_eq!(refused(renamed).await, ["membership.id"]);
    let yearly = saved.replace("period_months = 1", "period_months = 12");
    assert_eq!(refused(yearly).await, ["membership.period_months"]);
    // AND the saved version stays
    let program = s.services.program("kr-shop").await.unwrap();
    let paid = program.membership.as_ref().unwrap();
    assert_eq!((paid.id.as_str(), paid.period_months), ("plus", 1));
    // AND one that removes the membership is refused too
    assert_eq!(refused(KR_SHOP.to_string()).await, ["membership"]);
    // AND a version that changes the membership's price and name is saved
    let repriced = saved
        .replace("price = \"4900\"", "price = \"5900\"")
        .replace("name = \"Plus\"", "name = \"Plus+\"");
    s.services
        .put_program("kr-shop", &repriced, ProgramFormat::Toml)
        .await
        .unwrap();
}

/// The fields a save of `file` as kr-shop is refused for.
async fn refused_fields(s: &Stack, file: &str) -> Vec<String> {
    match s
        .services
        .put_program("kr-shop", file, ProgramFormat::Toml)
        .await
    {
        Err(loyalty_core::services::ServiceError::InvalidFields { errors, .. }) => {
            errors.into_iter().map(|e| e.field).collect()
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_action_no_event_can_name_or_named_as_an_engine_counter_is_refused_when_saved() {
    // GIVEN kr-shop with a custom action named as the referral counter, one with a name longer
    // than an event may carry, and one with an empty name
    let s = stack().await;
    let long = "a".repeat(129);
    let file = format!(
        "{KR_SHOP}\n[custom_actions.referrals-rewarded]\npoints = 50\n\n\
         [custom_actions.{long}]\npoints = 10\n\n[custom_actions.\"\"]\npoints = 10\n"
    );
    // WHEN it is saved THEN each is refused by its field
    let refused = refused_fields(&s, &file).await;
    for field in [
        "custom_actions.referrals-rewarded".to_string(),
        format!("custom_actions.{long}"),
        "custom_actions.".to_string(),
    ] {
        assert!(refused.contains(&field), "{field}: {refused:?}");
    }
    // AND a name of 128 bytes is saved
    let fits = format!(
        "{KR_SHOP}\n[custom_actions.{}]\npoints = 10\n",
        "a".repeat(128)
    );
    s.services
        .put_program("kr-shop", &fits, ProgramFormat::Toml)
        .await
        .unwrap();
    // AND a program stored before the rule, with the counter's name, is still read (its
    // events are not stopped)
    let stored = Program::from_toml(
        &file
            .replace(&format!("[custom_actions.{long}]"), "[custom_actions.long]")
            .replace("[custom_actions.\"\"]", "[custom_actions.empty]"),
    )
    .unwrap();
    let json = serde_json::to_string(&stored.file).unwrap();
    s.store
        .put_program("kr-shop", &json, Some(2), t0())
        .await
        .unwrap()
        .unwrap();
    let fresh = Services::new(
        Arc::new(s.store.clone()),
        Arc::new(Recorder::default()),
        s.clock.clone(),
    );
    let read = fresh.program("kr-shop").await.unwrap();
    assert!(read.actions.contains_key("referrals-rewarded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_threshold_past_the_bounds_is_refused_when_saved_in_either_form() {
    // GIVEN kr-shop's last threshold written past the bound of any amount
    let s = stack().await;
    let last = KR_SHOP.rfind("threshold = ").unwrap();
    let line_end = last + KR_SHOP[last..].find('\n').unwrap();
    let with = |value: &str| {
        format!(
            "{}threshold = {value}{}",
            &KR_SHOP[..last],
            &KR_SHOP[line_end..]
        )
    };
    // WHEN it is saved THEN it is refused by its field, written as a number or as text
    for value in ["10000000000001", "\"10000000000001\""] {
        assert_eq!(
            refused_fields(&s, &with(value)).await,
            ["tiers[3].threshold"],
            "{value}"
        );
    }
    // AND one within the bound is saved
    s.services
        .put_program("kr-shop", &with("10000000000000"), ProgramFormat::Toml)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anniversary_review_of_a_calendar_year_window_is_refused_when_saved() {
    // GIVEN kr-shop, reviewed on each member's anniversary
    let s = stack().await;
    assert!(KR_SHOP.contains("review = \"anniversary\""));
    // WHEN a version measures the calendar year
    let yearly = KR_SHOP.replace(
        "window = \"rolling_12_months\"",
        "window = \"calendar_year\"",
    );
    let refused = s
        .services
        .put_program("kr-shop", &yearly, ProgramFormat::Toml)
        .await;
    // THEN it is refused, naming the review, and saying what would do
    match refused {
        Err(loyalty_core::services::ServiceError::InvalidFields { errors, detail, .. }) => {
            assert_eq!(errors[0].field, "tier_rules.review");
            assert!(detail.contains("rolling_12_months"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // AND reviewed on 1 January, the calendar-year window is saved
    let january = yearly.replace("review = \"anniversary\"", "review = \"calendar_year\"");
    s.services
        .put_program("kr-shop", &january, ProgramFormat::Toml)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_december_purchase_released_in_january_reaches_its_year_s_upgrade() {
    // GIVEN a calendar-year window whose upgrades wait for the 7-day return window, and a
    // purchase of 28 December 2026 that takes a member past SILVER's 300,000
    let s = stack().await;
    let yearly = KR_SHOP
        .replace(
            "window = \"rolling_12_months\"",
            "window = \"calendar_year\"",
        )
        .replace("review = \"anniversary\"", "review = \"calendar_year\"")
        .replace(
            "[tier_rules]\n",
            "[tier_rules]\nupgrade_after_return_window = true\n",
        );
    assert!(yearly.contains("calendar_year") && yearly.contains("upgrade_after"));
    s.services
        .put_program("kr-shop", &yearly, ProgramFormat::Toml)
        .await
        .unwrap();
    let bought = Utc.with_ymd_and_hms(2026, 12, 28, 3, 0, 0).unwrap();
    s.clock.set(bought);
    s.purchase("y-1", "O-y-1", 350_000, bought).await;
    assert_eq!(s.account("y-1").await.tier.id, "WELCOME");
    // WHEN its points are released on 4 January 2027, in the next year's window
    s.clock
        .set(Utc.with_ymd_and_hms(2027, 1, 4, 3, 0, 0).unwrap());
    s.run(Job::ReleasePending, date(2027, 1, 4)).await;
    // THEN the release's tier check judges the year the purchase was made in: SILVER
    let account = s.account("y-1").await;
    assert_eq!(account.pending_points(), 0);
    assert_eq!(account.tier.id, "SILVER");
    // AND a member downgraded at a review since is not raised again by the closed year
    let mut reviewed = account.clone();
    reviewed.tier.id = "WELCOME".into();
    reviewed.tier.since = date(2027, 1, 4);
    let program = s.services.program("kr-shop").await.unwrap();
    let at = Utc.with_ymd_and_hms(2027, 1, 5, 3, 0, 0).unwrap();
    let ctx = loyalty_core::domain::EventContext::new("check", at, at);
    assert!(reviewed.check_tier(&program, &ctx).entries.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referrer_s_reward_for_a_member_being_erased_is_dropped_not_kept_for_later() {
    // GIVEN a member whose erasure has begun (marked, its items not yet deleted)
    let s = stack().await;
    s.purchase("m-gone", "O-gone", 10_000, t0()).await;
    let program = s.services.program("kr-shop").await.unwrap();
    let mut marked = s.account("m-gone").await;
    let before = marked.clone();
    marked.erased = Some(loyalty_core::domain::erasure::Erasure {
        pseudonym: "erased-1".into(),
        at: t0(),
        reason: "erasure request".into(),
        by: "ops".into(),
    });
    let change = loyalty_core::domain::Change::unchanged(marked);
    s.store
        .commit(Commit::new(&program, "m-gone", Some(&before), change, t0()))
        .await
        .unwrap();
    // WHEN a referee's order, matured meanwhile, sends its referrer's reward
    let reward = json!({
        "type": "engagement.recorded", "version": 1, "id": "referral-reward-1",
        "program": "kr-shop", "member": "m-gone", "occurred_at": t0(),
        "data": {"action": "referral", "ref": "m-new", "referee": "m-new"}
    });
    let processed = s.services.process_earn(&reward.to_string()).await;
    // THEN it is dropped: kept for later, it would make a member of the erased id
    assert!(
        matches!(
            processed,
            Ok(loyalty_core::services::earn::Processed::NoEffect(_))
        ),
        "{processed:?}"
    );
    // AND any other event for the member still waits for the erasure to finish
    let other = json!({
        "type": "engagement.recorded", "version": 1, "id": "review-gone",
        "program": "kr-shop", "member": "m-gone", "occurred_at": t0(),
        "data": {"action": "review", "ref": "rv-gone"}
    });
    assert!(s.services.process_earn(&other.to_string()).await.is_err());
}

/// Seeds `total` members straight into the store; `due` of them are due for review on `day`.
async fn seed(
    store: &dyn MemberStore,
    program: &Program,
    total: usize,
    due: usize,
    day: NaiveDate,
) {
    for i in 0..total {
        let member = format!("seed-{i:06}");
        let mut account = Account::open(program, &member, t0());
        account.tier.id = "SILVER".into();
        account.tier.review_on = Some(if i < due {
            day
        } else {
            day + Duration::days(30 + (i % 300) as i64)
        });
        store
            .commit(Commit::new(
                program,
                &account.member.clone(),
                None,
                loyalty_core::domain::Change::unchanged(account),
                Utc::now(),
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_run_costs_what_is_due_not_what_exists_on_the_embedded_store() {
    // GIVEN 100,000 SILVER members, 100 of them due for review on 2027-03-10, and the job's
    // last run the day before
    let s = stack().await;
    let program = s.services.program("kr-shop").await.unwrap();
    let day = date(2027, 3, 10);
    seed(&s.store, &program, 100_000, 100, day).await;
    s.store
        .save_job_progress("kr-shop", "tier-reviews", Some("2027-03-09"))
        .await
        .unwrap();
    s.clock
        .set(Utc.with_ymd_and_hms(2027, 3, 10, 6, 0, 0).unwrap());
    // WHEN tier-reviews runs (its notices wait in the outbox: relaying them is not the job)
    let before = s.store.operations();
    let report = s
        .services
        .run_job(Job::TierReviews, "kr-shop", Some(day), &|_| {})
        .await
        .unwrap();
    let operations = s.store.operations() - before;
    s.drain().await;
    // THEN it read exactly the 100 due members and lowered each one level
    assert_eq!((report.members, report.changed), (100, 100));
    assert_eq!(s.account("seed-000000").await.tier.id, "WELCOME");
    assert_eq!(s.account("seed-000100").await.tier.id, "SILVER");
    // AND its store operations are a load and a commit per due member, plus a few index pages
    // and its progress: proportional to 100, nowhere near 100,000
    println!("tier-reviews: {operations} store operations for 100 due of 100,000");
    assert!(operations <= 2 * 100 + 10, "{operations} operations");
}

/// A stack on a database file (so that a test can damage a row as a bad manual edit would),
/// with `n` members holding 100 points each that expire on 2027-03-01, and expire-points last
/// completed on 2027-02-20.
async fn expiring_members(n: usize) -> (Services, SqliteStore, std::path::PathBuf) {
    let (services, store, db, _clock) = expiring_members_at(n).await;
    (services, store, db)
}

/// As [`expiring_members`], with the clock the services read (2027-03-10 06:00 UTC).
async fn expiring_members_at(
    n: usize,
) -> (Services, SqliteStore, std::path::PathBuf, Arc<FixedClock>) {
    let dir = std::env::temp_dir().join(format!("jobs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("loyalty.db");
    let store = SqliteStore::open(&db).unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2027, 3, 10, 6, 0, 0).unwrap());
    let services = Services::new(
        Arc::new(store.clone()),
        Arc::new(Recorder::default()),
        clock.clone(),
    );
    services
        .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
        .await
        .unwrap();
    let program = services.program("kr-shop").await.unwrap();
    for i in 0..n {
        let mut account = Account::open(&program, &format!("seed-{i:06}"), t0());
        account.lots.add(date(2027, 3, 1), 100);
        account.balance = 100;
        store
            .commit(Commit::new(
                &program,
                &account.member.clone(),
                None,
                loyalty_core::domain::Change::unchanged(account),
                Utc::now(),
            ))
            .await
            .unwrap();
    }
    store
        .save_job_progress("kr-shop", "expire-points", Some("2027-02-20"))
        .await
        .unwrap();
    (services, store, db, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_corrupt_member_is_named_and_retried_and_the_others_expire() {
    // GIVEN 1,000 members due for expiry, one of them unreadable
    let (services, store, db) = expiring_members(1_000).await;
    let good = set_account_body(&db, "seed-000500", "{not an account");
    let balance = |member: &'static str| {
        let store = store.clone();
        async move {
            store
                .load_member("kr-shop", member, &[])
                .await
                .unwrap()
                .account
                .unwrap()
                .balance
        }
    };
    // WHEN expire-points runs
    let run = || {
        services.run_job(
            Job::ExpirePoints,
            "kr-shop",
            Some(date(2027, 3, 10)),
            &|_| {},
        )
    };
    let report = run().await.unwrap();
    // THEN 999 expire, and the report names the one that failed, with its cause
    assert_eq!(
        (report.members, report.changed, report.failed),
        (1_000, 999, 1)
    );
    assert_eq!(report.failures[0].member, "seed-000500");
    assert!(
        report.failures[0].error.contains("corrupt"),
        "{:?}",
        report.failures
    );
    assert_eq!(balance("seed-000000").await, 0);
    // AND the saved progress stops at the day it was due, so the next run comes back for it
    let saved = store
        .job_progress("kr-shop", "expire-points")
        .await
        .unwrap();
    assert!(saved.as_deref() < Some("2027-03-10"), "{saved:?}");
    // WHEN an operator repairs it and the job runs again
    set_account_body(&db, "seed-000500", &good);
    let report = run().await.unwrap();
    // THEN it expires too, nothing fails, and the progress reaches the day of the run
    assert_eq!((report.changed, report.failed), (1, 0));
    assert_eq!(balance("seed-000500").await, 0);
    assert_eq!(
        store
            .job_progress("kr-shop", "expire-points")
            .await
            .unwrap()
            .as_deref(),
        Some("2027-03-10")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_failing_for_a_week_no_longer_holds_the_job_s_progress() {
    // GIVEN three members due for expiry on 2027-03-01, one of them unreadable, and a run on
    // 2027-03-10 that failed on it
    let (services, store, db, clock) = expiring_members_at(3).await;
    let good = set_account_body(&db, "seed-000001", "{not an account");
    let run = |on: NaiveDate| services.run_job(Job::ExpirePoints, "kr-shop", Some(on), &|_| {});
    let progress = || async {
        store
            .job_progress("kr-shop", "expire-points")
            .await
            .unwrap()
    };
    assert_eq!(run(date(2027, 3, 10)).await.unwrap().failed, 1);
    let held = progress().await.unwrap();
    assert!(held.as_str() < "2027-03-10", "{held}");
    // WHEN the daily runs go on failing on it for a week
    clock.set(Utc.with_ymd_and_hms(2027, 3, 17, 6, 0, 0).unwrap());
    let report = run(date(2027, 3, 17)).await.unwrap();
    // THEN the day still holds the progress a week on, every run going over it again
    assert_eq!(report.failed, 1);
    assert!(report.failures[0].error.contains("corrupt"), "{report:?}");
    assert_eq!(progress().await, Some(held.clone()));
    // WHEN one more day's run fails on it
    clock.set(Utc.with_ymd_and_hms(2027, 3, 18, 6, 0, 0).unwrap());
    let report = run(date(2027, 3, 18)).await.unwrap();
    // THEN it is named as given up with its day, and the progress reaches the run's date
    assert_eq!((report.members, report.failed), (1, 1), "{report:?}");
    let reason = &report.failures[0].error;
    assert!(
        reason.contains("given up") && reason.contains(&held),
        "{reason}"
    );
    assert_eq!(progress().await.as_deref(), Some("2027-03-18"));
    // AND the next run does not read that day again
    clock.set(Utc.with_ymd_and_hms(2027, 3, 19, 6, 0, 0).unwrap());
    let report = run(date(2027, 3, 19)).await.unwrap();
    assert_eq!((report.members, report.failed), (0, 0), "{report:?}");
    // WHEN the account is repaired and the job is run as of the day given up
    set_account_body(&db, "seed-000001", &good);
    let report = run(held.parse().unwrap()).await.unwrap();
    // THEN its points expire, and the progress stays where it was
    assert_eq!((report.changed, report.failed), (1, 0), "{report:?}");
    let member = store
        .load_member("kr-shop", "seed-000001", &[])
        .await
        .unwrap();
    assert_eq!(member.account.unwrap().balance, 0);
    assert_eq!(progress().await.as_deref(), Some("2027-03-19"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_failing_for_the_first_time_on_a_day_given_up_for_another_holds_it() {
    // GIVEN two unreadable members due for expiry the same day: one failing there for more
    // than a week, the other failing for the first time
    let (services, store, db, clock) = expiring_members_at(3).await;
    set_account_body(&db, "seed-000001", "{not an account");
    set_account_body(&db, "seed-000002", "{not an account");
    let run = |on: NaiveDate| services.run_job(Job::ExpirePoints, "kr-shop", Some(on), &|_| {});
    assert_eq!(run(date(2027, 3, 10)).await.unwrap().failed, 2);
    let held = store
        .job_progress("kr-shop", "expire-points")
        .await
        .unwrap()
        .unwrap();
    let first_failures = format!(r#"{{"{held}": {{"seed-000001": "2027-03-10"}}}}"#);
    store
        .save_job_progress("kr-shop", "held-days/expire-points", Some(&first_failures))
        .await
        .unwrap();
    // WHEN the job runs on 2027-03-18
    clock.set(Utc.with_ymd_and_hms(2027, 3, 18, 6, 0, 0).unwrap());
    let report = run(date(2027, 3, 18)).await.unwrap();
    // THEN the first is given up, the second retried, and the day still holds the progress
    let given_up: Vec<&str> = report
        .failures
        .iter()
        .filter(|f| f.error.contains("given up"))
        .map(|f| f.member.as_str())
        .collect();
    assert_eq!(given_up, ["seed-000001"], "{report:?}");
    assert_eq!(report.failed, 2);
    assert_eq!(
        store
            .job_progress("kr-shop", "expire-points")
            .await
            .unwrap(),
        Some(held)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_out_of_time_stops_cleanly_and_the_next_run_resumes() {
    // GIVEN 200 members due for expiry, and an invocation with 5 seconds left (less than the
    // margin a job keeps to save its progress and answer)
    let (services, store, _db) = expiring_members(200).await;
    let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap();
    let deadline = loyalty_core::services::jobs::deadline_of(now_ms + 5_000);
    // WHEN expire-points runs against that deadline
    let day = Some(date(2027, 3, 10));
    let report = services
        .run_job_until(Job::ExpirePoints, "kr-shop", day.into(), deadline, &|_| {})
        .await
        .unwrap();
    // THEN it stops before changing anything and says it is incomplete, and its progress does
    // not claim the day
    assert!(!report.complete);
    assert_eq!((report.changed, report.failed), (0, 0));
    let saved = store
        .job_progress("kr-shop", "expire-points")
        .await
        .unwrap();
    assert!(saved.as_deref() < Some("2027-03-10"), "{saved:?}");
    // WHEN the next run has time THEN it does all of it
    let report = services
        .run_job_until(Job::ExpirePoints, "kr-shop", day.into(), None, &|_| {})
        .await
        .unwrap();
    assert!(report.complete);
    assert_eq!((report.changed, report.failed), (200, 0));
    // AND a deadline a minute away is not past
    let later = loyalty_core::services::jobs::deadline_of(now_ms + 60_000).unwrap();
    assert!(later > std::time::Instant::now());
}

#[tokio::test]
async fn a_first_run_of_empty_days_out_of_time_stops_before_reading_them() {
    // GIVEN kr-shop with nobody due for release, never run before (it would read 400 days of
    // the index), and an invocation with 5 seconds left
    let s = stack().await;
    let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap();
    let deadline = loyalty_core::services::jobs::deadline_of(now_ms + 5_000);
    // WHEN release-pending runs against that deadline
    let report = s
        .services
        .run_job_until(
            Job::ReleasePending,
            "kr-shop",
            Some(date(2026, 3, 10)).into(),
            deadline,
            &|_| {},
        )
        .await
        .unwrap();
    // THEN it stops at once, says it is incomplete, and leaves the days to the next run
    // (before: it read every empty day and claimed them done)
    assert!(!report.complete);
    let saved = s
        .store
        .job_progress("kr-shop", "release-pending")
        .await
        .unwrap();
    assert!(saved.as_deref() < Some("2026-03-10"), "{saved:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_a_tier_pass_fails_on_is_retried_by_the_tier_queue() {
    // GIVEN two members, one of whose stored account is unreadable
    let dir = std::env::temp_dir().join(format!("jobs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("loyalty.db");
    let store = SqliteStore::open(&db).unwrap();
    let queue = Arc::new(Recorder::default());
    let services = Services::new(Arc::new(store.clone()), queue.clone(), FixedClock::at(t0()));
    services
        .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
        .await
        .unwrap();
    for member in ["m-ok", "m-poison"] {
        let opening = br#"{"points": 10, "reason": "opening"}"#;
        services
            .adjust("kr-shop", member, "ops", None, opening)
            .await
            .unwrap();
    }
    set_account_body(&db, "m-poison", "{not an account");
    queue.0.lock().unwrap().clear();
    // WHEN recalculate-tiers passes over every member
    let report = services
        .run_job(
            Job::RecalculateTiers,
            "kr-shop",
            Some(date(2026, 3, 10)),
            &|_| {},
        )
        .await
        .unwrap();
    // THEN the one it failed on is named, and a tier check for it waits on the tier queue
    // (before: nothing came back to it but a whole new pass, which no schedule runs)
    assert_eq!((report.members, report.failed), (2, 1));
    let sent = queue.0.lock().unwrap().clone();
    let checks: Vec<&str> = sent
        .iter()
        .filter(|(q, m)| *q == QueueName::Tier && m.kind == "tier.check")
        .map(|(_, m)| m.member.as_str())
        .collect();
    assert_eq!(checks, ["m-poison"], "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_program_never_stops_the_others() {
    // GIVEN two programs, one of whose stored file is unreadable
    let (services, store, db) = expiring_members(3).await;
    services
        .put_program(
            "us-shop",
            include_str!("../../examples/us-shop.toml"),
            ProgramFormat::Toml,
        )
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE programs SET file = '{broken' WHERE program = 'us-shop'",
        [],
    )
    .unwrap();
    // WHEN expire-points runs everywhere (a fresh process: nothing cached)
    let fresh = Services::new(
        Arc::new(store.clone()),
        Arc::new(Recorder::default()),
        FixedClock::at(Utc.with_ymd_and_hms(2027, 3, 10, 6, 0, 0).unwrap()),
    );
    let reports = fresh
        .run_job_everywhere(
            Job::ExpirePoints,
            None,
            Some(date(2027, 3, 10)),
            None,
            &|_| {},
        )
        .await
        .unwrap();
    // THEN kr-shop's members expire, and us-shop's report carries its error
    let by = |p: &str| reports.iter().find(|r| r.program == p).unwrap().clone();
    assert_eq!(
        (by("kr-shop").changed, by("kr-shop").error.clone()),
        (3, None)
    );
    assert!(by("us-shop").error.is_some());
}

#[cfg(feature = "aws")]
mod on_dynamodb {
    use std::sync::atomic::{AtomicU64, Ordering};

    use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
    use aws_sdk_dynamodb::config::{ConfigBag, Intercept};
    use aws_sdk_dynamodb::error::BoxError;
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
    use loyalty_core::domain::DueJob;
    use loyalty_core::store::dynamodb::{due_index, due_partition, due_shard, DynamoStore};

    use super::*;

    /// Counts every DynamoDB request the client makes.
    #[derive(Debug, Default, Clone)]
    struct Requests(Arc<AtomicU64>);

    impl Intercept for Requests {
        fn name(&self) -> &'static str {
            "count-requests"
        }

        fn read_before_execution(
            &self,
            _context: &BeforeSerializationInterceptorContextRef<'_>,
            _cfg: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    /// Writes account items as the store lays them out, 25 to a BatchWriteItem: moto's
    /// transactions slow down as its table grows, and the seed is not what is measured.
    async fn seed_in_batches(
        client: &aws_sdk_dynamodb::Client,
        table: &str,
        program: &Program,
        total: usize,
        due: usize,
        day: NaiveDate,
    ) {
        let s = |v: String| AttributeValue::S(v);
        let mut batch = Vec::new();
        for i in 0..total {
            let member = format!("seed-{i:06}");
            let mut account = Account::open(program, &member, t0());
            account.tier.id = "SILVER".into();
            account.tier.review_on = Some(if i < due {
                day
            } else {
                day + Duration::days(30 + (i % 300) as i64)
            });
            account.version = 1;
            let mut item = std::collections::HashMap::from([
                ("PK".to_string(), s(format!("P#{}#M#{member}", program.id))),
                ("SK".to_string(), s("ACCOUNT".into())),
                ("member".to_string(), s(member.clone())),
                ("version".to_string(), AttributeValue::N("1".into())),
                (
                    "body".to_string(),
                    s(serde_json::to_string(&account).unwrap()),
                ),
            ]);
            let dates = account.due_dates(program);
            for job in DueJob::ALL {
                if let Some(date) = dates.get(job) {
                    let partition = due_partition(&program.id, date, due_shard(&member));
                    item.insert(due_index(job).0.to_string(), s(partition));
                }
            }
            let put = PutRequest::builder().set_item(Some(item)).build().unwrap();
            batch.push(WriteRequest::builder().put_request(put).build());
            if batch.len() == 25 || i + 1 == total {
                client
                    .batch_write_item()
                    .request_items(table, std::mem::take(&mut batch))
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_review_run_costs_what_is_due_not_what_exists_on_dynamodb() {
        // GIVEN a table on moto with 5,000 SILVER members, 100 of them due on 2027-03-10
        let requests = Requests::default();
        let config = crate::common::moto_dynamodb("jobs")
            .interceptor(requests.clone())
            .build();
        let table = format!("loyalty-jobs-{}", uuid::Uuid::new_v4().simple());
        let client = aws_sdk_dynamodb::Client::from_conf(config);
        let store = Arc::new(DynamoStore::new(client.clone(), &table));
        store.create_table().await.unwrap();
        let clock = FixedClock::at(Utc.with_ymd_and_hms(2027, 3, 10, 6, 0, 0).unwrap());
        let services = Services::new(store.clone(), Arc::new(Recorder::default()), clock);
        services
            .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
            .await
            .unwrap();
        let program = services.program("kr-shop").await.unwrap();
        let day = date(2027, 3, 10);
        seed_in_batches(&client, &table, &program, 5_000, 100, day).await;
        store
            .save_job_progress("kr-shop", "tier-reviews", Some("2027-03-09"))
            .await
            .unwrap();
        // WHEN tier-reviews runs
        let before = requests.0.load(Ordering::Relaxed);
        let report = services
            .run_job(Job::TierReviews, "kr-shop", Some(day), &|_| {})
            .await
            .unwrap();
        let made = requests.0.load(Ordering::Relaxed) - before;
        // THEN it handled the 100 due members with a read each and their changes in a few
        // transactions (25 members each), plus a few index queries (2 dates x 4 shards) and its
        // progress: proportional to 100, not to 5,000, and not a write per member
        assert_eq!((report.members, report.changed), (100, 100));
        println!("tier-reviews: {made} DynamoDB requests for 100 due of 5,000");
        assert!(made <= 100 + 20, "{made} requests");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_till_taken_again_commits_with_the_others_of_its_group_on_dynamodb() {
        // GIVEN a table on moto, a walk-in till with 120 purchases of one day and three
        // members with one each, all pending
        let config = crate::common::moto_dynamodb("jobs-till").build();
        let table = format!("loyalty-jobs-{}", uuid::Uuid::new_v4().simple());
        let client = aws_sdk_dynamodb::Client::from_conf(config);
        let store = Arc::new(DynamoStore::new(client, &table));
        store.create_table().await.unwrap();
        let clock = FixedClock::at(t0());
        let services = Services::new(store.clone(), Arc::new(Recorder::default()), clock.clone());
        services
            .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
            .await
            .unwrap();
        let members = (0..120)
            .map(|_| "walk-in".to_string())
            .chain((1..=3).map(|n| format!("m-{n}")));
        for (n, member) in members.enumerate() {
            let event = json!({
                "type": "purchase.completed", "version": 1, "id": format!("ev-t{n}"),
                "program": "kr-shop", "member": member, "occurred_at": t0() - Duration::days(1),
                "data": {"order_id": format!("T{n}"), "currency": "KRW",
                         "lines": [{"line_id": "1", "quantity": 1, "unit_price": "59000"}]}
            });
            services.process_earn(&event.to_string()).await.unwrap();
        }
        // WHEN release-pending runs once after the return window
        clock.set(t0() + Duration::days(7));
        let report = services
            .run_job(
                Job::ReleasePending,
                "kr-shop",
                Some(date(2026, 3, 17)),
                &|_| {},
            )
            .await
            .unwrap();
        // THEN the till is settled in passes until done, in the group transactions beside the
        // others, each member counted once, and nothing is left pending
        assert_eq!(
            (
                report.members,
                report.changed,
                report.entries,
                report.failed
            ),
            (4, 4, 123, 0),
            "{report:?}"
        );
        for member in ["walk-in", "m-1", "m-2", "m-3"] {
            let account = store
                .load_member("kr-shop", member, &[])
                .await
                .unwrap()
                .account
                .unwrap();
            assert!(account.pending.is_empty(), "{member}");
            assert!(account.balance > 0, "{member}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_commit_fails_leaves_the_others_of_its_group_counted() {
    // GIVEN 20 members due for expiry on the embedded store, whose commits are not one
    // transaction, and one of them whose account the database refuses to change
    let (services, _store, db) = expiring_members(20).await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse_seed_7 BEFORE UPDATE ON accounts
         WHEN NEW.member = 'seed-000007'
         BEGIN SELECT RAISE(ABORT, 'refused by a test'); END;",
    )
    .unwrap();
    // WHEN expire-points runs
    let report = services
        .run_job(
            Job::ExpirePoints,
            "kr-shop",
            Some(date(2027, 3, 10)),
            &|_| {},
        )
        .await
        .unwrap();
    // THEN every other member is counted as changed (those written before the refused one
    // too), and the refused one is named
    assert_eq!(
        (report.members, report.changed, report.failed),
        (20, 19, 1),
        "{report:?}"
    );
    assert_eq!(report.failures[0].member, "seed-000007");
}
