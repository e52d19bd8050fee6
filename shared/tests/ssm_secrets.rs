//! Webhook secrets from SSM Parameter Store, against moto: the current and the previous secret
//! of a rotation come back in one request, in that order, and are cached per container.
#![cfg(feature = "aws")]

use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ssm::types::ParameterType;
use loyalty_core::webhooks::ssm::{parameter_name, SsmSecrets};
use loyalty_core::webhooks::{Platform, Secrets};

fn client(endpoint: &str) -> aws_sdk_ssm::Client {
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "ssm-test"))
        .http_client(loyalty_core::aws::http_client())
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

fn moto() -> aws_sdk_ssm::Client {
    let endpoint = std::env::var("LOYALTY_TEST_SSM_ENDPOINT").unwrap_or_else(|_| {
        panic!("LOYALTY_TEST_SSM_ENDPOINT is not set: run the tests with scripts/test, which starts moto")
    });
    client(&endpoint)
}

/// A program no other test uses.
fn program() -> String {
    format!("p-{}", uuid::Uuid::new_v4().simple())
}

async fn put(client: &aws_sdk_ssm::Client, name: &str, value: &str) {
    client
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .expect("moto stores the parameter");
}

async fn delete(client: &aws_sdk_ssm::Client, name: &str) {
    client
        .delete_parameter()
        .name(name)
        .send()
        .await
        .expect("moto deletes the parameter");
}

#[tokio::test]
async fn a_rotation_s_two_secrets_come_back_current_first_and_stay_cached() {
    // GIVEN a program's Shopify secret in the middle of a rotation (current and previous)
    let ssm = moto();
    let program = program();
    let name = parameter_name(&program, Platform::Shopify);
    put(&ssm, &name, "new-secret").await;
    put(&ssm, &format!("{name}/previous"), "old-secret").await;
    let secrets = SsmSecrets::new(ssm.clone());
    // WHEN they are asked for
    let got = secrets
        .secrets(&program, Platform::Shopify)
        .await
        .expect("SSM answers");
    // THEN both come back, the current one first
    assert_eq!(
        got,
        vec!["new-secret".to_string(), "old-secret".to_string()]
    );
    // WHEN the parameters are gone and the same container asks again
    delete(&ssm, &name).await;
    delete(&ssm, &format!("{name}/previous")).await;
    let again = secrets
        .secrets(&program, Platform::Shopify)
        .await
        .expect("answered from the cache");
    // THEN the answer is the cached one (no request within the cache's lifetime)
    assert_eq!(again, got);
    // AND another container, which has no cache, finds none
    let fresh = SsmSecrets::new(ssm)
        .secrets(&program, Platform::Shopify)
        .await
        .expect("SSM answers");
    assert!(fresh.is_empty(), "{fresh:?}");
}

#[tokio::test]
async fn a_previous_secret_without_a_current_one_is_no_secret() {
    // GIVEN only the previous secret of a platform (a rotation finished the wrong way round),
    // and a current secret alone for another platform
    let ssm = moto();
    let program = program();
    let shopify = parameter_name(&program, Platform::Shopify);
    put(&ssm, &format!("{shopify}/previous"), "old-secret").await;
    put(&ssm, &parameter_name(&program, Platform::Pos), "pos-secret").await;
    let secrets = SsmSecrets::new(ssm);
    // WHEN each platform's secrets are asked for
    let shopify = secrets.secrets(&program, Platform::Shopify).await;
    let pos = secrets.secrets(&program, Platform::Pos).await;
    // THEN the first has none (not configured) and the second has its one
    assert_eq!(shopify.expect("SSM answers"), Vec::<String>::new());
    assert_eq!(pos.expect("SSM answers"), vec!["pos-secret".to_string()]);
}

#[tokio::test]
async fn ssm_out_of_reach_is_a_transient_error_and_not_remembered() {
    // GIVEN an SSM endpoint where nothing listens
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let endpoint = format!("http://{}", closed.local_addr().expect("its address"));
    drop(closed);
    let secrets = SsmSecrets::new(client(&endpoint));
    // WHEN a secret is asked for, twice
    for _ in 0..2 {
        let got = secrets.secrets("kr-shop", Platform::Shopify).await;
        // THEN each time it is a transient error (the delivery gets a 503), never "no secret"
        assert!(
            matches!(got, Err(loyalty_core::ports::StoreError::Transient { .. })),
            "{got:?}"
        );
    }
}
