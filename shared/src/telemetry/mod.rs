//! Logs, set up the same way by every Lambda function and by `loyalty serve`.
//!
//! The level is INFO unless something says otherwise: `LOYALTY_LOG` (any filter directive, e.g.
//! `warn` or `loyalty_core=debug`), else `RUST_LOG`, else the level Lambda's logging
//! configuration passes in `AWS_LAMBDA_LOG_LEVEL` (the template sets it). Functions write JSON
//! lines with their level and an RFC 3339 `timestamp`: Lambda's log-level filter takes a line
//! without either for INFO, and a function set to WARN would drop its own warnings.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub mod metrics;
pub mod trace;

/// Kinds of member id whose value names a person however it is written.
const PERSONAL_KINDS: [&str; 8] = [
    "email", "phone", "tel", "pos", "mobile", "hp", "sms", "whatsapp",
];
/// Kinds of member id whose value is a platform's number for a customer, not a person's.
const PLATFORM_KINDS: [&str; 3] = ["shopify", "woocommerce", "cafe24"];

/// Where the key of the log digests comes from: a deployment's own secret (the template
/// generates one per stack), else `loyalty serve`'s token secret.
pub const LOG_KEY_VARS: [&str; 2] = ["LOYALTY_LOG_KEY", "LOYALTY_JWT_SECRET"];

/// The keyed MAC, made once: each digest starts from a clone of it rather than from the key.
static LOG_KEY: std::sync::OnceLock<hmac::Hmac<sha2::Sha256>> = std::sync::OnceLock::new();

/// Keys the digests of this process's logs with a secret, once (later calls change nothing):
/// without it, anyone could recompute a digest from a guessed email or phone number, and a
/// country's phone numbers are few enough to try them all. The key is derived from the secret,
/// so that a token secret serves its own purpose and this one apart.
pub fn set_log_key(secret: &[u8]) {
    use hmac::Mac as _;
    if secret.is_empty() {
        return;
    }
    if let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        mac.update(b"loyalty log digest v1");
        let key = mac.finalize().into_bytes();
        if let Ok(keyed) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key) {
            let _ = LOG_KEY.set(keyed);
        }
    }
}

/// [`set_log_key`] from the first of [`LOG_KEY_VARS`] that is set.
pub fn set_log_key_from_env() {
    if let Some(secret) = LOG_KEY_VARS
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
    {
        set_log_key(secret.as_bytes());
    }
}

/// The digest of an id in a log: keyed (HMAC-SHA256) when the process has a key, FNV-1a
/// otherwise (a development run without secrets), 16 hex digits either way.
fn digest(id: &str) -> String {
    use hmac::Mac as _;
    let value = match LOG_KEY.get().cloned() {
        Some(mut mac) => {
            mac.update(id.as_bytes());
            let tag = mac.finalize().into_bytes();
            let mut first = [0u8; 8];
            first.copy_from_slice(&tag[..8]);
            u64::from_be_bytes(first)
        }
        None => crate::fingerprint::fnv1a64(id.bytes()),
    };
    format!("{value:016x}")
}

/// How a log line names a member: its id, unless the id may name a person (an email, a phone
/// number however it is prefixed or written), which is replaced by a digest so that no log
/// holds it. The digest is the same on every line, so a member's lines still go together.
pub fn member_ref(member: &str) -> String {
    if names_a_person(member) {
        format!("person-{}", digest(member))
    } else {
        member.to_string()
    }
}

fn names_a_person(member: &str) -> bool {
    let member = &*fold_lookalikes(member);
    let (kind, value) = member.split_once(':').unwrap_or(("", member));
    if member.contains('@') || PERSONAL_KINDS.contains(&kind) {
        return true;
    }
    // A platform's number for a customer is no person's, unless it is written as a phone
    // number (a platform's own ids never start with `0` or `+`).
    if PLATFORM_KINDS.contains(&kind) {
        return holds_a_phone_number(value);
    }
    // A number alone (01012345678, +82 10-1234-5678) may be a till's or an app's phone
    // number; so may one inside a longer id.
    let phone_like = value
        .chars()
        .all(|c| c.is_ascii_digit() || PHONE_PUNCTUATION.contains(&c));
    let digits = value.chars().filter(char::is_ascii_digit).count();
    (phone_like && digits >= 7) || holds_a_phone_number(value)
}

/// What may separate a phone number's digits (`010-1234-5678`, `+82 10 1234 5678`,
/// `+44 (20) 7946 0958`).
const PHONE_PUNCTUATION: [char; 5] = ['+', '-', ' ', '(', ')'];

/// Whether the text holds what is written like a phone number ([`phone_numbers`]).
fn holds_a_phone_number(text: &str) -> bool {
    !phone_numbers(text).is_empty()
}

/// The byte ranges of what is written like a phone number: starting with `+` or `0` (an
/// international or a national number) where no letter or digit comes before, 9 to 15 digits
/// in groups separated by at most three of [`PHONE_PUNCTUATION`] (`010 - 1234`), and no letter or digit after
/// (so a hex digest or a longer number is none). After a space, a group starting with `0` or
/// `+` starts the next number once this one has 9 digits. And the [`dotted_numbers`] and
/// [`north_american_numbers`] that none of those overlaps.
fn phone_numbers(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let separator = |c: u8| b" -()".contains(&c);
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = (b[i] == b'+' || b[i] == b'0')
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && b.get(i + usize::from(b[i] == b'+'))
                .is_some_and(u8::is_ascii_digit);
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + usize::from(b[i] == b'+');
        let mut digits = 0usize;
        // The last group end with a whole number before a `-` and more digits: ids the engine
        // builds join a member's number to a count or a time that way (`resume-010...-1717...`,
        // `birthday-+8210...-2026`), which would otherwise read as one number too long.
        let mut joined: Option<usize> = None;
        let end = loop {
            let group = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            digits += j - group;
            let end = j;
            if (9..=15).contains(&digits)
                && b.get(j) == Some(&b'-')
                && b.get(j + 1).is_some_and(u8::is_ascii_digit)
            {
                joined = Some(j);
            }
            let gap = j;
            while j < b.len() && j - gap < 3 && separator(b[j]) {
                j += 1;
            }
            let next_starts = j < b.len() && (b[j] == b'0' || b[j] == b'+');
            let spaced = b[gap..j].contains(&b' ');
            if j == gap || j >= b.len() || digits > 15 || (digits >= 9 && spaced && next_starts) {
                break end;
            }
            if b[j] == b'+' || !b[j].is_ascii_digit() {
                break end;
            }
        };
        let end = extension_end(b, end).unwrap_or(end);
        let alone = end >= b.len() || !b[end].is_ascii_alphanumeric();
        if (9..=15).contains(&digits) && alone {
            found.push((i, end));
            i = end;
        } else if let Some(joined) = joined {
            found.push((i, joined));
            i = joined;
        } else {
            i += 1;
        }
    }
    for other in dotted_numbers(text)
        .into_iter()
        .chain(north_american_numbers(text))
    {
        if !found.iter().any(|&(a, b)| other.0 < b && a < other.1) {
            found.push(other);
        }
    }
    found.sort_unstable();
    found
}

/// Where a number's extension ends, if one follows at `end`: `x12`, `ext. 12`, `ext12`, `#12`,
/// `extension 12`, `ext #12` (1 to 6 digits, after at most two spaces on either side of the
/// marker), so that a number typed with its extension is replaced whole and not kept for the
/// letters that follow it. The digits must end the word: what goes on with a letter, a digit, `_`, or a `-`
/// or `.` before more of them (`#010-9876-5432`, `x2.5`) is no extension, and the number is
/// taken without it.
fn extension_end(b: &[u8], end: usize) -> Option<usize> {
    let spaces = |at: usize| {
        b.get(at..)
            .map_or(0, |r| r.iter().take(2).take_while(|&&c| c == b' ').count())
    };
    let mut j = end + spaces(end);
    let rest = b.get(j..)?;
    let marker = [
        &b"extension"[..],
        b";ext=",
        "\u{b0b4}\u{c120}".as_bytes(), // Korean: extension
        b"ext.",
        b"ext:",
        b"ext",
        b"x",
        b"#",
    ]
    .into_iter()
    .find(|m| {
        rest.get(..m.len())
            .is_some_and(|r| r.eq_ignore_ascii_case(m))
    })?;
    j += marker.len();
    j += spaces(j);
    // A word and a sign may both say it (`ext #12`, `ext. #12`).
    if marker != b"#" && b.get(j) == Some(&b'#') {
        j += 1;
        j += spaces(j);
    }
    let digits = b
        .get(j..)?
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    let end = j + digits;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let goes_on = match b.get(end) {
        Some(&c) if word(c) => true,
        Some(b'-' | b'.') => b.get(end + 1).copied().is_some_and(word),
        _ => false,
    };
    ((1..=6).contains(&digits) && !goes_on).then_some(end)
}

/// The byte ranges of North American numbers as they are written without `+`: `555-123-4567`,
/// `555.123.4567`, `555 123 4567`, `(555) 123-4567`, `1-555-123-4567`: groups of 3, 3 and 4
/// digits joined twice by the same `-`, `.` or space (or an area code in brackets, then one of
/// them or nothing), with no letter, digit, `_`, `.` or `-` before and none after but a full
/// stop or dash ending the text or a sentence. Ten digits alone are none (an order number):
/// only the groups tell.
fn north_american_numbers(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let joins = |c: u8| b"-. ".contains(&c);
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let touches = |c: u8| word(c) || c == b'.' || c == b'-';
    let digits = |at: usize, n: usize| {
        b.get(at..at + n)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let ends_at = |end: usize| match b.get(end) {
        Some(&c) if word(c) => false,
        Some(b'.' | b'-') => !b.get(end + 1).copied().is_some_and(word),
        _ => true,
    };
    let number_at = |mut j: usize| -> Option<usize> {
        if b.get(j) == Some(&b'1') && b.get(j + 1).copied().is_some_and(joins) {
            j += 2;
        }
        let join = if b.get(j) == Some(&b'(') && digits(j + 1, 3) && b.get(j + 4) == Some(&b')') {
            j += 5;
            j += usize::from(b.get(j).copied().is_some_and(joins));
            None
        } else if digits(j, 3) && b.get(j + 3).copied().is_some_and(joins) {
            j += 4;
            b.get(j - 1).copied()
        } else {
            return None;
        };
        let second = b.get(j + 3).copied();
        let exchange = digits(j, 3)
            && second.is_some_and(joins)
            && join.is_none_or(|first| Some(first) == second);
        let end = extension_end(b, j + 8).unwrap_or(j + 8);
        (exchange && digits(j + 4, 4) && ends_at(end)).then_some(end)
    };
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let free = i == 0 || !touches(b[i - 1]);
        match number_at(i).filter(|_| free && (b[i].is_ascii_digit() || b[i] == b'(')) {
            Some(end) => {
                found.push((i, end));
                i = end;
            }
            None => i += 1,
        }
    }
    found
}

/// The byte ranges of numbers written with dots (`010.1234.5678`, `+82.10.1234.5678`): starting
/// with `0` or `+` where no letter, digit or dot comes before, three or more groups of 2 to 4
/// digits (the first after `+` may be 1 to 4) joined by single dots, 9 to 15 digits in all, and
/// no letter, digit or dot after but a full stop ending the text or a sentence. A date
/// (`01.12.2026`) or a decimal (`0.123456789`) is none.
fn dotted_numbers(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let around = |c: &u8| c.is_ascii_alphanumeric() || *c == b'.';
    let ends_at = |end: usize| match b.get(end) {
        Some(b'.') => b.get(end + 1).is_none_or(u8::is_ascii_whitespace),
        other => !other.is_some_and(around),
    };
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let plus = b[i] == b'+';
        if !(plus || b[i] == b'0') || (i > 0 && around(&b[i - 1])) {
            i += 1;
            continue;
        }
        let (mut j, mut groups, mut digits) = (i + usize::from(plus), 0, 0);
        let end = loop {
            let group = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let shortest = if plus && groups == 0 { 1 } else { 2 };
            if !(shortest..=4).contains(&(j - group)) {
                break None;
            }
            groups += 1;
            digits += j - group;
            if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
                j += 1;
            } else {
                break Some(j);
            }
        };
        // With an extension, the extension's own end decides (a full stop may follow it).
        let end = end.and_then(|end| match extension_end(b, end) {
            Some(extended) => Some(extended),
            None => ends_at(end).then_some(end),
        });
        match end {
            Some(end) if groups >= 3 && (9..=15).contains(&digits) => {
                found.push((i, end));
                i = end;
            }
            _ => i += 1,
        }
    }
    found
}

/// How a log line names an event or message id: as it is, unless it holds an identity that
/// names a person (an id built from a member's: a merge's, a notice's, or one chosen so by a
/// caller), which is replaced by a digest.
pub fn event_ref(id: &str) -> String {
    let folded = fold_lookalikes(id);
    let personal = folded.contains('@')
        || PERSONAL_KINDS
            .iter()
            .any(|k| folded.contains(&format!("{k}:")))
        || holds_a_phone_number(&folded);
    if personal {
        format!("event-{}", digest(id))
    } else {
        id.to_string()
    }
}

/// Text for a log line that may quote input (a reason, an error naming a stored key): every
/// email address and everything written like a phone number in it is replaced by the digest
/// [`member_ref`] gives, so that the line keeps its sense and no person's details.
pub fn redact(text: &str) -> String {
    redact_phone_numbers(&redact_emails(&fold_lookalikes(text)))
}

/// Full-width forms (`０１０`, `＠`) and the dashes other than `-` (`–`, `—`, `−`) as the
/// ASCII they stand for, so that an address or a number typed with them is found as one.
fn fold_lookalikes(text: &str) -> std::borrow::Cow<'_, str> {
    let folded = |c: char| match c {
        '\u{ff01}'..='\u{ff5e}' => char::from_u32(u32::from(c) - 0xfee0),
        '\u{3000}' => Some(' '),
        '\u{2010}'..='\u{2015}' | '\u{2212}' => Some('-'),
        _ => None,
    };
    if text.chars().all(|c| folded(c).is_none()) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.chars().map(|c| folded(c).unwrap_or(c)).collect())
}

/// The byte ranges of what [`redact`] replaces: email addresses (as [`redact_emails`] finds
/// them, but for a quoted local part) and phone numbers. A text cut through one of them would
/// leave a piece that no longer reads as one, and that the logs would keep ([`crate::ids`]).
pub(crate) fn personal_spans(text: &str) -> Vec<(usize, usize)> {
    let folded = fold_lookalikes(text);
    if folded != text {
        // Folding keeps the characters' count: a span found in it is the same characters.
        let starts =
            |s: &str| -> Vec<usize> { s.char_indices().map(|(i, _)| i).chain([s.len()]).collect() };
        let (from, to) = (starts(&folded), starts(text));
        let back = |at: usize| from.binary_search(&at).map_or(text.len(), |n| to[n]);
        return ascii_personal_spans(&folded)
            .into_iter()
            .map(|(start, end)| (back(start), back(end)))
            .collect();
    }
    ascii_personal_spans(text)
}

/// [`personal_spans`] of a text whose look-alikes are folded.
fn ascii_personal_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = phone_numbers(text);
    let mut word_start = 0;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        if !ends_a_word(c) {
            continue;
        }
        let word = &text[word_start..i];
        if let Some(at) = word.find('@').filter(|&at| at > 0 && at + 1 < word.len()) {
            let from = word[..at].rfind(':').map_or(0, |colon| colon + 1);
            spans.push((word_start + from, i));
        }
        word_start = i + c.len_utf8();
    }
    spans
}

/// What ends a word that may be an email address.
fn ends_a_word(c: char) -> bool {
    c.is_whitespace() || "\"'`<>,;()[]{}/=".contains(c)
}

/// Replaces each word holding an `@` between two other characters (from after its last `:`
/// before the `@`, so that `email:` stays), in one pass.
fn redact_emails(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word_start = 0;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        if !ends_a_word(c) {
            continue;
        }
        let word = &text[word_start..i];
        match word.find('@') {
            Some(at) if at > 0 && at + 1 < word.len() => {
                let from = word[..at].rfind(':').map_or(0, |colon| colon + 1);
                out.push_str(&word[..from]);
                out.push_str(&member_ref(&word[from..]));
            }
            // A quoted local part (`"ann"@example.com`): the quotes split it from its domain.
            Some(0) if word.len() > 1 && out.ends_with('"') => {
                match out[..out.len() - 1].rfind('"') {
                    Some(open) => {
                        let address = format!("{}{word}", &out[open..]);
                        out.truncate(open);
                        out.push_str(&member_ref(&address));
                    }
                    None => out.push_str(word),
                }
            }
            _ => out.push_str(word),
        }
        if i < text.len() {
            out.push(c);
        }
        word_start = i + c.len_utf8();
    }
    out
}

/// Replaces each of the [`phone_numbers`] in the text.
fn redact_phone_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for (start, end) in phone_numbers(text) {
        out.push_str(&text[from..start]);
        out.push_str(&member_ref(&format!("phone:{}", &text[start..end])));
        from = end;
    }
    out.push_str(&text[from..]);
    out
}

/// The filter directive from the three variables, in that order, else `info`.
fn directive(loyalty: Option<String>, rust: Option<String>, lambda: Option<String>) -> String {
    let given = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    given(loyalty)
        .or_else(|| given(rust))
        .or_else(|| given(lambda).map(|level| lambda_level(&level).to_string()))
        .unwrap_or_else(|| "info".to_string())
}

/// Lambda's level names (TRACE, DEBUG, INFO, WARN, ERROR, FATAL) as tracing's.
fn lambda_level(level: &str) -> &'static str {
    match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "WARN" => "warn",
        "ERROR" | "FATAL" => "error",
        _ => "info",
    }
}

/// The level filter of this process, from its environment: a level, and levels by target
/// (`warn,loyalty_core=debug`). `Targets` rather than `EnvFilter`, whose span-field filters
/// nobody here uses and whose regular expressions would add a regex engine to every bootstrap.
pub fn filter() -> Targets {
    let var = |name: &str| std::env::var(name).ok();
    let wanted = directive(
        var("LOYALTY_LOG"),
        var("RUST_LOG"),
        var("AWS_LAMBDA_LOG_LEVEL"),
    );
    wanted
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
}

/// Logs and metrics of a Lambda function named `function` (`earn`, `redeem`, ...): JSON lines
/// on standard output, at the level of [`filter`]. The Lambda runtime's span gives each line
/// the invocation's `requestId` and `xrayTraceId`.
pub fn init_lambda(function: &'static str) {
    metrics::set_function(function);
    set_log_key_from_env();
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().json())
        .with(filter())
        .init();
}

static STARTED: AtomicBool = AtomicBool::new(false);

/// Counts the first invocation of this process as a cold start.
fn count_cold_start() {
    if !STARTED.swap(true, Ordering::Relaxed) {
        metrics::add(metrics::COLD_STARTS, &[], 1);
    }
}

/// One Lambda invocation of a function driven by events (queues, schedules, the stream): run
/// under the invocation's trace, then what it counted is written as EMF lines.
pub async fn invocation<F: std::future::Future>(work: F) -> F::Output {
    count_cold_start();
    let out = trace::scope(trace::from_lambda_env(), work).await;
    metrics::flush_emf();
    out
}

/// The HTTP functions' routers, observed: each request runs under its trace (the
/// `X-Amzn-Trace-Id` header, else the invocation's), is logged by its route (never its path,
/// which may hold an email) and counted by status class; its metrics go out as EMF lines.
pub fn observe_lambda_http(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::from_fn(lambda_request))
}

/// `loyalty serve`'s router, observed the same way; its metrics stay for `GET /metrics`.
pub fn observe_http(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::from_fn(local_request))
}

async fn lambda_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    count_cold_start();
    let response = observed_request(request, next, trace::from_lambda_env()).await;
    metrics::flush_emf();
    response
}

async fn local_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // campaign-assign answers HTTP inside an invocation already under its trace.
    observed_request(request, next, trace::current()).await
}

async fn observed_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    invocation_trace: Option<String>,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let trace = request
        .headers()
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok())
        .and_then(trace::root_of)
        .or(invocation_trace)
        .unwrap_or_else(trace::new_id);
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = trace::scope(Some(trace.clone()), next.run(request)).await;
    let status = response.status().as_u16();
    let class = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::add(metrics::REQUESTS, &[("status", class)], 1);
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    // A refusal says which problem and why (redacted), and the program it was for: the
    // route alone says neither.
    let (problem, detail) = match response.extensions().get::<AnsweredProblem>() {
        // Redacted whole, then cut: a cut address or number would no longer be one.
        Some(p) => (p.slug, redact(&p.detail).chars().take(300).collect()),
        None => ("", String::new()),
    };
    let program = program_in(&route, &path).unwrap_or_default();
    if status >= 500 {
        tracing::warn!(%method, route, program, status, millis, trace, problem, detail, "request answered");
    } else {
        tracing::info!(%method, route, program, status, millis, trace, problem, detail, "request answered");
    }
    response
}

/// What a problem+json answer was, for the request's log line (set by the API's `Problem`).
#[derive(Debug, Clone)]
pub struct AnsweredProblem {
    pub slug: &'static str,
    pub detail: String,
}

/// The program a request's path names where its route has `{program}`, if it is a program id
/// and names no one (anything else there is the caller's text, never logged: digits and
/// dashes make a program id and a phone number alike).
fn program_in<'a>(route: &str, path: &'a str) -> Option<&'a str> {
    let at = route
        .split('/')
        .position(|segment| segment == "{program}")?;
    path.split('/').nth(at).filter(|value| {
        crate::ids::IdKind::Program.accepts(value) && redact(value).as_str() == *value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_s_program_is_logged_only_when_it_is_one_and_names_no_one() {
        let route = "/v1/programs/{program}/events";
        assert_eq!(
            program_in(route, "/v1/programs/kr-shop/events"),
            Some("kr-shop")
        );
        // (a phone number is a valid program id by its characters)
        assert_eq!(program_in(route, "/v1/programs/010-1234-5678/events"), None);
        assert_eq!(
            program_in(route, "/v1/programs/kim@example.com/events"),
            None
        );
        assert_eq!(program_in("/health", "/health"), None);
    }

    #[test]
    fn members_named_by_an_email_or_a_phone_number_are_logged_by_a_digest() {
        // GIVEN member ids that name a person and ids that do not
        // WHEN they are named in a log THEN only the latter appear as they are
        for personal in [
            "email:ann@example.com",
            "pos:010-1234-5678",
            "phone:+821012345678",
            "01012345678",
            "hp:010-1234-5678",
            "whatsapp:+82 10 1234 5678",
            "till-7:010-1234-5678",
            "+44 (20) 7946 0958",
            "010.5678.1234",
            "+82.10.1234.5678",
            // (a platform's customer sent as a phone number, a full-width address: before,
            // kept)
            "shopify:010-5155-5678",
            "ann\u{ff20}example.com",
        ] {
            let logged = member_ref(personal);
            assert!(
                logged.starts_with("person-")
                    && !logged.contains("ann")
                    && !logged.contains("5678"),
                "{personal}: {logged}"
            );
        }
        for plain in [
            "m-1",
            "shopify:7001234",
            "woocommerce:123456789",
            "app-minji",
            "erased-5f0c",
            "cust-10023456",
            "m-550e8400-e29b-41d4-a716-446655440000",
        ] {
            assert_eq!(member_ref(plain), plain);
        }
    }

    #[test]
    fn text_quoting_input_keeps_its_sense_and_loses_emails_and_phone_numbers() {
        // GIVEN reasons and errors as they are logged, quoting a person's details
        let quoted = [
            "invalid type: string \"ann@example.com\", expected an integer",
            "corrupt item account kr-shop/email:ann@example.com: key must be a string",
            "member 010-1234-5678 is suspended",
            "call +82 10 1234 5678 (mobile) before 6pm",
            "member 010.1234.5678 is suspended",
        ];
        for text in quoted {
            // WHEN they are redacted
            let logged = redact(text);
            // THEN no email or number is left, and the rest is as it was
            assert!(
                !logged.contains("ann@") && !logged.contains("1234") && logged.contains("person-"),
                "{text} -> {logged}"
            );
        }
        let kept = |text: &str, part: &str| {
            let logged = redact(text);
            assert!(logged.contains(part), "{text} -> {logged}");
        };
        kept(quoted[2], " is suspended");
        kept(quoted[1], "kr-shop/email:person-");
        kept(quoted[3], " (mobile) before 6pm");
        // AND a number beside another, and two numbers in a row, are each replaced
        for text in [
            "member 42 010-1234-5678",
            "010-1234-5678 010-9876-5432",
            "a@b.c @ ann@x.io",
            "member \"ann\"@example.com is unknown",
        ] {
            let logged = redact(text);
            assert!(
                !logged.contains("1234") && !logged.contains("ann"),
                "{text} -> {logged}"
            );
        }
        assert!(redact("010-1234-5678 010-9876-5432").split(' ').count() == 2);
        // AND North American numbers as they are written there (before: kept as typed)
        for text in [
            "program \"(555) 123-4567\" is not valid",
            "member \"555.123.4567\" does not exist",
            "member 1-555-123-4567 does not exist",
            "unit_price: 555-123-4567 is not an amount",
            "call (555)123-4567 or 555 123 4567",
            "call 555-123-4567.",
            "call (555)-123-4567, or (555).123.4567",
        ] {
            let logged = redact(text);
            assert!(
                !logged.contains("4567") && logged.contains("person-"),
                "{text} -> {logged}"
            );
        }
        // AND a number with its extension is replaced whole (before: kept as typed when the
        // extension touched it, and the extension left after it otherwise)
        for (text, after) in [
            ("call 555-123-4567x12 today", " today"),
            ("call (555) 123-4567 ext. 345", ""),
            ("member 010-1234-5678#12 is suspended", " is suspended"),
            ("call +82 10 1234 5678 X9", ""),
            ("call 010.1234.5678 ext12", ""),
            ("call 010.1234.5678 x12.", "."),
            ("call 010.1234.5678.", "."),
            ("call 010.1234.5678. Then", ". Then"),
            ("call +82.10.1234.5678 x9. Then", ". Then"),
            ("call 555-123-4567 extension 12", ""),
            ("call 555-123-4567 ext: 12, later", ", later"),
            // (a word and a sign, or two spaces: before, the extension was left)
            ("call 555-123-4567 ext #12", ""),
            ("call 010-1234-5678 ext. # 9, later", ", later"),
            ("call 555-123-4567  x12 today", " today"),
            ("call 010-1234-5678;ext=12", ""),
            ("call 010-1234-5678 \u{b0b4}\u{c120} 12", ""),
            // (other separators, other dashes, full-width forms: before, kept as typed)
            ("tel 010 - 1234 - 5678", ""),
            ("tel 010\u{2013}1234\u{2013}5678", ""),
            ("tel \u{ff10}\u{ff11}\u{ff10}-\u{ff11}\u{ff12}\u{ff13}\u{ff14}-\u{ff15}\u{ff16}\u{ff17}\u{ff18}", ""),
            ("mail kim.minji\u{ff20}example.com", ""),
        ] {
            let logged = redact(text);
            let replaced = logged
                .strip_suffix(after)
                .and_then(|l| l.split(' ').next_back())
                .and_then(|word| word.strip_prefix("person-"));
            assert!(
                replaced.is_some_and(|d| d.bytes().all(|c| c.is_ascii_hexdigit())),
                "{text} -> {logged}"
            );
        }
        // AND a word after a number is no extension
        kept("call 555-123-4567 extra, 010-1234-5678 x-ray", " extra, ");
        kept("call 555-123-4567 extra, 010-1234-5678 x-ray", " x-ray");
        // AND what goes on after an extension's digits makes it none: the number is replaced
        // alone, and a second number after it is one of its own (before this rule: the first
        // number, or the second's rest, left as typed)
        for text in [
            "555-123-4567 ext. 12-14",
            "555-123-4567 #12_",
            "call 555-123-4567 x2.5",
            "555-123-4567 #555-987-6543",
            "010-1234-5678 #010-9876-5432",
            "010-1234-5678 # 010-9876-5432",
            "tel 010-1234-5678 #02-555-1234",
            "010-1234-5678 x 02-555-1234",
        ] {
            let logged = redact(text);
            assert!(
                !["4567", "5678", "6543", "5432", "1234"]
                    .iter()
                    .any(|digits| logged.contains(digits)),
                "{text} -> {logged}"
            );
        }
        // AND text without them is untouched
        for plain in [
            "order 820982911946154508 has no line 466157049",
            "the order's total 59000 is over the limit of 10000000000000",
            "version conflict on member shopify:7001234",
            "due 01.12.2026 10:00, rate 0.123456789",
            "due 03/17/2026 09:30, and 01/02/2026 10:00:00",
            "version 0.12.1234, host 10.0.12.1, build 2026.12.07.0001",
            "key person-0123456789abcdef and job:expire:2026-12-01:a12",
            "한국어 설명 0 @ 끝",
            "order 5551234567, sku 555-123-45678, ids 1555-123-4567 and a-555-123-4567",
            "from 2026-12-07 to 2027-01-06, 123.456.7890.1",
            "lines 100-200 3000, sku_555-123-4567, 555-123-4567-2",
            "555-123-4567x1234567, 010-1234-5678x1234567",
        ] {
            assert_eq!(redact(plain), plain);
        }
    }

    #[test]
    fn event_ids_holding_an_email_or_a_phone_number_are_logged_by_a_digest() {
        for personal in [
            "merge-email:ann@example.com",
            "merge-01012345678",
            "points-earned-tier-hp:010-1234-5678",
            // (a member's number joined to a time or a year by the engine)
            "resume-01012345678-1717000000000",
            "birthday-+821012345678-2026",
            "anniversary-010-1234-5678-2027",
            "ev-010.4444.5555",
            "points-earned-ev-010.4444.5555",
            // (with other dashes or full-width forms: before, kept as sent)
            "ev 010\u{2013}4444\u{2013}5555",
            "ev ann\u{ff20}example.com",
        ] {
            assert!(event_ref(personal).starts_with("event-"), "{personal}");
        }
        for plain in [
            "shopify-order-820982911946154508-paid",
            "woocommerce-order-4512-refund-77",
            "ev-log-1",
            "cafe24-order-20261201-0000123",
        ] {
            assert_eq!(event_ref(plain), plain);
        }
    }

    #[tokio::test]
    async fn a_request_answered_inside_an_invocation_keeps_the_invocation_s_trace() {
        use tower::ServiceExt as _;
        // GIVEN a router observed as campaign-assign's is, answering with the trace it runs under
        let router = observe_http(axum::Router::new().route(
            "/t",
            axum::routing::get(|| async { trace::current().unwrap_or_default() }),
        ));
        let request = || {
            axum::http::Request::builder()
                .uri("/t")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        // WHEN a request without a trace header is answered inside an invocation's trace
        let invocation = "1-6750a1b2-0123456789abcdef01234567".to_string();
        let response = trace::scope(Some(invocation.clone()), router.clone().oneshot(request()))
            .await
            .unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        // THEN it runs under the invocation's trace
        assert_eq!(body, invocation.as_bytes());
        // AND outside an invocation (loyalty serve) it gets a trace of its own
        let response = router.oneshot(request()).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert!(!body.is_empty() && body != invocation.as_bytes());
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn info_unless_something_says_otherwise() {
        // GIVEN no variable WHEN the level is chosen THEN it is INFO
        assert_eq!(directive(None, None, None), "info");
        // AND an empty one is no variable
        assert_eq!(directive(s(" "), None, None), "info");
    }

    #[test]
    fn loyalty_log_then_rust_log_then_lambda() {
        assert_eq!(directive(s("warn"), s("debug"), s("ERROR")), "warn");
        assert_eq!(directive(None, s("debug"), s("ERROR")), "debug");
        assert_eq!(directive(None, None, s("ERROR")), "error");
        assert_eq!(directive(None, None, s("FATAL")), "error");
        assert_eq!(directive(None, None, s("warn")), "warn");
    }
}
