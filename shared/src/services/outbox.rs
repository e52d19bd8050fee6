//! Relaying the outbox: each message written by a commit goes to its queue, then is forgotten.
//!
//! In AWS the table's stream hands each new outbox item to the relay function; locally a worker
//! of `loyalty serve` reads the outbox table. Both call [`Services::relay`]. On DynamoDB a
//! commit's messages about its own member ride along its first ledger entry instead
//! ([`Services::relay_carried_all`], which the relay calls once for a stream batch's entries):
//! the stream shows that entry once, and nothing is left to forget. A message is forgotten only
//! after its queue has it, and the FIFO queues deduplicate on the message's program-scoped id,
//! so a relay that dies half-way sends the message again and nothing doubles; the notify queue,
//! a standard one, may deliver a notice twice, and its consumers deduplicate on the envelope's
//! `id`.

use super::Services;
use crate::ports::{OutboxMessage, StoreError};
use crate::telemetry::metrics;

/// Why a message was not relayed (it stays in the outbox and is retried).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Queue(#[from] crate::ports::QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Services {
    /// Sends one outbox message to its queue and forgets it.
    pub async fn relay(&self, message: &OutboxMessage) -> Result<(), RelayError> {
        self.relay_carried(message).await?;
        self.store.relayed(message).await?;
        Ok(())
    }

    /// Sends a message that rode along a ledger entry (there is nothing to forget).
    pub async fn relay_carried(&self, message: &OutboxMessage) -> Result<(), RelayError> {
        self.send_to(message.queue, &message.envelope).await?;
        crate::telemetry::metrics::add(
            crate::telemetry::metrics::OUTBOX_RELAYED,
            &[("program", &message.envelope.program)],
            1,
        );
        Ok(())
    }

    /// Sends messages that rode along ledger entries, each queue's in as few requests as it
    /// allows ([`crate::ports::Queue::send_all`]). On a failure, the index (in `messages`) of
    /// the first message that may not have gone out: every message before it did. The queues
    /// are independent, so one that fails does not hold back the others.
    pub async fn relay_carried_all(
        &self,
        messages: &[&OutboxMessage],
    ) -> Result<(), (usize, RelayError)> {
        let mut by_queue: Vec<(crate::ports::QueueName, Vec<usize>)> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            match by_queue
                .iter_mut()
                .find(|(queue, _)| *queue == message.queue)
            {
                Some((_, indexes)) => indexes.push(i),
                None => by_queue.push((message.queue, vec![i])),
            }
        }
        let mut first_unsent: Option<(usize, RelayError)> = None;
        for (queue, indexes) in by_queue {
            let envelopes: Vec<_> = indexes.iter().map(|&i| &messages[i].envelope).collect();
            let outcome = self.queue.send_all(queue, &envelopes).await;
            let sent = outcome.as_ref().err().map_or(indexes.len(), |e| e.sent);
            for &i in indexes.iter().take(sent) {
                let program: &str = &messages[i].envelope.program;
                metrics::add(metrics::OUTBOX_RELAYED, &[("program", program)], 1);
            }
            if let Err(e) = outcome {
                let at = indexes.get(e.sent).or(indexes.last()).copied().unwrap_or(0);
                let program: &str = &messages[at].envelope.program;
                metrics::add(metrics::QUEUE_SEND_FAILURES, &[("program", program)], 1);
                if first_unsent.as_ref().is_none_or(|(first, _)| at < *first) {
                    first_unsent = Some((at, e.error.into()));
                }
            }
        }
        first_unsent.map_or(Ok(()), Err)
    }

    /// Relays up to `limit` waiting messages; returns how many went out. A message that
    /// fails is logged and stays for the next pass; it never holds back the others. Messages
    /// of one queue group go out one after the other, in the order they were written (a
    /// group's order is what its consumers rely on); different groups go out together.
    pub async fn relay_waiting(&self, limit: usize) -> Result<usize, RelayError> {
        let waiting = self.store.outbox(limit).await?;
        let mut groups: Vec<Vec<&OutboxMessage>> = Vec::new();
        let mut index = std::collections::HashMap::new();
        for message in &waiting {
            let key = (message.queue, message.envelope.group());
            let slot = *index.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[slot].push(message);
        }
        let outcomes = futures_util::future::join_all(groups.into_iter().map(|group| async move {
            let mut sent = 0;
            for message in group {
                if let Err(e) = self.relay(message).await {
                    tracing::warn!(error = %e, key = crate::telemetry::event_ref(&message.key()), "outbox message not relayed; will retry");
                    // The rest of the group waits behind it, in order.
                    return (sent, Some(e));
                }
                sent += 1;
            }
            (sent, None)
        }))
        .await;
        let sent = outcomes.iter().map(|(sent, _)| sent).sum();
        match outcomes.into_iter().find_map(|(_, e)| e) {
            Some(e) if sent == 0 => Err(e),
            _ => Ok(sent),
        }
    }
}
