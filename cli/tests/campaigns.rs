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
