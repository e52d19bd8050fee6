//! A DynamoDB table in moto for tests of `--table`: `scripts/test` starts moto and exports
//! `LOYALTY_TEST_DYNAMODB_ENDPOINT`; without it these tests fail, saying so.

use std::process::{Command, Output};

use async_trait::async_trait;
use loyalty_core::envelope::Envelope;
use loyalty_core::ports::{Queue, QueueError, QueueName};

use super::BIN;

/// Follow-ups (tier checks, notices) are not these tests' subject.
pub struct Dropped;

#[async_trait]
impl Queue for Dropped {
    async fn send(&self, _: QueueName, _: &Envelope) -> Result<(), QueueError> {
        Ok(())
    }
}

pub fn endpoint() -> String {
    std::env::var("LOYALTY_TEST_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!("LOYALTY_TEST_DYNAMODB_ENDPOINT is not set: run the tests with scripts/test, which starts moto")
    })
}

pub fn client() -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "cli-tests"))
        .http_client(loyalty_core::aws::http_client())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Runs `loyalty` against moto.
pub fn loyalty(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("LOYALTY_LOG", "warn")
        .output()
        .expect("loyalty runs")
}
