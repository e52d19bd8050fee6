//! Lambda entry point: build the services once per container, then hand each invocation (an
//! SQS batch of `tier.check` or an EventBridge schedule) to `handle`.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use loyalty_core::config::{AwsSettings, Connections};
use loyalty_core::webhooks::ssm::SsmSecrets;

#[tokio::main]
async fn main() -> Result<(), Error> {
    loyalty_core::telemetry::init_lambda("tier-recalc");
    let settings = AwsSettings::from_env()?;
    // A cold tier check reads the program and the member together.
    let services = settings.services(Connections::dynamodb(2)).await;
    let services = &services;
    let config = loyalty_core::aws::sdk_config(None).await;
    let keys = SsmSecrets::new(aws_sdk_ssm::Client::new(&config));
    let keys = &keys;
    run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        loyalty_core::telemetry::invocation(async move {
            let deadline = loyalty_core::services::jobs::deadline_of(event.context.deadline);
            tier_recalc::handle_with(services, Some(keys), event.payload, deadline)
                .await
                .map_err(Error::from)
        })
    }))
    .await
}
