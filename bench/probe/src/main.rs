//! One DynamoDB GetItem per invocation (table from PROBE_TABLE, key PK/SK from PROBE_PK/PROBE_SK),
//! with the client built once per cold start, as the functions build theirs.

use aws_sdk_dynamodb::types::AttributeValue;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = std::env::var("PROBE_TABLE")?;
    let pk = std::env::var("PROBE_PK")?;
    let sk = std::env::var("PROBE_SK")?;
    let (client, table, pk, sk) = (&client, &table, &pk, &sk);
    run(service_fn(move |_event: LambdaEvent<Value>| async move {
        let item = client
            .get_item()
            .table_name(table)
            .key("PK", AttributeValue::S(pk.clone()))
            .key("SK", AttributeValue::S(sk.clone()))
            .send()
            .await?;
        Ok::<_, Error>(json!({"found": item.item().is_some()}))
    }))
    .await
}
