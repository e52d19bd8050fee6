//! Settings of the Lambda functions, read once from the environment at start-up.

use std::collections::HashMap;
use std::sync::Arc;

use crate::api::auth::Verifier;
use crate::api::AppState;
use crate::ports::{QueueName, SystemClock};
use crate::queue::sqs_fifo::SqsQueue;
use crate::services::Services;
use crate::store::dynamodb::DynamoStore;
use crate::webhooks::ssm::SsmSecrets;

/// What a function needs to reach its table and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub table: String,
    pub queues: HashMap<QueueName, String>,
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
        Ok(AwsSettings { table, queues })
    }

    /// The services on DynamoDB and SQS, with clients built once from one AWS configuration.
    pub async fn services(&self) -> Services {
        self.services_with(&crate::aws::sdk_config(None).await)
    }

    fn services_with(&self, config: &aws_config::SdkConfig) -> Services {
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(config), &self.table);
        let queue = SqsQueue::new(aws_sdk_sqs::Client::new(config), self.queues.clone());
        Services::new(Arc::new(store), Arc::new(queue), Arc::new(SystemClock))
    }

    /// What the HTTP functions need: the services, tokens verified by API Gateway's JWT
    /// authorizer, and webhook secrets from SSM Parameter Store.
    pub async fn app_state(&self) -> AppState {
        let config = crate::aws::sdk_config(None).await;
        AppState {
            services: Arc::new(self.services_with(&config)),
            verifier: Verifier::Gateway,
            secrets: Arc::new(SsmSecrets::new(aws_sdk_ssm::Client::new(&config))),
        }
    }
}
