//! Opening a database file made by an older version, or one a running `loyalty serve` writes.
#![cfg(feature = "sqlite")]

use loyalty_core::ports::RejectStore;
use loyalty_core::store::sqlite::SqliteStore;

fn fresh_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sqlite-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("loyalty.db")
}

#[test]
fn a_file_with_nothing_to_move_opens_beside_a_writer() {
    // GIVEN a database file made by this version, and another process in a write (a busy
    // `loyalty serve`) that holds the write lock throughout
    let path = fresh_file("beside");
    drop(SqliteStore::open(&path).unwrap());
    let writer = rusqlite::Connection::open(&path).unwrap();
    writer.execute_batch("BEGIN IMMEDIATE").unwrap();
    // WHEN a command opens the file (`loyalty dlq list`, a report)
    let opened = SqliteStore::open_made(&path);
    // THEN it opens: there is nothing to move, so opening writes nothing (before: it waited
    // for the write lock and failed after the busy timeout)
    assert!(opened.is_ok(), "{:?}", opened.err());
    writer.execute_batch("ROLLBACK").unwrap();
}

#[tokio::test]
async fn rejections_of_an_older_version_are_paged_once_each() {
    // GIVEN a file whose rejections an older version recorded, dated with offsets and
    // microseconds, one of them twice
    let path = fresh_file("old-rejections");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let body = |id: &str, at: &str| {
        serde_json::json!({"program": "kr-shop", "event_id": id, "at": at,
                           "reason": "bad", "payload": "{}"})
        .to_string()
    };
    for (id, at) in [
        ("ev-1", "2026-03-01T10:00:00.123456+00:00"),
        ("ev-2", "2026-03-01T10:00:01+00:00"),
        ("ev-2", "2026-03-01T10:00:02+00:00"),
    ] {
        conn.execute(
            "INSERT INTO rejected (program, at, event_id, body) VALUES ('kr-shop', ?1, ?2, ?3)",
            rusqlite::params![at, id, body(id, at)],
        )
        .unwrap();
    }
    drop(conn);
    // WHEN this version opens it and lists the rejections one to a page
    let store = SqliteStore::open(&path).unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let page = store
            .rejected_page("kr-shop", 1, cursor.as_deref())
            .await
            .unwrap();
        seen.extend(page.events.iter().map(|e| (e.event_id.clone(), e.at)));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    // THEN each event is listed once, newest first, the later record of ev-2 kept (before:
    // every page began with the last one's event, and one to a page never ended)
    let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["ev-2", "ev-1"], "{seen:?}");
    assert_eq!(seen[0].1.to_rfc3339(), "2026-03-01T10:00:02+00:00");
}

#[tokio::test]
async fn expired_idempotency_records_are_deleted_and_live_ones_kept() {
    // GIVEN a file with three records of requests made with keys: two whose keys expired
    // (one dated with an offset) and one still live
    let path = fresh_file("idempotency");
    let store = SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let now = chrono::Utc::now();
    let records = [
        ("k-1", (now - chrono::Duration::days(2)).to_rfc3339()),
        ("k-2", "2020-01-01T09:00:00+09:00".to_string()),
        ("k-3", (now + chrono::Duration::days(5)).to_rfc3339()),
    ];
    for (key, expires_at) in &records {
        let body = serde_json::json!({"principal": "m-1", "key": key, "request_hash": "h",
            "status": 201, "response": "{}", "expires_at": expires_at});
        conn.execute(
            "INSERT INTO idempotency (program, principal, key, body) VALUES ('kr-shop', 'm-1', ?1, ?2)",
            rusqlite::params![key, body.to_string()],
        )
        .unwrap();
    }
    // WHEN serve's housekeeping forgets the expired ones
    let forgotten = store.forget_expired_requests(now, 1_000).await.unwrap();
    // THEN the two expired are gone and the live one stays (before: every record stayed for
    // good, one for each request ever made with a key)
    assert_eq!(forgotten, 2);
    let left: Vec<String> = conn
        .prepare("SELECT key FROM idempotency")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(left, ["k-3"]);
}

#[tokio::test]
async fn a_closed_store_has_its_log_folded_and_refuses_later_writes() {
    // GIVEN a store on a file with a write committed (in its write-ahead log)
    let path = fresh_file("closed");
    let store = SqliteStore::open(&path).unwrap();
    let rejected = |id: &str| loyalty_core::ports::RejectedEvent {
        program: "kr-shop".into(),
        event_id: id.into(),
        at: chrono::Utc::now(),
        reason: "bad".into(),
        payload: "{}".into(),
        replays: 0,
        replayed_at: None,
        replayed_by: None,
        names: Vec::new(),
    };
    store.reject(&rejected("ev-1")).await.unwrap();
    let wal = path.with_file_name("loyalty.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    // WHEN it is closed (serve stopping)
    store.close().await.unwrap();
    // THEN the log is folded into the file and emptied
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    // AND a write that comes later is refused as a passing failure (a late request is 503),
    // never committed after the fold
    let later = store.reject(&rejected("ev-2")).await;
    assert!(
        matches!(
            later,
            Err(loyalty_core::ports::StoreError::Transient { .. })
        ),
        "{later:?}"
    );
    let kept: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM rejected_events", [], |r| r.get(0))
        .unwrap_or(-1);
    assert_eq!(kept, 1);
}
