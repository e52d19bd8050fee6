//! Lambda entry point: the member and admin routes of the shared API, behind API Gateway's JWT
//! authorizer. Clients are built once per container.

use loyalty_core::config::{AwsSettings, Connections};
use loyalty_core::telemetry::observe_lambda_http;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    loyalty_core::telemetry::init_lambda("member-api");
    let settings = AwsSettings::from_env()?;
    // A cold request reads the program and the caller's link together.
    let state = settings.app_state(Connections::dynamodb(2)).await;
    lambda_http::run(observe_lambda_http(member_api::app(state))).await
}
