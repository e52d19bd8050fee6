//! One conformance suite for every state adapter: SQLite always, DynamoDB through moto.
//!
//! `scripts/test` starts moto single-threaded and exports `LOYALTY_TEST_DYNAMODB_ENDPOINT`. When
//! that variable is missing the DynamoDB tests fail with a message saying so: they never pass
//! silently.

use std::collections::BTreeMap;
use std::sync::Arc;

mod common;

use chrono::{TimeZone, Utc};
use loyalty_core::domain::{
    Account, DueDates, DueJob, EntryKind, EventContext, LedgerEntry, OrderRecord, Program, Source,
};
use loyalty_core::envelope::Envelope;
use loyalty_core::ports::{
    Commit, CommitError, EventMarker, Linked, OrderLinked, OutboxMessage, QueueName, Quota,
    RejectedEvent, ReplayMark, Store,
};

fn program() -> Program {
    Program::from_toml(include_str!("../../examples/kr-shop.toml")).expect("kr-shop")
}

/// A fresh member id per test, so that tests sharing a moto server never see each other.
fn member() -> String {
    format!("m-{}", uuid::Uuid::new_v4().simple())
}

fn entry(id: &str, points: i64, balance_after: i64) -> LedgerEntry {
    let at = Utc.with_ymd_and_hms(2026, 3, 10, 3, 0, 0).unwrap();
    let ctx = EventContext::new(id, at, at);
    LedgerEntry {
        id: id.to_string(),
        kind: EntryKind::Earn,
        points,
        pending: 0,
        balance_after,
        pending_after: 0,
        recorded_at: ctx.recorded_at,
        occurred_at: ctx.occurred_at,
        source: Source {
            event_id: Some(id.to_string()),
            ..Source::default()
        },
        reason: format!("{points} points"),
        shortfall: 0,
        provisional: false,
        lots: Vec::new(),
    }
}

fn commit(
    member: &str,
    expected: Option<u64>,
    balance: i64,
    entry_id: &str,
    event: Option<&str>,
) -> Commit {
    let p = program();
    let mut account = Account::open(&p, member, Utc::now());
    account.balance = balance;
    Commit {
        program: p.id,
        member: member.to_string(),
        expected_version: expected,
        account,
        entries: vec![entry(entry_id, 10, balance)],
        marker: event.map(|e| EventMarker {
            source: "api".into(),
            event_id: e.to_string(),
        }),
        marker_order: None,
        orders: BTreeMap::new(),
        order_revisions: BTreeMap::new(),
        redemption: None,
        copied_redemptions: Vec::new(),
        coupon: None,
        revoke_coupon: None,
        idempotency: None,
        assignments: Vec::new(),
        counters: Vec::new(),
        outbox: Vec::new(),
        due: DueDates::default(),
        books: Default::default(),
        quota: None,
    }
}

/// A message about `member` for the outbox.
fn message(queue: QueueName, member: &str, id: &str) -> OutboxMessage {
    OutboxMessage::new(
        queue,
        Envelope {
            replay: None,
            resumed: None,
            reviewed_by: None,
            trace: None,
            kind: "tier.check".into(),
            version: 1,
            id: id.to_string(),
            program: "kr-shop".into(),
            member: member.to_string(),
            occurred_at: Utc.with_ymd_and_hms(2026, 3, 10, 3, 0, 0).unwrap(),
            data: serde_json::json!({}),
        },
    )
}

/// The waiting outbox messages about `member` (a shared moto table holds other tests' too).
async fn waiting(store: &Arc<dyn Store>, member: &str) -> Vec<OutboxMessage> {
    let mut mine: Vec<OutboxMessage> = store
        .outbox(100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.envelope.member == member)
        .collect();
    mine.sort_by_key(|m| m.key());
    mine
}

/// Every message written about `member` and not forgotten: waiting, or riding along a ledger
/// entry of its commit (a store whose change feed relays them).
async fn written(store: &Arc<dyn Store>, member: &str) -> Vec<OutboxMessage> {
    let mut mine = waiting(store, member).await;
    mine.extend(
        store
            .carried(
                chrono::DateTime::<chrono::Utc>::MIN_UTC..chrono::DateTime::<chrono::Utc>::MAX_UTC,
                100_000,
            )
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.envelope.member == member),
    );
    mine.sort_by_key(|m| m.key());
    mine
}

async fn a_new_account_is_created_once_and_versions_advance(store: Arc<dyn Store>) {
    // GIVEN a member never seen
    let m = member();
    assert_eq!(
        store.load_member("kr-shop", &m, &[]).await.unwrap().account,
        None
    );
    // WHEN the first commit creates the account and a second one updates it
    store
        .commit(commit(&m, None, 10, "e1", Some("ev-1")))
        .await
        .unwrap();
    store
        .commit(commit(&m, Some(1), 20, "e2", Some("ev-2")))
        .await
        .unwrap();
    // THEN the stored account is at version 2 with the last balance
    let account = store
        .load_member("kr-shop", &m, &[])
        .await
        .unwrap()
        .account
        .unwrap();
    assert_eq!((account.version, account.balance), (2, 20));
    // AND creating it again as if new is a version conflict
    let again = store.commit(commit(&m, None, 99, "e3", Some("ev-3"))).await;
    assert!(
        matches!(again, Err(CommitError::VersionConflict)),
        "{again:?}"
    );
}

async fn a_stale_version_writes_nothing(store: Arc<dyn Store>) {
    // GIVEN an account at version 2
    let m = member();
    store
        .commit(commit(&m, None, 10, "e1", Some("ev-1")))
        .await
        .unwrap();
    store
        .commit(commit(&m, Some(1), 20, "e2", Some("ev-2")))
        .await
        .unwrap();
    // WHEN a writer that loaded version 1 commits
    let stale = store
        .commit(commit(&m, Some(1), 999, "e3", Some("ev-3")))
        .await;
    // THEN it is a conflict and neither its entry nor its marker nor its balance exists
    assert!(
        matches!(stale, Err(CommitError::VersionConflict)),
        "{stale:?}"
    );
    let page = store.ledger_page("kr-shop", &m, 10, None).await.unwrap();
    assert_eq!(page.entries.len(), 2);
    let marker = EventMarker {
        source: "api".into(),
        event_id: "ev-3".into(),
    };
    assert!(!store.has_marker("kr-shop", &m, &marker).await.unwrap());
    assert_eq!(
        store
            .load_member("kr-shop", &m, &[])
            .await
            .unwrap()
            .account
            .unwrap()
            .balance,
        20
    );
}

async fn a_repeated_event_is_a_duplicate_without_effect(store: Arc<dyn Store>) {
    // GIVEN an event applied once
    let m = member();
    store
        .commit(commit(&m, None, 10, "ev-1#0", Some("ev-1")))
        .await
        .unwrap();
    // WHEN the same event is committed again at the current version
    let repeat = store
        .commit(commit(&m, Some(1), 20, "ev-1#0-retry", Some("ev-1")))
        .await;
    // THEN the store reports a duplicate and the account is unchanged
    assert!(matches!(repeat, Err(CommitError::Duplicate)), "{repeat:?}");
    let account = store
        .load_member("kr-shop", &m, &[])
        .await
        .unwrap()
        .account
        .unwrap();
    assert_eq!((account.version, account.balance), (1, 10));
    assert_eq!(
        store
            .ledger_page("kr-shop", &m, 10, None)
            .await
            .unwrap()
            .entries
            .len(),
        1
    );
    // AND the read before a commit tells the event apart from one never seen, with the account
    let seen = |id: &str| EventMarker {
        source: "api".into(),
        event_id: id.into(),
    };
    let state = store
        .load_member_for_event("kr-shop", &m, &seen("ev-1"), &[], &[])
        .await
        .unwrap();
    assert!(state.seen);
    assert_eq!(state.account.map(|a| a.balance), Some(10));
    let state = store
        .load_member_for_event("kr-shop", &m, &seen("ev-2"), &[], &[])
        .await
        .unwrap();
    assert!(!state.seen);
    assert_eq!(state.account.map(|a| a.balance), Some(10));
}

async fn concurrent_writers_serialise_through_the_version(store: Arc<dyn Store>) {
    // GIVEN an account and 8 writers that each add 10 points with reload-and-retry
    let m = member();
    store
        .commit(commit(&m, None, 0, "e0", Some("ev-0")))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (store, m) = (Arc::clone(&store), m.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let account = store
                    .load_member("kr-shop", &m, &[])
                    .await
                    .unwrap()
                    .account
                    .unwrap();
                let c = commit(
                    &m,
                    Some(account.version),
                    account.balance + 10,
                    &format!("w{i}"),
                    Some(&format!("ev-w{i}")),
                );
                match store.commit(c).await {
                    Ok(()) => return,
                    Err(CommitError::VersionConflict) => tokio::task::yield_now().await,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            panic!("writer {i} never got through");
        }));
    }
    // WHEN they all finish
    for t in tasks {
        t.await.unwrap();
    }
    // THEN no update was lost: 8 x 10 points, version 9, 9 entries
    let account = store
        .load_member("kr-shop", &m, &[])
        .await
        .unwrap()
        .account
        .unwrap();
    assert_eq!((account.balance, account.version), (80, 9));
    assert_eq!(
        store
            .ledger_page("kr-shop", &m, 100, None)
            .await
            .unwrap()
            .entries
            .len(),
        9
    );
}

async fn the_ledger_pages_newest_first_without_gaps_or_repeats(store: Arc<dyn Store>) {
    // GIVEN 7 entries
    let m = member();
    store.commit(commit(&m, None, 0, "e0", None)).await.unwrap();
    for v in 1..7 {
        store
            .commit(commit(&m, Some(v), 0, &format!("e{v}"), None))
            .await
            .unwrap();
    }
    // WHEN paging 3 at a time while new entries keep arriving between pages
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut version = 7;
    loop {
        let page = store
            .ledger_page("kr-shop", &m, 3, cursor.as_deref())
            .await
            .unwrap();
        seen.extend(page.entries.iter().map(|e| e.id.clone()));
        store
            .commit(commit(
                &m,
                Some(version),
                0,
                &format!("late{version}"),
                None,
            ))
            .await
            .unwrap();
        version += 1;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    // THEN the first 7 appear exactly once, newest first
    let expected: Vec<String> = (0..7).rev().map(|v| format!("e{v}")).collect();
    assert_eq!(seen, expected);
}

async fn order_records_are_read_with_the_account(store: Arc<dyn Store>) {
    // GIVEN a commit that writes two order records
    let m = member();
    let mut c = commit(&m, None, 10, "e1", Some("ev-1"));
    for key in ["shopify#1001", "pos#77"] {
        c.orders.insert(
            key.to_string(),
            OrderRecord {
                order_id: key.to_string(),
                ..OrderRecord::default()
            },
        );
    }
    store.commit(c).await.unwrap();
    // WHEN the member is loaded with one known and one unknown order key
    let keys = vec!["shopify#1001".to_string(), "shopify#404".to_string()];
    let state = store.load_member("kr-shop", &m, &keys).await.unwrap();
    // THEN the account and exactly the existing order come back
    assert!(state.account.is_some());
    assert_eq!(
        state.orders.keys().collect::<Vec<_>>(),
        vec!["shopify#1001"]
    );
}

async fn an_order_s_events_are_duplicates_whether_or_not_their_marker_rides_on_the_order(
    store: Arc<dyn Store>,
) {
    // GIVEN a purchase of order shopify#2001 committed with its order record, its marker kept
    // with the order where the store can
    let m = member();
    let order = "shopify#2001".to_string();
    let with_order = |expected, balance, entry: &str, event: &str| {
        let mut c = commit(&m, expected, balance, entry, Some(event));
        c.marker_order = Some(order.clone());
        c.orders.insert(
            order.clone(),
            OrderRecord {
                order_id: order.clone(),
                ..OrderRecord::default()
            },
        );
        c
    };
    let marked = |event: &str| EventMarker {
        source: "api".into(),
        event_id: event.into(),
    };
    let seen = |event: &'static str| {
        let (store, m, order) = (store.clone(), m.clone(), order.clone());
        async move {
            store
                .load_member_for_event("kr-shop", &m, &marked(event), &[order], &[])
                .await
                .unwrap()
                .seen
        }
    };
    store
        .commit(with_order(None, 10, "paid#0", "order-2001-paid"))
        .await
        .unwrap();
    // WHEN its refund rewrites the order's record under a marker of its own
    store
        .commit(with_order(Some(1), 5, "refund#0", "order-2001-refund-1"))
        .await
        .unwrap();
    // THEN both events read as seen with the order, and an event never committed does not
    assert!(seen("order-2001-paid").await);
    assert!(seen("order-2001-refund-1").await);
    assert!(!seen("order-2001-refund-2").await);
    // AND either one committed again is a duplicate, and nothing changed
    for (entry, event) in [
        ("paid#1", "order-2001-paid"),
        ("refund#1", "order-2001-refund-1"),
    ] {
        let again = store.commit(with_order(Some(2), 99, entry, event)).await;
        assert!(matches!(again, Err(CommitError::Duplicate)), "{again:?}");
    }
    let state = store
        .load_member("kr-shop", &m, std::slice::from_ref(&order))
        .await
        .unwrap();
    assert_eq!(state.account.map(|a| (a.version, a.balance)), Some((2, 5)));
    assert!(state.orders.contains_key(&order));
    // AND a commit marking its event on an order whose record it does not write is refused,
    // and writes nothing
    let mut stray = commit(&m, Some(2), 7, "stray#0", Some("order-2002-paid"));
    stray.marker_order = Some("shopify#2002".into());
    let refused = store.commit(stray).await;
    assert!(
        matches!(&refused, Err(CommitError::Store(e)) if e.to_string().contains("shopify#2002")),
        "{refused:?}"
    );
    let state = store.load_member("kr-shop", &m, &[]).await.unwrap();
    assert_eq!(state.account.map(|a| (a.version, a.balance)), Some((2, 5)));
    // AND read as earn reads first (possibly a moment old: the revisions of the records read
    // come with it), the events read as seen alike
    let cheaply = |event: &'static str| {
        let (store, m, order) = (store.clone(), m.clone(), order.clone());
        async move {
            store
                .load_member_for_event_cheaply("kr-shop", &m, &marked(event), &[order], &[])
                .await
                .unwrap()
        }
    };
    assert!(cheaply("order-2001-refund-1").await.seen);
    let read = cheaply("order-2001-refund-2").await;
    assert!(!read.seen);
    // WHEN a new event commits from that read, naming the revisions it read, and then again
    // from the same read
    let from_read = |expected, balance, entry: &str| {
        let mut c = with_order(Some(expected), balance, entry, "order-2001-refund-2");
        c.order_revisions = read.revisions_of([&order]);
        c
    };
    store.commit(from_read(2, 4, "refund#2")).await.unwrap();
    let again = store.commit(from_read(3, 3, "refund#3")).await;
    // THEN it applied once, and the second is a duplicate
    assert!(matches!(again, Err(CommitError::Duplicate)), "{again:?}");
    let state = store.load_member("kr-shop", &m, &[]).await.unwrap();
    assert_eq!(state.account.map(|a| (a.version, a.balance)), Some((3, 4)));
}

async fn programs_are_versioned_and_conditional(store: Arc<dyn Store>) {
    // GIVEN a program id never used
    let id = format!("p-{}", uuid::Uuid::new_v4().simple());
    let at = Utc::now();
    // WHEN it is created, created again, and replaced with the right and a stale version
    assert_eq!(
        store.put_program(&id, "{\"v\":1}", None, at).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.put_program(&id, "{\"v\":9}", None, at).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .put_program(&id, "{\"v\":2}", Some(1), at)
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        store
            .put_program(&id, "{\"v\":9}", Some(1), at)
            .await
            .unwrap(),
        None
    );
    // THEN the current program is version 2
    let stored = store.get_program(&id).await.unwrap().unwrap();
    assert_eq!(
        (stored.version, stored.file_json.as_str()),
        (2, "{\"v\":2}")
    );
    assert!(store.get_program("never-saved").await.unwrap().is_none());
    // WHEN it is saved up to version 11
    for v in 3..=11u32 {
        let file = format!("{{\"v\":{v}}}");
        assert_eq!(
            store
                .put_program(&id, &file, Some(v - 1), at)
                .await
                .unwrap(),
            Some(v)
        );
    }
    // THEN every version is listed, newest first by number (11 before 2), and each reads as saved
    let versions: Vec<u32> = store
        .program_versions(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(versions, (1..=11).rev().collect::<Vec<u32>>());
    let first = store.program_version(&id, 1).await.unwrap().unwrap();
    assert_eq!((first.version, first.file_json.as_str()), (1, "{\"v\":1}"));
    assert!(store.program_version(&id, 12).await.unwrap().is_none());
    assert!(store
        .program_versions("never-saved")
        .await
        .unwrap()
        .is_empty());
}

async fn identities_linked_together_are_answered_each_as_when_linked_apart(store: Arc<dyn Store>) {
    let program = format!("links-{}", uuid::Uuid::new_v4().simple());
    let (mine, theirs) = ("m-1", "m-2");
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let (customer, phone, later) = ("7301", "010-5550-0101", "7302");
    // GIVEN the email linked to another member already
    assert!(store
        .put_alias(&program, "email", &email, theirs)
        .await
        .unwrap());
    // WHEN a customer id, that email and a phone are linked to m-1 together
    let asked = [
        ("shopify", customer),
        ("email", email.as_str()),
        ("pos", phone),
    ];
    let written = store.put_aliases(&program, &asked, mine).await.unwrap();
    // THEN each is answered as alone: the email stays with its member, the others are m-1's
    assert_eq!(written, vec![true, false, true]);
    let members = store.resolve_aliases(&program, &asked).await.unwrap();
    assert_eq!(
        members,
        vec![Some(mine.into()), Some(theirs.into()), Some(mine.into())]
    );
    // AND the member's own side lists the two it holds, and not the email
    let mut held = store.member_file(&program, mine).await.unwrap().aliases;
    held.sort();
    assert_eq!(
        held,
        vec![
            ("pos".to_string(), phone.to_string()),
            ("shopify".to_string(), customer.to_string())
        ]
    );
    // WHEN they are linked together again, with one more, none held by another member
    let again = [("shopify", customer), ("pos", phone), ("shopify", later)];
    // THEN all are written, and nothing is asked of none
    assert_eq!(
        store.put_aliases(&program, &again, mine).await.unwrap(),
        vec![true, true, true]
    );
    assert_eq!(
        store
            .resolve_alias(&program, "shopify", later)
            .await
            .unwrap()
            .as_deref(),
        Some(mine)
    );
    assert!(store
        .put_aliases(&program, &[], mine)
        .await
        .unwrap()
        .is_empty());
}

async fn aliases_link_one_identity_to_one_member(store: Arc<dyn Store>) {
    let value = uuid::Uuid::new_v4().simple().to_string();
    // GIVEN an identity linked to m-1
    assert!(store
        .put_alias("kr-shop", "email", &value, "m-1")
        .await
        .unwrap());
    // WHEN it is linked again to m-1 and then to m-2
    assert!(store
        .put_alias("kr-shop", "email", &value, "m-1")
        .await
        .unwrap());
    assert!(!store
        .put_alias("kr-shop", "email", &value, "m-2")
        .await
        .unwrap());
    // THEN it still resolves to m-1, and the read that only decides whether to link (possibly
    // a moment old) says the same once the link has settled
    assert_eq!(
        store
            .resolve_alias("kr-shop", "email", &value)
            .await
            .unwrap()
            .as_deref(),
        Some("m-1")
    );
    assert_eq!(
        store
            .linked_alias("kr-shop", "email", &value)
            .await
            .unwrap()
            .as_deref(),
        Some("m-1")
    );
    for read in [
        store.resolve_alias("kr-shop", "email", "nobody").await,
        store.linked_alias("kr-shop", "email", "nobody").await,
    ] {
        assert_eq!(read.unwrap(), None);
    }
    // AND several read together come back in the order asked, a missing one as nothing
    assert_eq!(
        store
            .linked_aliases(
                "kr-shop",
                &[
                    ("email", "nobody"),
                    ("email", &value),
                    ("shopify", "nobody")
                ]
            )
            .await
            .unwrap(),
        vec![
            Linked::default(),
            Linked {
                member: Some("m-1".to_string()),
                awaited: false
            },
            Linked::default()
        ]
    );
    assert!(store
        .linked_aliases("kr-shop", &[])
        .await
        .unwrap()
        .is_empty());
}

async fn an_order_link_leads_to_its_member_until_the_member_is_erased(store: Arc<dyn Store>) {
    // GIVEN an order linked to its member, who also has an email
    let (m, order) = (
        member(),
        format!("shopify#{}", uuid::Uuid::new_v4().simple()),
    );
    assert!(store
        .put_alias("kr-shop", "order", &order, &m)
        .await
        .unwrap());
    assert!(store
        .put_alias("kr-shop", "email", &format!("{m}@example.com"), &m)
        .await
        .unwrap());
    // WHEN it is linked again, to the member and to another
    assert!(store
        .put_alias("kr-shop", "order", &order, &m)
        .await
        .unwrap());
    assert!(!store
        .put_alias("kr-shop", "order", &order, "someone-else")
        .await
        .unwrap());
    // THEN it leads to the member, and the member's file lists the email, not the order
    assert_eq!(
        store
            .resolve_alias("kr-shop", "order", &order)
            .await
            .unwrap(),
        Some(m.clone())
    );
    let file = store.member_file("kr-shop", &m).await.unwrap();
    assert_eq!(
        file.aliases,
        vec![("email".to_string(), format!("{m}@example.com"))]
    );
    // WHEN the member is erased THEN the order leads nowhere
    store.erase_member("kr-shop", &m, &[]).await.unwrap();
    assert_eq!(
        store
            .resolve_alias("kr-shop", "order", &order)
            .await
            .unwrap(),
        None
    );
}

async fn identities_move_between_members_and_are_removed_only_by_their_member(
    store: Arc<dyn Store>,
) {
    let p = program();
    let (from, to, third) = (member(), member(), member());
    let value = uuid::Uuid::new_v4().simple().to_string();
    // GIVEN an identity linked to one member, and another linked to a third
    assert!(store
        .put_alias(&p.id, "phone", &value, &from)
        .await
        .unwrap());
    let other = format!("{value}-other");
    assert!(store
        .put_alias(&p.id, "phone", &other, &third)
        .await
        .unwrap());
    // WHEN the first is moved to the survivor, twice, and the other asked to move too
    assert!(store
        .move_alias(&p.id, "phone", &value, &from, &to)
        .await
        .unwrap());
    assert!(store
        .move_alias(&p.id, "phone", &value, &from, &to)
        .await
        .unwrap());
    assert!(!store
        .move_alias(&p.id, "phone", &other, &from, &to)
        .await
        .unwrap());
    // THEN the first names the survivor, in its member file too, and the other is untouched
    let resolve = |v: String| {
        let store = store.clone();
        let id = p.id.clone();
        async move { store.resolve_alias(&id, "phone", &v).await.unwrap() }
    };
    assert_eq!(resolve(value.clone()).await.as_deref(), Some(to.as_str()));
    assert_eq!(
        resolve(other.clone()).await.as_deref(),
        Some(third.as_str())
    );
    let file = store.member_file(&p.id, &to).await.unwrap();
    assert_eq!(file.aliases, vec![("phone".to_string(), value.clone())]);
    assert!(store
        .member_file(&p.id, &from)
        .await
        .unwrap()
        .aliases
        .is_empty());
    // AND an identity linked to no one moves as a new link
    let fresh = format!("{value}-fresh");
    assert!(store
        .move_alias(&p.id, "pos", &fresh, &from, &to)
        .await
        .unwrap());
    assert_eq!(
        resolve_kind(&store, &p.id, "pos", &fresh).await.as_deref(),
        Some(to.as_str())
    );
    // WHEN a member that is not linked asks to remove it THEN it stays; its member removes it
    store
        .remove_alias(&p.id, "phone", &value, &third)
        .await
        .unwrap();
    assert_eq!(resolve(value.clone()).await.as_deref(), Some(to.as_str()));
    store
        .remove_alias(&p.id, "phone", &value, &to)
        .await
        .unwrap();
    assert_eq!(resolve(value.clone()).await, None);
    assert!(store
        .member_file(&p.id, &to)
        .await
        .unwrap()
        .aliases
        .iter()
        .all(|(kind, _)| kind != "phone"));
}

async fn resolve_kind(
    store: &Arc<dyn Store>,
    program: &str,
    kind: &str,
    value: &str,
) -> Option<String> {
    store.resolve_alias(program, kind, value).await.unwrap()
}

async fn rejected_events_are_kept_with_their_reason(store: Arc<dyn Store>) {
    // GIVEN three events rejected a second apart
    let program = format!("p-{}", uuid::Uuid::new_v4().simple());
    let start = Utc::now() - chrono::Duration::seconds(10);
    let rejected = |id: &str, s: i64, reason: &str| RejectedEvent {
        program: program.clone(),
        event_id: id.into(),
        at: start + chrono::Duration::seconds(s),
        reason: reason.into(),
        payload: "{}".into(),
        replays: 0,
        replayed_at: None,
        replayed_by: None,
        names: Vec::new(),
    };
    for (id, s) in [("ev-1", 0), ("ev-2", 1), ("ev-3", 2)] {
        store
            .reject(&rejected(id, s, "data.currency is USD"))
            .await
            .unwrap();
    }
    // WHEN they are read two at a time THEN newest first, each once, over two pages
    let first = store.rejected_page(&program, 2, None).await.unwrap();
    let ids = |events: &[RejectedEvent]| {
        events
            .iter()
            .map(|e| e.event_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first.events), ["ev-3", "ev-2"]);
    let cursor = first.next_cursor.expect("a second page");
    let second = store
        .rejected_page(&program, 2, Some(&cursor))
        .await
        .unwrap();
    assert_eq!(ids(&second.events), ["ev-1"]);
    assert_eq!(
        second.events[0],
        rejected("ev-1", 0, "data.currency is USD")
    );
    // WHEN ev-1 is replayed THEN its record says so and its message waits in the outbox
    let m = member();
    let replay = message(QueueName::Earn, &m, "ev-1");
    let mark = ReplayMark {
        number: 1,
        at: Utc::now(),
        by: "lead-2".into(),
    };
    assert!(store
        .replay_rejected(&program, "ev-1", &mark, &replay)
        .await
        .unwrap());
    let replayed = store
        .rejected_event(&program, "ev-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            replayed.replays,
            replayed.replayed_at.is_some(),
            replayed.replayed_by.as_deref()
        ),
        (1, true, Some("lead-2"))
    );
    assert_eq!(waiting(&store, &m).await, vec![replay.clone()]);
    // AND a second replay that thinks it is the first is refused
    assert!(!store
        .replay_rejected(&program, "ev-1", &mark, &replay)
        .await
        .unwrap());
    // WHEN ev-1 is refused again, later THEN it is listed once, first, with its new reason and
    // its count of replays
    store
        .reject(&rejected("ev-1", 5, "still no such action"))
        .await
        .unwrap();
    let all = store.rejected_page(&program, 10, None).await.unwrap();
    assert_eq!(ids(&all.events), ["ev-1", "ev-3", "ev-2"]);
    assert_eq!(
        (
            all.events[0].reason.as_str(),
            all.events[0].replays,
            all.events[0].replayed_at
        ),
        ("still no such action", 1, None)
    );
    assert_eq!(store.rejected_event(&program, "ev-9").await.unwrap(), None);
    store.relayed(&replay).await.unwrap();
}

async fn a_parked_event_moves_to_the_outbox_once(store: Arc<dyn Store>) {
    // GIVEN two events parked for an order
    let order = format!("shopify#{}", uuid::Uuid::new_v4().simple());
    let m = member();
    store
        .park("kr-shop", &order, "r-1", "{\"n\":1}")
        .await
        .unwrap();
    store
        .park("kr-shop", &order, "r-2", "{\"n\":2}")
        .await
        .unwrap();
    // WHEN they are read twice THEN both reads give both
    let mut first = store.parked("kr-shop", &order).await.unwrap();
    first.sort();
    let both = vec![
        ("r-1".to_string(), "{\"n\":1}".to_string()),
        ("r-2".to_string(), "{\"n\":2}".to_string()),
    ];
    assert_eq!(first, both);
    // WHEN one is released, twice (a retried release)
    let released = message(QueueName::Earn, &m, "r-1");
    let mut moved = Vec::new();
    for _ in 0..2 {
        moved.push(
            store
                .release_parked("kr-shop", &order, "r-1", &released)
                .await
                .unwrap(),
        );
    }
    // THEN the first release says it moved it, the second that it did not
    assert_eq!(moved, [true, false]);
    // THEN only the other stays parked, and the released one waits in the outbox once
    assert_eq!(
        store.parked("kr-shop", &order).await.unwrap(),
        both[1..].to_vec()
    );
    assert_eq!(waiting(&store, &m).await, vec![released.clone()]);
    // WHEN it is relayed THEN a third release finds nothing to move
    store.relayed(&released).await.unwrap();
    assert!(!store
        .release_parked("kr-shop", &order, "r-1", &released)
        .await
        .unwrap());
    assert!(waiting(&store, &m).await.is_empty());
    // WHEN the other is dropped, twice THEN the first drop says it dropped it, the second not,
    // and a release of what was dropped moves nothing
    let dropped = [
        store
            .discard_parked("kr-shop", &order, "r-2")
            .await
            .unwrap(),
        store
            .discard_parked("kr-shop", &order, "r-2")
            .await
            .unwrap(),
    ];
    assert_eq!(dropped, [true, false]);
    let late = message(QueueName::Earn, &m, "r-2");
    assert!(!store
        .release_parked("kr-shop", &order, "r-2", &late)
        .await
        .unwrap());
    assert!(waiting(&store, &m).await.is_empty());
}

/// An order's link as a delivery reads it, through `linked_aliases`.
async fn order_link(store: &Arc<dyn Store>, order: &str) -> Linked {
    let mut read = store
        .linked_aliases("kr-shop", &[("order", order)])
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    read.remove(0)
}

async fn an_order_s_link_says_whether_events_were_parked_for_it(store: Arc<dyn Store>) {
    let (m, other) = (member(), member());
    let order = || format!("shopify#{}", uuid::Uuid::new_v4().simple());
    // GIVEN an order for which nothing was parked
    let plain = order();
    // WHEN it is linked, and read
    let linked = store.link_order("kr-shop", &plain, &m).await.unwrap();
    // THEN nothing awaits it
    assert_eq!(
        linked,
        OrderLinked {
            written: true,
            awaited: false
        }
    );
    assert_eq!(
        order_link(&store, &plain).await,
        Linked {
            member: Some(m.clone()),
            awaited: false
        }
    );

    // GIVEN a refund parked before its order was paid
    let early = order();
    let found = store
        .park_for_order("kr-shop", &early, "refund-1", "{}")
        .await
        .unwrap();
    // THEN parking found no member, and the order leads to none yet but is awaited
    assert_eq!(found, None);
    assert_eq!(
        store
            .resolve_alias("kr-shop", "order", &early)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        order_link(&store, &early).await,
        Linked {
            member: None,
            awaited: true
        }
    );
    // WHEN the order is linked THEN the link says so, and keeps saying so
    assert_eq!(
        store.link_order("kr-shop", &early, &m).await.unwrap(),
        OrderLinked {
            written: true,
            awaited: true
        }
    );
    assert_eq!(
        order_link(&store, &early).await,
        Linked {
            member: Some(m.clone()),
            awaited: true
        }
    );
    assert_eq!(
        store
            .resolve_alias("kr-shop", "order", &early)
            .await
            .unwrap(),
        Some(m.clone())
    );

    // GIVEN an order linked first WHEN a refund is parked for it THEN parking finds its member
    let late = order();
    assert!(store
        .put_alias("kr-shop", "order", &late, &m)
        .await
        .unwrap());
    assert_eq!(
        store
            .park_for_order("kr-shop", &late, "refund-2", "{}")
            .await
            .unwrap(),
        Some(m.clone())
    );
    assert_eq!(store.parked("kr-shop", &late).await.unwrap().len(), 1);

    // WHEN another member's delivery links the order THEN it is left as it is, and answered
    // awaited so that the caller looks
    assert_eq!(
        store.link_order("kr-shop", &plain, &other).await.unwrap(),
        OrderLinked {
            written: false,
            awaited: true
        }
    );
    assert_eq!(
        store
            .resolve_alias("kr-shop", "order", &plain)
            .await
            .unwrap(),
        Some(m)
    );
}

async fn an_expired_idempotency_record_frees_its_key(store: Arc<dyn Store>) {
    use loyalty_core::ports::IdempotencyRecord;
    // GIVEN a request's record whose replay window has passed (TTL has not removed it yet)
    let m = member();
    let record = |response: &str, expires_at| IdempotencyRecord {
        principal: m.clone(),
        key: "k-old".into(),
        request_hash: "h".into(),
        status: 201,
        response: response.into(),
        expires_at,
    };
    let old = record("{\"n\":1}", Utc::now() - chrono::Duration::minutes(1));
    let mut first = commit(&m, None, 10, "e1", None);
    first.idempotency = Some(old);
    store.commit(first).await.unwrap();
    // WHEN it is read THEN it is gone
    assert_eq!(
        store
            .idempotency_record("kr-shop", &m, "k-old")
            .await
            .unwrap(),
        None
    );
    // WHEN the key is used again THEN the new request commits and its record is the one kept
    let new = record("{\"n\":2}", Utc::now() + chrono::Duration::days(1));
    let mut second = commit(&m, Some(1), 20, "e2", None);
    second.idempotency = Some(new.clone());
    store.commit(second).await.unwrap();
    assert_eq!(
        store
            .idempotency_record("kr-shop", &m, "k-old")
            .await
            .unwrap(),
        Some(new.clone())
    );
    // AND while that one holds, the key is taken
    let mut third = commit(&m, Some(2), 30, "e3", None);
    third.idempotency = Some(new);
    assert!(matches!(
        store.commit(third).await,
        Err(CommitError::Duplicate)
    ));
}

async fn a_request_s_answer_is_read_with_the_member_under_the_first_caller_that_has_one(
    store: Arc<dyn Store>,
) {
    use loyalty_core::ports::IdempotencyRecord;
    // GIVEN answers to key k-1 stored for a member and for an app subject of another
    let (m, subject, nobody) = (member(), member(), member());
    let record = |principal: &str| IdempotencyRecord {
        principal: principal.to_string(),
        key: "k-1".into(),
        request_hash: "h".into(),
        status: 201,
        response: format!("{{\"by\":\"{principal}\"}}"),
        expires_at: Utc::now() + chrono::Duration::days(1),
    };
    for (i, principal) in [&m, &subject].into_iter().enumerate() {
        let mut c = commit(&member(), None, 10, &format!("e{i}"), None);
        c.idempotency = Some(record(principal));
        store.commit(c).await.unwrap();
    }
    // WHEN it is asked under several callers THEN the first that has one answers, in order
    let cases = [
        ([&m, &subject], Some(&m)),
        ([&subject, &m], Some(&subject)),
        ([&nobody, &subject], Some(&subject)),
        ([&nobody, &nobody], None),
    ];
    for (callers, answers) in cases {
        let principals: Vec<&str> = callers.iter().map(|c| c.as_str()).collect();
        let (_, found) = store
            .load_member_and_request("kr-shop", &m, &[], &principals, "k-1")
            .await
            .unwrap();
        assert_eq!(
            found.map(|r| r.principal).as_ref(),
            answers,
            "{principals:?}"
        );
    }
}

async fn a_caller_s_stored_answers_are_forgotten_and_no_one_else_s(store: Arc<dyn Store>) {
    use loyalty_core::ports::IdempotencyRecord;
    // GIVEN two answers stored for one app subject, and one each for a subject that begins
    // with it and a `#`, and for another
    let subject = member();
    let (longer, other) = (format!("{subject}#2"), member());
    let record = |principal: &str, key: &str| IdempotencyRecord {
        principal: principal.to_string(),
        key: key.to_string(),
        request_hash: "h".into(),
        status: 201,
        response: "{\"code\":\"C-1\"}".into(),
        expires_at: Utc::now() + chrono::Duration::days(1),
    };
    let asked = [
        (&subject, "k-1"),
        (&subject, "k-2"),
        (&longer, "k-1"),
        (&other, "k-1"),
    ];
    for (i, (principal, key)) in asked.iter().enumerate() {
        let m = member();
        let mut c = commit(&m, None, 10, &format!("e{i}"), None);
        c.idempotency = Some(record(principal, key));
        store.commit(c).await.unwrap();
    }
    // WHEN the subject's answers are forgotten (no payload named)
    let forgotten = store
        .forget_payloads("kr-shop", &[], std::slice::from_ref(&subject))
        .await
        .unwrap();
    // THEN its two go, and the others stay
    assert_eq!((forgotten.events, forgotten.requests), (0, 2));
    for (principal, key) in asked {
        let kept = store
            .idempotency_record("kr-shop", principal, key)
            .await
            .unwrap();
        assert_eq!(kept.is_some(), *principal != subject, "{principal} {key}");
    }

    // GIVEN events parked for an order, two naming one of many names each, one naming none
    let names: Vec<String> = (0..45).map(|_| member()).collect();
    let order = format!("shopify#{}", member());
    for (id, named) in [("p-1", &names[2]), ("p-2", &names[44]), ("p-3", &other)] {
        let body = serde_json::json!({ "member": named }).to_string();
        store.park("kr-shop", &order, id, &body).await.unwrap();
    }
    // AND more callers than one filter holds, the one with answers last
    let mut callers: Vec<String> = (0..24).map(|_| member()).collect();
    callers.push(other.clone());
    // WHEN all of them are forgotten
    let forgotten = store
        .forget_payloads("kr-shop", &names, &callers)
        .await
        .unwrap();
    // THEN the two events that named them go, and so does the last caller's answer
    assert_eq!((forgotten.events, forgotten.requests), (2, 1));
    let left = store.parked("kr-shop", &order).await.unwrap();
    assert_eq!(
        left.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["p-3"]
    );
    let answer = store.idempotency_record("kr-shop", &other, "k-1");
    assert_eq!(answer.await.unwrap(), None);
}

async fn rejected_events_naming_a_member_are_found_whatever_their_day(store: Arc<dyn Store>) {
    // GIVEN a program's rejected events: one of a year ago naming an email, one of today
    // naming a member id in a delivery kept as the text it came as (not JSON), and one naming
    // neither
    let program = format!("p-{}", uuid::Uuid::new_v4().simple());
    let (email, id) = (format!("{}@example.com", member()), member());
    let rejected = |event: &str, at, payload: String| RejectedEvent {
        program: program.clone(),
        event_id: event.into(),
        at,
        reason: "data.currency is USD".into(),
        payload,
        replays: 0,
        replayed_at: None,
        replayed_by: None,
        names: Vec::new(),
    };
    let year_ago = Utc::now() - chrono::Duration::days(365);
    let kept = [
        rejected(
            "old",
            year_ago,
            serde_json::json!({"email": email}).to_string(),
        ),
        rejected(
            "text",
            Utc::now(),
            format!("{{\"customer\": {{\"id\": \"{id}\"}}, cut off"),
        ),
        rejected(
            "other",
            Utc::now(),
            serde_json::json!({"member": member()}).to_string(),
        ),
    ];
    for event in &kept {
        store.reject(event).await.unwrap();
    }
    // WHEN those naming the email or the member id are asked for
    let mut found: Vec<String> = store
        .rejected_naming(&program, &[email.clone(), id.clone()])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    found.sort();
    // THEN the two that name them are found, the year-old one too, and nothing else
    assert_eq!(found, ["old", "text"]);
}

async fn a_commit_larger_than_one_transaction_is_refused_whole(store: Arc<dyn Store>) {
    // GIVEN a new member's commit of exactly 100 items (account, marker and 98 entries)
    let m = member();
    let mut fits = commit(&m, None, 0, "e0", Some("fits"));
    fits.entries = (0..98).map(|i| entry(&format!("fits#{i}"), 1, i)).collect();
    assert_eq!(fits.items(), 100);
    // WHEN one more item is added THEN it is refused as too large, and nothing is written
    let mut too_many = fits.clone();
    too_many.outbox = vec![message(QueueName::Tier, &m, "tier-check-fits")];
    match store.commit(too_many).await {
        Err(CommitError::Store(e)) => {
            assert!(e.to_string().contains("more than one transaction"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(store
        .load_member("kr-shop", &m, &[])
        .await
        .unwrap()
        .account
        .is_none());
    assert!(waiting(&store, &m).await.is_empty());
    // WHEN the 100 are committed THEN all of them are written
    store.commit(fits).await.unwrap();
    let page = store.ledger_page("kr-shop", &m, 200, None).await.unwrap();
    assert_eq!(page.entries.len(), 98);
}

async fn a_commit_s_outbox_is_written_with_it_and_waits_until_relayed(store: Arc<dyn Store>) {
    // GIVEN a commit with a tier check and a notice for the member, and a reward for another
    let (m, referrer) = (member(), member());
    let mut first = commit(&m, None, 10, "e1", Some("e1"));
    let check = message(QueueName::Tier, &m, "tier-check-e1");
    let notice = message(QueueName::Notify, &m, "points-earned-e1");
    let reward = message(QueueName::Earn, &referrer, "referral-e1");
    first.outbox = vec![check.clone(), notice.clone(), reward.clone()];
    // WHEN it is committed THEN all three are written, each under the member it is about; the
    // one about another member waits in the outbox
    store.commit(first).await.unwrap();
    let mut both = vec![notice.clone(), check.clone()];
    both.sort_by_key(|m| m.key());
    assert_eq!(written(&store, &m).await, both);
    assert_eq!(waiting(&store, &referrer).await, vec![reward.clone()]);
    // WHEN a stale commit and a duplicate event bring messages THEN none is written
    let mut stale = commit(&m, None, 20, "e2", Some("e2"));
    stale.outbox = vec![message(QueueName::Tier, &m, "tier-check-e2")];
    assert!(matches!(
        store.commit(stale).await,
        Err(CommitError::VersionConflict)
    ));
    let mut duplicate = commit(&m, Some(1), 20, "e3", Some("e1"));
    duplicate.outbox = vec![message(QueueName::Tier, &m, "tier-check-e3")];
    assert!(matches!(
        store.commit(duplicate).await,
        Err(CommitError::Duplicate)
    ));
    assert_eq!(written(&store, &m).await, both);
    assert_eq!(written(&store, &referrer).await, vec![reward.clone()]);
    // WHEN the waiting one is relayed, twice THEN it is forgotten and the others are still there
    store.relayed(&reward).await.unwrap();
    store.relayed(&reward).await.unwrap();
    assert_eq!(written(&store, &referrer).await, vec![]);
    assert_eq!(written(&store, &m).await, both);
    // WHEN a change without entries brings a message THEN it waits, on every store
    let mut quiet = commit(&m, Some(1), 10, "e4", Some("e4"));
    quiet.entries.clear();
    let later = message(QueueName::Tier, &m, "tier-check-e4");
    quiet.outbox = vec![later.clone()];
    store.commit(quiet).await.unwrap();
    assert!(waiting(&store, &m).await.contains(&later));
    store.relayed(&later).await.unwrap();
    assert!(!waiting(&store, &m).await.contains(&later));
}

async fn the_due_index_lists_members_by_job_and_date_and_follows_each_commit(
    store: Arc<dyn Store>,
) {
    // GIVEN a member due for review on one date and for release on another
    let program = format!("due-{}", uuid::Uuid::new_v4().simple());
    let m = member();
    let (d1, d2) = (
        chrono::NaiveDate::from_ymd_opt(2027, 3, 10).unwrap(),
        chrono::NaiveDate::from_ymd_opt(2027, 4, 1).unwrap(),
    );
    let mut first = commit(&m, None, 10, "e1", None);
    first.program = program.clone();
    first.due = DueDates {
        review: Some(d1),
        release: Some(d2),
        ..DueDates::default()
    };
    store.commit(first).await.unwrap();
    let due = |job, date| {
        let store = Arc::clone(&store);
        let program = program.clone();
        async move {
            let mut found = Vec::new();
            for shard in 0..store.due_shards() {
                let page = store
                    .due_members(&program, job, date, shard, None, 10)
                    .await
                    .unwrap();
                found.extend(page.members);
            }
            found
        }
    };
    // THEN each job's index has the member under its own date only
    assert_eq!(due(DueJob::Review, d1).await, vec![m.clone()]);
    assert_eq!(due(DueJob::Release, d2).await, vec![m.clone()]);
    assert!(due(DueJob::Review, d2).await.is_empty());
    assert!(due(DueJob::Expire, d1).await.is_empty());
    // WHEN the next commit moves the review and clears the release
    let mut second = commit(&m, Some(1), 20, "e2", None);
    second.program = program.clone();
    second.due = DueDates {
        review: Some(d2),
        ..DueDates::default()
    };
    store.commit(second).await.unwrap();
    // THEN the index follows
    assert!(due(DueJob::Review, d1).await.is_empty());
    assert_eq!(due(DueJob::Review, d2).await, vec![m.clone()]);
    assert!(due(DueJob::Release, d2).await.is_empty());
    // WHEN the next commit keeps the review and adds an expiry
    let mut third = commit(&m, Some(2), 30, "e3", None);
    third.program = program.clone();
    third.due = DueDates {
        review: Some(d2),
        expire: Some(d1),
        ..DueDates::default()
    };
    store.commit(third).await.unwrap();
    // THEN both are listed, the kept one as before
    assert_eq!(due(DueJob::Review, d2).await, vec![m.clone()]);
    assert_eq!(due(DueJob::Expire, d1).await, vec![m.clone()]);
    // AND the member is in the program's full pass, and job progress is kept per job
    let (mut members, mut cursor) = (Vec::new(), None);
    loop {
        // A page may be empty and name where the pass goes on (a scan of a large table).
        let page = store
            .members_page(&program, cursor.as_deref(), 10)
            .await
            .unwrap();
        members.extend(page.members);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(members, vec![m.clone()]);
    assert_eq!(
        store.job_progress(&program, "tier-reviews").await.unwrap(),
        None
    );
    store
        .save_job_progress(&program, "tier-reviews", Some("2027-03-10"))
        .await
        .unwrap();
    assert_eq!(
        store.job_progress(&program, "tier-reviews").await.unwrap(),
        Some("2027-03-10".to_string())
    );
    assert_eq!(store.job_progress(&program, "notices").await.unwrap(), None);
}

async fn every_program_is_listed(store: Arc<dyn Store>) {
    let id = format!("listed-{}", uuid::Uuid::new_v4().simple());
    store
        .put_program(&id, "{}", None, Utc::now())
        .await
        .unwrap();
    assert!(store.program_ids().await.unwrap().contains(&id));
}

async fn coupons_consume_once_and_idempotency_records_guard_their_commit(store: Arc<dyn Store>) {
    use loyalty_core::ports::{Consumption, Coupon, IdempotencyRecord};
    // GIVEN a commit that issues a coupon with the idempotency record of its request
    let m = member();
    let code = format!("C-{}", uuid::Uuid::new_v4().simple());
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let record = IdempotencyRecord {
        principal: m.clone(),
        key: "k-1".into(),
        request_hash: "h".into(),
        status: 201,
        response: "{}".into(),
        expires_at: Utc::now() + chrono::Duration::days(7),
    };
    let mut first = commit(&m, None, 10, "e1", None);
    first.coupon = Some(Coupon {
        code: code.clone(),
        member: m.clone(),
        redemption: "r-1".into(),
        reward: "coupon-5000".into(),
        expires_at: now + chrono::Duration::days(30),
        consumed: None,
        revoked: false,
    });
    first.idempotency = Some(record.clone());
    store.commit(first).await.unwrap();
    assert_eq!(
        store
            .idempotency_record("kr-shop", &m, "k-1")
            .await
            .unwrap(),
        Some(record.clone())
    );
    // WHEN a second commit carries the same idempotency record THEN it is a duplicate
    let mut second = commit(&m, Some(1), 20, "e2", None);
    second.idempotency = Some(record);
    assert!(matches!(
        store.commit(second).await,
        Err(CommitError::Duplicate)
    ));
    // WHEN the coupon is consumed for order A, again for A, then for B
    let consume = |order: &'static str, at| {
        let store = Arc::clone(&store);
        let code = code.clone();
        async move {
            store
                .consume_coupon("kr-shop", &code, order, at)
                .await
                .unwrap()
        }
    };
    assert!(matches!(consume("A", now).await, Consumption::Consumed(_)));
    assert!(matches!(consume("A", now).await, Consumption::Consumed(_)));
    assert!(matches!(
        consume("B", now).await,
        Consumption::AlreadyConsumed(_)
    ));
    // THEN revoking it afterwards is refused
    let mut revoke = commit(&m, Some(1), 20, "e3", None);
    revoke.revoke_coupon = Some(code.clone());
    assert!(matches!(
        store.commit(revoke).await,
        Err(CommitError::CouponConsumed)
    ));
    // AND an unknown code is not found, and an expired one is not consumed
    assert_eq!(
        store
            .consume_coupon("kr-shop", "NOPE", "A", now)
            .await
            .unwrap(),
        Consumption::NotFound
    );
    // AND a coupon is good through the whole of its last second, and expired after it
    let last = loyalty_core::ports::coupon_second(now);
    for (version, label, at, usable) in [
        (1, "E", last + chrono::Duration::milliseconds(999), true),
        (2, "L", last + chrono::Duration::seconds(1), false),
    ] {
        let code = format!("{label}-{}", uuid::Uuid::new_v4().simple());
        let mut third = commit(&m, Some(version), 30, &format!("e4{label}"), None);
        third.coupon = Some(Coupon {
            code: code.clone(),
            member: m.clone(),
            redemption: format!("r-{label}"),
            reward: "coupon-5000".into(),
            expires_at: last,
            consumed: None,
            revoked: false,
        });
        store.commit(third).await.unwrap();
        let consumed = store
            .consume_coupon("kr-shop", &code, "A", at)
            .await
            .unwrap();
        if usable {
            assert!(
                matches!(consumed, Consumption::Consumed(_)),
                "{label}: {consumed:?}"
            );
        } else {
            assert!(
                matches!(consumed, Consumption::Expired(_)),
                "{label}: {consumed:?}"
            );
        }
    }
}

async fn campaigns_are_versioned_and_conditional(store: Arc<dyn Store>) {
    let program = format!("camp-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(store.campaign(&program, "weekend").await.unwrap(), None);
    // GIVEN a new campaign saved once
    assert_eq!(
        store
            .put_campaign(&program, "weekend", "{\"v\":1}", None)
            .await
            .unwrap(),
        Some(1)
    );
    // WHEN it is saved as new again, or from a stale version THEN nothing is written
    assert_eq!(
        store
            .put_campaign(&program, "weekend", "{\"v\":2}", None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .put_campaign(&program, "weekend", "{\"v\":2}", Some(7))
            .await
            .unwrap(),
        None
    );
    // WHEN it is saved from the current version THEN it becomes version 2
    assert_eq!(
        store
            .put_campaign(&program, "weekend", "{\"v\":2}", Some(1))
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        store.campaign(&program, "weekend").await.unwrap(),
        Some((2, "{\"v\":2}".to_string()))
    );
}

async fn a_program_s_head_is_its_program_campaigns_and_job_progress_as_read_apart(
    store: Arc<dyn Store>,
) {
    use loyalty_core::ports::HeadParts;
    // GIVEN a program at version 2 (its saved copies beside it), two campaigns, and the saved
    // progress of two jobs
    let program = format!("head-{}", uuid::Uuid::new_v4().simple());
    let at = Utc::now();
    store
        .put_program(&program, "{\"v\":1}", None, at)
        .await
        .unwrap();
    store
        .put_program(&program, "{\"v\":2}", Some(1), at)
        .await
        .unwrap();
    for (id, body) in [("weekend", "{\"w\":1}"), ("birthday", "{\"b\":1}")] {
        store.put_campaign(&program, id, body, None).await.unwrap();
    }
    store
        .save_job_progress(&program, "release-pending", Some("2026-12-03"))
        .await
        .unwrap();
    store
        .save_job_progress(&program, "campaign-tick", Some("cursor-7"))
        .await
        .unwrap();
    let apart = (
        store.get_program(&program).await.unwrap(),
        store.campaigns(&program).await.unwrap(),
    );
    assert_eq!(apart.0.as_ref().map(|p| p.version), Some(2));
    // WHEN the head is read with each combination of parts
    let all = HeadParts {
        campaigns: true,
        job: Some("campaign-tick"),
    };
    let head = store.program_head(&program, all).await.unwrap();
    // THEN each part is what its own read returns, and only the job named is read
    assert_eq!(head.program, apart.0);
    let mut campaigns = head.campaigns.clone();
    campaigns.sort();
    let mut expected = apart.1.clone();
    expected.sort();
    assert_eq!(campaigns, expected);
    assert_eq!(head.progress.as_deref(), Some("cursor-7"));
    let job_only = HeadParts {
        campaigns: false,
        job: Some("release-pending"),
    };
    let head = store.program_head(&program, job_only).await.unwrap();
    assert_eq!(head.program, apart.0);
    assert!(head.campaigns.is_empty());
    assert_eq!(head.progress.as_deref(), Some("2026-12-03"));
    let nothing_else = store
        .program_head(&program, HeadParts::default())
        .await
        .unwrap();
    assert_eq!(
        (
            nothing_else.program,
            nothing_else.campaigns.len(),
            nothing_else.progress
        ),
        (apart.0, 0, None)
    );
    let unsaved_job = HeadParts {
        campaigns: false,
        job: Some("expire-points"),
    };
    assert_eq!(
        store
            .program_head(&program, unsaved_job)
            .await
            .unwrap()
            .progress,
        None
    );
    // WHEN the program does not exist, though a campaign and a job's progress were saved under
    // its id THEN nothing is returned
    let missing = format!("head-{}", uuid::Uuid::new_v4().simple());
    store
        .put_campaign(&missing, "orphan", "{}", None)
        .await
        .unwrap();
    store
        .save_job_progress(&missing, "campaign-tick", Some("x"))
        .await
        .unwrap();
    assert_eq!(
        store.program_head(&missing, all).await.unwrap(),
        loyalty_core::ports::ProgramHead::default()
    );
}

async fn assignments_are_sticky_until_the_seed_or_bucket_version_changes(store: Arc<dyn Store>) {
    use loyalty_core::ports::Assignment;
    let m = member();
    // Counters are per campaign, not per member: a fresh campaign id per run of the suite.
    let weekend = format!("weekend-{}", uuid::Uuid::new_v4().simple());
    let at = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let assignment = |variant: &str, seed: &str, bucket_version| {
        Assignment::new(&weekend, variant, seed, bucket_version, at)
    };
    store.commit(commit(&m, None, 0, "e1", None)).await.unwrap();
    // GIVEN a first assignment to x2
    let first = store
        .record_assignment("kr-shop", &m, &assignment("x2", "s1", 0), true, None)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!((first.0.variant.as_str(), first.1), ("x2", true));
    // WHEN another variant is recorded with the same seed THEN the first stays
    let again = store
        .record_assignment("kr-shop", &m, &assignment("control", "s1", 0), true, None)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!((again.0.variant.as_str(), again.1), ("x2", false));
    // AND it comes with the account in one read
    let state = store
        .load_member_with("kr-shop", &m, &[], &[weekend.clone(), "other".into()])
        .await
        .unwrap();
    assert!(state.account.is_some());
    assert_eq!(state.assignments.keys().collect::<Vec<_>>(), vec![&weekend]);
    // WHEN the bucket version rises, or the seed changes THEN the new one replaces it
    let raised = store
        .record_assignment("kr-shop", &m, &assignment("control", "s1", 1), true, None)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(raised.0.variant, "control");
    let reseeded = store
        .record_assignment("kr-shop", &m, &assignment("x2", "s2", 1), true, None)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(reseeded.0.variant, "x2");
    // AND each new record counted one member, in its variant
    let counts = store.campaign_counts("kr-shop", &weekend).await.unwrap();
    let assigned: Vec<(&str, i64)> = counts
        .iter()
        .map(|c| (c.variant.as_str(), c.assigned))
        .collect();
    assert_eq!(assigned, vec![("control", 1), ("x2", 2)]);
}

async fn an_assignment_never_outlives_the_member_s_erasure(store: Arc<dyn Store>) {
    use loyalty_core::domain::erasure::Erasure;
    use loyalty_core::ports::Assignment;
    let autumn = format!("autumn-{}", uuid::Uuid::new_v4().simple());
    let at = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let assignment = Assignment::new(&autumn, "x2", "s1", 0, at);
    let assigned = |store: Arc<dyn Store>, m: String| {
        let campaigns = vec![autumn.clone()];
        async move {
            let state = store.load_member_with("kr-shop", &m, &[], &campaigns);
            state.await.unwrap().assignments.len()
        }
    };
    // GIVEN a member whose erasure has begun (its account marked), one read before its
    // account was erased, and one with no account yet
    let (marked, gone, new) = (member(), member(), member());
    let mut mark = commit(&marked, None, 0, "e1", None);
    mark.account.erased = Some(Erasure {
        pseudonym: "erased-x".into(),
        at,
        reason: "request".into(),
        by: "ops".into(),
    });
    store.commit(mark).await.unwrap();
    store
        .commit(commit(&gone, None, 0, "e1", None))
        .await
        .unwrap();
    store.erase_member("kr-shop", &gone, &[]).await.unwrap();
    // WHEN an assignment is recorded for each, with its grant
    let mut recorded = Vec::new();
    for (m, seen) in [(&marked, true), (&gone, true), (&new, false)] {
        let grant = message(QueueName::Earn, m, &format!("grant-{autumn}"));
        let written = store.record_assignment("kr-shop", m, &assignment, seen, Some(&grant));
        recorded.push(written.await.unwrap());
    }
    let [for_marked, for_gone, for_new] = <[_; 3]>::try_from(recorded).unwrap();
    // THEN only the member with no account yet has one, and only it was counted and has its
    // grant waiting to be relayed
    assert_eq!(
        (
            for_marked,
            for_gone,
            for_new.map(|(a, fresh)| (a.variant, fresh))
        ),
        (None, None, Some(("x2".to_string(), true)))
    );
    assert_eq!(assigned(store.clone(), marked.clone()).await, 0);
    assert_eq!(assigned(store.clone(), gone.clone()).await, 0);
    assert_eq!(assigned(store.clone(), new.clone()).await, 1);
    let counts = store.campaign_counts("kr-shop", &autumn).await.unwrap();
    assert_eq!(counts.iter().map(|c| c.assigned).sum::<i64>(), 1);
    let grants = |m| waiting(&store, m);
    assert_eq!(
        (grants(&marked).await.len(), grants(&gone).await.len()),
        (0, 0)
    );
    assert_eq!(grants(&new).await[0].envelope.id, format!("grant-{autumn}"));
}

async fn counters_sum_their_shards_and_assignment_writes_are_conditional(store: Arc<dyn Store>) {
    use loyalty_core::ports::{Assignment, AssignmentWrite, CounterAdd};
    use loyalty_core::report::VariantCounts;
    let m = member();
    let spring = format!("spring-{}", uuid::Uuid::new_v4().simple());
    let at = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    store.commit(commit(&m, None, 0, "e1", None)).await.unwrap();
    let fresh = Assignment::new(&spring, "x2", "s1", 0, at);
    let mut bought = fresh.clone();
    bought.purchases = 1;
    bought.revenue = 50_000;
    let add = |shard, revenue: i64| CounterAdd {
        campaign: spring.clone(),
        shard,
        counts: VariantCounts {
            variant: "x2".into(),
            assigned: 1,
            converters: 1,
            purchases: 1,
            revenue,
            // larger than 64 bits can hold, summed exactly
            revenue_sq: i128::from(i64::MAX) * 3,
            points: 7,
        },
    };
    // GIVEN a commit that writes a new assignment and adds to two shards
    let mut first = commit(&m, Some(1), 0, "e2", None);
    first.assignments = vec![AssignmentWrite {
        assignment: bought.clone(),
        expected: None,
        read_revision: None,
    }];
    first.counters = vec![add(0, 50_000), add(5, 20_000)];
    store.commit(first).await.unwrap();
    // THEN the counters are summed over the shards, wide sums included
    let counts = store.campaign_counts("kr-shop", &spring).await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (
            counts[0].assigned,
            counts[0].purchases,
            counts[0].revenue,
            counts[0].points
        ),
        (2, 2, 70_000, 14)
    );
    assert_eq!(counts[0].revenue_sq, i128::from(i64::MAX) * 6);
    // WHEN a commit expects no assignment where there is one now THEN it is a conflict, and
    // nothing of it is written (the counters stay)
    let mut stale = commit(&m, Some(2), 0, "e3", None);
    stale.assignments = vec![AssignmentWrite {
        assignment: bought.clone(),
        expected: None,
        read_revision: None,
    }];
    stale.counters = vec![add(1, 1)];
    assert!(matches!(
        store.commit(stale).await,
        Err(CommitError::VersionConflict)
    ));
    let counts = store.campaign_counts("kr-shop", &spring).await.unwrap();
    assert_eq!(counts[0].purchases, 2);
    // WHEN it expects the stored one THEN it is written
    let mut again = bought.clone();
    again.purchases = 2;
    let mut next = commit(&m, Some(2), 0, "e4", None);
    next.assignments = vec![AssignmentWrite {
        assignment: again,
        expected: Some(bought),
        read_revision: None,
    }];
    store.commit(next).await.unwrap();
    let state = store
        .load_member_with("kr-shop", &m, &[], std::slice::from_ref(&spring))
        .await
        .unwrap();
    assert_eq!(state.assignments[&spring].purchases, 2);
}

async fn commits_together_write_every_member_and_count_the_books_once_each(store: Arc<dyn Store>) {
    // GIVEN a program of its own with two members, each given points
    let mut p = program();
    p.id = format!("together-{}", uuid::Uuid::new_v4().simple());
    let at = Utc.with_ymd_and_hms(2026, 3, 10, 3, 0, 0).unwrap();
    let ctx = |id: &str| EventContext::new(id, at, at);
    let mut stored = Vec::new();
    for (member, points) in [("m-1", 500), ("m-2", 300)] {
        let given = Account::open(&p, member, at)
            .adjust(&p, points, "welcome", &ctx(&format!("gift-{member}")))
            .unwrap();
        store
            .commit(Commit::new(&p, member, None, given, at))
            .await
            .unwrap();
        let account = store.load_member(&p.id, member, &[]).await.unwrap().account;
        stored.push(account.unwrap());
    }
    let give = |account: &Account, points: i64, id: &str| {
        let change = account.adjust(&p, points, "bonus", &ctx(id)).unwrap();
        Commit::new(&p, &account.member, Some(account), change, at)
    };
    // WHEN both are given more in commits made together
    store
        .commit_together(vec![
            give(&stored[0], 40, "bonus-1"),
            give(&stored[1], 60, "bonus-2"),
        ])
        .await
        .unwrap();
    // THEN each account moved on, and the day's books count all four gifts
    let balance = |member: &'static str| {
        let (store, program) = (store.clone(), p.id.clone());
        async move {
            let account = store.load_member(&program, member, &[]).await.unwrap();
            account.account.map(|a| (a.version, a.balance))
        }
    };
    assert_eq!(balance("m-1").await, Some((2, 540)));
    assert_eq!(balance("m-2").await, Some((2, 360)));
    let rows = store
        .book_rows(&p.id, chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap())
        .await
        .unwrap();
    let written = loyalty_core::liability::written(&rows);
    assert_eq!((written.balance, written.members), (900, 2), "{rows:?}");
    // WHEN a group holds a commit made from a version no longer current
    let fresh = store.load_member(&p.id, "m-2", &[]).await.unwrap().account;
    let result = store
        .commit_together(vec![
            give(&stored[0], 1, "stale"),
            give(&fresh.unwrap(), 2, "fresh"),
        ])
        .await;
    // THEN it is refused as a conflict and the stale member is unchanged
    assert!(
        matches!(result, Err(CommitError::VersionConflict)),
        "{result:?}"
    );
    assert_eq!(balance("m-1").await, Some((2, 540)));
}

async fn the_books_the_walk_and_member_files_agree_with_what_was_committed(store: Arc<dyn Store>) {
    use loyalty_core::ports::Walked;
    // GIVEN a program of its own with two members: m-1 given 500 then spending 200, m-2
    // given 300 with an order record; an identity of m-1 and an event parked for an order
    let mut p = program();
    p.id = format!("walk-{}", uuid::Uuid::new_v4().simple());
    let at = Utc.with_ymd_and_hms(2026, 3, 10, 3, 0, 0).unwrap();
    let ctx = |id: &str| EventContext::new(id, at, at);
    let one = Account::open(&p, "m-1", at);
    let given = one.adjust(&p, 500, "welcome", &ctx("adjust-1")).unwrap();
    let after_gift = given.account.clone();
    store
        .commit(Commit::new(&p, "m-1", None, given, at))
        .await
        .unwrap();
    let stored_one = store
        .load_member(&p.id, "m-1", &[])
        .await
        .unwrap()
        .account
        .unwrap();
    let (spent, _) = stored_one
        .redeem(&p, 200, "a reward", &ctx("redeem-1"))
        .unwrap();
    store
        .commit(Commit::new(&p, "m-1", Some(&stored_one), spent, at))
        .await
        .unwrap();
    let two = Account::open(&p, "m-2", at);
    let mut commit = Commit::new(
        &p,
        "m-2",
        None,
        two.adjust(&p, 300, "welcome", &ctx("adjust-2")).unwrap(),
        at,
    );
    commit.orders.insert(
        "shopify#o-1".into(),
        OrderRecord {
            order_id: "o-1".into(),
            ..OrderRecord::default()
        },
    );
    store.commit(commit).await.unwrap();
    assert!(store
        .put_alias(&p.id, "email", "one@example.com", "m-1")
        .await
        .unwrap());
    store
        .park(&p.id, "shopify#o-9", "ev-9", "{}")
        .await
        .unwrap();
    assert_eq!(after_gift.balance, 500);

    // WHEN the books are summed and the program's members walked, in every part
    let rows = store
        .book_rows(&p.id, chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap())
        .await
        .unwrap();
    let books = loyalty_core::liability::written(&rows);
    let found = std::sync::Mutex::new(Vec::new());
    for part in 0..store.parts() {
        store
            .walk(part, Some(&p.id), &|w| found.lock().unwrap().push(w))
            .await
            .unwrap();
    }
    let found = found.into_inner().unwrap();

    // THEN the books hold the sums of what was committed
    assert_eq!((books.members, books.balance, books.lots), (2, 600, 600));
    assert_eq!((books.debt, books.pending, books.held), (0, 0, 0));
    // AND the walk finds each member whole and the parked event, nothing else
    let mut members: Vec<_> = found
        .iter()
        .filter_map(|w| match w {
            Walked::Member(m) => Some(m.as_ref().clone()),
            Walked::Parked(_) => None,
            Walked::Unreadable { member, .. } => panic!("{member} unreadable"),
        })
        .collect();
    members.sort_by(|a, b| a.member.cmp(&b.member));
    assert_eq!(members.len(), 2, "{found:?}");
    assert_eq!(members[0].member, "m-1");
    assert_eq!(members[0].entries.len(), 2);
    assert_eq!(members[0].account.as_ref().unwrap().balance, 300);
    assert_eq!(members[1].orders.len(), 1);
    assert!(found.iter().any(
        |w| matches!(w, Walked::Parked(e) if e.event_id == "ev-9" && e.order_key == "shopify#o-9")
    ));
    // AND a member read again is what the walk found, and an export finds the identity
    assert_eq!(
        store.member_records(&p.id, "m-1").await.unwrap(),
        members[0]
    );
    let file = store.member_file(&p.id, "m-1").await.unwrap();
    assert_eq!(
        file.aliases,
        vec![("email".to_string(), "one@example.com".to_string())]
    );
    assert_eq!(
        store.member_file(&p.id, "m-2").await.unwrap().orders.len(),
        1
    );
}

async fn a_quota_refuses_the_commit_that_would_pass_its_limit(store: Arc<dyn Store>) {
    // GIVEN an operator's quota of 8,000 points on 5 December, 5,000 of it used by one commit
    let operator = format!("a|ops-{}", uuid::Uuid::new_v4().simple());
    let quota = |day: u32, add: i64| Quota {
        name: operator.clone(),
        day: chrono::NaiveDate::from_ymd_opt(2026, 12, day).unwrap(),
        add,
        limit: 8_000,
    };
    let (a, b, c) = (member(), member(), member());
    let mut first = commit(&a, None, 5_000, "q1", None);
    first.quota = Some(quota(5, 5_000));
    store.commit(first).await.unwrap();
    // WHEN another commit would add 5,000 more that day
    let mut second = commit(&b, None, 5_000, "q2", None);
    second.quota = Some(quota(5, 5_000));
    let refused = store.commit(second).await;
    // THEN it is refused whole: its member has no account
    assert!(
        matches!(refused, Err(CommitError::OverQuota)),
        "{refused:?}"
    );
    assert!(store
        .load_member("kr-shop", &b, &[])
        .await
        .unwrap()
        .account
        .is_none());
    // AND 3,000 more that day fits, exactly to the limit, and the next day starts afresh
    let mut third = commit(&b, None, 3_000, "q3", None);
    third.quota = Some(quota(5, 3_000));
    store.commit(third).await.unwrap();
    let mut fourth = commit(&c, None, 1, "q4", None);
    fourth.quota = Some(quota(5, 1));
    assert!(matches!(
        store.commit(fourth).await,
        Err(CommitError::OverQuota)
    ));
    let mut next_day = commit(&c, None, 8_000, "q5", None);
    next_day.quota = Some(quota(6, 8_000));
    store.commit(next_day).await.unwrap();
}

async fn the_members_a_referrer_referred_are_found_by_its_id(store: Arc<dyn Store>) {
    // GIVEN two members referred by one referrer, one by another, one by no one
    let (referrer, other) = (member(), member());
    let mut referred = Vec::new();
    for by in [Some(&referrer), Some(&referrer), Some(&other), None] {
        let m = member();
        let mut c = commit(&m, None, 10, "r1", None);
        c.account.referred_by = by.cloned();
        store.commit(c).await.unwrap();
        referred.push(m);
    }
    // WHEN the referrer's referees are asked for
    let mut found = store.referees("kr-shop", &referrer).await.unwrap();
    found.sort();
    // THEN they are the two it referred
    let mut expected = referred[..2].to_vec();
    expected.sort();
    assert_eq!(found, expected);
    // AND once one names another referrer, it is no longer found
    let mut moved = commit(&referred[0], Some(1), 20, "r2", None);
    moved.account.referred_by = Some("#erased".into());
    store.commit(moved).await.unwrap();
    assert_eq!(
        store.referees("kr-shop", &referrer).await.unwrap(),
        vec![referred[1].clone()]
    );
}

async fn an_erasure_is_remembered_by_name_with_its_latest_time(store: Arc<dyn Store>) {
    // GIVEN two names erased at 10:00, one of them erased again at 11:00, and written again
    // with the earlier time (a resumed run)
    let at = |h| Utc.with_ymd_and_hms(2026, 12, 6, h, 0, 0).unwrap();
    let (a, b, never) = (member(), member(), member());
    store
        .note_erased("kr-shop", &[a.clone(), b.clone()], at(10))
        .await
        .unwrap();
    store
        .note_erased("kr-shop", std::slice::from_ref(&b), at(11))
        .await
        .unwrap();
    store
        .note_erased("kr-shop", std::slice::from_ref(&b), at(10))
        .await
        .unwrap();
    // WHEN the erasures are read by name
    let read = |names: Vec<String>| {
        let store = store.clone();
        async move { store.erased_at("kr-shop", &names).await.unwrap() }
    };
    // THEN each answers its latest time, several the latest of them, and others none
    assert_eq!(read(vec![a.clone()]).await, Some(at(10)));
    assert_eq!(read(vec![b.clone()]).await, Some(at(11)));
    assert_eq!(
        read(vec![never.clone(), a.clone(), b.clone()]).await,
        Some(at(11))
    );
    assert_eq!(read(vec![never.clone()]).await, None);
    assert_eq!(read(Vec::new()).await, None);
    // AND another program knows nothing of them
    assert_eq!(store.erased_at("us-shop", &[a]).await.unwrap(), None);
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            conformance!(@tests $make;
                a_new_account_is_created_once_and_versions_advance,
                a_stale_version_writes_nothing,
                a_repeated_event_is_a_duplicate_without_effect,
                concurrent_writers_serialise_through_the_version,
                the_ledger_pages_newest_first_without_gaps_or_repeats,
                order_records_are_read_with_the_account,
                programs_are_versioned_and_conditional,
                aliases_link_one_identity_to_one_member,
                identities_linked_together_are_answered_each_as_when_linked_apart,
                an_order_link_leads_to_its_member_until_the_member_is_erased,
                identities_move_between_members_and_are_removed_only_by_their_member,
                rejected_events_are_kept_with_their_reason,
                a_parked_event_moves_to_the_outbox_once,
                an_order_s_link_says_whether_events_were_parked_for_it,
                an_order_s_events_are_duplicates_whether_or_not_their_marker_rides_on_the_order,
                commits_together_write_every_member_and_count_the_books_once_each,
                a_commit_s_outbox_is_written_with_it_and_waits_until_relayed,
                a_commit_larger_than_one_transaction_is_refused_whole,
                an_expired_idempotency_record_frees_its_key,
                a_request_s_answer_is_read_with_the_member_under_the_first_caller_that_has_one,
                a_caller_s_stored_answers_are_forgotten_and_no_one_else_s,
                rejected_events_naming_a_member_are_found_whatever_their_day,
                the_due_index_lists_members_by_job_and_date_and_follows_each_commit,
                every_program_is_listed,
                coupons_consume_once_and_idempotency_records_guard_their_commit,
                campaigns_are_versioned_and_conditional,
                a_program_s_head_is_its_program_campaigns_and_job_progress_as_read_apart,
                assignments_are_sticky_until_the_seed_or_bucket_version_changes,
                an_assignment_never_outlives_the_member_s_erasure,
                counters_sum_their_shards_and_assignment_writes_are_conditional,
                the_books_the_walk_and_member_files_agree_with_what_was_committed,
                a_quota_refuses_the_commit_that_would_pass_its_limit,
                the_members_a_referrer_referred_are_found_by_its_id,
                an_erasure_is_remembered_by_name_with_its_latest_time);
        }
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: Arc<dyn Store> = $make.await;
                super::$name(store).await;
            }
        )*
    };
}

async fn sqlite() -> Arc<dyn Store> {
    Arc::new(loyalty_core::store::sqlite::SqliteStore::memory().expect("in-memory SQLite"))
}

conformance!(sqlite_store, sqlite());

#[tokio::test]
async fn serve_s_housekeeping_deletes_the_audits_kept_past_their_time() {
    use loyalty_core::ports::{AuditRun, AuditStore};
    // GIVEN an embedded store with an audit finished 31 days ago and one finished today
    let store = loyalty_core::store::sqlite::SqliteStore::memory().unwrap();
    let run = |id: &str, days_ago: i64| AuditRun {
        id: id.into(),
        status: "done".into(),
        requested_by: "ops".into(),
        requested_at: Utc::now() - chrono::Duration::days(days_ago),
        finished_at: Some(Utc::now() - chrono::Duration::days(days_ago)),
        report: None,
    };
    store
        .save_audit_run("kr-shop", &run("old", 31))
        .await
        .unwrap();
    store
        .save_audit_run("kr-shop", &run("new", 0))
        .await
        .unwrap();
    // WHEN the housekeeping runs THEN the old one is deleted and the other kept
    assert_eq!(store.forget_old_audits(Utc::now()).await.unwrap(), 1);
    assert_eq!(store.forget_old_audits(Utc::now()).await.unwrap(), 0);
    assert!(store.audit_run("kr-shop", "new").await.unwrap().is_some());
}

#[tokio::test]
async fn a_sqlite_file_from_before_accounts_recorded_due_dates_is_indexed_whole_again() {
    use loyalty_core::ports::{MemberStore as _, ScheduleStore as _};
    use loyalty_core::store::sqlite::SqliteStore;
    // GIVEN a database file whose account is due for review and release, written by a version
    // whose accounts had no due column
    let path = std::env::temp_dir().join(format!("due-{}.sqlite", uuid::Uuid::new_v4().simple()));
    let (d1, d2) = (
        chrono::NaiveDate::from_ymd_opt(2027, 3, 10).unwrap(),
        chrono::NaiveDate::from_ymd_opt(2027, 4, 1).unwrap(),
    );
    let m = member();
    let mut first = commit(&m, None, 10, "e1", None);
    first.due = DueDates {
        review: Some(d1),
        release: Some(d2),
        ..DueDates::default()
    };
    SqliteStore::open(&path)
        .unwrap()
        .commit(first)
        .await
        .unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("ALTER TABLE accounts DROP COLUMN due")
        .unwrap();
    // WHEN it is opened and the next commit keeps the review and clears the release
    let store = SqliteStore::open(&path).unwrap();
    let mut second = commit(&m, Some(1), 20, "e2", None);
    second.due = DueDates {
        review: Some(d1),
        ..DueDates::default()
    };
    store.commit(second).await.unwrap();
    // THEN the index holds the review only: no row from before was taken as recorded
    let listed = |job, date| {
        let store = store.clone();
        async move {
            let mut found = Vec::new();
            for shard in 0..store.due_shards() {
                let page = store
                    .due_members(&program().id, job, date, shard, None, 10)
                    .await
                    .unwrap();
                found.extend(page.members);
            }
            found
        }
    };
    assert_eq!(listed(DueJob::Review, d1).await, vec![m.clone()]);
    assert!(listed(DueJob::Release, d2).await.is_empty());
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[cfg(feature = "aws")]
async fn dynamo() -> Arc<dyn Store> {
    let config = common::moto_dynamodb("conformance").build();
    let store = loyalty_core::store::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        "loyalty-conformance",
    );
    store.create_table().await.expect("moto creates the table");
    Arc::new(store)
}

#[cfg(feature = "aws")]
conformance!(dynamodb_store, dynamo());

#[tokio::test]
async fn a_sqlite_file_keeps_the_quotas_of_the_last_two_days_only() {
    use loyalty_core::ports::MemberStore as _;
    use loyalty_core::store::sqlite::SqliteStore;
    // GIVEN an operator's quota counted on 1 December in a database file
    let path = std::env::temp_dir().join(format!("quota-{}.sqlite", uuid::Uuid::new_v4().simple()));
    let store = SqliteStore::open(&path).unwrap();
    let quota = |day: u32| Quota {
        name: "a|ops".into(),
        day: chrono::NaiveDate::from_ymd_opt(2026, 12, day).unwrap(),
        add: 10,
        limit: 1_000,
    };
    let mut first = commit(&member(), None, 10, "q1", None);
    first.quota = Some(quota(1));
    store.commit(first).await.unwrap();
    // WHEN the operator adjusts again on 5 December
    let mut later = commit(&member(), None, 10, "q2", None);
    later.quota = Some(quota(5));
    store.commit(later).await.unwrap();
    // THEN only the day of 5 December is kept
    let days: Vec<String> = rusqlite::Connection::open(&path)
        .unwrap()
        .prepare("SELECT day FROM quotas")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(days, vec!["2026-12-05".to_string()]);
    let _ = std::fs::remove_file(&path);
}
