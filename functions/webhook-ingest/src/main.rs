//! Lambda entry point: the webhook routes of the shared API, behind API Gateway. Clients and
//! the secret cache are built once per container.

use loyalty_core::api::{edge, webhook_router};
use loyalty_core::config::AwsSettings;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let settings = AwsSettings::from_env()?;
    lambda_http::run(edge(webhook_router(settings.app_state().await))).await
}
