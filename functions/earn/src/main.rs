//! Lambda entry point: build the services once per container, then hand each batch to `handle`.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use loyalty_core::config::{AwsSettings, Connections};
use loyalty_core::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_lambda("earn");
    let settings = AwsSettings::from_env()?;
    // A cold purchase reads the program with its campaigns beside the member.
    let services = settings.services(Connections::dynamodb(2)).await;
    let services = &services;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        telemetry::invocation(
            async move { Ok::<_, Error>(earn::handle(services, event.payload).await) },
        )
    }))
    .await
}
