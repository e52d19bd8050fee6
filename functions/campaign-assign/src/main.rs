//! Lambda entry point: build the services and routes once per container, then hand each
//! invocation (an API Gateway request or the campaign-tick schedule) to `handle`.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use loyalty_core::config::{AwsSettings, Connections};

#[tokio::main]
async fn main() -> Result<(), Error> {
    loyalty_core::telemetry::init_lambda("campaign-assign");
    let settings = AwsSettings::from_env()?;
    // The member route reads the program with its campaigns beside the caller's link. The
    // tick, a job no caller waits on, opens what more it needs (it reads four yearly-day lists
    // at once) and is the only one to send to SQS (the day's birthdays and anniversaries); an
    // assignment's grant goes by the outbox, with the assignment.
    let state = settings.app_state(Connections::dynamodb(2)).await;
    let services = state.services.clone();
    let app = campaign_assign::app(state);
    let (services, app) = (&services, &app);
    run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        loyalty_core::telemetry::invocation(async move {
            let deadline = loyalty_core::services::jobs::deadline_of(event.context.deadline);
            campaign_assign::handle_with(services, app, event.payload, deadline)
                .await
                .map_err(Error::from)
        })
    }))
    .await
}
