//! AWS configuration, loaded once per process (Lambda container) and shared by every client.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::config::SharedHttpClient;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_http_client::{Builder, ConnectorBuilder};

/// Region, credentials and endpoint from the environment (`AWS_ENDPOINT_URL` included), or an
/// explicit endpoint (moto, DynamoDB Local) when given.
pub async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http_client());
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// The HTTPS client of every AWS client: the SDK's default client (connector settings, sleep,
/// proxy from the environment) with rustls on ring instead of aws-lc. aws-lc seeds its random
/// generator from CPU jitter on its first use, 40-60 ms of computing in the first TLS
/// handshake of every new process (docs/decisions.md).
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

/// What an AWS call's failure says, for a message: the service's error code when it answered
/// with one, else the chain of causes (a refused connection, a timeout, an endpoint that could
/// not be resolved, missing credentials), never a bare "error".
pub(crate) fn cause<E>(e: &E) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error,
{
    if let Some(code) = e.code() {
        let said = match e.message() {
            Some(message) if !message.is_empty() => format!("{code}: {message}"),
            _ => code.to_string(),
        };
        // DynamoDB's own words name no table: say what it means for an operator's command.
        return match code {
            "ResourceNotFoundException" => format!(
                "{said} (the table does not exist in this region, or these credentials cannot see it)"
            ),
            _ => said,
        };
    }
    let mut said = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !said.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
        source = cause.source();
    }
    said
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failure_without_a_service_code_names_its_causes() {
        // GIVEN a call that never reached the service
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e: aws_sdk_dynamodb::error::SdkError<
            aws_sdk_dynamodb::operation::get_item::GetItemError,
            (),
        > = aws_sdk_dynamodb::error::SdkError::construction_failure(refused);
        // WHEN it is described THEN the cause is named (before: "error")
        let said = super::cause(&e);
        assert!(said.contains("connection refused"), "{said}");
    }

    #[test]
    fn a_missing_table_is_said_so_with_the_service_s_words() {
        // GIVEN DynamoDB's answer to a call on a table that does not exist
        use aws_sdk_dynamodb::error::ErrorMetadata;
        use aws_sdk_dynamodb::operation::get_item::GetItemError;
        let missing = GetItemError::generic(
            ErrorMetadata::builder()
                .code("ResourceNotFoundException")
                .message("Requested resource not found")
                .build(),
        );
        let e: aws_sdk_dynamodb::error::SdkError<GetItemError, ()> =
            aws_sdk_dynamodb::error::SdkError::service_error(missing, ());
        // WHEN it is described THEN the code, its message and what it means are said (before:
        // "ResourceNotFoundException" alone)
        let said = super::cause(&e);
        assert!(
            said.starts_with("ResourceNotFoundException: Requested resource not found")
                && said.contains("the table does not exist"),
            "{said}"
        );
    }
}
