//! Campaign files through the admin API of `loyalty serve`.

mod common;

use common::{token, Server};
use serde_json::json;

#[test]
fn a_campaign_is_saved_versioned_and_refused_with_the_field_named() {
    // GIVEN a running stack and an admin
    let server = Server::start(&[]);
    let admin = token(&["--admin"]);
    let path = "/v1/programs/kr-shop/campaigns/birthday-gift";
    let mut campaign = json!({
        "name": "Birthday gift", "kind": "broadcast", "status": "draft",
        "start": "2026-12-01T00:00:00Z", "end": "2026-12-31T00:00:00Z",
        "hash_seed": "birthday-2026", "audience": {"birthday_in_window": true}, "goal": "redemption",
        "variants": [
            {"key": "points", "weight": 0.5, "effect": {"type": "grant", "points": 2000}},
            {"key": "free-shipping", "weight": 0.4, "effect": {"type": "reward", "reward": "free-shipping"}}
        ]
    });
    // WHEN the weights sum to 0.9 THEN 400, naming the variants' weights, and nothing is saved
    let (status, problem) = server.call("PUT", path, &admin, &[], Some(&campaign.to_string()));
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("weights must sum to 1"),
        "{problem}"
    );
    assert_eq!(server.call("GET", path, &admin, &[], None).0, 404);
    // WHEN they are fixed THEN it is created (201), then updated (200, version 2)
    campaign["variants"][1]["weight"] = json!(0.5);
    let (status, saved) = server.call("PUT", path, &admin, &[], Some(&campaign.to_string()));
    assert_eq!(
        (status, saved["version"].as_i64()),
        (201, Some(1)),
        "{saved}"
    );
    campaign["status"] = json!("running");
    let (status, saved) = server.call("PUT", path, &admin, &[], Some(&campaign.to_string()));
    assert_eq!((status, saved["version"].as_i64()), (200, Some(2)));
    // AND it reads back as saved, with its defaults filled in
    let (status, read) = server.call("GET", path, &admin, &[], None);
    assert_eq!(status, 200);
    assert_eq!(
        (read["status"].as_str(), read["hash_version"].as_i64()),
        (Some("running"), Some(2))
    );
    // AND members may neither read nor write campaigns
    let member = token(&["--member", "m-1"]);
    assert_eq!(server.call("GET", path, &member, &[], None).0, 403);
}

fn purchase(id: &str, member: &str) -> String {
    let occurred = (chrono::Utc::now() - chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
        "member": member, "occurred_at": occurred,
        "data": {"order_id": id, "currency": "KRW",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": "10000"}]}
    })
    .to_string()
}

fn pending(server: &Server, admin: &str, member: &str, expected: i64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, view) = server.call(
            "GET",
            &format!("/v1/programs/kr-shop/members/{member}"),
            admin,
            &[],
            None,
        );
        if view["pending"] == expected {
            return true;
        }
        if std::time::Instant::now() > deadline {
            panic!("{member}: pending never reached {expected}; last view {view}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn exposed_members_keep_their_variant_and_earn_with_its_multiplier() {
    // GIVEN a running on-exposure campaign: control vs double points, 50/50
    let server = Server::start(&[]);
    let admin = token(&["--admin"]);
    let path = "/v1/programs/kr-shop/campaigns/app-double";
    let now = chrono::Utc::now();
    let mut campaign = json!({
        "name": "Double points in the app", "kind": "on_exposure", "status": "running",
        "start": now - chrono::Duration::days(2), "end": now + chrono::Duration::days(2),
        "hash_seed": "app-double-1", "goal": "purchase",
        "variants": [
            {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
            {"key": "x2", "weight": 0.5, "effect": {"type": "multiplier", "basis_points": 20000}}
        ]
    });
    assert_eq!(
        server
            .call("PUT", path, &admin, &[], Some(&campaign.to_string()))
            .0,
        201
    );
    // WHEN 20 members open the app's campaigns, twice
    let variant_of = |member: &str| {
        let (status, answer) = server.call(
            "GET",
            "/v1/programs/kr-shop/me/campaigns",
            &token(&["--member", member]),
            &[],
            None,
        );
        assert_eq!(status, 200, "{answer}");
        answer["campaigns"][0]["variant"]
            .as_str()
            .expect("assigned")
            .to_string()
    };
    let members: Vec<String> = (0..20).map(|i| format!("app-{i}")).collect();
    let first: Vec<String> = members.iter().map(|m| variant_of(m)).collect();
    assert_eq!(
        first,
        members.iter().map(|m| variant_of(m)).collect::<Vec<_>>(),
        "the same variant each time"
    );
    assert!(
        first.contains(&"x2".to_string()) && first.contains(&"control".to_string()),
        "{first:?}"
    );
    // WHEN the weights change to send everyone to control
    campaign["variants"][0]["weight"] = json!(1.0);
    campaign["variants"][1]["weight"] = json!(0.0);
    assert_eq!(
        server
            .call("PUT", path, &admin, &[], Some(&campaign.to_string()))
            .0,
        200
    );
    // THEN the members already assigned keep their variant
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        first,
        members.iter().map(|m| variant_of(m)).collect::<Vec<_>>()
    );
    // WHEN an x2 member, a control member and a member who never opened the app buy 10,000 KRW
    let x2 = &members[first.iter().position(|v| v == "x2").unwrap()];
    let control = &members[first.iter().position(|v| v == "control").unwrap()];
    for (i, member) in [x2.as_str(), control.as_str(), "never-exposed"]
        .iter()
        .enumerate()
    {
        let (status, answer) = server.call(
            "POST",
            "/v1/programs/kr-shop/events",
            &admin,
            &[],
            Some(&purchase(&format!("ev-c{i}"), member)),
        );
        assert_eq!(status, 202, "{answer}");
    }
    // THEN the x2 member earns 200, the others 100
    assert!(pending(&server, &admin, x2, 200));
    assert!(pending(&server, &admin, control, 100));
    assert!(pending(&server, &admin, "never-exposed", 100));
}
