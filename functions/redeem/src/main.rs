//! Lambda entry point: the redemption routes of the shared API, behind API Gateway's JWT
//! authorizer. Clients are built once per container.

use loyalty_core::config::{AwsSettings, Connections};
use loyalty_core::telemetry::observe_lambda_http;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    loyalty_core::telemetry::init_lambda("redeem");
    let settings = AwsSettings::from_env()?;
    // A cold redemption reads the program with its campaigns beside the caller's link, then
    // the member (with the earlier answer to its Idempotency-Key).
    let state = settings.app_state(Connections::dynamodb(2)).await;
    lambda_http::run(observe_lambda_http(redeem::app(state))).await
}
