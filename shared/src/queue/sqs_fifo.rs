//! The SQS adapter: the earn and tier queues are FIFO (one group per member, deduplicated by
//! message id); the notify queue is standard.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::Client;

use crate::envelope::Envelope;
use crate::ports::{DeadLetter, DeadLetters, Queue, QueueError, QueueName, SendAllError};

/// SQS accepts deduplication and group ids of at most 128 characters from this set.
fn valid_sqs_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".contains(&b)
        })
}

/// The id itself when SQS accepts it, else a stable stand-in (a SHA-256 digest: two ids that
/// differ must never share a stand-in, or one message would be dropped as the other's copy).
fn sqs_id(id: &str) -> String {
    if valid_sqs_id(id) {
        return id.to_string();
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

/// The SQS queues by name. The client is built once per container and shared.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    urls: HashMap<QueueName, String>,
}

/// Entries SQS takes in one SendMessageBatch, and the bytes of their bodies together.
const BATCH_MAX: usize = 10;
const BATCH_BYTES: usize = 256 * 1024;

/// A message as SQS takes it: its body, and for a FIFO queue its group and deduplication ids.
struct Outgoing {
    body: String,
    fifo: Option<(String, String)>,
}

impl SqsQueue {
    pub fn new(client: Client, urls: HashMap<QueueName, String>) -> SqsQueue {
        SqsQueue { client, urls }
    }

    fn url(&self, queue: QueueName) -> Result<&String, QueueError> {
        self.urls.get(&queue).ok_or_else(|| {
            queue_error(
                queue,
                format!("no URL configured for the {} queue", queue.as_str()),
            )
        })
    }

    /// Sends up to [`BATCH_MAX`] messages in one request; on a failure, how many of them, from
    /// the first, went out.
    async fn send_batch(
        &self,
        queue: QueueName,
        url: &str,
        chunk: &[Outgoing],
    ) -> Result<(), (usize, QueueError)> {
        let mut entries = Vec::with_capacity(chunk.len());
        for (i, message) in chunk.iter().enumerate() {
            let (group, dedup) = message.fifo.clone().unzip();
            let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&message.body)
                .set_message_group_id(group)
                .set_message_deduplication_id(dedup)
                .build()
                .map_err(|e| {
                    (
                        0,
                        queue_error(queue, format!("cannot build the batch: {e}")),
                    )
                })?;
            entries.push(entry);
        }
        let output = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| (0, refused(queue, e)))?;
        // Entries fail one by one; everything before the first that failed went out.
        let first_failed = output
            .failed()
            .iter()
            .map(|f| (f.id().parse::<usize>().unwrap_or(0), f.code().to_string()))
            .min();
        match first_failed {
            None => Ok(()),
            Some((at, code)) => Err((
                at,
                queue_error(queue, format!("SQS refused the message: {code}")),
            )),
        }
    }
}

fn queue_error(queue: QueueName, message: String) -> QueueError {
    QueueError {
        queue: queue.as_str(),
        message,
        source: None,
    }
}

fn refused<E>(queue: QueueName, e: E) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    QueueError {
        queue: queue.as_str(),
        message: format!("SQS refused the message: {}", crate::aws::cause(&e)),
        source: Some(Box::new(e)),
    }
}

/// The body and ids of a message for `queue`.
fn outgoing(queue: QueueName, message: &Envelope) -> Result<Outgoing, QueueError> {
    let body = crate::envelope::message_body(message)
        .map_err(|e| queue_error(queue, format!("cannot encode the message: {e}")))?;
    let fifo = matches!(queue, QueueName::Earn | QueueName::Tier)
        .then(|| (sqs_id(&message.group()), sqs_id(&message.dedup_id())));
    Ok(Outgoing { body, fifo })
}

/// Consecutive runs of at most [`BATCH_MAX`] messages and [`BATCH_BYTES`] of bodies.
fn chunks(messages: &[Outgoing]) -> Vec<&[Outgoing]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, message) in messages.iter().enumerate() {
        let full = i - start == BATCH_MAX || bytes + message.body.len() > BATCH_BYTES;
        if full && i > start {
            chunks.push(&messages[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += message.body.len();
    }
    if start < messages.len() {
        chunks.push(&messages[start..]);
    }
    chunks
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, queue: QueueName, message: &Envelope) -> Result<(), QueueError> {
        let url = self.url(queue)?;
        let Outgoing { body, fifo } = outgoing(queue, message)?;
        let (group, dedup) = fifo.unzip();
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .set_message_group_id(group)
            .set_message_deduplication_id(dedup)
            .send()
            .await
            .map_err(|e| refused(queue, e))?;
        Ok(())
    }

    /// SendMessageBatch, one chunk after the other: a FIFO queue keeps a group's order inside a
    /// batch, and a chunk is sent only once every message before it went out.
    async fn send_all(&self, queue: QueueName, messages: &[&Envelope]) -> Result<(), SendAllError> {
        let at_start = |error| SendAllError { sent: 0, error };
        let url = self.url(queue).map_err(at_start)?;
        let outgoing: Vec<Outgoing> = messages
            .iter()
            .map(|m| outgoing(queue, m))
            .collect::<Result<_, _>>()
            .map_err(at_start)?;
        let mut sent = 0;
        for chunk in chunks(&outgoing) {
            if let Err((within, error)) = self.send_batch(queue, url, chunk).await {
                return Err(SendAllError {
                    sent: sent + within,
                    error,
                });
            }
            sent += chunk.len();
        }
        Ok(())
    }
}

/// A queue and its dead-letter queue, by URL.
#[derive(Debug, Clone)]
pub struct QueuePair {
    pub queue_url: String,
    pub dead_letter_url: String,
}

/// The dead-letter queues of the SQS queues, for operators.
#[derive(Clone)]
pub struct SqsDeadLetters {
    client: Client,
    pairs: HashMap<QueueName, QueuePair>,
}

/// Messages SQS hands over in one receive.
const RECEIVE_MAX: usize = 10;

impl SqsDeadLetters {
    pub fn new(client: Client, pairs: HashMap<QueueName, QueuePair>) -> SqsDeadLetters {
        SqsDeadLetters { client, pairs }
    }

    fn pair(&self, queue: QueueName) -> Result<&QueuePair, QueueError> {
        self.pairs.get(&queue).ok_or_else(|| QueueError {
            queue: queue.as_str(),
            message: format!(
                "no dead-letter queue configured for the {} queue",
                queue.as_str()
            ),
            source: None,
        })
    }

    async fn receive(
        &self,
        queue: QueueName,
        url: &str,
        visibility: i32,
        max: usize,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, RECEIVE_MAX) as i32)
            .visibility_timeout(visibility)
            // A long poll asks every server: a short one samples a few, and may answer nothing
            // from a small queue that holds messages, which would end a redrive early.
            .wait_time_seconds(1)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| sqs_error(queue, "cannot read the dead-letter queue", e))?;
        Ok(output.messages.unwrap_or_default())
    }
}

fn sqs_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    queue: QueueName,
    what: &str,
    e: E,
) -> QueueError {
    QueueError {
        queue: queue.as_str(),
        message: format!("{what}: {}", crate::aws::cause(&e)),
        source: Some(Box::new(e)),
    }
}

fn attribute(message: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    let name = aws_sdk_sqs::types::MessageSystemAttributeName::from(name);
    message.attributes().and_then(|a| a.get(&name)).cloned()
}

#[async_trait]
impl DeadLetters for SqsDeadLetters {
    /// Looked at with a visibility timeout of 0, so they stay where they are; a message seen
    /// twice ends the look.
    async fn dead_letters(
        &self,
        queue: QueueName,
        max: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let url = self.pair(queue)?.dead_letter_url.clone();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        while out.len() < max {
            let messages = self.receive(queue, &url, 0, max - out.len()).await?;
            let fresh: Vec<_> = messages
                .into_iter()
                .filter(|m| seen.insert(m.message_id().unwrap_or_default().to_string()))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for m in fresh {
                let at = attribute(&m, "SentTimestamp")
                    .and_then(|t| t.parse::<i64>().ok())
                    .and_then(chrono::DateTime::from_timestamp_millis);
                out.push(DeadLetter {
                    id: m.message_id().unwrap_or_default().to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    error: None,
                    attempts: attribute(&m, "ApproximateReceiveCount")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                    at,
                });
            }
        }
        Ok(out)
    }

    async fn dead_letter_count(&self, queue: QueueName) -> Result<u64, QueueError> {
        let url = &self.pair(queue)?.dead_letter_url;
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| sqs_error(queue, "cannot count the dead-letter queue", e))?;
        Ok(output
            .attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// Each message is sent back with its group and a deduplication id made from its own id
    /// in the dead-letter queue, then deleted there: a move cut short sends it again under the
    /// same id, which SQS drops as a copy. A message that cannot be moved is left where it is
    /// with the rest of its group (their order kept), the others are moved, and the answer
    /// then says how many moved and why one did not.
    async fn redrive(&self, queue: QueueName, max: usize) -> Result<usize, QueueError> {
        let pair = self.pair(queue)?.clone();
        let (mut moved, mut stuck) = (0, Vec::new());
        let mut held_groups = std::collections::HashSet::new();
        while moved < max {
            let messages = self
                .receive(queue, &pair.dead_letter_url, 60, max - moved)
                .await?;
            if messages.is_empty() {
                break;
            }
            for m in messages {
                let group = attribute(&m, "MessageGroupId");
                if group.as_ref().is_some_and(|g| held_groups.contains(g)) {
                    continue;
                }
                match self.move_back(queue, &pair, &m).await {
                    Ok(()) => moved += 1,
                    Err(e) => {
                        held_groups.extend(group);
                        stuck.push(e);
                    }
                }
            }
        }
        match stuck.into_iter().next() {
            None => Ok(moved),
            Some(first) => Err(QueueError {
                queue: queue.as_str(),
                message: format!(
                    "{moved} moved; a message (and the rest of its group) was left in the dead-letter queue: {}; redrive again",
                    first.message
                ),
                source: first.source,
            }),
        }
    }
}

impl SqsDeadLetters {
    /// Checks that the queue sends its dead letters to the dead-letter queue it is paired
    /// with (its `RedrivePolicy` names the other's ARN): URLs given by hand may pair a
    /// dead-letter queue with another queue, whose consumer would take a purchase for
    /// something else and drop it.
    pub async fn verify_pair(&self, queue: QueueName) -> Result<(), QueueError> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let pair = self.pair(queue)?;
        let attribute_of = |url: &str, name: QueueAttributeName| {
            let request = self
                .client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(name.clone());
            async move {
                let output = request
                    .send()
                    .await
                    .map_err(|e| sqs_error(queue, "cannot read the queue's attributes", e))?;
                Ok::<_, QueueError>(output.attributes().and_then(|a| a.get(&name)).cloned())
            }
        };
        let policy = attribute_of(&pair.queue_url, QueueAttributeName::RedrivePolicy).await?;
        let target = policy
            .as_deref()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|p| p.get("deadLetterTargetArn")?.as_str().map(str::to_string));
        let arn = attribute_of(&pair.dead_letter_url, QueueAttributeName::QueueArn).await?;
        match (target, arn) {
            (Some(target), Some(arn)) if target == arn => Ok(()),
            (target, arn) => Err(QueueError {
                queue: queue.as_str(),
                message: format!(
                    "{} sends its dead letters to {}, not to {} ({}): nothing was moved",
                    pair.queue_url,
                    target.as_deref().unwrap_or("no queue"),
                    pair.dead_letter_url,
                    arn.as_deref().unwrap_or("no ARN"),
                ),
                source: None,
            }),
        }
    }

    /// One dead letter sent back to its queue, then deleted from the dead-letter queue.
    async fn move_back(
        &self,
        queue: QueueName,
        pair: &QueuePair,
        m: &aws_sdk_sqs::types::Message,
    ) -> Result<(), QueueError> {
        let id = m.message_id().unwrap_or_default();
        let mut send = self
            .client
            .send_message()
            .queue_url(&pair.queue_url)
            .message_body(m.body().unwrap_or_default());
        if let Some(group) = attribute(m, "MessageGroupId") {
            let dedup = attribute(m, "MessageDeduplicationId").unwrap_or_default();
            send = send
                .message_group_id(group)
                .message_deduplication_id(sqs_id(&format!("{dedup}/redrive/{id}")));
        }
        send.send()
            .await
            .map_err(|e| sqs_error(queue, "cannot send the message back", e))?;
        if let Some(handle) = m.receipt_handle() {
            self.client
                .delete_message()
                .queue_url(&pair.dead_letter_url)
                .receipt_handle(handle)
                .send()
                .await
                .map_err(|e| sqs_error(queue, "cannot delete the dead letter", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sqs_refuses_get_a_stable_digest() {
        // GIVEN ids SQS accepts THEN they are kept as they are
        assert_eq!(sqs_id("kr-shop/ev-1001#refund"), "kr-shop/ev-1001#refund");
        // GIVEN ids SQS refuses (not ASCII, too long) THEN each gets one stable stand-in
        for refused in ["kr-shop#주문-1".to_string(), "x".repeat(129)] {
            assert!(!valid_sqs_id(&refused));
            assert_eq!(sqs_id(&refused), sqs_id(&refused));
            assert!(valid_sqs_id(&sqs_id(&refused)));
        }
        assert_ne!(sqs_id(&"a".repeat(200)), sqs_id(&"b".repeat(200)));
    }

    fn bodies(sizes: &[usize]) -> Vec<Outgoing> {
        sizes
            .iter()
            .map(|&n| Outgoing {
                body: "x".repeat(n),
                fifo: None,
            })
            .collect()
    }

    fn lengths(messages: &[Outgoing]) -> Vec<usize> {
        chunks(messages).iter().map(|c| c.len()).collect()
    }

    #[test]
    fn messages_are_cut_into_batches_of_ten_and_of_256_kb_at_most() {
        // GIVEN 23 small messages THEN batches of 10, 10 and 3, in order
        assert_eq!(lengths(&bodies(&[100; 23])), vec![10, 10, 3]);
        // GIVEN five messages of 100 KB THEN no batch holds more than 256 KB of bodies
        assert_eq!(lengths(&bodies(&[100 * 1024; 5])), vec![2, 2, 1]);
        // GIVEN one message larger than a batch may be THEN it goes alone (SQS will say why)
        assert_eq!(lengths(&bodies(&[10, 300 * 1024, 10])), vec![1, 1, 1]);
        // GIVEN nothing THEN no batch
        assert!(chunks(&[]).is_empty());
    }
}
