//! Money, points, ledger and tier code never touches floating point: a float cannot hold most
//! decimal amounts exactly, and one rounding error is a point created or lost.

use std::path::Path;

#[test]
fn domain_code_has_no_floating_point_types() {
    // GIVEN every source file of the domain
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("src/domain exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable source");
        // WHEN its code (comments aside) is searched for float types and float literals
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            // THEN there are none
            for word in ["f32", "f64", "as_f", "parse::<f"] {
                assert!(
                    !code.contains(word),
                    "{}:{} uses {word}: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "expected the domain's modules, found {checked}"
    );
}
