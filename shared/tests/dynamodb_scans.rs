//! A full pass over a program's members scans the table: in a table mostly of other items
//! (other programs, ledger entries) a page of members may find none. The scan answers an empty
//! page with its cursor after a bounded number of requests, so that a job saves its place and
//! looks at its deadline instead of scanning on past it.
//! Runs on moto (`scripts/test` exports `LOYALTY_TEST_DYNAMODB_ENDPOINT`).
#![cfg(feature = "aws")]

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use loyalty_core::ports::ScheduleStore;
use loyalty_core::store::dynamodb::DynamoStore;

mod common;

#[tokio::test]
async fn a_pass_over_a_few_members_among_many_other_items_comes_back_page_by_page() {
    // GIVEN a table of 1,200 items of other kinds and three accounts of program "small"
    let table = format!("loyalty-scans-{}", uuid::Uuid::new_v4().simple());
    let client = aws_sdk_dynamodb::Client::from_conf(common::moto_dynamodb("scans").build());
    let store = DynamoStore::new(client.clone(), &table);
    store.create_table().await.expect("moto creates the table");
    let s = |v: String| AttributeValue::S(v);
    let mut items: Vec<Vec<(&str, AttributeValue)>> = (0..1_200)
        .map(|i| {
            vec![
                ("PK", s(format!("P#large#M#m-{i}"))),
                ("SK", s(format!("L#{i:08}"))),
            ]
        })
        .collect();
    for member in ["a", "b", "c"] {
        items.push(vec![
            ("PK", s(format!("P#small#M#{member}"))),
            ("SK", s("ACCOUNT".into())),
            ("member", s(member.into())),
        ]);
    }
    for chunk in items.chunks(25) {
        let writes = chunk
            .iter()
            .map(|item| {
                let put = PutRequest::builder()
                    .set_item(Some(
                        item.iter()
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect(),
                    ))
                    .build()
                    .unwrap();
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        client
            .batch_write_item()
            .request_items(&table, writes)
            .send()
            .await
            .unwrap();
    }
    // WHEN the pass reads pages of 10 members from the start to the end
    let mut cursor: Option<String> = None;
    let (mut members, mut pages, mut empty_with_more) = (Vec::new(), 0, 0);
    loop {
        let page = store
            .members_page("small", cursor.as_deref(), 10)
            .await
            .unwrap();
        pages += 1;
        if page.members.is_empty() && page.next_cursor.is_some() {
            empty_with_more += 1;
        }
        members.extend(page.members);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    // THEN it finds exactly the three members
    members.sort();
    assert_eq!(members, ["a", "b", "c"]);
    // AND a run of pages with none of them came back empty with its cursor (at most 50
    // requests of 10 items each), rather than as one call scanning the whole table
    assert!(
        empty_with_more >= 1,
        "{pages} pages, none empty with a cursor"
    );
    assert!(pages >= 3, "{pages} pages");
}

#[tokio::test]
async fn a_day_of_old_rejections_past_one_megabyte_is_listed_once_each() {
    use loyalty_core::ports::{RejectStore, RejectedEvent};
    // GIVEN 14 rejected events of today recorded in the old form (each listed with its event,
    // about 100 KB), more than one query of a day's list returns (1 MB)
    let table = format!("loyalty-scans-{}", uuid::Uuid::new_v4().simple());
    let client = aws_sdk_dynamodb::Client::from_conf(common::moto_dynamodb("scans").build());
    let store = DynamoStore::new(client.clone(), &table);
    store.create_table().await.expect("moto creates the table");
    let now = chrono::Utc::now();
    for i in 0..14 {
        let at = now - chrono::Duration::seconds(i);
        let event = RejectedEvent {
            program: "kr-shop".into(),
            event_id: format!("old-{i:02}"),
            at,
            reason: "refused before records of their own".into(),
            payload: "x".repeat(100_000),
            replays: 0,
            replayed_at: None,
            replayed_by: None,
            names: Vec::new(),
        };
        let at_key = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        client
            .put_item()
            .table_name(&table)
            .item(
                "PK",
                AttributeValue::S(format!("P#kr-shop#REJECTED#{}", at.date_naive())),
            )
            .item("SK", AttributeValue::S(format!("{at_key}#old-{i:02}")))
            .item(
                "body",
                AttributeValue::S(serde_json::to_string(&event).unwrap()),
            )
            .send()
            .await
            .unwrap();
    }
    // WHEN a page of 50 is listed
    let page = store.rejected_page("kr-shop", 50, None).await.unwrap();
    // THEN each event is listed once, newest first
    let ids: Vec<&str> = page.events.iter().map(|e| e.event_id.as_str()).collect();
    let expected: Vec<String> = (0..14).map(|i| format!("old-{i:02}")).collect();
    assert_eq!(ids, expected, "{} listed", ids.len());
    assert!(page.next_cursor.is_none());
}
