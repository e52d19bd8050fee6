//! A member's data, all of it, as one JSON document (GDPR Articles 15 and 20, PIPA's right of
//! access): profile, account, identities, orders, redemptions, coupons, campaign assignments
//! and the events held for it first, then the whole ledger, newest first, read and written a page at a
//! time, so that a member with a long history never sits in memory whole; then the ledgers of
//! the members merged into it, which keep their own history (`merged_ledgers`).

use futures_util::stream::{self, Stream};
use serde_json::json;

use super::{ServiceError, Services};
use crate::ports::StoreError;

/// Ledger entries read per page of an export.
const EXPORT_PAGE: usize = 100;

/// Where the ledger part of an export stands: the ledger of the member, then those of the
/// members merged into it (`ledgers[index]`).
enum Part {
    Head(String),
    Ledger {
        index: usize,
        cursor: Option<String>,
        first: bool,
    },
    Done,
}

/// What closes the ledger at `index` of `count`, and opens the next: the member's own ledger
/// is the document's `ledger`; those of members merged into it follow in `merged_ledgers`.
fn after_ledger(index: usize, count: usize, next: Option<&str>) -> String {
    let next = next.map(|m| serde_json::to_string(m).unwrap_or_default());
    match (index, next) {
        (0, None) => "]}".to_string(),
        (0, Some(m)) => format!("],\"merged_ledgers\":[{{\"member\":{m},\"ledger\":["),
        (_, Some(m)) => format!("]}},{{\"member\":{m},\"ledger\":["),
        (_, None) if count > 1 => "]}]}".to_string(),
        (_, None) => "]}".to_string(),
    }
}

impl Services {
    /// The member's events the engine holds: those waiting for its resume (suspended) and
    /// those held for an operator's review. They name the person as much as the ledger does.
    /// Those of the members merged into it too: still held under their ids.
    async fn events_held_for(
        &self,
        program: &str,
        members: &[String],
    ) -> Result<Vec<serde_json::Value>, ServiceError> {
        let mut held = Vec::new();
        for member in members {
            let suspended = super::suspension::parking_key(member);
            for (id, body) in self.store.parked(program, &suspended).await? {
                let event: serde_json::Value = serde_json::from_str(&body).unwrap_or(json!(body));
                held.push(json!({"id": id, "waits_for": "resume", "event": event}));
            }
        }
        for (id, body) in self
            .store
            .parked(program, super::safeguards::REVIEW_KEY)
            .await?
        {
            let Ok(event) = serde_json::from_str::<super::safeguards::HeldEvent>(&body) else {
                continue;
            };
            if members.contains(&event.member) {
                held.push(
                    json!({"id": id, "waits_for": "review", "reason": event.reason,
                    "event": event.event}),
                );
            }
        }
        Ok(held)
    }

    /// The events refused for good that name the member or one of its identities (or those of
    /// the members merged into it), as an erasure finds them to delete: a read of every
    /// rejected event of the program (exports are rare).
    async fn rejected_naming(
        &self,
        program: &str,
        members: &[String],
        aliases: &[(String, String)],
    ) -> Result<Vec<serde_json::Value>, ServiceError> {
        let mut names = super::erasure::identity_names(aliases);
        names.extend(members.iter().cloned());
        // Another member's event that names this one (a referral, a shared link) is that
        // member's data: an envelope is the person's when its member is one of its names. A
        // platform's delivery kept as it came names no member: what names the person is theirs.
        let own = names.clone();
        let of_the_person = |payload: &serde_json::Value| {
            payload
                .get("member")
                .and_then(serde_json::Value::as_str)
                .is_none_or(|member| own.iter().any(|name| name == member))
        };
        // Short names (`m-1`) would match other members' payloads, as in an erasure.
        names.retain(|n| n.chars().count() >= 5);
        let found = self.store.rejected_naming(program, &names).await?;
        Ok(found
            .into_iter()
            .filter_map(|event| {
                let payload: serde_json::Value =
                    serde_json::from_str(&event.payload).unwrap_or(json!(event.payload));
                of_the_person(&payload).then(|| {
                    json!({"id": event.event_id, "at": event.at, "reason": event.reason,
                        "payload": payload})
                })
            })
            .collect())
    }

    /// The export as chunks of one JSON document. Fails before the first chunk when the
    /// member is unknown; a store failure later ends the stream with that error.
    pub async fn export_member(
        &self,
        program: &str,
        member: &str,
    ) -> Result<impl Stream<Item = Result<String, StoreError>> + Send + 'static, ServiceError> {
        let program = self.program(program).await?;
        let account = self.existing_account(&program.id, member).await?;
        let file = self.store.member_file(&program.id, member).await?;
        let everyone: Vec<String> = std::iter::once(member.to_string())
            .chain(account.merged_from.iter().cloned())
            .collect();
        let held = self.events_held_for(&program.id, &everyone).await?;
        // Members merged into this one keep their own history under their ids (a merge moves
        // the points, not the past): it is the person's data as much.
        let mut merged = Vec::with_capacity(account.merged_from.len());
        let mut aliases = file.aliases.clone();
        for id in &account.merged_from {
            let theirs = self.store.member_file(&program.id, id).await?;
            aliases.extend(theirs.aliases.iter().cloned());
            merged.push(json!({
                "member": id,
                "aliases": theirs.aliases.iter().map(|(kind, value)| json!({"kind": kind, "value": value})).collect::<Vec<_>>(),
                "orders": theirs.orders.iter().map(|(_, order)| order).collect::<Vec<_>>(),
                "redemptions": theirs.redemptions,
                "coupons": theirs.coupons,
                "campaign_assignments": theirs.assignments,
            }));
        }
        let rejected = self
            .rejected_naming(&program.id, &everyone, &aliases)
            .await?;
        let now = self.clock.now();
        let head = json!({
            "program": program.id,
            "member": member,
            "exported_at": now,
            "profile": account.profile,
            "account": {
                "balance": account.balance,
                "debt": account.debt,
                "lots": account.lots,
                "pending": account.pending,
                "holds": account.holds,
                "tier": account.tier,
                "qualifying": account.qualifying,
                "purchases": account.purchases,
                "last_purchase_at": account.last_purchase_at,
                "joined_on": account.joined_on,
                "referred_by": account.referred_by,
                "categories": account.categories,
                "actions": account.actions,
                "notified": account.notified,
            },
            "aliases": file.aliases.iter().map(|(kind, value)| json!({"kind": kind, "value": value})).collect::<Vec<_>>(),
            "orders": file.orders.iter().map(|(_, order)| order).collect::<Vec<_>>(),
            "redemptions": file.redemptions,
            "coupons": file.coupons,
            "campaign_assignments": file.assignments,
            "held_events": held,
            "merged_members": merged,
            "rejected_events": rejected,
            // The engine records no consent: the brand's own systems hold it.
            "consents": [],
        });
        let mut head = head.to_string();
        // The ledger follows as the last field of the same object.
        head.pop();
        head.push_str(",\"ledger\":[");
        let store = self.store.clone();
        let program = program.id.clone();
        let ledgers: std::sync::Arc<Vec<String>> = std::sync::Arc::new(
            std::iter::once(member.to_string())
                .chain(account.merged_from.iter().cloned())
                .collect(),
        );
        Ok(stream::unfold(Part::Head(head), move |part| {
            let (store, program, ledgers) = (store.clone(), program.clone(), ledgers.clone());
            async move {
                match part {
                    Part::Head(text) => Some((
                        Ok(text),
                        Part::Ledger {
                            index: 0,
                            cursor: None,
                            first: true,
                        },
                    )),
                    Part::Ledger {
                        index,
                        cursor,
                        first,
                    } => {
                        let member = &ledgers[index];
                        let page = match store
                            .ledger_page(&program, member, EXPORT_PAGE, cursor.as_deref())
                            .await
                        {
                            Ok(page) => page,
                            Err(e) => return Some((Err(e), Part::Done)),
                        };
                        let mut chunk = String::new();
                        for (i, entry) in page.entries.iter().enumerate() {
                            if !(first && i == 0) {
                                chunk.push(',');
                            }
                            match serde_json::to_string(entry) {
                                Ok(text) => chunk.push_str(&text),
                                Err(e) => {
                                    return Some((
                                        Err(StoreError::failed("cannot encode an entry", e)),
                                        Part::Done,
                                    ))
                                }
                            }
                        }
                        let first = first && page.entries.is_empty();
                        match page.next_cursor {
                            Some(next) => Some((
                                Ok(chunk),
                                Part::Ledger {
                                    index,
                                    cursor: Some(next),
                                    first,
                                },
                            )),
                            None => {
                                let next = ledgers.get(index + 1).map(String::as_str);
                                chunk.push_str(&after_ledger(index, ledgers.len(), next));
                                match next {
                                    Some(_) => Some((
                                        Ok(chunk),
                                        Part::Ledger {
                                            index: index + 1,
                                            cursor: None,
                                            first: true,
                                        },
                                    )),
                                    None => Some((Ok(chunk), Part::Done)),
                                }
                            }
                        }
                    }
                    Part::Done => None,
                }
            }
        }))
    }
}
