//! One rule per kind of id, the same on every route and in events (README "Ids").
//!
//! Ids from outside are parsed once at the edge into these types; a value of a type always
//! satisfies its rule, so the stores can use it as a key part without checking again.

use std::fmt;

/// The kinds of id that cross a boundary, with their rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// Programs and rewards: `[a-z0-9-]{1,64}`, chosen by the brand.
    Program,
    Reward,
    /// Campaigns: `[A-Za-z0-9_-]{1,64}`.
    Campaign,
    /// Members, event ids, order references and redemption ids: 1 to 128 bytes of UTF-8 with no
    /// `#` (the stores' key separator), no control character and no leading or trailing space.
    Member,
    Event,
    Order,
    Redemption,
    /// Coupon codes: `[A-Za-z0-9-]{1,64}`.
    Coupon,
    /// The platform an event came from (`shopify`, `pos`, `api`...): `[a-z0-9-]{1,32}`. It is
    /// part of order keys and markers.
    Platform,
    /// A campaign variant's key: 1 to 64 bytes with no `#`, no control character and no
    /// leading or trailing space (`x1.5` is one). It is part of the counters' keys.
    Variant,
    /// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
    IdempotencyKey,
}

impl IdKind {
    /// The field or header that carries it, as problems name it.
    pub fn field(self) -> &'static str {
        match self {
            IdKind::Program => "program",
            IdKind::Campaign => "campaign",
            IdKind::Reward => "reward",
            IdKind::Member => "member",
            IdKind::Event => "id",
            IdKind::Order => "order_id",
            IdKind::Redemption => "redemption",
            IdKind::Coupon => "code",
            IdKind::Platform => "platform",
            IdKind::Variant => "variant",
            IdKind::IdempotencyKey => "Idempotency-Key",
        }
    }

    /// The problem type of a value that breaks the rule.
    pub fn problem(self) -> &'static str {
        match self {
            IdKind::Program => "invalid-program-id",
            IdKind::Campaign => "invalid-campaign-id",
            IdKind::Reward => "invalid-reward-id",
            IdKind::Member => "invalid-member-id",
            IdKind::Event => "invalid-event-id",
            IdKind::Order => "invalid-order-id",
            IdKind::Redemption => "invalid-redemption-id",
            IdKind::Coupon => "invalid-coupon-code",
            IdKind::Platform => "invalid-platform",
            IdKind::Variant => "invalid-variant",
            IdKind::IdempotencyKey => "invalid-idempotency-key",
        }
    }

    /// The rule in words.
    pub fn rule(self) -> &'static str {
        match self {
            IdKind::Program | IdKind::Reward => {
                "1-64 characters of lower-case letters, digits and '-'"
            }
            IdKind::Campaign => "1-64 characters of letters, digits, '-' and '_'",
            IdKind::Member | IdKind::Event | IdKind::Order | IdKind::Redemption => {
                "1-128 bytes without '#', control characters, invisible characters or surrounding spaces, and not '.' or '..'"
            }
            IdKind::Coupon => "1-64 characters of letters, digits and '-'",
            IdKind::Platform => "1-32 characters of lower-case letters, digits and '-'",
            IdKind::Variant => "1-64 bytes without '#', control characters, invisible characters or surrounding spaces, and not '.' or '..'",
            IdKind::IdempotencyKey => "1-255 visible ASCII characters",
        }
    }

    pub fn accepts(self, value: &str) -> bool {
        match self {
            IdKind::Program | IdKind::Reward => {
                (1..=64).contains(&value.len())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }
            IdKind::Campaign => {
                (1..=64).contains(&value.len())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }
            IdKind::Member | IdKind::Event | IdKind::Order | IdKind::Redemption => {
                (1..=128).contains(&value.len()) && plain_text(value)
            }
            IdKind::Variant => (1..=64).contains(&value.len()) && plain_text(value),
            IdKind::Platform => {
                (1..=32).contains(&value.len())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }
            IdKind::Coupon => {
                (1..=64).contains(&value.len())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }
            IdKind::IdempotencyKey => {
                (1..=255).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
            }
        }
    }

    /// Checks `value` against the rule.
    pub fn check(self, value: &str) -> Result<(), IdError> {
        if self.accepts(value) {
            Ok(())
        } else {
            Err(IdError {
                kind: self,
                value: shorten(value),
            })
        }
    }
}

/// No key separator, no control character, no surrounding space.
fn plain_text(value: &str) -> bool {
    value.trim() == value
        && value != "."
        && value != ".."
        && !value
            .chars()
            .any(|c| c == '#' || c.is_control() || invisible(c))
}

/// Characters that show as nothing (zero-width spaces and joiners, direction marks, overrides
/// and isolates, the soft hyphen, the byte-order mark): an id holding one looks like another id, and is another.
/// `.` and `..` are refused beside them: a path segment of either is read as a directory by
/// proxies that normalise paths.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// A value that breaks its kind's rule; the value is shortened for messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?} is not valid: it must be {rule}", field = kind.field(), rule = kind.rule())]
pub struct IdError {
    pub kind: IdKind,
    pub value: String,
}

/// How a message quotes a value it refuses: the value's first 40 characters, or fewer where
/// the cut would go through an email address or a phone number: the piece left would no
/// longer read as one, and the logs, which redact what does, would keep it (`kim.minji…` of
/// an address, the first digits of a number).
pub fn shorten(value: &str) -> String {
    let Some((mut at, _)) = value.char_indices().nth(40) else {
        return value.to_string();
    };
    // An address or a number that goes on past the cut ends within this much of it.
    let mut scanned = value.len().min(at + 512);
    while !value.is_char_boundary(scanned) {
        scanned -= 1;
    }
    if let Some((start, _)) = crate::telemetry::personal_spans(&value[..scanned])
        .into_iter()
        .filter(|&(start, end)| start < at && at < end)
        .min()
    {
        at = start;
    }
    format!("{}…", &value[..at])
}

/// The id of an event made from other ids (a campaign's grant, a referrer's reward, a yearly
/// greeting): the prefix and the parts joined with '-' while that keeps to the event-id rule,
/// else the prefix and a SHA-256 digest of the parts. The same parts always make the same id,
/// so the event's copies still collapse into one, and a long member or campaign id never makes
/// an id that earn's own check refuses (the event would be rejected for good, its points lost).
pub fn derived_event_id(prefix: &str, parts: &[&str]) -> String {
    let plain = parts
        .iter()
        .fold(prefix.to_string(), |id, part| id + "-" + part);
    if IdKind::Event.accepts(&plain) {
        return plain;
    }
    digested_event_id(prefix, parts)
}

/// [`derived_event_id`] always in its digest form: for an id that lands in another member's
/// ledger (a referrer's reward names the member referred, whose id is often an email or a
/// phone number), where the parts must not be read back.
pub fn digested_event_id(prefix: &str, parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in parts {
        // Each part's length first, so that no two lists of parts digest the same bytes.
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    let hex: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}-h{hex}")
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const KIND: IdKind = $kind;

            pub fn parse(value: &str) -> Result<$name, IdError> {
                Self::KIND.check(value)?;
                Ok($name(value.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A program's id.
    ProgramId,
    IdKind::Program
);
id_type!(
    /// A member's canonical id (or an alias value that names one).
    MemberId,
    IdKind::Member
);
id_type!(
    /// A campaign's id.
    CampaignId,
    IdKind::Campaign
);
id_type!(
    /// A redemption's id.
    RedemptionId,
    IdKind::Redemption
);
id_type!(
    /// A coupon's code.
    CouponCode,
    IdKind::Coupon
);
id_type!(
    /// A caller's `Idempotency-Key`.
    IdempotencyKey,
    IdKind::IdempotencyKey
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn members_refuse_separators_controls_and_length() {
        // GIVEN values that would break a store key or a log line
        for bad in [
            "",
            "m-1#x",
            "m\u{0}1",
            " m-1",
            "m-1 ",
            "m\n1",
            &"m".repeat(129),
        ] {
            // WHEN parsed THEN each is refused with the member problem
            let e = MemberId::parse(bad).unwrap_err();
            assert_eq!(e.kind.problem(), "invalid-member-id");
        }
        // AND ordinary ids, emails and non-ASCII names pass
        for good in ["m-1", "kim@example.com", "회원-7", &"m".repeat(128)] {
            assert!(MemberId::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn members_refuse_invisible_characters_and_dot_segments() {
        // GIVEN ids that look like another id, or read as a directory in a path
        for bad in [
            "\u{feff}m-1",
            "m\u{200b}-1",
            "m-1\u{200d}",
            "\u{202e}1-m",
            "m\u{2060}1",
            "m\u{2066}-1",
            "m\u{00ad}-1",
            ".",
            "..",
        ] {
            // WHEN parsed THEN each is refused (before: members of their own)
            assert!(MemberId::parse(bad).is_err(), "{bad:?}");
        }
        // AND dots inside an id are ordinary
        for good in ["m.1", "...", "kim.lee@example.com"] {
            assert!(MemberId::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        // GIVEN a key with a non-ASCII letter WHEN parsed THEN it is refused
        assert!(IdempotencyKey::parse("clé").is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        // AND a UUID passes
        assert!(IdempotencyKey::parse("3f0c2a8e-7c1b-4f7e-9d1a-0b6e5c4d3a21").is_ok());
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let e = CampaignId::parse(&"x".repeat(10_000)).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn a_value_is_never_cut_through_an_address_or_a_number() {
        // GIVEN invalid member ids whose 40th character falls inside an email address and
        // inside a phone number
        let address = format!("{} kim.minji@example.com #1", "a".repeat(30));
        let number = format!("{} 010-1234-5678 #1", "b".repeat(34));
        // (and written with full-width forms or other dashes)
        let wide = format!("{} kim.minji\u{ff20}example.com #1", "a".repeat(30));
        let dashed = format!("{} 010\u{2013}1234\u{2013}5678 #1", "b".repeat(34));
        for value in [address, number, wide, dashed] {
            // WHEN the error is said
            let said = MemberId::parse(&value).unwrap_err().to_string();
            // THEN the value is cut before it, and nothing of it is left to the logs (before:
            // `kim.min…` and `010-1…`, which the logs' redaction no longer finds)
            assert!(!said.contains("kim") && !said.contains("010"), "{said}");
            let before = value.find(' ').unwrap() + 1;
            assert!(
                said.contains(&format!("{:?}", format!("{}…", &value[..before]))),
                "{said}"
            );
        }
        // AND a value cut elsewhere keeps its 40 characters
        let plain = MemberId::parse(&format!("{}#", "c d".repeat(30)))
            .unwrap_err()
            .to_string();
        assert!(
            plain.contains(&format!("{}…", &"c d".repeat(30)[..40])),
            "{plain}"
        );
    }

    #[test]
    fn derived_event_ids_keep_to_the_rule_and_to_their_parts() {
        // GIVEN short parts WHEN an id is derived THEN it reads as the parts joined
        assert_eq!(derived_event_id("grant", &["c-1", "m-1"]), "grant-c-1-m-1");
        // GIVEN a 64-character campaign and a 128-byte member
        let (campaign, member) = ("c".repeat(64), "회".repeat(42) + "mm");
        // WHEN an id is derived THEN earn's check accepts it, and again it is the same
        let long = derived_event_id("grant", &[&campaign, &member]);
        assert!(IdKind::Event.accepts(&long), "{long}");
        assert_eq!(long, derived_event_id("grant", &[&campaign, &member]));
        // AND another member's id differs, even where the joined text would be the same
        assert_ne!(
            long,
            derived_event_id("grant", &[&campaign, &format!("{member}x")])
        );
        let (x, z) = ("x".repeat(60), "z".repeat(100));
        assert_ne!(
            derived_event_id("grant", &[&x, &format!("y-{z}")]),
            derived_event_id("grant", &[&format!("{x}-y"), &z])
        );
    }

    proptest! {
        #[test]
        fn a_parsed_member_never_holds_a_separator(s in any::<String>()) {
            if let Ok(id) = MemberId::parse(&s) {
                prop_assert!(!id.contains('#'));
                prop_assert!(id.len() <= 128 && !id.is_empty());
                prop_assert!(!id.chars().any(char::is_control));
            }
        }
    }
}
