//! The counts `GET /metrics` and the EMF lines report, against what the ledger holds. Alone in
//! its test binary: the registry is the process's.

mod common;

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use common::Recorder;
use loyalty_core::ports::{Clock, FixedClock};
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use loyalty_core::telemetry::metrics;
use serde_json::json;

/// The value of a counter of kr-shop's in the Prometheus text (0 when it has no series yet).
fn counter(name: &str) -> u64 {
    metrics::prometheus()
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| line.contains("program=\"kr-shop\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_copies_the_ledger_without_counting_its_points_again() {
    // GIVEN m-1 on kr-shop, who earned 1,000 points on two lines and had 500 clawed back
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 3, 10, 3, 0, 0).unwrap());
    let services = Services::new(
        Arc::new(store),
        Arc::new(Recorder::default()),
        clock.clone(),
    );
    common::save_kr_shop(&services).await;
    let now = clock.now().to_rfc3339();
    let purchase = json!({
        "type": "purchase.completed", "version": 1, "id": "ev-o-1", "program": "kr-shop",
        "member": "m-1", "occurred_at": now, "data": {"order_id": "o-1", "currency": "KRW",
        "lines": [{"line_id": "a", "quantity": 1, "unit_price": "50000"},
                  {"line_id": "b", "quantity": 1, "unit_price": "50000"}]}
    });
    let refund = json!({
        "type": "purchase.refunded", "version": 1, "id": "ev-r-1", "program": "kr-shop",
        "member": "m-1", "occurred_at": now,
        "data": {"order_id": "o-1", "refund_id": "r-1", "lines": [{"line_id": "a", "quantity": 1}]}
    });
    for event in [purchase, refund] {
        services.process_earn(&event.to_string()).await.unwrap();
    }
    let before = (
        counter("loyalty_points_issued_total"),
        counter("loyalty_points_clawed_back_total"),
    );
    assert_eq!(before, (1_000, 500));
    // WHEN m-1 is erased (its ledger copied under a pseudonym)
    services
        .erase_member("kr-shop", "m-1", "asked to be forgotten", "ops")
        .await
        .unwrap();
    // THEN the counts are what the ledger holds, not twice it (before: 2,000 and 1,000)
    let after = (
        counter("loyalty_points_issued_total"),
        counter("loyalty_points_clawed_back_total"),
    );
    assert_eq!(after, before);
}
