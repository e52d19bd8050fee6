//! Campaign files and assignment: validation that names the field, and GrowthBook-compatible
//! assignment with the weights, coverage and namespace the file gives.

use loyalty_core::campaigns::{Campaign, CampaignError};
use loyalty_core::domain::Program;
use serde_json::{json, Value};

fn kr() -> Program {
    Program::from_toml(include_str!("../../examples/kr-shop.toml")).expect("kr-shop")
}

fn weekend() -> Value {
    json!({
        "name": "Double points weekend", "kind": "broadcast", "status": "running",
        "start": "2026-11-27T15:00:00Z", "end": "2026-11-29T15:00:00Z",
        "hash_seed": "double-weekend-2026", "hash_version": 2, "coverage": 1,
        "audience": {"tiers": ["WELCOME", "SILVER"]}, "goal": "purchase",
        "variants": [
            {"key": "control", "weight": 0.34, "effect": {"type": "none"}},
            {"key": "x2", "weight": 0.33, "effect": {"type": "multiplier", "basis_points": 20000}},
            {"key": "x1.5", "weight": 0.33, "effect": {"type": "multiplier", "basis_points": 15000}}
        ]
    })
}

fn parse(value: &Value) -> Result<Campaign, CampaignError> {
    Campaign::from_json(value.to_string().as_bytes(), &kr())
}

#[test]
fn a_valid_campaign_is_accepted_and_mistakes_are_named_by_field() {
    // GIVEN the double points weekend THEN it is valid
    assert!(parse(&weekend()).is_ok());
    // WHEN weights do not sum to 1, a tier and a reward do not exist, and the window is empty
    let mut bad = weekend();
    bad["variants"][0]["weight"] = json!(0.2);
    bad["audience"]["tiers"] = json!(["PLATINUM"]);
    bad["variants"][1]["effect"] = json!({"type": "reward", "reward": "no-such-reward"});
    bad["end"] = bad["start"].clone();
    let Err(CampaignError::Invalid(problems)) = parse(&bad) else {
        panic!("refused")
    };
    // THEN each problem names its field
    let text = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    for field in [
        "variants weights must sum to 1",
        "audience.tiers[0]",
        "variants[1].effect.reward",
        "end must be after start",
    ] {
        assert!(text.contains(field), "{field} not in {text}");
    }
    // AND weights within 0.001 of 1 are fine; an unknown field is named, a text cut short is
    // not JSON
    let mut close = weekend();
    close["variants"][0]["weight"] = json!(0.3405);
    assert!(parse(&close).is_ok());
    let mut unknown = weekend();
    unknown["colour"] = json!("red");
    assert!(
        matches!(parse(&unknown), Err(CampaignError::Invalid(p)) if p[0].field == "colour"),
        "an unknown field is named"
    );
    assert!(matches!(
        Campaign::from_json(b"{\"name\": ", &kr()),
        Err(CampaignError::Syntax(_))
    ));
    let mut hash3 = weekend();
    hash3["hash_version"] = json!(3);
    assert!(parse(&hash3).is_err());
    // AND a value of the wrong kind, a date that does not exist or a missing field of an
    // effect is named by its field too (before: only the parser's line and column)
    for (pointer, value, field) in [
        ("/variants/1/weight", json!("0.5"), "variants[1].weight"),
        ("/start", json!("2027-02-30T00:00:00Z"), "start"),
        (
            "/variants/1/effect",
            json!({"type": "reward"}),
            "variants[1].effect",
        ),
    ] {
        let mut wrong = weekend();
        *wrong.pointer_mut(pointer).expect("field") = value;
        match parse(&wrong) {
            Err(CampaignError::Invalid(problems)) => assert!(
                problems.iter().any(|p| p.field == field),
                "{field}: {problems:?}"
            ),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn a_campaign_has_at_most_twenty_variants() {
    // GIVEN the weekend with 21 variants of equal weight (their weights sum to 1)
    let mut many = weekend();
    let variants: Vec<Value> = (0..21)
        .map(|i| json!({"key": format!("v{i}"), "weight": 1.0 / 21.0, "effect": {"type": "none"}}))
        .collect();
    many["variants"] = json!(variants);
    // WHEN it is read THEN it is refused, naming the variants (before: a thousand were saved)
    let Err(CampaignError::Invalid(problems)) = parse(&many) else {
        panic!("refused")
    };
    assert!(problems
        .iter()
        .any(|p| p.to_string().contains("at most 20 variants")));
    // AND twenty are fine
    many["variants"] = json!((0..20)
        .map(|i| json!({"key": format!("v{i}"), "weight": 0.05, "effect": {"type": "none"}}))
        .collect::<Vec<_>>());
    assert!(parse(&many).is_ok());
}

#[test]
fn members_spread_over_the_variants_by_weight_and_always_land_in_the_same_one() {
    // GIVEN the weekend's three variants (0.34 / 0.33 / 0.33)
    let campaign = parse(&weekend()).unwrap();
    // WHEN 30,000 members are assigned
    let mut counts = [0usize; 3];
    for i in 0..30_000 {
        let member = format!("shopify:{}", 7_000_000 + i);
        let variant = campaign
            .assign(&member)
            .expect("full coverage assigns everyone");
        assert_eq!(campaign.assign(&member), Some(variant), "deterministic");
        counts[variant] += 1;
    }
    // THEN each variant gets its share, within 2 points of percentage
    for (count, weight) in counts.iter().zip([0.34, 0.33, 0.33]) {
        let share = *count as f64 / 30_000.0;
        assert!((share - weight).abs() < 0.02, "{counts:?}");
    }
}

#[test]
fn coverage_and_namespaces_leave_members_out() {
    // GIVEN half coverage, and a namespace holding 40% of members
    let mut half = weekend();
    half["coverage"] = json!(0.5);
    let half = parse(&half).unwrap();
    let mut spaced = weekend();
    spaced["namespace"] = json!({"name": "promos", "start": 0.0, "end": 0.4});
    let spaced = parse(&spaced).unwrap();
    // WHEN 20,000 members are assigned
    let members: Vec<String> = (0..20_000).map(|i| format!("m-{i}")).collect();
    let share =
        |c: &Campaign| members.iter().filter(|m| c.assign(m).is_some()).count() as f64 / 20_000.0;
    // THEN about half, and about 40%, are in
    assert!((share(&half) - 0.5).abs() < 0.02);
    assert!((share(&spaced) - 0.4).abs() < 0.02);
}

#[test]
fn audience_day_counts_past_the_calendar_are_refused_and_a_stored_one_never_panics() {
    // GIVEN a campaign whose audience counts back 100,000,000 days (273,000 years)
    let mut far = weekend();
    far["audience"] = json!({"new_members_days": 100_000_000, "dormant_days": 100_000_000});
    // WHEN it is saved THEN both fields are named
    let Err(CampaignError::Invalid(problems)) = parse(&far) else {
        panic!("refused")
    };
    let text = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    for field in ["audience.new_members_days", "audience.dormant_days"] {
        assert!(text.contains(field), "{field} not in {text}");
    }
    // WHEN one stored before the bound is asked who it admits
    let stored: Campaign = serde_json::from_value(far).expect("stored as is");
    let program = kr();
    let now = chrono::Utc::now();
    let mut member = loyalty_core::domain::Account::open(&program, "m-1", now);
    let new_admitted = stored.admits(&program, &member, now);
    member.last_purchase_at = Some(now);
    let buyer_admitted = stored.admits(&program, &member, now);
    // THEN it answers without a panic: every member joined within it, none who bought is
    // dormant that long
    assert_eq!((new_admitted, buyer_admitted), (true, false));
}

#[test]
fn a_birthday_campaign_admits_the_days_of_its_window_and_leap_day_birthdays() {
    // GIVEN a birthday campaign for November in Seoul (its end, 1 December 00:00, not in it),
    // and one for the end of February 2027, a common year
    let program = kr();
    let birthday = |start: &str, end: &str| {
        let mut c = weekend();
        c["audience"] = json!({"birthday_in_window": true});
        c["start"] = json!(start);
        c["end"] = json!(end);
        parse(&c).expect("valid")
    };
    let november = birthday("2026-11-01T00:00:00+09:00", "2026-12-01T00:00:00+09:00");
    let february = birthday("2027-02-20T00:00:00+09:00", "2027-03-05T00:00:00+09:00");
    let now = chrono::Utc::now();
    let born = |day: &str| {
        let mut member = loyalty_core::domain::Account::open(&program, "m-1", now);
        member.profile.birthday = Some(day.to_string());
        member
    };
    // WHEN members born on the window's first and last days, the day after, and 29 February
    // are asked for
    let admitted = |c: &Campaign, day: &str| c.admits(&program, &born(day), now);
    // THEN November admits 1 and 30 November but not 1 December, and February 2027 admits a
    // member born on 29 February (kept on the 28th) but not one born on 6 March
    assert_eq!(
        [
            admitted(&november, "11-01"),
            admitted(&november, "11-30"),
            admitted(&november, "12-01")
        ],
        [true, true, false]
    );
    assert_eq!(
        [admitted(&february, "02-29"), admitted(&february, "03-06")],
        [true, false]
    );
}

#[test]
fn a_stored_campaign_is_read_whatever_fields_a_newer_version_added() {
    // GIVEN a campaign as stored, with every field set, and with a field of a newer version
    let mut full = weekend();
    full["namespace"] = json!({"name": "ns", "start": 0.0, "end": 0.5});
    full["stopped_at"] = json!("2026-11-28T00:00:00Z");
    full["bucket_version"] = json!(2);
    let campaign: Campaign = serde_json::from_value(full.clone()).expect("every field");
    let stored = serde_json::to_value(&campaign).unwrap();
    let mut newer = stored.clone();
    newer["paused_until"] = json!("2026-12-01T00:00:00Z");
    // WHEN it is read as stored
    let read = Campaign::from_stored(&newer.to_string()).expect("read");
    // THEN it is the campaign, every field kept (none is left out as unknown)
    assert_eq!(read, campaign);
    assert_eq!(serde_json::to_value(&read).unwrap(), stored);
    // AND a file from an operator with that field is still refused
    assert!(parse(&newer).is_err());
}
