//! What the functions' tests share: moto's endpoint, an AWS configuration pointed at it, and a
//! deployment of their own in it (the table, the three queues, kr-shop saved), so that each
//! test sees only what it wrote. `scripts/test` starts moto and exports
//! `LOYALTY_TEST_DYNAMODB_ENDPOINT`; without it these tests fail, saying so.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_sqs::types::QueueAttributeName;
use loyalty_core::ports::{QueueName, SystemClock};
use loyalty_core::queue::sqs_fifo::SqsQueue;
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::DynamoStore;

/// The program every deployment starts with.
pub const KR_SHOP: &str = include_str!("../../examples/kr-shop.toml");

pub fn endpoint() -> String {
    std::env::var("LOYALTY_TEST_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!("LOYALTY_TEST_DYNAMODB_ENDPOINT is not set: run scripts/test, which starts moto")
    })
}

/// An AWS configuration pointed at moto, with test credentials.
pub async fn config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(loyalty_core::aws::http_client())
        .endpoint_url(endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "harness",
        ))
        .load()
        .await
}

/// When a received message that was not deleted comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// At once (a visibility timeout of 0): a test playing the event-source mapping sees its
    /// failures again on the next receive.
    AtOnce,
    /// After the queue's default visibility timeout: a test that receives until the queue is
    /// empty sees each message once.
    Later,
}

/// A deployment of its own: the names carry a fresh run id.
pub struct Deployment {
    pub config: aws_config::SdkConfig,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub table: String,
    pub store: DynamoStore,
    pub urls: HashMap<QueueName, String>,
    pub queue: Arc<SqsQueue>,
    /// On the store and the queues, with kr-shop saved.
    pub services: Services,
}

/// Creates the table, earn.fifo, tier.fifo and notify, and saves kr-shop.
pub async fn deployment(redelivery: Redelivery) -> Deployment {
    let config = config().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let sqs = aws_sdk_sqs::Client::new(&config);
    let mut urls = HashMap::new();
    for (queue, name, fifo) in [
        (QueueName::Earn, "earn", true),
        (QueueName::Tier, "tier", true),
        (QueueName::Notify, "notify", false),
    ] {
        let mut request = sqs.create_queue();
        if redelivery == Redelivery::AtOnce {
            request = request.attributes(QueueAttributeName::VisibilityTimeout, "0");
        }
        request = if fifo {
            request
                .queue_name(format!("{name}-{run}.fifo"))
                .attributes(QueueAttributeName::FifoQueue, "true")
        } else {
            request.queue_name(format!("{name}-{run}"))
        };
        let url = request
            .send()
            .await
            .expect("moto creates the queue")
            .queue_url
            .expect("a queue url");
        urls.insert(queue, url);
    }
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let table = format!("loyalty-{run}");
    let store = DynamoStore::new(dynamodb.clone(), table.clone());
    store.create_table().await.expect("moto creates the table");
    let queue = Arc::new(SqsQueue::new(sqs.clone(), urls.clone()));
    let services = Services::new(
        Arc::new(store.clone()),
        queue.clone(),
        Arc::new(SystemClock),
    );
    services
        .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
        .await
        .expect("kr-shop is saved");
    Deployment {
        config,
        sqs,
        dynamodb,
        table,
        store,
        urls,
        queue,
        services,
    }
}
