//! The SQS adapter: the earn and tier queues are FIFO (one group per member, deduplicated by
//! message id); the notify queue is standard.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::Client;

use crate::envelope::Envelope;
use crate::ports::{Queue, QueueError, QueueName};

/// SQS accepts deduplication ids of at most 128 characters from this set.
fn valid_dedup_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".contains(&b)
        })
}

/// A stable stand-in for an id SQS would refuse.
fn digest(id: &str) -> String {
    format!("h{:016x}", crate::fingerprint::fnv1a64(id.bytes()))
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
            let dedup = if valid_dedup_id(&message.id) {
                message.id.clone()
            } else {
                digest(&message.id)
            };
            request = request
                .message_group_id(message.group())
                .message_deduplication_id(dedup);
        }
        request.send().await.map_err(|e| QueueError {
            queue: queue.as_str(),
            message: format!("SQS refused the message: {}", e.code().unwrap_or("error")),
            source: Some(Box::new(e)),
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sqs_refuses_get_a_stable_digest() {
        assert!(valid_dedup_id("ev-1001#refund"));
        assert!(!valid_dedup_id("주문-1"));
        assert!(!valid_dedup_id(&"x".repeat(129)));
        assert_eq!(digest("주문-1"), digest("주문-1"));
        assert_ne!(digest("a"), digest("b"));
        assert!(valid_dedup_id(&digest("주문-1")));
    }
}
