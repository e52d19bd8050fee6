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

#[test]
fn a_digest_in_the_logs_cannot_be_recomputed_from_a_guess_without_the_key() {
    use loyalty_core::telemetry::{event_ref, member_ref, set_log_key};
    // GIVEN a process whose logs are keyed with its deployment's secret
    set_log_key(b"a deployment's own secret");
    let phone = "pos:010-2222-1111";
    // WHEN a member named by a phone number, and an event id holding it, are logged
    let (member, event) = (member_ref(phone), event_ref(&format!("merge-{phone}")));
    // THEN neither is the digest anyone can compute from the number alone (before: FNV-1a of
    // the id, which a search of every phone number reverses in seconds)
    let unkeyed = |id: &str| format!("{:016x}", loyalty_core::fingerprint::fnv1a64(id.bytes()));
    assert_eq!(member.len(), "person-".len() + 16, "{member}");
    assert_ne!(member, format!("person-{}", unkeyed(phone)));
    assert_ne!(
        event,
        format!("event-{}", unkeyed(&format!("merge-{phone}")))
    );
    // AND the same member is named the same way on every line
    assert_eq!(member_ref(phone), member);
    // AND a later key changes nothing for this process (its lines keep going together)
    set_log_key(b"another secret");
    assert_eq!(member_ref(phone), member);
}
