//! Lambda entry point: the redemption routes of the shared API, behind API Gateway's JWT
//! authorizer. Clients are built once per container.

use loyalty_core::config::AwsSettings;
use loyalty_core::telemetry::observe_lambda_http;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    loyalty_core::telemetry::init_lambda("redeem");
    let settings = AwsSettings::from_env()?;
    lambda_http::run(observe_lambda_http(redeem::app(settings.app_state().await))).await
}
