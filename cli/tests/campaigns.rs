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
    // WHEN they are fixed but a variant's key holds the key separator '#'
    // THEN 400 names that key, and nothing is saved
    campaign["variants"][1]["weight"] = json!(0.5);
    campaign["variants"][1]["key"] = json!("free#shipping");
    let (status, problem) = server.call("PUT", path, &admin, &[], Some(&campaign.to_string()));
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("variants[1].key"),
        "{problem}"
    );
    assert_eq!(server.call("GET", path, &admin, &[], None).0, 404);
    // WHEN the key is fixed too THEN it is created (201), then updated (200, version 2)
    campaign["variants"][1]["key"] = json!("free-shipping");
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

/// A purchase made now, after whatever the member saw in the app before it (an on-exposure
/// campaign changes only purchases made after the exposure). Two seconds ahead, so that the
/// time, written to the second, is not before an exposure recorded in the same second.
fn purchase(id: &str, member: &str) -> String {
    let occurred = (chrono::Utc::now() + chrono::Duration::seconds(2))
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
        let (status, view) = server.call(
            "GET",
            &format!("/v1/programs/kr-shop/members/{member}"),
            admin,
            &[],
            None,
        );
        let view = common::points_view(status, view);
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

/// A fresh directory for this test's files.
fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("campaign-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn the_report_is_served_to_admins_and_printed_by_the_cli_with_its_chart() {
    // GIVEN serve on a database file, a running on-exposure campaign, 40 exposed members and
    // purchases by 6 of them
    let db = temp_path("loyalty.db");
    let db_arg = db.to_str().unwrap();
    let server = Server::start(&["--db", db_arg]);
    let admin = token(&["--admin"]);
    let campaign = json!({
        "name": "App double", "kind": "on_exposure", "status": "running",
        "start": "2026-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z",
        "hash_seed": "report-e2e", "goal": "purchase",
        "variants": [
            {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
            {"key": "x2", "weight": 0.5, "effect": {"type": "multiplier", "basis_points": 20000}}
        ]
    });
    let path = "/v1/programs/kr-shop/campaigns/app-double";
    let (status, _) = server.call("PUT", path, &admin, &[], Some(&campaign.to_string()));
    assert_eq!(status, 201);
    for i in 0..40 {
        let member = format!("r-{i}");
        let me = token(&["--member", &member]);
        let (status, _) = server.call("GET", "/v1/programs/kr-shop/me/campaigns", &me, &[], None);
        assert_eq!(status, 200);
        if i < 6 {
            let event = purchase(&format!("ev-r{i}"), &member);
            let (status, _) = server.call(
                "POST",
                "/v1/programs/kr-shop/events",
                &admin,
                &[],
                Some(&event),
            );
            assert_eq!(status, 202);
        }
    }
    // WHEN an admin asks for the report once the purchases are processed
    let report_path = format!("{path}/report");
    let mut report = serde_json::Value::Null;
    for _ in 0..100 {
        report = server.call("GET", &report_path, &admin, &[], None).1;
        let converters: i64 = report["variants"]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .map(|v| v["converters"].as_i64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if converters == 6 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // THEN it counts the 40 exposed members and the 6 converters, by variant
    let members: i64 = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["members"].as_i64().unwrap())
        .sum();
    assert_eq!(members, 40, "{report}");
    let converters: i64 = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["converters"].as_i64().unwrap())
        .sum();
    assert_eq!(converters, 6, "{report}");
    assert_eq!(report["denominator"], json!("exposed"));
    assert!(report["verdict"].is_string());
    // AND members may not read it
    let member = token(&["--member", "r-1"]);
    assert_eq!(server.call("GET", &report_path, &member, &[], None).0, 403);
    // AND the CLI prints the same report from the database file, and writes the chart
    let chart = temp_path("report.svg");
    let out = std::process::Command::new(common::BIN)
        .args(["campaign", "report", "app-double", "--db", db_arg, "--svg"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("members = exposed"), "{text}");
    assert!(text.contains("sample ratio"), "{text}");
    for v in report["variants"].as_array().unwrap() {
        let line = format!(
            "{:<12} {:>8} {:>10}",
            v["variant"].as_str().unwrap(),
            v["members"].as_i64().unwrap(),
            v["converters"].as_i64().unwrap()
        );
        assert!(text.contains(&line), "{line} not in {text}");
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert_eq!(svg.matches("<rect").count(), 2);
    // AND an unknown campaign is a clear error
    let out = std::process::Command::new(common::BIN)
        .args(["campaign", "report", "nope", "--db", db_arg])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no program has a campaign"));
}

#[test]
fn the_readme_s_example_campaign_is_accepted_as_it_is() {
    // GIVEN a running stack and the campaign file the README saves
    let server = Server::start(&[]);
    let admin = token(&["--admin"]);
    let file = include_str!("../../examples/birthday-gift.json");
    // WHEN it is saved THEN it is created
    let path = "/v1/programs/kr-shop/campaigns/birthday-gift";
    let (status, saved) = server.call("PUT", path, &admin, &[], Some(file));
    assert_eq!(status, 201, "{saved}");
}
