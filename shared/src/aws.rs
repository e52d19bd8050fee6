//! AWS configuration, loaded once per process (Lambda container) and shared by every client.

/// Region, credentials and endpoint from the environment (`AWS_ENDPOINT_URL` included), or an
/// explicit endpoint (moto, DynamoDB Local) when given.
pub async fn sdk_config(endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}
