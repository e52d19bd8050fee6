//! A member's data, all of it, as one JSON document (GDPR Articles 15 and 20, PIPA's right of
//! access): profile, account, identities, orders, redemptions, coupons, campaign assignments
//! and the events held for it first, then the whole ledger, newest first, read and written a page at a
//! time, so that a member with a long history never sits in memory whole.

use futures_util::stream::{self, Stream};
use serde_json::json;

use super::{ServiceError, Services};
use crate::ports::StoreError;

/// Ledger entries read per page of an export.
const EXPORT_PAGE: usize = 100;

/// Where the ledger part of an export stands.
enum Part {
    Head(String),
    Ledger { cursor: Option<String>, first: bool },
    Done,
}

impl Services {
    /// The member's events the engine holds: those waiting for its resume (suspended) and
    /// those held for an operator's review. They name the person as much as the ledger does.
    async fn events_held_for(
        &self,
        program: &str,
        member: &str,
    ) -> Result<Vec<serde_json::Value>, ServiceError> {
        let mut held = Vec::new();
        let suspended = super::suspension::parking_key(member);
        for (id, body) in self.store.parked(program, &suspended).await? {
            let event: serde_json::Value = serde_json::from_str(&body).unwrap_or(json!(body));
            held.push(json!({"id": id, "waits_for": "resume", "event": event}));
        }
        for (id, body) in self
            .store
            .parked(program, super::safeguards::REVIEW_KEY)
            .await?
        {
            let Ok(event) = serde_json::from_str::<super::safeguards::HeldEvent>(&body) else {
                continue;
            };
            if event.member == member {
                held.push(
                    json!({"id": id, "waits_for": "review", "reason": event.reason,
                    "event": event.event}),
                );
            }
        }
        Ok(held)
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
        let held = self.events_held_for(&program.id, member).await?;
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
            // The engine records no consent: the brand's own systems hold it.
            "consents": [],
        });
        let mut head = head.to_string();
        // The ledger follows as the last field of the same object.
        head.pop();
        head.push_str(",\"ledger\":[");
        let store = self.store.clone();
        let (program, member) = (program.id.clone(), member.to_string());
        Ok(stream::unfold(Part::Head(head), move |part| {
            let (store, program, member) = (store.clone(), program.clone(), member.clone());
            async move {
                match part {
                    Part::Head(text) => Some((
                        Ok(text),
                        Part::Ledger {
                            cursor: None,
                            first: true,
                        },
                    )),
                    Part::Ledger { cursor, first } => {
                        let page = match store
                            .ledger_page(&program, &member, EXPORT_PAGE, cursor.as_deref())
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
                                    cursor: Some(next),
                                    first,
                                },
                            )),
                            None => {
                                chunk.push_str("]}");
                                Some((Ok(chunk), Part::Done))
                            }
                        }
                    }
                    Part::Done => None,
                }
            }
        }))
    }
}
