//! What reaches the logs never names a person: a member id is often an email or a phone number,
//! so text about a member that a log line may carry names it through `telemetry::member_ref`.

use std::path::Path;

/// The closures that describe what kept changing: their text becomes a `Busy` or `Retry` error,
/// which the queues, the jobs and the HTTP layer log.
const DESCRIBED_BY: [&str; 2] = [".again(|| format!(", ".redirected(|| format!("];

#[test]
fn contention_errors_name_members_by_their_log_reference() {
    // GIVEN every service module
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/services");
    let mut found = 0;
    for entry in std::fs::read_dir(&dir).expect("src/services exists") {
        let path = entry.expect("readable entry").path();
        let text = std::fs::read_to_string(&path).expect("readable source");
        // WHEN each description of a contention is read up to the end of its `format!`
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for start in DESCRIBED_BY {
            for (at, _) in flat.match_indices(start) {
                let call = &flat[at..];
                let end = call
                    .find(")).await")
                    .or_else(|| call.find("))?"))
                    .unwrap_or(200);
                let call = &call[..end.min(call.len())];
                found += 1;
                // THEN one about a member names it by its log reference
                if call.contains("\"member {") {
                    assert!(
                        call.contains("member_ref("),
                        "{}: {call} names a member raw",
                        path.display()
                    );
                }
            }
        }
    }
    assert!(
        found >= 15,
        "expected the services' contentions, found {found}"
    );
}
