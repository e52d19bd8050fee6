//! Campaign bucketing against GrowthBook's cross-SDK cases (`../shared/conformance`), plus
//! vectors of our own that run even where that folder is absent.

use std::path::PathBuf;

use loyalty_core::bucketing::{
    bucket_ranges, choose_variation, equal_weights, hash, in_namespace, Namespace,
};
use serde_json::Value;

/// The conformance folder: `LOYALTY_CONFORMANCE_DIR`, else beside the repository.
fn conformance() -> Option<Value> {
    let dir = std::env::var_os("LOYALTY_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance")
        });
    let path = dir.join("growthbook-bucketing.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("growthbook-bucketing.json is JSON")),
        Err(e) => {
            assert!(
                std::env::var("LOYALTY_REQUIRE_CONFORMANCE").as_deref() != Ok("1"),
                "{} is required (LOYALTY_REQUIRE_CONFORMANCE=1) but cannot be read: {e}",
                path.display()
            );
            eprintln!(
                "SKIPPED: {} not found; only our own vectors ran",
                path.display()
            );
            None
        }
    }
}

/// Bounds floored to 1e-8, as GrowthBook's JS test runner compares them.
fn floored(x: f64) -> f64 {
    (x * 1e8).floor() / 1e8
}

fn cases<'a>(data: &'a Value, section: &str) -> &'a Vec<Value> {
    let cases = data[section].as_array().expect("a section of cases");
    assert!(!cases.is_empty(), "{section} has cases");
    cases
}

#[test]
fn our_own_vectors() {
    // Member ids of our own shape, computed with an independent implementation of the same
    // algorithm (FNV-1a over UTF-16 code units, as JavaScript's charCodeAt sees them).
    assert_eq!(
        hash("double-points-weekend", "kr-shop:shopify:7001234", 2),
        Some(0.9344)
    );
    assert_eq!(hash("birthday-gift", "m-1", 2), Some(0.2621));
    assert_eq!(hash("winback", "cafe24:gildong77", 1), Some(0.357));
    assert_eq!(hash("__promo", "m-42", 1), Some(0.858));
    // Two of GrowthBook's cases kept here, so a checkout without ../shared still checks
    // version 2 and surrogate pairs.
    assert_eq!(hash("seed", "a", 2), Some(0.0505));
    assert_eq!(hash("", "😀", 2), Some(0.4971));
    assert_eq!(hash("x", "y", 3), None);
    assert_eq!(bucket_ranges(2, 0.5, None), vec![(0.0, 0.25), (0.5, 0.75)]);
    assert_eq!(choose_variation(0.4, &[(0.0, 0.25), (0.5, 0.75)]), None);
    assert_eq!(equal_weights(0), Vec::<f64>::new());
}

#[test]
fn growthbook_hash_cases() {
    let Some(data) = conformance() else { return };
    for case in cases(&data, "hash") {
        let (seed, value) = (case[0].as_str().unwrap(), case[1].as_str().unwrap());
        let version = case[2].as_u64().unwrap() as u32;
        assert_eq!(hash(seed, value, version), case[3].as_f64(), "{case}");
    }
}

#[test]
fn growthbook_bucket_range_cases() {
    let Some(data) = conformance() else { return };
    for case in cases(&data, "getBucketRange") {
        let args = &case[1];
        let weights: Option<Vec<f64>> = args[2]
            .as_array()
            .map(|w| w.iter().map(|x| x.as_f64().unwrap()).collect());
        let ranges = bucket_ranges(
            args[0].as_i64().unwrap(),
            args[1].as_f64().unwrap(),
            weights.as_deref(),
        );
        let expected: Vec<(f64, f64)> = case[2]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_f64().unwrap(), r[1].as_f64().unwrap()))
            .collect();
        let ours: Vec<_> = ranges
            .iter()
            .map(|(a, b)| (floored(*a), floored(*b)))
            .collect();
        let theirs: Vec<_> = expected
            .iter()
            .map(|(a, b)| (floored(*a), floored(*b)))
            .collect();
        assert_eq!(ours, theirs, "{}", case[0]);
    }
}

#[test]
fn growthbook_choose_variation_cases() {
    let Some(data) = conformance() else { return };
    for case in cases(&data, "chooseVariation") {
        let ranges: Vec<(f64, f64)> = case[2]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_f64().unwrap(), r[1].as_f64().unwrap()))
            .collect();
        let expected = case[3].as_i64().unwrap();
        let chosen = choose_variation(case[1].as_f64().unwrap(), &ranges).map_or(-1, |i| i as i64);
        assert_eq!(chosen, expected, "{}", case[0]);
    }
}

#[test]
fn growthbook_namespace_cases() {
    let Some(data) = conformance() else { return };
    for case in cases(&data, "inNamespace") {
        let ns = &case[2];
        let namespace = Namespace {
            name: ns[0].as_str().unwrap().to_string(),
            start: ns[1].as_f64().unwrap(),
            end: ns[2].as_f64().unwrap(),
        };
        assert_eq!(
            in_namespace(case[1].as_str().unwrap(), &namespace),
            case[3].as_bool().unwrap(),
            "{}",
            case[0]
        );
    }
}

#[test]
fn growthbook_equal_weight_cases() {
    let Some(data) = conformance() else { return };
    for case in cases(&data, "getEqualWeights") {
        let ours: Vec<f64> = equal_weights(case[0].as_i64().unwrap())
            .into_iter()
            .map(floored)
            .collect();
        let theirs: Vec<f64> = case[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| floored(w.as_f64().unwrap()))
            .collect();
        assert_eq!(ours, theirs, "{case}");
    }
}
