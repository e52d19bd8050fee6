//! `loyalty import balances` and `loyalty rejected` with `--table`, against a DynamoDB table in
//! moto. `scripts/test` starts moto and exports `LOYALTY_TEST_DYNAMODB_ENDPOINT`; without it
//! this test fails, saying so.

use std::process::Output;
use std::sync::Arc;

use crate::common::moto::{client, loyalty, Dropped};
use chrono::{SecondsFormat, Utc};
use loyalty_core::ports::{OutboxStore, QueueName, SystemClock};
use loyalty_core::services::earn::Processed;
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::DynamoStore;
use serde_json::{json, Value};

const KR_SHOP: &str = include_str!("../../../examples/kr-shop.toml");

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yotpo_import_and_a_replay_work_on_a_table() {
    // GIVEN a table of its own with kr-shop, and a Yotpo export of three rows, one bad
    let table = format!("loyalty-cli-ops-{}", uuid::Uuid::new_v4().simple());
    let store = DynamoStore::new(client(), &table);
    store.create_table().await.expect("moto creates the table");
    let store = Arc::new(store);
    let services = Services::new(store.clone(), Arc::new(Dropped), Arc::new(SystemClock));
    services
        .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
        .await
        .expect("program");
    let dir =
        std::env::temp_dir().join(format!("loyalty-ops-ddb-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("yotpo.csv");
    std::fs::write(
        &file,
        "First Name,Email,Points Balance,Points Spent,Birthday (MM/DD) or (MM/DD/YYYY)\n\
         Ann,ann@example.com,1200,50,03/07/1990\n\
         Bo,bo@example.com,,0,\n\
         Cy,cy@example.com,300,0,13/45\n",
    )
    .expect("file");
    let import = || {
        json_of(&loyalty(&[
            "import",
            "balances",
            file.to_str().expect("utf-8"),
            "--table",
            &table,
            "--format",
            "yotpo",
            "--json",
        ]))
    };

    // WHEN it is imported into the table, twice
    let first = import();
    let second = import();

    // THEN Ann has her balance and birthday, Bo (no balance) is known, Cy's bad birthday is
    // refused, and the second run changes nothing
    assert_eq!(
        (
            first["applied"].as_i64(),
            first["unchanged"].as_i64(),
            first["refused"].as_i64()
        ),
        (Some(1), Some(1), Some(1)),
        "{first}"
    );
    assert_eq!(
        (second["applied"].as_i64(), second["unchanged"].as_i64()),
        (Some(0), Some(2))
    );
    let ann = services
        .member_view("kr-shop", "email:ann@example.com")
        .await
        .expect("view");
    assert_eq!(ann.balance, 1200);
    let export = json_of(&loyalty(&[
        "member",
        "export",
        "email:ann@example.com",
        "--table",
        &table,
    ]));
    assert_eq!(export["profile"]["birthday"], "03-07", "{export}");

    // GIVEN an engagement kr-shop does not reward, refused by earn
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let share = json!({"type": "engagement.recorded", "version": 1, "id": "ev-t-share",
        "program": "kr-shop", "member": "email:ann@example.com", "occurred_at": now,
        "data": {"action": "share", "ref": "t"}})
    .to_string();
    assert!(matches!(
        services.process_earn(&share).await.expect("processed"),
        Processed::Rejected(_)
    ));

    // WHEN operators list it and replay it from the table
    let listed = json_of(&loyalty(&["rejected", "list", "--table", &table, "--json"]));
    let replayed = json_of(&loyalty(&[
        "rejected",
        "replay",
        "ev-t-share",
        "--table",
        &table,
        "--json",
    ]));

    // THEN it was listed, and its replay waits in the outbox with the event's own id
    assert_eq!(listed[0]["id"], "ev-t-share", "{listed}");
    assert_eq!(replayed["replay"], 1);
    let waiting = store.outbox(100).await.expect("outbox");
    let message = waiting
        .iter()
        .find(|m| m.envelope.id == "ev-t-share")
        .expect("the replay in the outbox");
    assert_eq!(
        (message.queue, message.envelope.replay),
        (QueueName::Earn, Some(1))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_merge_and_erase_on_a_table() {
    use loyalty_core::ports::{AliasStore, RecordsStore, RedemptionStore, RejectStore};
    // GIVEN a table with Ann (1,200 points, a birthday) and Bo (known, no points), and an
    // event refused for good that names Ann
    let table = format!("loyalty-cli-members-{}", uuid::Uuid::new_v4().simple());
    let store = DynamoStore::new(client(), &table);
    store.create_table().await.expect("moto creates the table");
    let store = Arc::new(store);
    let services = Services::new(store.clone(), Arc::new(Dropped), Arc::new(SystemClock));
    services
        .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
        .await
        .expect("program");
    let dir = std::env::temp_dir().join(format!(
        "loyalty-ddb-members-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("balances.csv");
    std::fs::write(
        &file,
        "member,email,points,birthday\nann-1,ann@example.com,1200,03-07\nbo-1,bo@example.com,0,\n",
    )
    .expect("file");
    let imported = json_of(&loyalty(&[
        "import",
        "balances",
        file.to_str().expect("utf-8"),
        "--table",
        &table,
        "--format",
        "csv",
        "--json",
    ]));
    assert_eq!(imported["refused"].as_i64(), Some(0), "{imported}");
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let share = json!({"type": "engagement.recorded", "version": 1, "id": "ev-ann-share",
        "program": "kr-shop", "member": "email:ann@example.com", "occurred_at": now,
        "data": {"action": "share", "ref": "t"}})
    .to_string();
    services.process_earn(&share).await.expect("processed");
    // AND a coupon Ann's app redeemed with an Idempotency-Key (3,000 given for it)
    let subject = format!("sub-{}", uuid::Uuid::new_v4().simple());
    assert!(store
        .put_alias("kr-shop", "app", &subject, "ann-1")
        .await
        .expect("link"));
    let gift = br#"{"points": 3000, "reason": "for the coupon"}"#;
    let given = services.adjust("kr-shop", "ann-1", "ops", None, gift);
    assert_eq!(given.await.expect("adjusted").status, 201);
    let coupon = br#"{"reward": "free-shipping"}"#;
    let redeemed = services.redeem("kr-shop", "ann-1", &subject, Some("k-ann"), coupon);
    assert_eq!(redeemed.await.expect("redeemed").status, 201);

    // WHEN Bo is merged into Ann with the CLI, twice
    let merge = || {
        json_of(&loyalty(&[
            "member",
            "merge",
            "ann-1",
            "--from",
            "email:bo@example.com",
            "--reason",
            "one person",
            "--table",
            &table,
            "--json",
        ]))
    };
    let (first, second) = (merge(), merge());
    // THEN Bo's email leads to Ann, and the second changes nothing
    assert_eq!(
        (first["repeated"].as_bool(), second["repeated"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(
        store
            .resolve_alias("kr-shop", "email", "bo@example.com")
            .await
            .expect("alias")
            .as_deref(),
        Some("ann-1")
    );

    // WHEN Ann is erased with the CLI
    let erased = json_of(&loyalty(&[
        "member",
        "erase",
        "email:ann@example.com",
        "--reason",
        "erasure request",
        "--table",
        &table,
    ]));
    // THEN her points are forfeited, nothing under her id or emails is left, the refused event
    // that named her is gone, and the kept record has the amounts
    assert_eq!(erased["forfeited"].as_i64(), Some(1200), "{erased}");
    let file = store.member_file("kr-shop", "ann-1").await.expect("file");
    assert!(file.aliases.is_empty() && file.orders.is_empty());
    for email in ["ann@example.com", "bo@example.com"] {
        assert_eq!(
            store
                .resolve_alias("kr-shop", "email", email)
                .await
                .expect("alias"),
            None
        );
    }
    assert_eq!(
        store
            .rejected_event("kr-shop", "ev-ann-share")
            .await
            .expect("read"),
        None
    );
    // AND so is the stored answer to her app's redemption, which held her coupon's code
    assert_eq!(erased["requests"].as_i64(), Some(1), "{erased}");
    let answer = store.idempotency_record("kr-shop", &subject, "k-ann");
    assert_eq!(answer.await.expect("read"), None);
    let pseudonym = erased["pseudonym"].as_str().expect("pseudonym");
    let kept = services
        .ledger("kr-shop", pseudonym, Some(100), None)
        .await
        .expect("ledger");
    assert!(kept
        .entries
        .iter()
        .any(|e| e.kind == loyalty_core::domain::EntryKind::Forfeit));
    assert_eq!(kept.entries.iter().map(|e| e.points).sum::<i64>(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a relay sends, in order.
#[derive(Default)]
struct Sent(std::sync::Mutex<Vec<(QueueName, String)>>);

#[async_trait::async_trait]
impl loyalty_core::ports::Queue for Sent {
    async fn send(
        &self,
        queue: QueueName,
        message: &loyalty_core::envelope::Envelope,
    ) -> Result<(), loyalty_core::ports::QueueError> {
        self.0.lock().unwrap().push((queue, message.id.clone()));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carried_during_a_relay_outage_are_resent_and_no_others() {
    // GIVEN a table with kr-shop and a purchase recorded three days ago, then one recorded
    // yesterday, during an outage of the stream's relay longer than the stream keeps records
    let table = format!("loyalty-cli-outbox-{}", uuid::Uuid::new_v4().simple());
    let store = DynamoStore::new(client(), &table);
    store.create_table().await.expect("moto creates the table");
    let store = Arc::new(store);
    let now = Utc::now();
    let clock = loyalty_core::ports::FixedClock::at(now - chrono::Duration::days(3));
    let services = Services::new(store.clone(), Arc::new(Dropped), clock.clone());
    services
        .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
        .await
        .expect("program");
    let purchase = |id: &str, at: chrono::DateTime<Utc>| {
        json!({"type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
            "member": "ann-1", "occurred_at": at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "data": {"order_id": id, "currency": "KRW",
                "lines": [{"line_id": "1", "quantity": 1, "unit_price": "10000"}]}})
        .to_string()
    };
    for (id, at) in [
        ("p-before", now - chrono::Duration::days(3)),
        ("p-during", now - chrono::Duration::days(1)),
    ] {
        clock.set(at);
        assert!(matches!(
            services
                .process_earn(&purchase(id, at))
                .await
                .expect("processed"),
            Processed::Applied { .. }
        ));
    }
    let all = chrono::DateTime::<Utc>::MIN_UTC..chrono::DateTime::<Utc>::MAX_UTC;
    let outage = now - chrono::Duration::days(2)..now;
    let during: Vec<String> = store
        .carried(outage.clone(), 100)
        .await
        .expect("carried")
        .iter()
        .map(|m| m.key())
        .collect();
    assert!(!during.is_empty(), "the purchase carried its notice");
    assert!(store.carried(all, 100).await.expect("carried").len() > during.len());
    assert!(store.outbox(100).await.expect("outbox").is_empty());
    let since = outage.start.to_rfc3339_opts(SecondsFormat::Secs, true);
    let until = outage.end.to_rfc3339_opts(SecondsFormat::Secs, true);

    // WHEN an operator resends the outage's messages, twice
    let args = [
        "outbox", "resend", "--table", &table, "--since", &since, "--until", &until, "--json",
    ];
    let first = json_of(&loyalty(&args));
    let second = json_of(&loyalty(&args));

    // THEN exactly the messages carried during the outage wait in the outbox, once each (the
    // second run finds them waiting, and wakes them instead of writing them again)
    assert_eq!(
        first["resent"].as_u64(),
        Some(during.len() as u64),
        "{first}"
    );
    assert_eq!(second["resent"].as_u64(), Some(0), "{second}");
    // AND the second run showed the first run's waiting messages to the stream again (an
    // update of their `woken` time), as it would any message left waiting by the outage
    assert_eq!(first["woken"].as_u64(), Some(0), "{first}");
    assert_eq!(
        second["woken"].as_u64(),
        Some(during.len() as u64),
        "{second}"
    );
    let woken = client()
        .scan()
        .table_name(&table)
        .filter_expression("begins_with(SK, :o) AND attribute_exists(woken)")
        .expression_attribute_values(
            ":o",
            aws_sdk_dynamodb::types::AttributeValue::S("OUTBOX#".into()),
        )
        .send()
        .await
        .expect("scan")
        .items
        .unwrap_or_default();
    assert_eq!(woken.len(), during.len());
    let mut waiting: Vec<String> = store
        .outbox(100)
        .await
        .expect("outbox")
        .iter()
        .map(|m| m.key())
        .collect();
    waiting.sort();
    let mut expected = during.clone();
    expected.sort();
    assert_eq!(waiting, expected);
    let listed = json_of(&loyalty(&[
        "outbox", "list", "--table", &table, "--since", &since, "--json",
    ]));
    assert_eq!(
        listed["waiting"].as_array().map(Vec::len),
        Some(during.len())
    );
    assert_eq!(
        listed["carried"].as_array().map(Vec::len),
        Some(during.len())
    );
    // AND the relay sends them (the purchase of yesterday's notice only) and forgets them
    let sent = Arc::new(Sent::default());
    let relay = Services::new(store.clone(), sent.clone(), Arc::new(SystemClock));
    relay.relay_waiting(100).await.expect("relayed");
    let sent = sent.0.lock().unwrap().clone();
    assert_eq!(sent.len(), during.len());
    assert!(
        sent.iter().all(|(_, id)| id.contains("p-during")),
        "{sent:?}"
    );
    assert!(store.outbox(100).await.expect("outbox").is_empty());

    // WHEN the window is empty THEN the command refuses it and writes nothing
    let refused = loyalty(&[
        "outbox", "resend", "--table", &table, "--since", &until, "--until", &since,
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--until"));
    assert!(store.outbox(100).await.expect("outbox").is_empty());

    // WHEN a window holding more messages than --max is resent
    let wide = (now - chrono::Duration::days(4)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let cut = loyalty(&[
        "outbox", "resend", "--table", &table, "--since", &wide, "--max", "1", "--json",
    ]);
    // THEN it does that many and fails saying the rest was not looked at
    assert!(!cut.status.success());
    assert!(
        String::from_utf8_lossy(&cut.stderr).contains("--max"),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    assert_eq!(json_of(&cut)["resent"].as_u64(), Some(1));
}
