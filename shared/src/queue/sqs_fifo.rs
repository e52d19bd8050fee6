//! The SQS adapter: the earn and tier queues are FIFO (one group per member, deduplicated by
//! message id); the notify queue is standard.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::Client;

use crate::envelope::Envelope;
use crate::ports::{Queue, QueueError, QueueName};

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
