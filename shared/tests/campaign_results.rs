//! Campaigns end to end through the services on the embedded store: the sample-ratio check on a
//! large population, `campaign-tick` paying birthdays (program rule and broadcast campaign)
//! once, and the report recovering a known uplift from a simulated campaign.

mod common;

use common::{set_account_body, Recorder, Stream};

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use loyalty_core::campaigns::Campaign;
use loyalty_core::domain::{Account, Program};
use loyalty_core::ports::{Commit, FixedClock, MemberStore, QueueName};
use loyalty_core::report::sample_ratio;
use loyalty_core::services::jobs::{Job, JobDate};
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::{ServiceError, Services};
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::{json, Value};

const KR_SHOP: &str = include_str!("../../examples/kr-shop.toml");

fn kr() -> Program {
    Program::from_toml(KR_SHOP).unwrap()
}

struct Stack {
    services: Services,
    store: SqliteStore,
    queue: Arc<Recorder>,
    clock: Arc<FixedClock>,
}

async fn stack(now: DateTime<Utc>) -> Stack {
    stack_with(now, KR_SHOP).await
}

async fn stack_with(now: DateTime<Utc>, program: &str) -> Stack {
    stack_on(SqliteStore::memory().unwrap(), now, program).await
}

async fn stack_on(store: SqliteStore, now: DateTime<Utc>, program: &str) -> Stack {
    let queue = Arc::new(Recorder::default());
    let clock = FixedClock::at(now);
    let services = Services::new(Arc::new(store.clone()), queue.clone(), clock.clone());
    services
        .put_program("kr-shop", program, ProgramFormat::Toml)
        .await
        .unwrap();
    Stack {
        services,
        store,
        queue,
        clock,
    }
}

impl Stack {
    /// Delivers queued messages to their consumers; returns the earn messages' ids.
    async fn drain(&self) -> Vec<String> {
        let mut earned = Vec::new();
        loop {
            self.services.relay_waiting(1000).await.unwrap();
            let next = {
                let mut sent = self.queue.0.lock().unwrap();
                (!sent.is_empty()).then(|| sent.remove(0))
            };
            let Some((queue, message)) = next else {
                return earned;
            };
            let body = serde_json::to_string(&message).unwrap();
            match queue {
                QueueName::Earn => {
                    earned.push(message.id.clone());
                    self.services.process_earn(&body).await.unwrap();
                }
                QueueName::Tier => {
                    self.services.process_tier_check(&body).await.unwrap();
                }
                QueueName::Notify => {}
            }
        }
    }

    /// Members created straight in the store (fast), with a birthday each.
    async fn seed(&self, members: &[(String, Option<&str>)], joined: DateTime<Utc>) {
        let program = kr();
        for (member, birthday) in members {
            let mut account = Account::open(&program, member, joined);
            account.profile.birthday = birthday.map(str::to_string);
            self.store
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
    }

    async fn balance(&self, member: &str) -> i64 {
        let state = self
            .store
            .load_member("kr-shop", member, &[])
            .await
            .unwrap();
        state.account.map_or(0, |a| a.balance + a.pending_points())
    }

    /// Runs today's campaign tick and delivers what it sent.
    async fn tick(&self) -> loyalty_core::services::jobs::JobReport {
        let report = self
            .services
            .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
            .await
            .unwrap();
        self.drain().await;
        report
    }

    async fn put_campaign(&self, id: &str, campaign: &Value) {
        self.services
            .put_campaign("kr-shop", id, campaign.to_string().as_bytes())
            .await
            .unwrap();
    }

    async fn purchase(&self, member: &str, order: &str, amount: i64, at: DateTime<Utc>) {
        self.purchase_in(member, order, amount, "", at).await;
    }

    async fn purchase_in(
        &self,
        member: &str,
        order: &str,
        amount: i64,
        category: &str,
        at: DateTime<Utc>,
    ) {
        let message = json!({
            "type": "purchase.completed", "version": 1, "id": format!("order-{order}"),
            "program": "kr-shop", "member": member, "occurred_at": at,
            "data": {"order_id": order, "currency": "KRW",
                     "lines": [{"line_id": "1", "quantity": 1, "category": category,
                                "unit_price": amount.to_string()}]}
        });
        self.services
            .process_earn(&message.to_string())
            .await
            .unwrap();
    }
}

fn campaign(value: Value) -> Campaign {
    Campaign::from_json(value.to_string().as_bytes(), &kr()).unwrap()
}

fn split(weights: &[f64]) -> Value {
    let variants: Vec<Value> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| json!({"key": format!("v{i}"), "weight": w, "effect": {"type": "none"}}))
        .collect();
    json!({
        "name": "Split", "kind": "on_exposure", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": "srm-check-2026", "goal": "purchase", "variants": variants
    })
}

#[test]
fn a_hundred_thousand_members_split_as_the_weights_say() {
    for weights in [vec![0.5, 0.5], vec![0.2, 0.3, 0.5]] {
        // GIVEN a campaign with these weights
        let c = campaign(split(&weights));
        // WHEN 100,000 member ids are assigned
        let mut observed = vec![0_i64; weights.len()];
        for i in 0..100_000 {
            let v = c.assign(&format!("member-{i:06}")).unwrap();
            observed[v] += 1;
        }
        // THEN the sample-ratio check passes
        let srm = sample_ratio(&observed, &weights);
        assert!(
            !srm.mismatch,
            "{weights:?}: {observed:?} p = {}",
            srm.p_value
        );
        // AND the same split with 3% of the last variant lost is flagged
        let last = observed.len() - 1;
        observed[last] -= observed[last] * 3 / 100;
        assert!(sample_ratio(&observed, &weights).mismatch, "{observed:?}");
    }
}

fn birthday_campaign() -> Value {
    json!({
        "name": "Birthday gift", "kind": "broadcast", "status": "running",
        "start": "2026-11-01T00:00:00+09:00", "end": "2026-12-01T00:00:00+09:00",
        "hash_seed": "birthday-2026", "goal": "purchase",
        "audience": {"birthday_in_window": true},
        "variants": [
            {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
            {"key": "gift", "weight": 0.5, "effect": {"type": "grant", "points": 1000}}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_pays_exactly_todays_birthdays_once_reading_only_them() {
    // GIVEN 2,000 members, 12 of whom have their birthday today (22 November in Seoul), and a
    // running broadcast birthday campaign that grants 1,000 points to half of its audience
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let members: Vec<(String, Option<&str>)> = (0..2_000)
        .map(|i| {
            let birthday = match i % 5 {
                _ if i < 12 => Some("11-22"),
                0 => Some("11-23"),
                1 => Some("05-01"),
                _ => None,
            };
            (format!("m{i:04}"), birthday)
        })
        .collect();
    s.seed(
        &members,
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
    )
    .await;
    s.put_campaign("birthday-gift", &birthday_campaign()).await;
    // WHEN the tick runs
    let before = s.store.operations();
    let report = s
        .services
        .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    let reads = s.store.operations() - before;
    let first = s.drain().await;
    // THEN it read the birthday index and the 12 members, not the 2,000
    assert_eq!(report.members, 24, "{report:?}"); // 12 for the rule, 12 for the campaign
    assert!(reads <= 12 * 3 + 30, "{reads} store operations");
    // AND each of the 12 got the program's 2,000 points, and those in the gift variant 1,000
    // more; nobody else got anything
    let c = campaign(birthday_campaign());
    for (member, _) in &members {
        let birthday_today = member.as_str() < "m0012";
        let expected = match (birthday_today, c.assign(member)) {
            (false, _) => 0,
            (true, Some(1)) => 3_000,
            (true, _) => 2_000,
        };
        assert_eq!(s.balance(member).await, expected, "{member}");
    }
    assert!(first
        .iter()
        .any(|id| id.starts_with("grant-birthday-gift:")));
    // WHEN the tick runs again the same day, and the app also reports the birthday
    s.tick().await;
    let reported = json!({
        "type": "engagement.recorded", "version": 1, "id": "app-birthday-m0000",
        "program": "kr-shop", "member": "m0000", "occurred_at": now,
        "data": {"action": "birthday", "ref": "app"}
    });
    s.services
        .process_earn(&reported.to_string())
        .await
        .unwrap();
    // THEN nobody is paid twice: the yearly limit holds across every path
    let m0 = match c.assign("m0000") {
        Some(1) => 3_000,
        _ => 2_000,
    };
    assert_eq!(s.balance("m0000").await, m0);
    let counts = s
        .store_counts("birthday-gift")
        .await
        .into_iter()
        .map(|c| c.assigned)
        .sum::<i64>();
    assert_eq!(counts, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_the_longest_ids_get_their_birthday_points_and_grants() {
    // GIVEN members whose ids take all 128 bytes the rule allows, their birthday today, one
    // of them in the gift variant of a 64-character broadcast campaign and one not
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let id = "b".repeat(64);
    let c = campaign(birthday_campaign());
    let long = |n: usize| format!("{}m{n:04}", "회".repeat(41));
    let gift = (0..).map(long).find(|m| c.assign(m) == Some(1)).unwrap();
    let control = (0..).map(long).find(|m| c.assign(m) == Some(0)).unwrap();
    assert_eq!((gift.len(), control.len()), (128, 128));
    s.seed(
        &[
            (gift.clone(), Some("11-22")),
            (control.clone(), Some("11-22")),
        ],
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
    )
    .await;
    s.put_campaign(&id, &birthday_campaign()).await;
    // WHEN the tick runs and its messages are delivered
    s.services
        .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    let earned = s.drain().await;
    // THEN both got the program's birthday points and the gift member the grant: no id the
    // tick made was refused by earn's own check
    assert_eq!(s.balance(&control).await, 2_000);
    assert_eq!(s.balance(&gift).await, 3_000, "{earned:?}");
    assert!(earned.iter().all(|e| e.len() <= 128), "{earned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_missed_a_week_pays_each_missed_birthday_once() {
    // GIVEN a tick completed on 22 November, and one member whose birthday is on each of the
    // seven days after it (and one more on the eighth)
    let first = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(first).await;
    let days: Vec<String> = (23..=30).map(|day| format!("11-{day}")).collect();
    let birthdays: Vec<(String, Option<&str>)> = days
        .iter()
        .map(|day| (format!("born-{day}"), Some(day.as_str())))
        .collect();
    s.seed(
        &birthdays,
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
    )
    .await;
    s.services
        .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    assert_eq!(s.drain().await, Vec::<String>::new());
    // WHEN the next tick runs a week later (29 November in Seoul), then again
    s.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 29, 1, 0, 0).unwrap());
    let report = s.tick().await;
    s.tick().await;
    // THEN the first caught up 22 to 29 November and paid the seven birthdays in it, once
    // each, and not the one still to come
    assert_eq!(report.members, 7, "{report:?}");
    for (member, _) in &birthdays {
        let expected = if member == "born-11-30" { 0 } else { 2_000 };
        assert_eq!(s.balance(member).await, expected, "{member}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birthday_campaign_ended_since_still_has_the_days_a_late_tick_catches_up() {
    // GIVEN a birthday campaign that ran until the end of 20 November (Seoul) and granted
    // everyone in its audience, a tick completed on 18 November, and members born on 19, 20
    // and 21 November
    let s = stack(Utc.with_ymd_and_hms(2026, 11, 18, 1, 0, 0).unwrap()).await;
    let born: Vec<(String, Option<&str>)> = ["11-19", "11-20", "11-21"]
        .iter()
        .map(|day| (format!("born-{day}"), Some(*day)))
        .collect();
    s.seed(&born, Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap())
        .await;
    let mut campaign = birthday_campaign();
    campaign["end"] = json!("2026-11-21T00:00:00+09:00");
    campaign["variants"][0]["weight"] = json!(0);
    campaign["variants"][1]["weight"] = json!(1);
    s.put_campaign("birthday-gift", &campaign).await;
    s.tick().await;
    // WHEN the next tick runs on 22 November, after the campaign has ended
    s.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap());
    s.tick().await;
    // THEN the birthdays of the days it ran have the program's points and the campaign's
    // grant, and the one after it the points alone
    assert_eq!(s.balance("born-11-19").await, 2_000 + 1_000);
    assert_eq!(s.balance("born-11-20").await, 2_000 + 1_000);
    assert_eq!(s.balance("born-11-21").await, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_as_of_a_later_date_leaves_the_days_from_today_to_the_scheduled_ticks() {
    // GIVEN a tick on 22 November (Seoul) run as of 30 November, and a member born on 23
    // November
    let s = stack(Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap()).await;
    let later = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
    s.services
        .run_job(Job::CampaignTick, "kr-shop", JobDate::Ahead(later), &|_| {})
        .await
        .unwrap();
    s.drain().await;
    s.seed(
        &[("born-11-23".into(), Some("11-23"))],
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
    )
    .await;
    // WHEN no tick runs on 23 November, and the scheduled one of 24 November runs
    s.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).unwrap());
    let report = s.tick().await;
    // THEN it went over the days since 22 November, and paid the birthday of the 23rd
    assert_eq!(
        report.from,
        Some(chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap())
    );
    assert_eq!(s.balance("born-11-23").await, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_run_a_year_ahead_leaves_each_birthday_to_its_own_day() {
    // GIVEN a member born on 23 November, and today's tick done on 22 November 2026 (Seoul)
    let s = stack(Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap()).await;
    s.seed(
        &[("born-11-23".into(), Some("11-23"))],
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
    )
    .await;
    s.tick().await;
    // WHEN a tick is run as of 23 November 2027, ahead
    let later = chrono::NaiveDate::from_ymd_opt(2027, 11, 23).unwrap();
    s.services
        .run_job(Job::CampaignTick, "kr-shop", JobDate::Ahead(later), &|_| {})
        .await
        .unwrap();
    s.drain().await;
    // THEN it paid no birthday of a day to come
    assert_eq!(s.balance("born-11-23").await, 0);
    // AND the ticks of each birthday pay it, 2026's and 2027's (before: the run ahead paid
    // both as of today, the second over 2026's limit, and 2027's own tick could not pay it)
    s.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).unwrap());
    s.tick().await;
    assert_eq!(s.balance("born-11-23").await, 2_000);
    s.clock
        .set(Utc.with_ymd_and_hms(2027, 11, 23, 1, 0, 0).unwrap());
    s.tick().await;
    assert_eq!(s.balance("born-11-23").await, 4_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birthday_campaign_an_operator_stopped_assigns_no_one_more() {
    // GIVEN a birthday campaign granting everyone in its audience, a tick completed on 18
    // November (Seoul), and a member born on 19 November
    let s = stack(Utc.with_ymd_and_hms(2026, 11, 18, 1, 0, 0).unwrap()).await;
    s.seed(
        &[("born-11-19".into(), Some("11-19"))],
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
    )
    .await;
    let mut campaign = birthday_campaign();
    campaign["variants"][0]["weight"] = json!(0);
    campaign["variants"][1]["weight"] = json!(1);
    s.put_campaign("birthday-gift", &campaign).await;
    s.tick().await;
    // WHEN an operator stops it at 10:00 on 19 November, before any tick of that day, and the
    // next tick runs on 22 November
    s.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 19, 1, 0, 0).unwrap());
    campaign["status"] = json!("stopped");
    s.put_campaign("birthday-gift", &campaign).await;
    s.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap());
    s.tick().await;
    // THEN the member has the program's birthday points and no grant of the stopped campaign
    assert_eq!(s.balance("born-11-19").await, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birthday_caught_up_in_the_new_year_leaves_that_year_its_own() {
    // GIVEN a tick completed on 30 December 2026 (Seoul) and a member born on 31 December, whose
    // program pays a birthday once a year
    let s = stack(Utc.with_ymd_and_hms(2026, 12, 30, 1, 0, 0).unwrap()).await;
    s.seed(
        &[("born-12-31".into(), Some("12-31"))],
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
    )
    .await;
    let tick = |at: DateTime<Utc>| {
        let s = &s;
        async move {
            s.clock.set(at);
            s.tick().await;
        }
    };
    tick(Utc.with_ymd_and_hms(2026, 12, 30, 1, 0, 0).unwrap()).await;
    // WHEN no tick runs on 31 December, the next one on 2 January catches the birthday up
    tick(Utc.with_ymd_and_hms(2027, 1, 2, 1, 0, 0).unwrap()).await;
    assert_eq!(s.balance("born-12-31").await, 2_000);
    // AND the tick of 31 December 2027 pays that year's birthday
    tick(Utc.with_ymd_and_hms(2027, 12, 31, 1, 0, 0).unwrap()).await;
    // THEN each year has had its birthday: the one paid late counted in 2026, its own year
    assert_eq!(s.balance("born-12-31").await, 4_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anniversaries_are_paid_from_the_first_full_year_once() {
    // GIVEN a program that pays 500 points on the joining anniversary, and members who joined
    // on 22 November 2025, on 21 November 2025, and today
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let program = format!(
        "{KR_SHOP}\n[actions.anniversary]\npoints = 500\nlimit = {{ count = 1, per = \"year\" }}\n"
    );
    let s = stack_with(now, &program).await;
    let joined = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 3, 0, 0).unwrap();
    s.seed(&[("a-year".into(), None)], joined(2025, 11, 22))
        .await;
    s.seed(&[("a-day-off".into(), None)], joined(2025, 11, 21))
        .await;
    s.seed(&[("today".into(), None)], now).await;
    // WHEN the tick runs twice
    for _ in 0..2 {
        s.tick().await;
    }
    // THEN only the member with a full year is paid, once
    assert_eq!(s.balance("a-year").await, 500);
    assert_eq!(s.balance("a-day-off").await, 0);
    assert_eq!(s.balance("today").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_of_category_buyers_admits_only_them() {
    // GIVEN a broadcast campaign, everyone on x2, for members who have bought stationery
    let now = Utc.with_ymd_and_hms(2026, 11, 10, 3, 0, 0).unwrap();
    let s = stack(now).await;
    let c = json!({
        "name": "Stationery fans", "kind": "broadcast", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": "stationery-2026", "goal": "purchase",
        "audience": {"purchased_category": "stationery"},
        "variants": [
            {"key": "control", "weight": 0.0, "effect": {"type": "none"}},
            {"key": "x2", "weight": 1.0, "effect": {"type": "multiplier", "basis_points": 20000}}
        ]
    });
    s.put_campaign("stationery", &c).await;
    let earlier = now - chrono::Duration::days(20);
    s.purchase_in("pens", "p0", 10_000, "stationery", earlier)
        .await;
    s.purchase_in("mugs", "m0", 10_000, "kitchen", earlier)
        .await;
    // WHEN both buy 10,000 KRW of anything in the window
    s.purchase("pens", "p1", 10_000, now).await;
    s.purchase("mugs", "m1", 10_000, now).await;
    // THEN only the stationery buyer earns double (100 before, then 200; the other 100 + 100)
    assert_eq!(s.balance("pens").await, 300);
    assert_eq!(s.balance("mugs").await, 200);
}

impl Stack {
    async fn store_counts(&self, campaign: &str) -> Vec<loyalty_core::report::VariantCounts> {
        use loyalty_core::ports::CampaignStore;
        self.store
            .campaign_counts("kr-shop", campaign)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_outside_its_window_assigns_nobody() {
    // GIVEN a birthday campaign that ended yesterday
    let now = Utc.with_ymd_and_hms(2026, 12, 2, 1, 0, 0).unwrap();
    let s = stack(now).await;
    s.seed(&[("m1".into(), Some("12-02"))], now).await;
    s.put_campaign("birthday-gift", &birthday_campaign()).await;
    // WHEN the tick runs and the member opens the app
    s.services
        .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    let mine = s
        .services
        .my_campaigns("kr-shop", "m1", None)
        .await
        .unwrap();
    // THEN the member is in no campaign and nothing is counted
    assert_eq!(mine["campaigns"], json!([]));
    assert!(s.store_counts("birthday-gift").await.is_empty());
}

#[tokio::test]
async fn a_purchase_made_before_the_exposure_gets_no_effect_of_the_campaign() {
    // GIVEN an on-exposure campaign doubling the points of every member who sees it, seen by
    // the member in the app now
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let mut campaign = simulated();
    campaign["variants"][0]["weight"] = json!(0);
    campaign["variants"][1]["weight"] = json!(1);
    s.put_campaign("double", &campaign).await;
    s.services
        .my_campaigns("kr-shop", "m-late", None)
        .await
        .unwrap();
    // WHEN a purchase made an hour before, delivered late, is processed, then one made after
    s.purchase("m-late", "before", 59_000, now - chrono::Duration::hours(1))
        .await;
    let before = s.balance("m-late").await;
    s.clock.set(now + chrono::Duration::minutes(5));
    s.purchase(
        "m-late",
        "after",
        59_000,
        now + chrono::Duration::minutes(1),
    )
    .await;
    // THEN only the one made after the exposure is doubled, and only it is counted
    assert_eq!((before, s.balance("m-late").await), (590, 590 + 1_180));
    let counts = s.store_counts("double").await;
    let x2 = counts.iter().find(|c| c.variant == "x2").unwrap();
    assert_eq!(x2.purchases, 1, "{counts:?}");
}

#[tokio::test]
async fn an_erased_member_s_old_app_token_is_assigned_to_no_campaign() {
    // GIVEN a running campaign, and a member who bought and was then erased at their request
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    s.put_campaign("double", &simulated()).await;
    s.purchase("m-gone", "o-1", 59_000, now - chrono::Duration::days(3))
        .await;
    let signed_in = Some(now - chrono::Duration::hours(2));
    s.services
        .erase_member("kr-shop", "m-gone", "asked to be forgotten", "ops")
        .await
        .unwrap();
    // WHEN the app, still holding a token issued before the erasure, opens its campaigns
    s.clock.set(now + chrono::Duration::minutes(5));
    let refused = s
        .services
        .my_campaigns("kr-shop", "m-gone", signed_in)
        .await;
    // THEN it is refused as a token from before the erasure, and nothing is assigned to the
    // name (before: an exposure recorded, the erased person written back)
    match refused {
        Err(ServiceError::Unauthorized { problem, .. }) => {
            assert_eq!(problem, "token-before-erasure")
        }
        other => panic!("{other:?}"),
    }
    let ids = ["double".to_string()];
    let read = s.store.load_member_with("kr-shop", "m-gone", &[], &ids);
    assert!(read.await.unwrap().assignments.is_empty());
    // AND a token that does not say when it was issued is refused too
    assert!(s
        .services
        .my_campaigns("kr-shop", "m-gone", None)
        .await
        .is_err());
    // AND the person signing in again after it comes back as a new member, assigned anew
    let again = Some(now + chrono::Duration::minutes(1));
    let shown = s.services.my_campaigns("kr-shop", "m-gone", again).await;
    assert_eq!(
        shown.unwrap()["campaigns"].as_array().map(Vec::len),
        Some(1)
    );
}

fn simulated() -> Value {
    json!({
        "name": "Double points", "kind": "on_exposure", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": "simulated-2026", "goal": "purchase",
        "variants": [
            {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
            {"key": "x2", "weight": 0.5, "effect": {"type": "multiplier", "basis_points": 20000}}
        ]
    })
}

/// Runs the simulated campaign: every member is exposed through the app (except the treated
/// members a broken client drops, `lost` of them in 100), then buys with the variant's true
/// probability. Returns the report.
async fn simulate(members: usize, lost: u32) -> Value {
    let now = Utc.with_ymd_and_hms(2026, 11, 10, 3, 0, 0).unwrap();
    let s = stack(now).await;
    s.put_campaign("double", &simulated()).await;
    let c = campaign(simulated());
    let truth = [0.20, 0.26];
    let mut random = Stream(20261122);
    for i in 0..members {
        let member = format!("sim-{i:05}");
        let variant = c.assign(&member).unwrap();
        if variant == 1 && (i as u32 % 100) < lost {
            continue;
        }
        s.services
            .my_campaigns("kr-shop", &member, None)
            .await
            .unwrap();
        if random.unit() < truth[variant] {
            s.purchase(&member, &format!("o{i}"), 30_000, now).await;
        }
    }
    s.clock.set(now);
    serde_json::to_value(
        s.services
            .campaign_report("kr-shop", "double")
            .await
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_recovers_a_known_uplift_and_flags_a_planted_mismatch() {
    // GIVEN 8,000 simulated members: control converts at 20%, x2 at 26% (a true +6 points)
    let report = simulate(8_000, 0).await;
    let x2 = &report["variants"][1];
    let uplift = &x2["conversion_uplift"];
    // THEN the true uplift lies inside the 95% interval, which excludes zero
    let (low, high) = (
        uplift["interval"][0].as_f64().unwrap(),
        uplift["interval"][1].as_f64().unwrap(),
    );
    assert!(low < 0.06 && 0.06 < high, "{uplift}");
    assert!(low > 0.0, "{uplift}");
    assert_eq!(uplift["significant"], json!(true));
    // AND revenue per member rises with it (every purchase is 30,000), with Welch's test
    assert!(x2["revenue_uplift"]["difference"].as_f64().unwrap() > 0.0);
    // AND the split is fine, the verdict names the winner, and x2 cost points
    assert_eq!(report["sample_ratio"]["mismatch"], json!(false), "{report}");
    assert!(report["verdict"]
        .as_str()
        .unwrap()
        .starts_with("x2 converts better"));
    assert!(x2["points_cost"].as_i64().unwrap() > 0);
    assert_eq!(report["variants"][0]["points_cost"], json!(0));
    assert_eq!(report["denominator"], json!("exposed"));

    // GIVEN the same campaign where a broken client loses 8% of the treated members' exposures
    let report = simulate(8_000, 8).await;
    // THEN the mismatch is flagged and the verdict says not to trust the result
    assert_eq!(report["sample_ratio"]["mismatch"], json!(true), "{report}");
    assert!(report["verdict"]
        .as_str()
        .unwrap()
        .starts_with("Do not trust"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_that_would_overlap_too_many_running_ones_is_refused_when_saved() {
    // GIVEN as many running campaigns as may overlap, all in November
    let s = stack(Utc.with_ymd_and_hms(2026, 11, 10, 3, 0, 0).unwrap()).await;
    let max = loyalty_core::services::campaigns::MAX_OVERLAPPING_CAMPAIGNS;
    let mut everyone = birthday_campaign();
    everyone["audience"] = json!({});
    for i in 0..max {
        everyone["hash_seed"] = json!(format!("c-{i}"));
        s.put_campaign(&format!("c-{i}"), &everyone).await;
    }
    // WHEN one more running campaign overlapping them is saved
    let body = birthday_campaign().to_string();
    let refused = s
        .services
        .put_campaign("kr-shop", "one-more", body.as_bytes())
        .await;
    // THEN it is refused with the reason, and nothing is saved
    match refused {
        Err(ServiceError::Conflict { problem, .. }) => {
            assert_eq!(problem, "too-many-running-campaigns")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(s.services.campaign("kr-shop", "one-more").await.is_err());
    // AND a purchase in the window still commits, counted in every one of them at once
    s.purchase(
        "m-1",
        "o-1",
        10_000,
        Utc.with_ymd_and_hms(2026, 11, 10, 2, 0, 0).unwrap(),
    )
    .await;
    let counted = loyalty_core::ports::CampaignStore::campaign_counts(&s.store, "kr-shop", "c-29")
        .await
        .unwrap();
    assert_eq!(counted.iter().map(|c| c.purchases).sum::<i64>(), 1);
    // AND the same campaign as a draft, or running in December, is accepted
    let mut draft = birthday_campaign();
    draft["status"] = json!("draft");
    s.put_campaign("one-more", &draft).await;
    let mut december = birthday_campaign();
    december["start"] = json!("2026-12-01T00:00:00+09:00");
    december["end"] = json!("2026-12-31T00:00:00+09:00");
    s.put_campaign("one-more", &december).await;
    // AND stopping it is never refused, but once stopped it cannot be moved back over
    // November's campaigns (it counts purchases made before its stop, delivered late)
    december["status"] = json!("stopped");
    s.put_campaign("one-more", &december).await;
    let mut moved = december.clone();
    moved["start"] = birthday_campaign()["start"].clone();
    let refused = s
        .services
        .put_campaign("kr-shop", "one-more", moved.to_string().as_bytes())
        .await;
    assert!(
        matches!(
            refused,
            Err(ServiceError::Conflict {
                problem: "too-many-running-campaigns",
                ..
            })
        ),
        "{refused:?}"
    );
}

fn goal_campaign(goal: &str, seed: &str) -> Value {
    json!({
        "name": format!("Goal {goal}"), "kind": "on_exposure", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": seed, "goal": goal,
        "variants": [
            {"key": "control", "weight": 0.0, "effect": {"type": "none"}},
            {"key": "all", "weight": 1.0, "effect": {"type": "none"}}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revenue_goals_count_revenue_net_of_refunds_and_redemption_goals_count_redeemers() {
    // GIVEN a revenue campaign and a redemption campaign, both shown to three members
    let now = Utc.with_ymd_and_hms(2026, 11, 10, 3, 0, 0).unwrap();
    let s = stack(now).await;
    s.put_campaign("spend", &goal_campaign("revenue", "spend-2026"))
        .await;
    s.put_campaign("treat", &goal_campaign("redemption", "treat-2026"))
        .await;
    for member in ["buyer", "early-refund", "redeemer"] {
        s.services
            .my_campaigns("kr-shop", member, None)
            .await
            .unwrap();
    }
    let event = |kind: &str, id: &str, member: &str, data: Value| {
        json!({"type": kind, "version": 1, "id": id, "program": "kr-shop", "member": member,
               "occurred_at": now, "data": data})
        .to_string()
    };
    let two_units = |order: &str, price: i64| {
        json!({"order_id": order, "currency": "KRW",
               "lines": [{"line_id": "1", "quantity": 2, "unit_price": price.to_string()}]})
    };
    let one_back = |order: &str, refund: &str| json!({"order_id": order, "refund_id": refund, "lines": [{"line_id": "1", "quantity": 1}]});
    // WHEN the buyer buys two units of 50,000 and returns one; the other member's refund of
    // one of two 10,000 units arrives before the order; the third redeems a coupon
    for body in [
        event(
            "purchase.completed",
            "b-1",
            "buyer",
            two_units("ob", 50_000),
        ),
        event("purchase.refunded", "b-2", "buyer", one_back("ob", "rb")),
        event(
            "purchase.refunded",
            "e-1",
            "early-refund",
            one_back("oe", "re"),
        ),
        event(
            "purchase.completed",
            "e-2",
            "early-refund",
            two_units("oe", 10_000),
        ),
    ] {
        s.services.process_earn(&body).await.unwrap();
    }
    s.services
        .adjust(
            "kr-shop",
            "redeemer",
            "ops",
            None,
            br#"{"points": 5000, "reason": "gift"}"#,
        )
        .await
        .unwrap();
    let answer = s
        .services
        .redeem(
            "kr-shop",
            "redeemer",
            "redeemer",
            Some("k-1"),
            br#"{"reward": "coupon-5000"}"#,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 201);

    // THEN the revenue campaign counts what was kept: 50,000 + 10,000, per member squared
    let spend = s.store_counts("spend").await;
    let all = spend.iter().find(|c| c.variant == "all").unwrap();
    assert_eq!(all.revenue, 60_000);
    assert_eq!(all.revenue_sq, 50_000_i128 * 50_000 + 10_000 * 10_000);
    assert_eq!((all.assigned, all.converters, all.purchases), (3, 2, 2));
    // AND the redemption campaign converts only the member who redeemed
    let treat = s.store_counts("treat").await;
    let all = treat.iter().find(|c| c.variant == "all").unwrap();
    assert_eq!((all.assigned, all.converters, all.purchases), (3, 1, 2));
}

/// A stack on a database file (so that a test can edit a row behind the engine's back) at
/// `now`, with `members` whose birthday is 22 November and the birthday campaign.
async fn birthdays_on_a_file(now: DateTime<Utc>, members: &[&str]) -> (Stack, std::path::PathBuf) {
    let db = std::env::temp_dir().join(format!("tick-{}.db", uuid::Uuid::new_v4().simple()));
    let s = stack_on(SqliteStore::open(&db).unwrap(), now, KR_SHOP).await;
    s.birthdays_today(members).await;
    (s, db)
}

impl Stack {
    /// `members`, joined 1 October, whose birthday is 22 November, and the birthday campaign.
    async fn birthdays_today(&self, members: &[&str]) {
        let members: Vec<(String, Option<&str>)> = members
            .iter()
            .map(|m| (m.to_string(), Some("11-22")))
            .collect();
        self.seed(
            &members,
            Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
        )
        .await;
        self.put_campaign("birthday-gift", &birthday_campaign())
            .await;
    }
}

/// A member's stored account as it was, replaced by `body` when given (a bad manual edit).
fn account_body(db: &std::path::Path, member: &str, body: Option<&str>) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    let before: String = conn
        .query_row(
            "SELECT body FROM accounts WHERE member = ?1",
            [member],
            |r| r.get(0),
        )
        .unwrap();
    if let Some(body) = body {
        conn.execute(
            "UPDATE accounts SET body = ?1 WHERE member = ?2",
            [body, member],
        )
        .unwrap();
    }
    before
}

#[tokio::test]
async fn a_member_the_tick_cannot_read_is_reported_and_the_others_are_still_assigned() {
    // GIVEN three members whose birthday is today, the birthday campaign, and m-poison's
    // account that cannot be read right now (a bad manual edit)
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let (s, db) = birthdays_on_a_file(now, &["m-a", "m-poison", "m-b"]).await;
    let body = account_body(&db, "m-poison", Some("{not an account"));
    // WHEN the tick runs
    let first = s
        .services
        .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    // THEN m-poison is named as failed, and the others were assigned regardless
    assert_eq!(first.error, None, "{first:?}");
    assert_eq!((first.failed, first.changed), (1, 2), "{first:?}");
    assert_eq!(first.failures[0].member, "m-poison");
    // WHEN the account is mended and the tick runs again
    account_body(&db, "m-poison", Some(&body));
    let again = s
        .services
        .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    // THEN m-poison is assigned now, and nobody twice
    assert_eq!((again.failed, again.changed), (0, 1), "{again:?}");
    s.drain().await;
    let counts: i64 = s
        .store_counts("birthday-gift")
        .await
        .into_iter()
        .map(|c| c.assigned)
        .sum();
    assert_eq!(counts, 3);
}

#[tokio::test]
async fn a_tick_out_of_time_stops_and_the_next_one_goes_on() {
    // GIVEN three members whose birthday is today, and the birthday campaign
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let members = ["m-a", "m-b", "m-c"];
    s.birthdays_today(&members).await;
    // WHEN a tick runs with its invocation's time already spent
    let spent = s
        .services
        .run_job_everywhere(
            Job::CampaignTick,
            Some("kr-shop"),
            None,
            Some(std::time::Instant::now()),
            &|_| {},
        )
        .await
        .unwrap();
    // THEN it stops incomplete, having paid and assigned no one
    assert_eq!(
        (spent[0].complete, spent[0].sent, spent[0].changed),
        (false, 0, 0),
        "{spent:?}"
    );
    assert!(s.drain().await.is_empty());
    // WHEN the next tick has time
    let next = s
        .services
        .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    // THEN it does the day: three birthdays paid and assigned
    assert_eq!(
        (next.complete, next.sent, next.changed),
        (true, 3, 3),
        "{next:?}"
    );
    s.drain().await;
    for member in members {
        assert!(s.balance(member).await >= 2_000, "{member}");
    }
}

/// A broadcast campaign running through November 2026 that puts every member in `variant`
/// (its control weighs nothing).
fn for_everyone(seed: &str, variant: Value) -> Value {
    json!({
        "name": "For everyone", "kind": "broadcast", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": seed, "goal": "purchase",
        "variants": [{"key": "control", "weight": 0, "effect": {"type": "none"}}, variant]
    })
}

#[tokio::test]
async fn a_bonus_is_not_used_up_by_a_purchase_that_earns_nothing() {
    // GIVEN a campaign that gives every member 500 points on their next purchase
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let bonus = json!({"key": "bonus", "weight": 1, "effect": {"type": "bonus", "points": 500}});
    s.put_campaign("next-order-bonus", &for_everyone("bonus-2026", bonus))
        .await;
    let at = now - chrono::Duration::hours(1);
    // WHEN the member first buys only a gift card (nothing earns), then a shirt of 59,000
    s.purchase_in("m-gift", "g-1", 50_000, "gift_card", at)
        .await;
    let after_card = s.balance("m-gift").await;
    s.purchase_in("m-gift", "g-2", 59_000, "apparel", at).await;
    // THEN the card earned nothing, and the shirt earned its 590 and the bonus of 500
    assert_eq!(after_card, 0);
    assert_eq!(s.balance("m-gift").await, 590 + 500);
}

#[tokio::test]
async fn a_bonus_paid_is_not_paid_again_when_the_campaign_is_re_randomised() {
    // GIVEN a campaign that gives every member 500 points on their next purchase, paid to a
    // member on a purchase of 59,000
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let bonus = json!({"key": "bonus", "weight": 1, "effect": {"type": "bonus", "points": 500}});
    let mut campaign = for_everyone("bonus-2026", bonus);
    s.put_campaign("next-order-bonus", &campaign).await;
    let at = now - chrono::Duration::hours(1);
    s.purchase("m-once", "b-1", 59_000, at).await;
    assert_eq!(s.balance("m-once").await, 590 + 500);
    // WHEN the campaign is re-randomised (a new bucket version), and the member buys twice more
    campaign["bucket_version"] = json!(2);
    s.put_campaign("next-order-bonus", &campaign).await;
    s.purchase("m-once", "b-2", 59_000, at).await;
    s.purchase("m-once", "b-3", 59_000, at).await;
    // THEN those purchases earn their own points only: the bonus was the member's once
    assert_eq!(s.balance("m-once").await, 3 * 590 + 500);
}

#[tokio::test]
async fn a_day_a_member_failed_on_is_gone_over_again_for_a_week_then_given_up() {
    // GIVEN m-poison, whose birthday is 22 November and whose account cannot be read, the
    // birthday campaign, and a tick that finished 21 November
    let day = |d: u32| Utc.with_ymd_and_hms(2026, 11, d, 1, 0, 0).unwrap();
    let (s, db) = birthdays_on_a_file(day(21), &["m-poison"]).await;
    let tick = || async {
        s.services
            .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
            .await
            .unwrap()
    };
    assert_eq!(tick().await.failed, 0);
    account_body(&db, "m-poison", Some("{not an account"));
    // WHEN ticks run on 25 and 26 November
    s.clock.set(day(25));
    let first = tick().await;
    s.clock.set(day(26));
    let second = tick().await;
    // THEN each goes over the days since 21 November again, naming m-poison
    assert_eq!(first.failed, 1, "{first:?}");
    assert_eq!(second.from, Some(day(21).date_naive()), "{second:?}");
    assert_eq!(second.failed, 1, "{second:?}");
    // WHEN a tick runs on 30 November, more than a week after the failed day
    s.clock.set(day(30));
    let later = tick().await;
    let next = tick().await;
    // THEN it still names m-poison, and gives the day up: the next tick starts from today
    assert_eq!(later.failed, 1, "{later:?}");
    assert_eq!(next.from, Some(day(30).date_naive()), "{next:?}");
}

#[tokio::test]
async fn a_member_assigned_before_the_seed_changed_still_earns_and_is_assigned_anew() {
    // GIVEN a running campaign doubling every member's points, and a member's purchase in it
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let double = |seed: &str, version: u32| {
        json!({
            "name": "Double points", "kind": "broadcast", "status": "running",
            "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
            "hash_seed": seed, "bucket_version": version, "goal": "purchase",
            "variants": [
                {"key": "control", "weight": 0, "effect": {"type": "none"}},
                {"key": "double", "weight": 1, "effect": {"type": "multiplier", "basis_points": 20000}}
            ]
        })
    };
    s.put_campaign("double", &double("double-2026", 1)).await;
    let at = now - chrono::Duration::hours(1);
    s.purchase("m-seed", "s-1", 59_000, at).await;
    assert_eq!(s.balance("m-seed").await, 1_180);
    // WHEN the campaign's seed changes, then its bucket version, each before the next purchase
    for (n, (seed, version)) in [("double-2026-b", 1), ("double-2026-b", 2)]
        .iter()
        .enumerate()
    {
        s.put_campaign("double", &double(seed, *version)).await;
        s.purchase("m-seed", &format!("s-{}", n + 2), 59_000, at)
            .await;
    }
    // THEN each purchase earned double, and the member's assignment is of the latest seed and version
    assert_eq!(s.balance("m-seed").await, 3 * 1_180);
    let state = s
        .store
        .load_assignments("kr-shop", "m-seed", &["double".to_string()])
        .await
        .unwrap();
    let assignment = &state.assignments["double"];
    assert_eq!(
        (assignment.hash_seed.as_str(), assignment.bucket_version),
        ("double-2026-b", 2)
    );
}

#[tokio::test]
async fn a_broadcast_grant_reaches_a_person_once_though_one_of_their_members_was_merged() {
    // GIVEN m-b merged into m-a, each with points of its own
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let at = now - chrono::Duration::hours(1);
    s.purchase("m-a", "a-1", 10_000, at).await;
    s.purchase("m-b", "b-1", 10_000, at).await;
    s.services
        .merge_named("kr-shop", "m-a", "m-b", "the same person", "ops")
        .await
        .unwrap();
    s.drain().await;
    assert_eq!(s.balance("m-a").await, 200);
    // WHEN a campaign granting 1,000 points to everyone starts and the tick assigns
    let gift = json!({"key": "gift", "weight": 1, "effect": {"type": "grant", "points": 1000}});
    s.put_campaign("welcome-gift", &for_everyone("gift-2026", gift))
        .await;
    s.tick().await;
    // THEN the person has the grant once
    assert_eq!(s.balance("m-a").await, 200 + 1_000);
}

#[tokio::test]
async fn a_login_still_leading_to_a_merged_member_is_shown_no_campaign_and_granted_nothing() {
    // GIVEN m-b merged into m-a, and an on-exposure campaign granting 1,000 points, which m-a
    // has seen
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let at = now - chrono::Duration::hours(1);
    s.purchase("m-a", "a-1", 10_000, at).await;
    s.purchase("m-b", "b-1", 10_000, at).await;
    s.services
        .merge_named("kr-shop", "m-a", "m-b", "the same person", "ops")
        .await
        .unwrap();
    s.drain().await;
    let mut campaign = simulated();
    campaign["variants"][0]["weight"] = json!(0);
    campaign["variants"][1] =
        json!({"key": "gift", "weight": 1, "effect": {"type": "grant", "points": 1000}});
    s.put_campaign("app-gift", &campaign).await;
    s.services
        .my_campaigns("kr-shop", "m-a", None)
        .await
        .unwrap();
    // WHEN the app asks for m-b's campaigns (a login whose link the merge has not moved yet)
    let shown = s
        .services
        .my_campaigns("kr-shop", "m-b", None)
        .await
        .unwrap();
    s.drain().await;
    // THEN none is shown, and the person has the grant once
    assert_eq!(shown["campaigns"], json!([]));
    assert_eq!(s.balance("m-a").await, 200 + 1_000);
}

#[tokio::test]
async fn a_new_seed_makes_the_tick_assign_everyone_again() {
    // GIVEN three members assigned by the tick to a broadcast campaign
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let members: Vec<(String, Option<&str>)> = (1..=3).map(|n| (format!("m-{n}"), None)).collect();
    s.seed(
        &members,
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
    )
    .await;
    let broadcast = |seed: &str| {
        json!({
            "name": "Split", "kind": "broadcast", "status": "running",
            "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
            "hash_seed": seed, "goal": "purchase",
            "variants": [
                {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
                {"key": "double", "weight": 0.5, "effect": {"type": "multiplier", "basis_points": 20000}}
            ]
        })
    };
    let seeds = || async {
        let mut seeds = Vec::new();
        for (member, _) in &members {
            let state = s
                .store
                .load_assignments("kr-shop", member, &["split".to_string()])
                .await
                .unwrap();
            seeds.push(state.assignments.get("split").map(|a| a.hash_seed.clone()));
        }
        seeds
    };
    let tick = || async {
        s.services
            .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
            .await
            .unwrap();
    };
    s.put_campaign("split", &broadcast("split-a")).await;
    tick().await;
    assert_eq!(seeds().await, vec![Some("split-a".to_string()); 3]);
    // WHEN its seed changes and the tick runs again
    s.put_campaign("split", &broadcast("split-b")).await;
    tick().await;
    // THEN every member is assigned under the new seed
    assert_eq!(seeds().await, vec![Some("split-b".to_string()); 3]);
    // AND the report counts each of them once, in the variant of the new seed
    let report = serde_json::to_value(
        s.services
            .campaign_report("kr-shop", "split")
            .await
            .unwrap(),
    )
    .unwrap();
    let members: Vec<i64> = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["members"].as_i64().unwrap())
        .collect();
    assert_eq!(members.iter().sum::<i64>(), 3, "{report}");
}

#[tokio::test]
async fn a_process_with_an_older_copy_of_a_re_randomised_campaign_leaves_its_members_where_they_are(
) {
    // GIVEN a broadcast campaign with seed split-a, which one process (A) has read
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    s.seed(
        &[("m-1".to_string(), None)],
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
    )
    .await;
    let split = |seed: &str| {
        json!({
            "name": "Split", "kind": "broadcast", "status": "running",
            "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
            "hash_seed": seed, "goal": "purchase",
            "variants": [
                {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
                {"key": "double", "weight": 0.5, "effect": {"type": "multiplier", "basis_points": 20000}}
            ]
        })
    };
    s.put_campaign("split", &split("split-a")).await;
    s.services
        .my_campaigns("kr-shop", "m-0", None)
        .await
        .unwrap();
    let app = Services::new(Arc::new(s.store.clone()), s.queue.clone(), s.clock.clone());
    app.my_campaigns("kr-shop", "m-0", None).await.unwrap();
    // AND another process (B) re-seeds it with split-b and shows it to m-1
    let b = Services::new(Arc::new(s.store.clone()), s.queue.clone(), s.clock.clone());
    b.put_campaign("kr-shop", "split", split("split-b").to_string().as_bytes())
        .await
        .unwrap();
    b.my_campaigns("kr-shop", "m-1", None).await.unwrap();
    // WHEN an app's process with split-a's copy shows m-1 the campaigns, and process A, its
    // copy still split-a's too, handles m-1's purchase
    let shown = app.my_campaigns("kr-shop", "m-1", None).await.unwrap();
    let shown_b = b.my_campaigns("kr-shop", "m-1", None).await.unwrap();
    assert_eq!(shown["campaigns"], shown_b["campaigns"]);
    s.purchase("m-1", "stale-1", 59_000, now).await;
    // THEN m-1 stays in split-b's randomisation, and the purchase counts there
    let state = s
        .store
        .load_assignments("kr-shop", "m-1", &["split".to_string()])
        .await
        .unwrap();
    let assignment = &state.assignments["split"];
    assert_eq!(
        (assignment.hash_seed.as_str(), assignment.purchases),
        ("split-b", 1),
        "{assignment:?}"
    );
}

#[tokio::test]
async fn a_re_randomised_campaign_counts_its_members_afresh_and_its_first_counts_stay() {
    // GIVEN a campaign granting 1,000 points to everyone who sees it, seen by one member who
    // then bought 59,000
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let gift = |seed: &str, version: u32| {
        json!({
            "name": "Gift", "kind": "on_exposure", "status": "running",
            "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
            "hash_seed": seed, "bucket_version": version, "goal": "purchase",
            "variants": [
                {"key": "control", "weight": 0, "effect": {"type": "none"}},
                {"key": "gift", "weight": 1, "effect": {"type": "grant", "points": 1000}}
            ]
        })
    };
    let report = || async {
        let report = s.services.campaign_report("kr-shop", "gift").await.unwrap();
        let gift = &report.variants[1];
        (
            gift.members,
            gift.converters,
            gift.revenue,
            gift.points_cost,
        )
    };
    s.put_campaign("gift", &gift("gift-a", 0)).await;
    s.services
        .my_campaigns("kr-shop", "m-1", None)
        .await
        .unwrap();
    s.drain().await;
    s.purchase("m-1", "o-1", 59_000, now).await;
    assert_eq!(report().await, (1, 1, 59_000, 1_000));
    // WHEN it is re-randomised (a new bucket version), and the member sees it again and a
    // second member sees it and buys
    s.put_campaign("gift", &gift("gift-a", 1)).await;
    for member in ["m-1", "m-2"] {
        s.services
            .my_campaigns("kr-shop", member, None)
            .await
            .unwrap();
    }
    s.drain().await;
    s.purchase("m-2", "o-2", 30_000, now).await;
    // THEN the report counts the new randomisation alone: each member once, the new
    // member's grant (the first was granted before) and purchase
    assert_eq!(report().await, (2, 1, 30_000, 1_000));
    // WHEN the first member's order, counted in the first randomisation, is cancelled
    let cancel = json!({"type": "purchase.cancelled", "version": 1, "id": "cancel-o-1",
        "program": "kr-shop", "member": "m-1", "occurred_at": now, "data": {"order_id": "o-1"}});
    s.services.process_earn(&cancel.to_string()).await.unwrap();
    // THEN the new randomisation's revenue is not touched
    assert_eq!(report().await, (2, 1, 30_000, 1_000));
    // WHEN the campaign is saved back to its first seed and bucket version, or to a lower
    // bucket version, or to a seed it left at this bucket version
    for (seed, version) in [("gift-a", 0), ("gift-b", 0)] {
        let refused = s
            .services
            .put_campaign(
                "kr-shop",
                "gift",
                gift(seed, version).to_string().as_bytes(),
            )
            .await;
        // THEN it is refused: its members would be counted again
        assert!(
            matches!(refused, Err(ServiceError::InvalidFields { ref errors, .. }) if errors[0].field == "bucket_version"),
            "{refused:?}"
        );
    }
    s.put_campaign("gift", &gift("gift-b", 1)).await;
    let refused = s
        .services
        .put_campaign("kr-shop", "gift", gift("gift-a", 1).to_string().as_bytes())
        .await;
    assert!(
        matches!(refused, Err(ServiceError::InvalidFields { ref errors, .. }) if errors[0].field == "hash_seed"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_membership_fee_is_no_campaign_revenue_and_a_cancelled_order_leaves_none() {
    // GIVEN kr-shop selling a membership whose fee earns nothing, and a revenue campaign
    let now = Utc.with_ymd_and_hms(2026, 11, 10, 3, 0, 0).unwrap();
    let program = format!(
        "{KR_SHOP}\n[membership]\nid = \"plus\"\nname = \"Plus\"\nprice = \"4900\"\n\
         period_months = 1\ngrace_days = 7\nsku = \"PLUS-MONTH\"\nmultiplier_bp = 10000\n"
    );
    let s = stack_with(now, &program).await;
    s.put_campaign("spend", &goal_campaign("revenue", "spend-2026"))
        .await;
    s.services
        .my_campaigns("kr-shop", "m-fee", None)
        .await
        .unwrap();
    // WHEN the member buys the membership (4,900) with a shirt (10,000), then cancels it all
    let event = |kind: &str, id: &str, data: Value| {
        json!({"type": kind, "version": 1, "id": id, "program": "kr-shop", "member": "m-fee",
               "occurred_at": now, "data": data})
        .to_string()
    };
    let order = json!({"order_id": "of", "currency": "KRW", "lines": [
        {"line_id": "1", "sku": "PLUS-MONTH", "quantity": 1, "unit_price": "4900"},
        {"line_id": "2", "sku": "TEE", "quantity": 1, "unit_price": "10000"}]});
    s.services
        .process_earn(&event("purchase.completed", "f-1", order))
        .await
        .unwrap();
    let counted = s.store_counts("spend").await;
    let after_purchase = counted.iter().find(|c| c.variant == "all").unwrap().revenue;
    s.services
        .process_earn(&event(
            "purchase.cancelled",
            "f-2",
            json!({"order_id": "of"}),
        ))
        .await
        .unwrap();
    // THEN the campaign counted the shirt alone, and the cancellation took all of it back
    assert_eq!(after_purchase, 10_000);
    let counted = s.store_counts("spend").await;
    assert_eq!(
        counted.iter().find(|c| c.variant == "all").unwrap().revenue,
        0
    );
}

#[tokio::test]
async fn a_purchase_that_assigns_a_member_first_sends_the_variants_grant_once() {
    // GIVEN a running broadcast campaign whose one variant grants 1,000 points, and a member
    // the tick has not reached yet
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let gift = welcome_gift("welcome-2026");
    s.put_campaign("welcome", &gift).await;
    s.seed(&[("m-1".to_string(), None)], now).await;
    // WHEN the member buys for 10,000 KRW before any tick, then everything queued is handled,
    // then the tick runs and is handled too
    s.purchase("m-1", "o-1", 10_000, now).await;
    let purchase_only = {
        let probe = stack(now).await;
        probe.seed(&[("m-1".to_string(), None)], now).await;
        probe.purchase("m-1", "o-1", 10_000, now).await;
        probe.balance("m-1").await
    };
    let earned = s.drain().await;
    s.services
        .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    let again = s.drain().await;
    // THEN the purchase's commit sent the grant, and the tick sent none: 1,000 points more
    // than the purchase alone earns, once
    let grants = earned
        .iter()
        .chain(&again)
        .filter(|id| id.starts_with("grant"))
        .count();
    assert_eq!(grants, 1, "earn messages: {earned:?} then {again:?}");
    assert_eq!(s.balance("m-1").await, purchase_only + 1_000);
}

#[tokio::test]
async fn grants_of_two_campaigns_whose_ids_and_members_join_alike_are_both_paid() {
    // GIVEN campaigns `welcome` and `welcome-kr`, each granting 1,000 points to everyone, and
    // members `kr-1001` and `1001` (joined with '-', both pairs read `welcome-kr-1001`)
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let gift = welcome_gift;
    s.put_campaign("welcome", &gift("a")).await;
    s.put_campaign("welcome-kr", &gift("b")).await;
    s.seed(
        &[("kr-1001".to_string(), None), ("1001".to_string(), None)],
        now,
    )
    .await;
    // WHEN the tick assigns them and its grants are handled
    s.services
        .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    let earned = s.drain().await;
    // THEN four grants went out, and each member has 2,000 points
    assert_eq!(earned.len(), 4, "{earned:?}");
    assert_eq!(
        (s.balance("kr-1001").await, s.balance("1001").await),
        (2_000, 2_000)
    );
}

#[tokio::test]
async fn widening_a_broadcast_campaigns_audience_assigns_the_members_it_now_admits() {
    // GIVEN a running broadcast campaign for SILVER members whose tick pass is complete, and
    // three WELCOME members it did not admit
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let members: Vec<(String, Option<&str>)> = (0..3).map(|i| (format!("w-{i}"), None)).collect();
    s.seed(&members, now).await;
    let mut offer = json!({
        "name": "Thank you", "kind": "broadcast", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": "thanks-2026", "goal": "purchase", "audience": {"tiers": ["SILVER"]},
        "variants": [
            {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
            {"key": "x2", "weight": 0.5, "effect": {"type": "multiplier", "basis_points": 20000}}
        ]
    });
    s.put_campaign("thanks", &offer).await;
    let tick = || {
        s.services
            .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
    };
    tick().await.unwrap();
    let assigned = |counts: Vec<loyalty_core::report::VariantCounts>| -> i64 {
        counts.iter().map(|c| c.assigned).sum()
    };
    assert_eq!(assigned(s.store_counts("thanks").await), 0);
    // WHEN its audience is widened to WELCOME members too, and the tick runs again
    offer["audience"] = json!({"tiers": ["WELCOME", "SILVER"]});
    s.put_campaign("thanks", &offer).await;
    tick().await.unwrap();
    // THEN the three members are assigned, once each (a third tick changes nothing)
    assert_eq!(assigned(s.store_counts("thanks").await), 3);
    tick().await.unwrap();
    assert_eq!(assigned(s.store_counts("thanks").await), 3);
}

#[tokio::test]
async fn raising_a_broadcast_campaigns_coverage_assigns_the_members_it_now_admits() {
    // GIVEN a running broadcast campaign covering none of its twelve members, its tick pass
    // complete
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    let members: Vec<(String, Option<&str>)> = (0..12).map(|i| (format!("c-{i}"), None)).collect();
    s.seed(&members, now).await;
    let mut offer = json!({
        "name": "Thank you", "kind": "broadcast", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": "cover-2026", "goal": "purchase", "coverage": 0.0,
        "variants": [
            {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
            {"key": "x2", "weight": 0.5, "effect": {"type": "multiplier", "basis_points": 20000}}
        ]
    });
    s.put_campaign("cover", &offer).await;
    let tick = || {
        s.services
            .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
    };
    tick().await.unwrap();
    let assigned = |counts: Vec<loyalty_core::report::VariantCounts>| -> i64 {
        counts.iter().map(|c| c.assigned).sum()
    };
    assert_eq!(assigned(s.store_counts("cover").await), 0);
    // WHEN its coverage is raised to everyone, and the tick runs again
    offer["coverage"] = json!(1.0);
    s.put_campaign("cover", &offer).await;
    tick().await.unwrap();
    // THEN the twelve members are assigned, once each
    assert_eq!(assigned(s.store_counts("cover").await), 12);
    tick().await.unwrap();
    assert_eq!(assigned(s.store_counts("cover").await), 12);
}

#[tokio::test]
async fn a_purchase_made_before_a_campaign_stopped_counts_in_it_delivered_late() {
    // GIVEN a running double-points campaign for everyone, and two members
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    s.seed(
        &[
            ("early".into(), None),
            ("moment".into(), None),
            ("late".into(), None),
        ],
        now,
    )
    .await;
    let mut double = json!({
        "name": "Double points", "kind": "broadcast", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": "double-2026", "goal": "purchase",
        "variants": [
            {"key": "control", "weight": 0, "effect": {"type": "none"}},
            {"key": "x2", "weight": 1, "effect": {"type": "multiplier", "basis_points": 20000}}
        ]
    });
    s.put_campaign("double", &double).await;
    // WHEN it is stopped an hour later, and then come a purchase made before the stop
    // (delivered late), one made in the 30 seconds other processes may still hold the list
    // as it was, and one made after it, each of 10,000 KRW
    s.clock.set(now + chrono::Duration::hours(1));
    double["status"] = json!("stopped");
    s.put_campaign("double", &double).await;
    s.clock.set(now + chrono::Duration::hours(3));
    s.purchase(
        "early",
        "o-early",
        10_000,
        now + chrono::Duration::minutes(30),
    )
    .await;
    s.purchase(
        "moment",
        "o-moment",
        10_000,
        now + chrono::Duration::hours(1) + chrono::Duration::seconds(20),
    )
    .await;
    s.purchase("late", "o-late", 10_000, now + chrono::Duration::hours(2))
        .await;
    // THEN the purchases made while it ran (wherever taken) earn double, the one after not
    let (early, late) = (s.balance("early").await, s.balance("late").await);
    assert_eq!(early, 2 * late, "early {early}, late {late}");
    assert_eq!(s.balance("moment").await, early);
    assert!(late > 0);
    // AND saving it again, still stopped, keeps when it stopped
    s.clock.set(now + chrono::Duration::days(1));
    s.put_campaign("double", &double).await;
    let saved = s.services.campaign("kr-shop", "double").await.unwrap();
    assert_eq!(
        saved["stopped_at"],
        json!(now + chrono::Duration::hours(1) + chrono::Duration::seconds(30))
    );
}

#[tokio::test]
async fn a_member_re_bucketed_into_the_granting_variant_is_not_granted_again() {
    // GIVEN a broadcast campaign whose one variant grants 1,000 points, paid by the tick
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let s = stack(now).await;
    s.seed(&[("m-1".to_string(), None)], now).await;
    let mut gift = welcome_gift("first");
    s.put_campaign("welcome", &gift).await;
    let tick = || {
        s.services
            .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
    };
    tick().await.unwrap();
    assert_eq!(s.drain().await.len(), 1);
    // WHEN it is re-randomised (a new seed) and the tick and a purchase assign the member again
    gift["hash_seed"] = json!("second");
    s.put_campaign("welcome", &gift).await;
    tick().await.unwrap();
    s.purchase("m-1", "o-1", 10_000, now).await;
    let earned = s.drain().await;
    // THEN no second grant is sent (grants made under an earlier id form would not be
    // recognised by their id), and the member has the 1,000 points once
    assert!(
        !earned.iter().any(|id| id.starts_with("grant")),
        "{earned:?}"
    );
    assert!(s.balance("m-1").await < 2_000);
}

/// A running broadcast campaign whose one variant grants 1,000 points to everyone.
fn welcome_gift(seed: &str) -> Value {
    json!({
        "name": "Welcome gift", "kind": "broadcast", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": seed, "goal": "purchase",
        "variants": [
            {"key": "control", "weight": 0, "effect": {"type": "none"}},
            {"key": "gift", "weight": 1, "effect": {"type": "grant", "points": 1000}}
        ]
    })
}

/// A broadcast campaign for everyone, running since 2026-11-01, and members a, b and c on a
/// SQLite file, b's account unreadable; returns the stack, the file and b's good body.
async fn broadcast_with_b_unreadable(now: DateTime<Utc>) -> (Stack, std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("tick-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("loyalty.db");
    let s = stack_on(SqliteStore::open(&db).unwrap(), now, KR_SHOP).await;
    let members: Vec<(String, Option<&str>)> = ["a", "b", "c"]
        .iter()
        .map(|m| (m.to_string(), None))
        .collect();
    s.seed(&members, now - chrono::Duration::days(30)).await;
    let good = set_account_body(&db, "b", "{not an account");
    let c = json!({
        "name": "Everyone", "kind": "broadcast", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": "everyone-2026", "goal": "purchase",
        "variants": [
            {"key": "control", "weight": 0.0, "effect": {"type": "none"}},
            {"key": "x2", "weight": 1.0, "effect": {"type": "multiplier", "basis_points": 20000}}
        ]
    });
    s.put_campaign("everyone", &c).await;
    (s, db, good)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_a_broadcast_pass_failed_is_assigned_by_the_next_tick() {
    // GIVEN a broadcast campaign for everyone and three members, one of them unreadable
    let now = Utc.with_ymd_and_hms(2026, 11, 10, 3, 0, 0).unwrap();
    let (s, db, good) = broadcast_with_b_unreadable(now).await;
    let assigned = |member: &'static str| {
        let store = s.store.clone();
        async move {
            store
                .load_member_with("kr-shop", member, &[], &["everyone".to_string()])
                .await
                .unwrap()
                .assignments
                .contains_key("everyone")
        }
    };
    let tick = || {
        s.services
            .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
    };
    // WHEN the tick runs
    let report = tick().await.unwrap();
    // THEN the others are assigned and the unreadable one is named among the failures
    assert_eq!((report.changed, report.failed), (2, 1), "{report:?}");
    assert_eq!(report.failures[0].member, "b");
    assert!(assigned("a").await && assigned("c").await);
    // WHEN an operator repairs it and the next day's tick runs
    set_account_body(&db, "b", &good);
    assert!(!assigned("b").await);
    s.clock.set(now + chrono::Duration::days(1));
    let report = tick().await.unwrap();
    // THEN it is assigned, and nothing else is gone over
    assert_eq!((report.members, report.changed, report.failed), (1, 1, 0));
    assert!(assigned("b").await);
    // AND a tick after that tries nobody again
    s.clock.set(now + chrono::Duration::days(2));
    let report = tick().await.unwrap();
    assert_eq!((report.members, report.changed), (0, 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_no_tick_could_assign_for_a_week_is_named_once_more_when_given_up() {
    // GIVEN a broadcast pass that failed to read b, which nobody repairs
    let now = Utc.with_ymd_and_hms(2026, 11, 10, 3, 0, 0).unwrap();
    let (s, _db, _) = broadcast_with_b_unreadable(now).await;
    let tick = || {
        s.services
            .run_job(Job::CampaignTick, "kr-shop", None, &|_| {})
    };
    assert_eq!(tick().await.unwrap().failed, 1);
    // WHEN the daily ticks try it for a week
    for day in 1..=7 {
        s.clock.set(now + chrono::Duration::days(day));
        let report = tick().await.unwrap();
        assert_eq!((report.members, report.failed), (1, 1), "{report:?}");
    }
    // WHEN the tick of the eighth day runs
    s.clock.set(now + chrono::Duration::days(8));
    let report = tick().await.unwrap();
    // THEN it names b as given up, not tried
    assert_eq!((report.members, report.failed), (0, 1), "{report:?}");
    assert_eq!(report.failures[0].member, "b");
    assert!(
        report.failures[0].error.contains("no longer tried"),
        "{report:?}"
    );
    // AND the tick after that names no one
    s.clock.set(now + chrono::Duration::days(9));
    let report = tick().await.unwrap();
    assert_eq!((report.members, report.failed), (0, 0), "{report:?}");
}
