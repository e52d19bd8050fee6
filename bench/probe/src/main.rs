//! One DynamoDB GetItem per invocation (table from PROBE_TABLE, key PK/SK from PROBE_PK/PROBE_SK),
//! with the client built once per cold start, as the functions build theirs.

use aws_sdk_dynamodb::types::AttributeValue;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    #[cfg(feature = "ring")]
    let loader = loader.http_client(ring::http_client());
    let config = loader.load().await;
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

/// The functions' HTTPS client, as `loyalty_core::aws::http_client` builds it.
#[cfg(feature = "ring")]
mod ring {
    use aws_sdk_dynamodb::config::SharedHttpClient;
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};

    pub fn http_client() -> SharedHttpClient {
        Builder::new().build_with_connector_fn(|settings, components| {
            let mut connector =
                ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring));
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector.set_proxy_config(Some(ProxyConfig::from_env()));
            connector.build()
        })
    }
}
