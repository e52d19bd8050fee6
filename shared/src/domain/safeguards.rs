//! Safeguards against abuse: self-referrals, referral farms and earning sprees. Each decision
//! says why, so that operators can see it and overrule it.

use chrono::NaiveDate;

use super::account::Account;
use super::calendar::YearMonth;
use super::program::Program;

/// An identity reduced to what makes it one person's: emails lower-cased with the `+tag` and
/// the dots of the local part dropped (`Min.Ji+promo@Example.com` is `minji@example.com`),
/// phone numbers to their digits with a leading `82` read as the national `0`.
pub fn normalized(kind: &str, value: &str) -> String {
    match kind {
        "email" => {
            let lower = value.trim().to_lowercase();
            match lower.rsplit_once('@') {
                Some((local, domain)) => {
                    let local = local.split('+').next().unwrap_or_default().replace('.', "");
                    format!("email:{local}@{domain}")
                }
                None => format!("email:{lower}"),
            }
        }
        "phone" | "pos" | "tel" => {
            let digits: String = value.chars().filter(char::is_ascii_digit).collect();
            let national = match digits.strip_prefix("82") {
                Some(rest) if !rest.starts_with('0') => format!("0{rest}"),
                _ => digits,
            };
            format!("phone:{national}")
        }
        other => format!("{other}:{value}"),
    }
}

/// A member's identities: its links, and its own id when that names one (`pos:010-...`).
pub fn identities_of(member: &str, aliases: &[(String, String)]) -> Vec<String> {
    let mut all: Vec<String> = aliases
        .iter()
        .map(|(kind, value)| normalized(kind, value))
        .collect();
    if let Some((kind, value)) = member.split_once(':') {
        all.push(normalized(kind, value));
    }
    all.sort();
    all.dedup();
    all
}

/// Why a referral is one person referring themselves, if it is: the two share an identity
/// once normalised.
pub fn self_referral(referee: &[String], referrer: &[String]) -> Option<String> {
    referee
        .iter()
        .find(|identity| referrer.contains(identity))
        .map(|identity| {
            let kind = identity.split_once(':').map_or("an", |(kind, _)| kind);
            format!("referral refused: the new member and the referrer share an identity ({kind}) once normalised (self-referral)")
        })
}

/// Why the referrer is not rewarded for one more referral this month, if not.
pub fn referral_limit(account: &Account, program: &Program, day: NaiveDate) -> Option<String> {
    let max = program.referral.as_ref().map_or(0, |r| r.max_per_month);
    let month = YearMonth::of(day).to_string();
    let rewarded = account
        .actions
        .get(REFERRALS_REWARDED)
        .and_then(|months| months.get(&month))
        .copied()
        .unwrap_or(0);
    (max > 0 && rewarded >= max).then(|| {
        format!("referral refused: the referrer was rewarded for {rewarded} referrals in {month}, the program's limit is {max} a month")
    })
}

/// Where an account counts the referrals it was rewarded for, by month.
pub const REFERRALS_REWARDED: &str = "referrals-rewarded";

/// Why an event is held for review, if it is: it would take the member's points earned on
/// `day` past the program's daily limit.
pub fn over_daily_limit(
    program: &Program,
    earned_today: i64,
    crediting: i64,
    day: NaiveDate,
) -> Option<String> {
    let limit = program.safeguards.daily_points?;
    (crediting > 0 && earned_today.saturating_add(crediting) > limit).then(|| {
        format!(
            "held for review: {crediting} points would take the member's earnings on {day} to {}, above the daily limit of {limit}",
            earned_today.saturating_add(crediting)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_that_differ_by_dots_tags_or_case_are_one_identity() {
        // GIVEN variants of one address WHEN normalised THEN they are the same
        for variant in [
            "minji@example.com",
            "Min.Ji+friend@Example.COM",
            "minji+2@example.com",
        ] {
            assert_eq!(normalized("email", variant), "email:minji@example.com");
        }
        // AND another address, or another domain, stays another
        assert_ne!(
            normalized("email", "minjii@example.com"),
            "email:minji@example.com"
        );
        assert_ne!(
            normalized("email", "minji@example.org"),
            "email:minji@example.com"
        );
        // AND phone numbers compare by their digits, nationally
        assert_eq!(
            normalized("phone", "+82 10-1234-5678"),
            normalized("pos", "010-1234-5678")
        );
    }

    #[test]
    fn a_shared_identity_is_a_self_referral() {
        // GIVEN a referee whose email is the referrer's with a +tag
        let referee = identities_of("email:minji+ref@example.com", &[]);
        let referrer = identities_of("app-1", &[("email".into(), "minji@example.com".into())]);
        // WHEN checked THEN it is refused, naming the identity; another person is not
        let reason = self_referral(&referee, &referrer).expect("refused");
        assert!(
            reason.contains("(email)") && !reason.contains("minji"),
            "{reason}"
        );
        let other = identities_of("email:bo@example.com", &[]);
        assert_eq!(self_referral(&other, &referrer), None);
    }
}
