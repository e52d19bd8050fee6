//! Lambda entry point: the webhook routes of the shared API, behind the function's URL.
//! Clients and the secret cache are built once per container.

use loyalty_core::api::{edge, webhook_router};
use loyalty_core::config::{AwsSettings, Connections};
use loyalty_core::telemetry::observe_lambda_http;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    loyalty_core::telemetry::init_lambda("webhook-ingest");
    let settings = AwsSettings::from_env()?;
    // A new customer's order reads its secrets (SSM), reads its links, writes its identities'
    // links in one request beside the order's, and sends to the earn queue. The programs
    // listed during init have their secrets read beside the program.
    let warm = Connections::dynamodb(2).and_sqs().and_ssm();
    let state = settings.app_state(warm.listing_programs()).await;
    lambda_http::run(observe_lambda_http(edge(webhook_router(state)))).await
}
