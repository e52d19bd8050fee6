//! Settings of the Lambda functions, read once from the environment at start-up.

use std::collections::HashMap;
use std::sync::Arc;

use crate::api::auth::Verifier;
use crate::api::AppState;
use crate::ports::{QueueName, SystemClock};
use crate::queue::sqs_fifo::{QueuePair, SqsDeadLetters, SqsQueue};
use crate::services::Services;
use crate::store::dynamodb::DynamoStore;
use crate::webhooks::ssm::SsmSecrets;

/// The key read during init to open the connection (no item has it; the template grants the
/// outbox relay, which reads nothing else, this key alone).
pub const WARM_UP_KEY: &str = "warm-up";

/// What a function needs to reach its table and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub table: String,
    pub queues: HashMap<QueueName, String>,
    /// Dead-letter queues the function may count and redrive (`LOYALTY_EARN_DEAD_LETTER_URL`,
    /// `LOYALTY_TIER_DEAD_LETTER_URL`), each beside its queue's URL.
    pub dead_letters: HashMap<QueueName, String>,
}

#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not set: the SAM template sets it on every function")]
pub struct MissingVariable(pub &'static str);

/// A start-up failure is printed with `Debug` (`main` returns it): make that the sentence.
impl std::fmt::Debug for MissingVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl AwsSettings {
    /// `LOYALTY_TABLE` (required) and the queue URLs the function sends to
    /// (`LOYALTY_EARN_QUEUE_URL`, `LOYALTY_TIER_QUEUE_URL`, `LOYALTY_NOTIFY_QUEUE_URL`).
    pub fn from_env() -> Result<AwsSettings, MissingVariable> {
        let table = std::env::var("LOYALTY_TABLE").map_err(|_| MissingVariable("LOYALTY_TABLE"))?;
        let mut queues = HashMap::new();
        for (queue, name) in [
            (QueueName::Earn, "LOYALTY_EARN_QUEUE_URL"),
            (QueueName::Tier, "LOYALTY_TIER_QUEUE_URL"),
            (QueueName::Notify, "LOYALTY_NOTIFY_QUEUE_URL"),
        ] {
            if let Ok(url) = std::env::var(name) {
                queues.insert(queue, url);
            }
        }
        let mut dead_letters = HashMap::new();
        for (queue, name) in [
            (QueueName::Earn, "LOYALTY_EARN_DEAD_LETTER_URL"),
            (QueueName::Tier, "LOYALTY_TIER_DEAD_LETTER_URL"),
        ] {
            if let Ok(url) = std::env::var(name) {
                dead_letters.insert(queue, url);
            }
        }
        Ok(AwsSettings {
            table,
            queues,
            dead_letters,
        })
    }

    /// The services on DynamoDB and SQS, with clients built once from one AWS configuration.
    pub async fn services(&self) -> Services {
        let config = crate::aws::sdk_config(None).await;
        let dynamodb = self.warm_up(&config).await;
        self.services_with(&config, dynamodb)
    }

    /// Opens the connection to DynamoDB during init, with one read of a key that never exists:
    /// the first invocation then pays no TLS handshake, and init's time is not billed the same
    /// way. A failure here is only logged; the first real call tries again.
    async fn warm_up(&self, config: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
        use aws_sdk_dynamodb::types::AttributeValue;
        let key = || AttributeValue::S(WARM_UP_KEY.to_string());
        let client = aws_sdk_dynamodb::Client::new(config);
        let read = client
            .get_item()
            .table_name(&self.table)
            .key("PK", key())
            .key("SK", key())
            .send()
            .await;
        if let Err(e) = read {
            tracing::info!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(&e), "warm-up read failed");
        }
        client
    }

    fn services_with(
        &self,
        config: &aws_config::SdkConfig,
        dynamodb: aws_sdk_dynamodb::Client,
    ) -> Services {
        let store = DynamoStore::new(dynamodb, &self.table);
        let sqs = aws_sdk_sqs::Client::new(config);
        let queue = SqsQueue::new(sqs.clone(), self.queues.clone());
        let services = Services::new(Arc::new(store), Arc::new(queue), Arc::new(SystemClock));
        let pairs: HashMap<QueueName, QueuePair> = self
            .dead_letters
            .iter()
            .filter_map(|(name, dead_letter_url)| {
                let queue_url = self.queues.get(name)?.clone();
                let dead_letter_url = dead_letter_url.clone();
                Some((
                    *name,
                    QueuePair {
                        queue_url,
                        dead_letter_url,
                    },
                ))
            })
            .collect();
        if pairs.is_empty() {
            services
        } else {
            services.with_dead_letters(Arc::new(SqsDeadLetters::new(sqs, pairs)))
        }
    }

    /// What the HTTP functions need: the services, tokens verified by API Gateway's JWT
    /// authorizer, and webhook secrets from SSM Parameter Store.
    pub async fn app_state(&self) -> AppState {
        let config = crate::aws::sdk_config(None).await;
        let dynamodb = self.warm_up(&config).await;
        AppState {
            services: Arc::new(self.services_with(&config, dynamodb)),
            verifier: Verifier::Gateway,
            secrets: Arc::new(SsmSecrets::new(aws_sdk_ssm::Client::new(&config))),
        }
    }
}
