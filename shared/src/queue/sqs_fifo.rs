//! The SQS adapter: the earn and tier queues are FIFO (one group per member, deduplicated by
//! message id); the notify queue is standard.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::Client;

use crate::envelope::Envelope;
use crate::ports::{DeadLetter, DeadLetters, Queue, QueueError, QueueName};

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

impl SqsQueue {
    pub fn new(client: Client, urls: HashMap<QueueName, String>) -> SqsQueue {
        SqsQueue { client, urls }
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, queue: QueueName, message: &Envelope) -> Result<(), QueueError> {
        let error = |message: String| QueueError {
            queue: queue.as_str(),
            message,
            source: None,
        };
        let url = self.urls.get(&queue).ok_or_else(|| {
            error(format!(
                "no URL configured for the {} queue",
                queue.as_str()
            ))
        })?;
        let body = serde_json::to_string(message)
            .map_err(|e| error(format!("cannot encode the message: {e}")))?;
        let mut request = self.client.send_message().queue_url(url).message_body(body);
        if matches!(queue, QueueName::Earn | QueueName::Tier) {
            request = request
                .message_group_id(sqs_id(&message.group()))
                .message_deduplication_id(sqs_id(&message.dedup_id()));
        }
        request.send().await.map_err(|e| QueueError {
            queue: queue.as_str(),
            message: format!("SQS refused the message: {}", e.code().unwrap_or("error")),
            source: Some(Box::new(e)),
        })?;
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
        message: format!("{what}: {}", e.code().unwrap_or("error")),
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
    /// same id, which SQS drops as a copy.
    async fn redrive(&self, queue: QueueName, max: usize) -> Result<usize, QueueError> {
        let pair = self.pair(queue)?.clone();
        let mut moved = 0;
        while moved < max {
            let messages = self
                .receive(queue, &pair.dead_letter_url, 60, max - moved)
                .await?;
            if messages.is_empty() {
                break;
            }
            for m in messages {
                let id = m.message_id().unwrap_or_default();
                let mut send = self
                    .client
                    .send_message()
                    .queue_url(&pair.queue_url)
                    .message_body(m.body().unwrap_or_default());
                if let Some(group) = attribute(&m, "MessageGroupId") {
                    let dedup = attribute(&m, "MessageDeduplicationId").unwrap_or_default();
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
                moved += 1;
            }
        }
        Ok(moved)
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
}
