//! Webhook ingest: verify the sender, normalise the payload, resolve the member, queue the
//! events. Nothing heavy happens before the answer: an alias read per identity, and a write
//! only for what is new (the order's member, an identity seen for the first time).

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde::Serialize;

use futures_util::future::try_join_all;

use super::{ServiceError, Services};
use crate::domain::program::TimeBoundsError;
use crate::envelope::{parse_earn_event, Envelope, ENVELOPE_VERSION};
use crate::ports::{OutboxMessage, QueueName, ORDER_LINK};
use crate::webhooks::{
    cafe24, pos, shopify, woocommerce, MemberRef, Normalised, Platform, PlatformEvent, Secrets,
    WebhookError, IF_CREDITED,
};

/// The answer to a platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ingested {
    pub status: &'static str,
    /// Ids of the events queued.
    pub events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The problem of an event dated ahead of the clock.
const FUTURE: &str = "event-in-future";

/// Stands in for the member while an event waits for its order (never queued as such).
const UNKNOWN_MEMBER: &str = "unknown";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl From<WebhookError> for ServiceError {
    fn from(e: WebhookError) -> Self {
        let detail = e.to_string();
        match e {
            WebhookError::UnknownPlatform(_) => ServiceError::NotFound {
                problem: "unknown-platform",
                detail,
            },
            WebhookError::NotConfigured { .. } => ServiceError::Unauthorized {
                problem: "webhook-not-configured",
                detail,
            },
            WebhookError::InvalidSignature => ServiceError::Unauthorized {
                problem: "invalid-signature",
                detail,
            },
            // Cafe24 asks for 403 when its key is refused.
            WebhookError::InvalidApiKey => ServiceError::Forbidden {
                problem: "invalid-api-key",
                detail,
            },
            WebhookError::StaleSignature => ServiceError::Unauthorized {
                problem: "stale-signature",
                detail,
            },
            WebhookError::Invalid(_) => ServiceError::Invalid {
                problem: "invalid-webhook",
                detail,
            },
        }
    }
}

/// Who an event is for.
enum Resolved {
    /// A member, through a link that is there or needs none.
    Known(String),
    /// A member, through an identity not linked yet: `link` is still to be written.
    New { member: String, link: Link },
    /// Known only through an order whose payment has not been seen yet.
    Unknown,
}

/// A link an event names, the member it leads to when it was read, and (an order's link)
/// whether events were parked for the order then.
struct Link {
    kind: String,
    value: String,
    linked: Option<String>,
    awaited: bool,
}

impl Link {
    /// An identity's link that is not there yet.
    fn unwritten((kind, value): (&str, &str)) -> Link {
        Link {
            kind: kind.to_string(),
            value: value.to_string(),
            linked: None,
            awaited: false,
        }
    }
}

impl Services {
    /// Handles one delivery to `POST /webhooks/{platform}/{program}`. A delivery refused for
    /// its signature or key is logged by platform and program: a secret changed on one side
    /// only shows there first.
    pub async fn ingest_webhook(
        &self,
        secrets: &dyn Secrets,
        platform: &str,
        program: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Ingested, ServiceError> {
        let result = self
            .ingest_delivery(secrets, platform, program, headers, body)
            .await;
        if let (
            Some(platform),
            Err(
                ServiceError::Unauthorized { problem, .. }
                | ServiceError::Forbidden { problem, .. },
            ),
        ) = (Platform::parse(platform), &result)
        {
            tracing::warn!(
                platform = platform.as_str(),
                program = crate::telemetry::redact(program),
                problem,
                "webhook delivery refused"
            );
        }
        result
    }

    async fn ingest_delivery(
        &self,
        secrets: &dyn Secrets,
        platform: &str,
        program: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Ingested, ServiceError> {
        let platform = Platform::parse(platform)
            .ok_or_else(|| WebhookError::UnknownPlatform(platform.to_string()))?;
        // Secrets are looked up (and cached) only for a program that exists; to the sender an
        // unknown program is one without a secret. A program known to exist (listed during
        // init) has its secret read beside it: a cold start's wait less.
        let (found, keys) = match self.known_program(program) {
            true => {
                let (found, keys) = futures_util::future::join(
                    self.program(program),
                    secrets.secrets(program, platform),
                )
                .await;
                (found, Some(keys))
            }
            false => (self.program(program).await, None),
        };
        let keys = match (found, keys) {
            (Ok(_), Some(keys)) => keys?,
            (Ok(_), None) => secrets.secrets(program, platform).await?,
            (Err(ServiceError::NotFound { .. }), _) => Vec::new(),
            (Err(e), _) => return Err(e),
        };
        if keys.is_empty() {
            return Err(WebhookError::NotConfigured {
                program: program.to_string(),
                platform,
            }
            .into());
        }
        let now = self.clock.now();
        let normalised = match platform {
            Platform::Shopify => {
                let signature =
                    header(headers, shopify::HMAC_HEADER).ok_or(WebhookError::InvalidSignature)?;
                crate::webhooks::verify_base64(&keys, body, signature)?;
                self.program(program).await?;
                let topic = header(headers, shopify::TOPIC_HEADER).unwrap_or_default();
                let triggered = header(headers, shopify::TRIGGERED_AT_HEADER)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                once_each(body).and_then(|()| shopify::normalise(topic, body, triggered, now))
            }
            Platform::Pos => {
                let signature =
                    header(headers, pos::SIGNATURE_HEADER).ok_or(WebhookError::InvalidSignature)?;
                pos::verify_signature(&keys, body, signature, now)?;
                self.program(program).await?;
                once_each(body).and_then(|()| pos::normalise(program, body))
            }
            Platform::WooCommerce => {
                let signature = header(headers, woocommerce::SIGNATURE_HEADER);
                if woocommerce::is_ping(body, signature.is_some()) {
                    return Ok(Ingested {
                        status: "ignored",
                        events: Vec::new(),
                        reason: Some("webhook ping".into()),
                    });
                }
                crate::webhooks::verify_base64(
                    &keys,
                    body,
                    signature.ok_or(WebhookError::InvalidSignature)?,
                )?;
                self.program(program).await?;
                let topic = header(headers, woocommerce::TOPIC_HEADER).unwrap_or_default();
                once_each(body).and_then(|()| woocommerce::normalise(topic, body, now))
            }
            Platform::Cafe24 => {
                cafe24::verify_key(&keys, header(headers, cafe24::API_KEY_HEADER))?;
                let program = self.program(program).await?;
                if let Some(trace) =
                    header(headers, cafe24::TRACE_HEADER).and_then(crate::telemetry::trace::root_of)
                {
                    tracing::info!(trace, "cafe24 delivery");
                }
                once_each(body).and_then(|()| cafe24::normalise(body, program.currency, now))
            }
        };
        let outcome = match normalised {
            Ok(normalised) => self.ingest_normalised(program, normalised).await,
            Err(e) => Err(e.into()),
        };
        match outcome {
            // Shopify, WooCommerce and Cafe24 turn a webhook off after a few refused deliveries
            // in a row: a delivery that no retry can mend (an order without lines, in another
            // currency, too old) would cut every later order off. It is acknowledged and kept
            // among the rejected events instead. A POS is ours to fix: it is told 400.
            // An event dated ahead of the clock (the platform's clock runs fast) is taken by a
            // retry: that one is still refused.
            Err(ServiceError::Invalid { problem, detail })
                if platform != Platform::Pos && problem != FUTURE =>
            {
                self.keep_refused_delivery(program, platform, body, problem, &detail)
                    .await
            }
            other => other,
        }
    }

    /// Keeps a signed delivery that cannot be taken among the rejected events, under an id of
    /// its body (a redelivery is the same), and acknowledges it.
    async fn keep_refused_delivery(
        &self,
        program: &str,
        platform: Platform,
        body: &[u8],
        problem: &str,
        detail: &str,
    ) -> Result<Ingested, ServiceError> {
        let id = format!(
            "{platform}-delivery-{:016x}",
            crate::fingerprint::fnv1a64(body.iter().copied())
        );
        let detail = crate::telemetry::redact(detail);
        let kept = self.store.rejected_event(program, &id).await?.is_some();
        // Warned of once; the platform's redeliveries of it are only noted.
        if kept {
            tracing::info!(program, platform = %platform, event_id = %id, problem, "webhook delivery refused again (kept before)");
        } else {
            tracing::warn!(program, platform = %platform, event_id = %id, problem, detail, "webhook delivery refused and kept");
            self.store
                .reject(&crate::ports::RejectedEvent {
                    program: program.to_string(),
                    event_id: id,
                    at: self.clock.now(),
                    reason: format!("{problem}: {detail}"),
                    payload: String::from_utf8_lossy(body)
                        .chars()
                        .take(64 * 1024)
                        .collect(),
                    replays: 0,
                    replayed_at: None,
                    replayed_by: None,
                    names: crate::webhooks::names_in(platform, body),
                })
                .await?;
        }
        // Once kept: an event refused for good, as earn's rejections are, counted as
        // webhook-ingest's (its function in the stack); a redelivery of one kept is a duplicate.
        {
            use crate::telemetry::metrics;
            let outcome = if kept { "duplicate" } else { "rejected" };
            let labels = [
                ("program", program),
                ("outcome", outcome),
                (metrics::FUNCTION_LABEL, "webhook-ingest"),
            ];
            metrics::add(metrics::EVENTS, &labels, 1);
        }
        Ok(Ingested {
            status: "rejected",
            events: Vec::new(),
            reason: Some(detail.to_string()),
        })
    }

    /// Queues what a verified delivery amounts to.
    async fn ingest_normalised(
        &self,
        program: &str,
        normalised: Normalised,
    ) -> Result<Ingested, ServiceError> {
        let events = match normalised {
            Normalised::Ignored(reason) => {
                return Ok(Ingested {
                    status: "ignored",
                    events: Vec::new(),
                    reason: Some(reason),
                });
            }
            Normalised::Events(events) => events,
        };
        let ids = self.ingest_events(program, events).await?;
        Ok(Ingested {
            status: "accepted",
            events: ids,
            reason: None,
        })
    }

    /// Queues a delivery's events (or parks those waiting for their order), as a webhook does:
    /// every event is checked before any is queued, so a delivery is all or nothing. Returns
    /// the ids queued or parked.
    pub async fn ingest_events(
        &self,
        program: &str,
        events: Vec<PlatformEvent>,
    ) -> Result<Vec<String>, ServiceError> {
        let mut ready = Vec::with_capacity(events.len());
        // A new identity's own link is written with the event's other links, all together,
        // once the event has passed its checks. Several events of one delivery may name the
        // same new identity, and each must find the link the one before wrote: there it is
        // written at once, as the identity is resolved.
        let together = events.len() == 1;
        for mut event in events {
            if !self.worth_ingesting(program, &mut event).await? {
                continue;
            }
            // Who the event is for, and where its links lead now: read together.
            let (resolved, mut links) = self.member_and_links(program, &event).await?;
            if let Resolved::New { member, link } = &resolved {
                if self.erased_after(program, &event, member, link).await? {
                    continue;
                }
            }
            if matches!(resolved, Resolved::Unknown) && self.order_erased(program, &event).await? {
                continue;
            }
            let (member, new) = match resolved {
                Resolved::Known(member) => (Some(member), None),
                Resolved::New { member, link } => (Some(member), Some(link)),
                Resolved::Unknown => (None, None),
            };
            let member_id = member.as_deref().unwrap_or(UNKNOWN_MEMBER);
            let envelope = match self.envelope(program, &event, member_id).await {
                Ok(envelope) => envelope,
                // A delivery that restates an order (WooCommerce's order.updated, a Shopify
                // order) brings its payment again with each refund: once the payment is older
                // than the program takes events, it is left out and kept among the rejected
                // events, instead of the refund being refused with it for good.
                Err(ServiceError::Invalid {
                    problem: "event-out-of-bounds",
                    detail,
                }) if !together && event.occurred_at < self.clock.now() => {
                    self.reject_left_out(program, &event, member_id, &detail)
                        .await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Only once the event has passed its checks: a refused event links nothing.
            match (new, &member) {
                (Some(link), _) if together => links.push(link),
                (Some(link), Some(member)) => {
                    self.store
                        .put_alias(program, &link.kind, &link.value, member)
                        .await?;
                }
                _ => {}
            }
            ready.push((event, envelope, member.is_some(), links));
        }
        let mut ids = Vec::with_capacity(ready.len());
        for (event, envelope, known, links) in ready {
            match (&event.member, known) {
                (MemberRef::Order(order), false) => self.park(program, order, &envelope).await?,
                _ => {
                    // An order named by the event's member (a refund without a customer) is
                    // linked already, and not read again here: its parked events are looked
                    // for as before.
                    let order_named = matches!(&event.member, MemberRef::Order(_));
                    let awaited = self
                        .remember_links(program, links, &envelope.member)
                        .await?;
                    // The order's parked events, when its link says there are some, are looked
                    // for while the event is sent (its link is written, so a later park finds
                    // it), and released after it.
                    let parked = async {
                        match &event.order_key {
                            Some(order) if awaited || order_named => {
                                self.store.parked(program, order).await
                            }
                            _ => Ok(Vec::new()),
                        }
                    };
                    let (sent, parked) =
                        futures_util::future::join(self.send(&envelope), parked).await;
                    sent?;
                    if let Some(order) = &event.order_key {
                        self.release(program, order, &envelope.member, parked?)
                            .await?;
                    }
                }
            }
            ids.push(envelope.id);
        }
        Ok(ids)
    }

    /// The event's member and its links. A customer's own link is read in the links' one
    /// eventually consistent request: a link found there names the member (a link moves only
    /// when its member is merged or erased, and earn follows a merge and waits out an erasure,
    /// as it must for an event queued a moment before either); a miss is read again strongly
    /// before a new member is made. An order's member (a refund without a customer) is read
    /// strongly beside the links.
    async fn member_and_links(
        &self,
        program: &str,
        event: &PlatformEvent,
    ) -> Result<(Resolved, Vec<Link>), ServiceError> {
        match &event.member {
            MemberRef::Identity(identity) => {
                let own = identity.split_once(':');
                let (read, mut links) = self.links_of(program, event, own).await?;
                if let Some(member) = self.paid_order_member(program, event).await? {
                    return Ok((Resolved::Known(member), links));
                }
                // A payment restated after staff gave the order to another customer: the
                // order's link (read with the others) names the member it credited, where its
                // marker stops it. Nothing new is linked to that member (the order went to
                // someone else), but the customer's own identity when its email is already
                // that brand-made member's: the same person (an imported member's late webhook).
                let credited = links
                    .iter()
                    .find(|l| l.kind == ORDER_LINK)
                    .and_then(|l| l.linked.clone())
                    .filter(|m| event.kind == "purchase.completed" && read.as_ref() != Some(m));
                if let Some(member) = credited {
                    let same_person = read.is_none()
                        && !made_by_a_platform(&member)
                        && links.iter().any(|l| {
                            l.kind != ORDER_LINK && l.linked.as_deref() == Some(member.as_str())
                        });
                    links.retain(|l| l.linked.as_deref() == Some(member.as_str()));
                    let resolved = match (same_person, own) {
                        (true, Some(own)) => Resolved::New {
                            member,
                            link: Link::unwritten(own),
                        },
                        _ => Resolved::Known(member),
                    };
                    return Ok((resolved, links));
                }
                let resolved = match read {
                    Some(member) => Resolved::Known(member),
                    None => self.member_of(program, event).await?,
                };
                Ok((resolved, links))
            }
            MemberRef::Order(_) => {
                let (resolved, (_, links)) = futures_util::future::try_join(
                    self.member_of(program, event),
                    self.links_of(program, event, None),
                )
                .await?;
                Ok((resolved, links))
            }
        }
    }

    /// Whether a new member's event comes from before the erasure of one of the names it
    /// carries (its member, the identity to be linked, its other identities): an order of the
    /// person erased, brought again by a reconcile or a platform's late retry. It is left out,
    /// before any link is written: it would make a member of that person again.
    async fn erased_after(
        &self,
        program: &str,
        event: &PlatformEvent,
        member: &str,
        link: &Link,
    ) -> Result<bool, ServiceError> {
        let own = crate::ports::identity_member(&link.kind, &link.value);
        let mut names = vec![member.to_string(), own];
        names.extend(event.identities.iter().cloned());
        self.before_erasure_of(program, event, &names).await
    }

    /// Whether `event` comes from before the latest erasure of one of `names`, said in the
    /// log when it does (it is then left out).
    async fn before_erasure_of(
        &self,
        program: &str,
        event: &PlatformEvent,
        names: &[String],
    ) -> Result<bool, ServiceError> {
        let erased = self.erasure_of(program, names).await?;
        let before = crate::domain::erasure::before_erasure(event.occurred_at, erased);
        if before {
            tracing::info!(
                program,
                event_id = crate::telemetry::event_ref(&event.id),
                "event from before the erasure of a name it carries left out"
            );
        }
        Ok(before)
    }

    /// Whether an event of an order no member is linked to (a Shopify refund, which names no
    /// customer) comes from before the erasure of the member that order's link led to: it
    /// would wait for that order for ever, parked.
    async fn order_erased(
        &self,
        program: &str,
        event: &PlatformEvent,
    ) -> Result<bool, ServiceError> {
        let MemberRef::Order(key) = &event.member else {
            return Ok(false);
        };
        let name = crate::ports::identity_member(ORDER_LINK, key);
        self.before_erasure_of(program, event, &[name]).await
    }

    /// Whether an event marked `if_credited` (a guest order's refund, an order cancelled
    /// before it was paid) has anything to take back: only when the order's payment credited
    /// someone. Otherwise it is dropped rather than kept waiting for a payment that, if it ever
    /// came, it must not take back. The mark is taken off either way.
    pub(super) async fn worth_ingesting(
        &self,
        program: &str,
        event: &mut PlatformEvent,
    ) -> Result<bool, ServiceError> {
        let marked = event
            .data
            .as_object_mut()
            .and_then(|data| data.remove(IF_CREDITED))
            .is_some_and(|v| v == serde_json::Value::Bool(true));
        let (true, Some(platform), Some(order)) = (
            marked,
            event
                .data
                .get("platform")
                .and_then(serde_json::Value::as_str),
            event
                .data
                .get("order_id")
                .and_then(serde_json::Value::as_str),
        ) else {
            return Ok(true);
        };
        let key = crate::envelope::order_key(platform, order);
        let credited = self.store.resolve_alias(program, ORDER_LINK, &key).await?;
        if credited.is_none() {
            tracing::info!(
                program,
                event_id = crate::telemetry::event_ref(&event.id),
                "nothing to take back: the order credited no one"
            );
        }
        Ok(credited.is_some())
    }

    /// For a refund or a cancellation, the member its order's payment credited, when the
    /// order is linked: staff may have given the order another customer since, and the
    /// payment's points stay where they went. An order not linked (paid before links were
    /// kept, its payment replayed or left out) goes to the customer the event names.
    async fn paid_order_member(
        &self,
        program: &str,
        event: &PlatformEvent,
    ) -> Result<Option<String>, ServiceError> {
        if !matches!(event.kind, "purchase.refunded" | "purchase.cancelled") {
            return Ok(None);
        }
        let text = |field: &str| event.data.get(field).and_then(serde_json::Value::as_str);
        let (Some(platform), Some(order)) = (text("platform"), text("order_id")) else {
            return Ok(None);
        };
        let key = crate::envelope::order_key(platform, order);
        Ok(self.store.resolve_alias(program, ORDER_LINK, &key).await?)
    }

    async fn send(&self, envelope: &Envelope) -> Result<(), ServiceError> {
        self.send_to(QueueName::Earn, envelope)
            .await
            .map_err(ServiceError::from)
    }

    /// The canonical member of an event. An identity seen for the first time comes with the
    /// link that will lead it to its member, left to the caller to write once the event has
    /// passed its checks.
    async fn member_of(
        &self,
        program: &str,
        event: &PlatformEvent,
    ) -> Result<Resolved, ServiceError> {
        match &event.member {
            MemberRef::Identity(identity) => {
                self.member_of_identity(program, event, identity).await
            }
            MemberRef::Order(key) => Ok(
                match self.store.resolve_alias(program, ORDER_LINK, key).await? {
                    Some(member) => Resolved::Known(member),
                    None => Resolved::Unknown,
                },
            ),
        }
    }

    /// The member of a platform identity. An identity seen for the first time may belong to a
    /// member known by another of the event's identities (an email imported from another
    /// programme): that member is credited, and the identity is to be linked to it so that
    /// later events need one read again.
    async fn member_of_identity(
        &self,
        program: &str,
        event: &PlatformEvent,
        identity: &str,
    ) -> Result<Resolved, ServiceError> {
        let Some((kind, value)) = identity.split_once(':') else {
            // An app's subject (a till names the app's member): support may have linked it.
            let linked = self
                .store
                .resolve_alias(program, crate::ports::APP_LINK, identity)
                .await?;
            return Ok(Resolved::Known(
                linked.unwrap_or_else(|| identity.to_string()),
            ));
        };
        let (own, other) = self.identity_members(program, event, (kind, value)).await?;
        if let Some(member) = own {
            return Ok(Resolved::Known(member));
        }
        let member = other.unwrap_or_else(|| identity.to_string());
        Ok(Resolved::New {
            member,
            link: Link::unwritten((kind, value)),
        })
    }

    /// The member an identity (`own`, `(kind, value)`) is linked to, and the member another of
    /// the event's identities (its email) is linked to, unless that member was made by a
    /// platform's customer: its email came from a checkout form nobody verified, and anyone can
    /// type another's there, so that the other's orders would then credit them. Members the
    /// brand made (imported, the app's, an operator's) are found by their email; customers of
    /// the platforms that share one stay apart until an operator merges them. Read current, in
    /// one request: a new member is made from a miss.
    pub(crate) async fn identity_members(
        &self,
        program: &str,
        event: &PlatformEvent,
        own: (&str, &str),
    ) -> Result<(Option<String>, Option<String>), ServiceError> {
        let mut links = vec![own];
        for other in event.identities.iter().filter_map(|i| i.split_once(':')) {
            // Each key once: a batch read refuses a key named twice.
            if !links.contains(&other) {
                links.push(other);
            }
        }
        let mut found = self
            .store
            .resolve_aliases(program, &links)
            .await?
            .into_iter();
        let own_member = found.next().flatten();
        let other = found.flatten().find(|m| !made_by_a_platform(m));
        Ok((own_member, other))
    }

    /// Keeps an event until its order's payment names the member. The payment may have been
    /// recorded between the lookup and the park: parking answers the order's member if so.
    async fn park(
        &self,
        program: &str,
        order: &str,
        envelope: &Envelope,
    ) -> Result<(), ServiceError> {
        let body =
            serde_json::to_string(envelope).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let linked = self
            .store
            .park_for_order(program, order, &envelope.id, &body)
            .await?;
        if let Some(member) = linked {
            self.release_parked(program, order, &member).await?;
        }
        Ok(())
    }

    /// Releases the events parked for an order, now that its member is known: each moves into
    /// the outbox in one write, so it is relayed to the earn queue even if this process dies
    /// right after (and a second release of it changes nothing).
    async fn release_parked(
        &self,
        program: &str,
        order: &str,
        member: &str,
    ) -> Result<(), ServiceError> {
        let parked = self.store.parked(program, order).await?;
        self.release(program, order, member, parked).await
    }

    async fn release(
        &self,
        program: &str,
        order: &str,
        member: &str,
        parked: Vec<(String, String)>,
    ) -> Result<(), ServiceError> {
        for (event_id, body) in super::in_order_of_occurrence(parked) {
            let mut envelope: Envelope = serde_json::from_str(&body).map_err(|e| {
                ServiceError::Internal(format!("parked event for {order} is corrupt: {e}"))
            })?;
            envelope.member = member.to_string();
            let message = OutboxMessage::new(QueueName::Earn, envelope);
            self.store
                .release_parked(program, order, &event_id, &message)
                .await?;
        }
        Ok(())
    }

    /// Keeps an event left out of its delivery among the rejected events, with the reason.
    async fn reject_left_out(
        &self,
        program: &str,
        event: &PlatformEvent,
        member: &str,
        reason: &str,
    ) -> Result<(), ServiceError> {
        // Kept once: every restatement of the order brings it again, and a record kept again
        // would forget its replays.
        if self
            .store
            .rejected_event(program, &event.id)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let envelope = plain_envelope(program, event, member);
        let payload =
            serde_json::to_string(&envelope).map_err(|e| ServiceError::Internal(e.to_string()))?;
        tracing::warn!(
            program,
            event_id = crate::telemetry::event_ref(&event.id),
            reason,
            "event left out of its delivery"
        );
        self.store
            .reject(&crate::ports::RejectedEvent {
                program: program.to_string(),
                event_id: event.id.clone(),
                at: self.clock.now(),
                reason: reason.to_string(),
                payload,
                replays: 0,
                replayed_at: None,
                replayed_by: None,
                names: Vec::new(),
            })
            .await?;
        Ok(())
    }

    async fn envelope(
        &self,
        program: &str,
        event: &PlatformEvent,
        member: &str,
    ) -> Result<Envelope, ServiceError> {
        let mut envelope = plain_envelope(program, event, member);
        let now = self.clock.now();
        envelope.occurred_at = within_platform_skew(event, envelope.occurred_at, now);
        let program = self.program(program).await?;
        parse_earn_event(&envelope, &program)
            .map_err(|e| ServiceError::invalid(e.problem, e.detail))?;
        // A referrer named by an alias (a till's `pos:...`) is the member it leads to.
        self.canonical_referrer(&program.id, &mut envelope).await?;
        super::fits_a_message(&envelope)?;
        program
            .check_occurred_at(envelope.occurred_at, now)
            .map_err(|e| match e {
                TimeBoundsError::InFuture { .. } => ServiceError::invalid(FUTURE, e.to_string()),
                TimeBoundsError::TooOld { .. } => {
                    ServiceError::invalid("event-out-of-bounds", e.to_string())
                }
            })?;
        Ok(envelope)
    }
    /// The links an event asks to be remembered: its order's member (for refunds without a
    /// customer) and its identities, but not the one that names the member (resolved or linked
    /// by [`Self::member_of`]). Each comes with the member it leads to now, read eventually
    /// consistent and all together: a stale miss only writes the link again, under its own
    /// condition. `own`, the link that names the member, is read in the same request, and the
    /// member it leads to comes first.
    async fn links_of(
        &self,
        program: &str,
        event: &PlatformEvent,
        own: Option<(&str, &str)>,
    ) -> Result<(Option<String>, Vec<Link>), ServiceError> {
        let mut links: Vec<(&str, &str)> = Vec::with_capacity(1 + event.identities.len());
        if let Some(key) = &event.order_key {
            if !matches!(&event.member, MemberRef::Order(named) if named == key) {
                links.push((ORDER_LINK, key));
            }
        }
        for identity in &event.identities {
            if matches!(&event.member, MemberRef::Identity(named) if named == identity) {
                continue;
            }
            // Named twice, an identity would race its own link.
            match identity.split_once(':') {
                Some(link) if !links.contains(&link) => links.push(link),
                _ => {}
            }
        }
        // Each key once: a batch read refuses a key named twice.
        let mut read = links.clone();
        read.extend(own.filter(|own| !links.contains(own)));
        let mut linked = self.store.linked_aliases(program, &read).await?;
        let own_member = own
            .and_then(|own| read.iter().position(|link| *link == own))
            .and_then(|at| linked.get(at))
            .and_then(|own| own.member.clone());
        linked.truncate(links.len());
        let links = links
            .into_iter()
            .zip(linked)
            .map(|((kind, value), linked)| Link {
                kind: kind.to_string(),
                value: value.to_string(),
                linked: linked.member,
                awaited: linked.awaited,
            })
            .collect();
        Ok((own_member, links))
    }

    /// Writes the links that do not lead to `member` yet, all together. A link that is already
    /// there is only read, never written again: a read costs less than a write (an identity's
    /// link is a two-item transaction), a returning customer's identities are linked since the
    /// first order, and a platform delivers an order's webhooks more than once (retries, one
    /// per topic). Answers whether events were parked for the event's order, as its link
    /// said when read or written.
    async fn remember_links(
        &self,
        program: &str,
        links: Vec<Link>,
        member: &str,
    ) -> Result<bool, ServiceError> {
        let (kept, missing): (Vec<Link>, Vec<Link>) = links
            .into_iter()
            .partition(|link| link.linked.as_deref() == Some(member));
        let mut awaited = kept
            .iter()
            .any(|link| link.kind == ORDER_LINK && link.awaited);
        let (orders, identities): (Vec<&Link>, Vec<&Link>) =
            missing.iter().partition(|link| link.kind == ORDER_LINK);
        // The identities in one write, beside the order's link.
        let pairs: Vec<(&str, &str)> = identities
            .iter()
            .map(|link| (link.kind.as_str(), link.value.as_str()))
            .collect();
        let (orders, written) = futures_util::future::try_join(
            try_join_all(
                orders
                    .iter()
                    .map(|link| self.store.link_order(program, &link.value, member)),
            ),
            self.store.put_aliases(program, &pairs, member),
        )
        .await?;
        awaited |= orders.iter().any(|order| order.awaited);
        for ((kind, _), written) in pairs.iter().zip(written) {
            if !written {
                tracing::info!(
                    program,
                    kind,
                    "identity already linked to another member; left as it is"
                );
            }
        }
        Ok(awaited)
    }
}

/// An event's envelope, unchecked.
/// How far ahead of this clock a shop platform's clock may run: its event is then taken as
/// happening now. WooCommerce never retries a refused delivery, so a shop whose server clock
/// runs a few minutes fast would lose every order; further ahead than this, the time is wrong
/// and the delivery is refused as before.
const PLATFORM_CLOCK_AHEAD: chrono::Duration = chrono::Duration::hours(1);

/// The event's time, or now for a shop platform's event dated ahead of the clock by more than
/// the skew every event is allowed and less than [`PLATFORM_CLOCK_AHEAD`] (a POS is ours to
/// fix, and keeps its time).
fn within_platform_skew(
    event: &PlatformEvent,
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let shop_platform = event
        .data
        .get("platform")
        .and_then(serde_json::Value::as_str)
        .and_then(Platform::parse)
        .is_some_and(|p| p != Platform::Pos);
    let skew = chrono::Duration::seconds(crate::domain::program::MAX_FUTURE_SKEW_SECONDS);
    let ahead = occurred_at - now;
    if shop_platform && ahead > skew && ahead <= PLATFORM_CLOCK_AHEAD {
        now
    } else {
        occurred_at
    }
}

fn plain_envelope(program: &str, event: &PlatformEvent, member: &str) -> Envelope {
    Envelope {
        replay: None,
        resumed: None,
        reviewed_by: None,
        trace: crate::telemetry::trace::current(),
        kind: event.kind.to_string(),
        version: ENVELOPE_VERSION,
        id: event.id.clone(),
        program: program.to_string(),
        member: member.to_string(),
        occurred_at: event.occurred_at,
        data: event.data.clone(),
    }
}

/// A member whose id is a platform's customer (`shopify:7001`): made by that platform's events.
fn made_by_a_platform(member: &str) -> bool {
    member
        .split_once(':')
        .is_some_and(|(kind, _)| Platform::parse(kind).is_some())
}

/// A delivery whose JSON names a key twice in one object is refused as malformed: which of the
/// two a platform meant is not known (see [`crate::json_keys`]).
fn once_each(body: &[u8]) -> Result<(), WebhookError> {
    crate::json_keys::once_each(body)
        .map_err(|e| WebhookError::Invalid(format!("the body is not JSON as sent: {e}")))
}
