//! `loyalty audit`, `loyalty report liability` and `loyalty member export` with `--table`,
//! against a DynamoDB table in moto that the services filled. `scripts/test` starts moto and
//! exports `LOYALTY_TEST_DYNAMODB_ENDPOINT`; without it this test fails, saying so.

use std::sync::Arc;

use crate::common::moto::{client, loyalty, Dropped};
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{SecondsFormat, Utc};
use loyalty_core::ports::SystemClock;
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::{body_json, DynamoStore};
use serde_json::{json, Value};

const KR_SHOP: &str = include_str!("../../../examples/kr-shop.toml");

fn purchase(id: &str, member: &str, amount: i64) -> String {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({"type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
           "member": member, "occurred_at": now,
           "data": {"order_id": format!("o-{id}"), "currency": "KRW",
                    "lines": [{"line_id": "1", "quantity": 1, "unit_price": amount.to_string()}]}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_reads_a_table_in_parallel_segments_and_names_a_corrupted_account() {
    // GIVEN a table of its own in which three members bought, were given points and redeemed
    let table = format!("loyalty-cli-finance-{}", uuid::Uuid::new_v4().simple());
    let store = DynamoStore::new(client(), &table);
    store.create_table().await.expect("moto creates the table");
    let services = Services::new(Arc::new(store), Arc::new(Dropped), Arc::new(SystemClock));
    services
        .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
        .await
        .expect("program");
    for (i, member) in ["d-1", "d-2", "d-3"].iter().enumerate() {
        services
            .process_earn(&purchase(
                &format!("dev-{i}"),
                member,
                50_000 * (i as i64 + 1),
            ))
            .await
            .expect("earned");
        let body = json!({"points": 6000, "reason": "migration"}).to_string();
        services
            .adjust("kr-shop", member, "ops", None, body.as_bytes())
            .await
            .expect("adjusted");
    }
    let answer = services
        .redeem(
            "kr-shop",
            "d-2",
            "d-2",
            Some("k-1"),
            br#"{"reward": "coupon-5000"}"#,
        )
        .await
        .expect("redeemed");
    assert_eq!(answer.status, 201);

    // WHEN the table is audited in 3 segments
    let audit = loyalty(&["audit", "--table", &table, "--segments", "3"]);

    // THEN it exits 0, reports the read capacity used, and counts 3 members and 7 entries
    let text = String::from_utf8_lossy(&audit.stdout).to_string();
    assert!(
        audit.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert!(
        text.lines().any(|l| l.starts_with("read capacity: ")),
        "{text}"
    );
    assert_eq!(
        text.lines().last(),
        Some("audit: members=3 entries=7 violations=0")
    );

    // AND the liability report and an export read the same table
    let report: Value = serde_json::from_slice(
        &loyalty(&["report", "liability", "--table", &table, "--json"]).stdout,
    )
    .expect("json");
    assert_eq!(report["net"], 18_000 - 5_000);
    assert_eq!(report["pending"], 500 + 1000 + 1500);
    assert_eq!(report["members"], 3);
    let export: Value =
        serde_json::from_slice(&loyalty(&["member", "export", "d-2", "--table", &table]).stdout)
            .expect("json");
    assert_eq!(export["ledger"].as_array().expect("ledger").len(), 3);
    assert_eq!(export["coupons"].as_array().expect("coupons").len(), 1);

    // WHEN d-3's balance is lowered by 40 in the table, behind the ledger's back
    let key = |pk: &str, sk: &str| {
        std::collections::HashMap::from([
            ("PK".to_string(), AttributeValue::S(pk.into())),
            ("SK".to_string(), AttributeValue::S(sk.into())),
        ])
    };
    let item = client()
        .get_item()
        .table_name(&table)
        .set_key(Some(key("P#kr-shop#M#d-3", "ACCOUNT")))
        .send()
        .await
        .expect("get")
        .item
        .expect("the account");
    let mut body: Value =
        serde_json::from_str(&body_json(&item, "account").expect("body")).expect("json body");
    body["balance"] = json!(body["balance"].as_i64().expect("balance") - 40);
    let mut changed = item.clone();
    changed.insert("body".into(), AttributeValue::S(body.to_string()));
    client()
        .put_item()
        .table_name(&table)
        .set_item(Some(changed))
        .send()
        .await
        .expect("put");
    // AND d-2's account item is made unreadable
    let mut unreadable = client()
        .get_item()
        .table_name(&table)
        .set_key(Some(key("P#kr-shop#M#d-2", "ACCOUNT")))
        .send()
        .await
        .expect("get")
        .item
        .expect("the account");
    unreadable.insert("body".into(), AttributeValue::S("{not an account".into()));
    client()
        .put_item()
        .table_name(&table)
        .set_item(Some(unreadable))
        .send()
        .await
        .expect("put");
    let audit = loyalty(&["audit", "--table", &table, "--json"]);

    // THEN it exits 1 and its JSON report names d-3 and the difference
    assert_eq!(audit.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&audit.stdout).expect("json");
    let balance: Vec<&Value> = report["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .filter(|v| v["rule"] == "balance")
        .collect();
    assert_eq!(balance.len(), 1, "{report}");
    assert_eq!(balance[0]["member"], "d-3");
    assert_eq!(balance[0]["difference"], -40);
    // AND d-2 is named unreadable, the walk having gone on past it
    let unreadable: Vec<&Value> = report["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .filter(|v| v["rule"] == "unreadable")
        .collect();
    assert_eq!(unreadable.len(), 1, "{report}");
    assert_eq!(unreadable[0]["member"], "d-2");
    assert!(String::from_utf8_lossy(&audit.stderr)
        .lines()
        .any(|l| l.starts_with("audit: members=2 ")));
}
