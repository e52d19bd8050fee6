//! State adapters. Both implement the ports of `crate::ports` with the same semantics: one
//! conditional transaction per commit (account version, new ledger entries, event marker).

#[cfg(feature = "aws")]
pub mod dynamodb;
#[cfg(feature = "sqlite")]
#[cfg(feature = "sqlite")]
mod group_commit;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Ledger entries are ordered by a per-member sequence derived from the account version that
/// wrote them, so recording order is exact (no clock skew between writers) and a cursor never
/// skips or repeats an entry, however many are added meanwhile.
pub fn ledger_seq(version: u64, index: usize) -> u64 {
    version.saturating_mul(MAX_ENTRIES_PER_COMMIT as u64) + index as u64
}

/// A commit writes at most this many ledger entries.
pub const MAX_ENTRIES_PER_COMMIT: usize = 10_000;

/// The most items one commit may write (DynamoDB's limit for a transaction), on every store.
pub const MAX_COMMIT_ITEMS: usize = 100;

/// The refusal of a commit that no store writes: one too large for one transaction, or one
/// whose event is marked on an order whose record it does not write (the marker of an order's
/// event is looked for on that record alone, [`crate::ports::MemberStore::load_member_for_event`]).
pub(crate) fn unfit(commit: &crate::ports::Commit) -> Option<crate::ports::StoreError> {
    let refused = |message: String| crate::ports::StoreError::Unfit { message };
    let items = commit.items();
    if items > MAX_COMMIT_ITEMS || commit.entries.len() > MAX_ENTRIES_PER_COMMIT {
        return Some(refused(format!(
            "a commit of {items} items is more than one transaction can hold ({MAX_COMMIT_ITEMS})"
        )));
    }
    match &commit.marker_order {
        Some(order) if !commit.orders.contains_key(order) => Some(refused(format!(
            "a commit marks its event on order {order} but does not write that order's record"
        ))),
        _ => None,
    }
}

/// The sort-key form of a sequence: zero-padded so that string order is numeric order.
pub fn seq_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// Cursors are the sequence of the last entry returned; anything else is refused.
pub fn decode_cursor(cursor: &str) -> Option<u64> {
    if cursor.is_empty() || cursor.len() > 20 || !cursor.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    cursor.parse().ok()
}

pub fn encode_cursor(seq: u64) -> String {
    seq.to_string()
}
