//! Lambda entry point: build the services once per container, then hand each batch of stream
//! records to `handle`.

use aws_lambda_events::event::dynamodb::Event;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use loyalty_core::config::{AwsSettings, Connections};
use loyalty_core::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_lambda("outbox-relay");
    let settings = AwsSettings::from_env()?;
    // It only sends (what the stream's entries carry): SQS alone.
    let services = settings.services(Connections::dynamodb(0).and_sqs()).await;
    let services = &services;
    run(service_fn(move |event: LambdaEvent<Event>| {
        telemetry::invocation(async move {
            Ok::<_, Error>(outbox_relay::handle(services, event.payload).await)
        })
    }))
    .await
}
