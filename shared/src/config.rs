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

/// The key read during init to open connections to DynamoDB (no item has it).
pub const WARM_UP_KEY: &str = "warm-up";
/// The parameter named during init to open the connection to SSM (none has this name; it lies
/// under the `/loyalty/` path the template grants).
pub const WARM_UP_PARAMETER: &str = "/loyalty/warm-up";

/// The connections a function's first invocation uses at once, opened during init so that it
/// waits for no TLS handshake. HTTP/1.1 carries one request at a time per connection: requests
/// sent together on a cold start each open one, unless that many are already open and idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// DynamoDB requests the first invocation sends together.
    pub dynamodb: usize,
    /// It sends to SQS.
    pub sqs: bool,
    /// It reads SSM parameters.
    pub ssm: bool,
    /// One of the DynamoDB connections is opened by listing the programs
    /// ([`Services::list_programs`]) rather than by a read of nothing (the HTTP functions',
    /// [`AwsSettings::app_state`]).
    pub programs: bool,
}

impl Connections {
    /// DynamoDB only, `n` requests at once.
    pub const fn dynamodb(n: usize) -> Connections {
        Connections {
            dynamodb: n,
            sqs: false,
            ssm: false,
            programs: false,
        }
    }

    pub const fn and_sqs(self) -> Connections {
        Connections { sqs: true, ..self }
    }

    pub const fn and_ssm(self) -> Connections {
        Connections { ssm: true, ..self }
    }

    /// One of the DynamoDB connections lists the programs.
    pub const fn listing_programs(self) -> Connections {
        Connections {
            programs: self.dynamodb > 0,
            ..self
        }
    }
}

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

    /// The services on DynamoDB and SQS, with clients built once from one AWS configuration,
    /// and `warm` opened.
    pub async fn services(&self, warm: Connections) -> Services {
        let clients = Clients::new(&crate::aws::sdk_config(None).await);
        self.warm_up(&clients, warm).await;
        self.services_with(&clients)
    }

    /// Opens the connections of `warm` during init, all at once: the first invocation then
    /// pays no TLS handshake. Each request reads or
    /// sends nothing: a DynamoDB read of a key that never exists, an SQS batch of no messages
    /// (refused as empty, after the connection is made), an SSM read of a parameter that does
    /// not exist. A failure here is only logged; the first real call tries again.
    async fn warm_up(&self, clients: &Clients, warm: Connections) {
        use aws_sdk_dynamodb::types::AttributeValue;
        let key = || AttributeValue::S(WARM_UP_KEY.to_string());
        let reads = (0..warm.dynamodb).map(|_| async {
            let read = clients
                .dynamodb
                .get_item()
                .table_name(&self.table)
                .key("PK", key())
                .key("SK", key())
                .send()
                .await;
            if let Err(e) = read {
                tracing::info!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(&e), "warm-up read failed");
            }
        });
        let sqs = async {
            // Every queue is on the one SQS endpoint; the first configured, in a fixed order.
            let first = [QueueName::Earn, QueueName::Tier, QueueName::Notify]
                .iter()
                .find_map(|q| self.queues.get(q));
            let Some(url) = first.filter(|_| warm.sqs) else {
                return;
            };
            let sent = clients
                .sqs
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(Vec::new()))
                .send()
                .await;
            // The empty batch is refused by the service; only a failure to reach it matters.
            if let Err(aws_sdk_sqs::error::SdkError::DispatchFailure(e)) = sent {
                tracing::info!(error = ?e, "warm-up of SQS failed");
            }
        };
        futures_util::future::join(futures_util::future::join_all(reads), sqs).await;
    }

    fn services_with(&self, clients: &Clients) -> Services {
        let store = DynamoStore::new(clients.dynamodb.clone(), &self.table);
        let sqs = clients.sqs.clone();
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
    /// authorizer, and webhook secrets from SSM Parameter Store; `warm` opened.
    pub async fn app_state(&self, warm: Connections) -> AppState {
        let config = crate::aws::sdk_config(None).await;
        let clients = Clients::new(&config);
        let ssm = aws_sdk_ssm::Client::new(&config);
        let services = self.services_with(&clients);
        let others = Connections {
            dynamodb: warm.dynamodb.saturating_sub(usize::from(warm.programs)),
            ..warm
        };
        let listing = async {
            if !warm.programs {
                return;
            }
            match services.store.program_ids().await {
                Ok(ids) => services.list_programs(ids),
                Err(e) => tracing::info!(error = %e, "listing the programs during init failed"),
            }
        };
        let ssm_warm_up = async {
            if warm.ssm {
                warm_up_ssm(&ssm).await;
            }
        };
        futures_util::future::join3(self.warm_up(&clients, others), ssm_warm_up, listing).await;
        AppState {
            services: Arc::new(services),
            verifier: Verifier::Gateway,
            secrets: Arc::new(SsmSecrets::new(ssm)),
        }
    }
}

/// Opens the connection to SSM: a read of a parameter that does not exist (reported as
/// invalid, not as an error). Apart from `warm_up` so that the functions without SSM do not
/// link the call.
async fn warm_up_ssm(ssm: &aws_sdk_ssm::Client) {
    let read = ssm.get_parameters().names(WARM_UP_PARAMETER).send().await;
    if let Err(e) = read {
        tracing::info!(error = %aws_sdk_ssm::error::DisplayErrorContext(&e), "warm-up of SSM failed");
    }
}

/// The DynamoDB and SQS clients of one AWS configuration (they share its HTTP client).
struct Clients {
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
}

impl Clients {
    fn new(config: &aws_config::SdkConfig) -> Clients {
        Clients {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
        }
    }
}
