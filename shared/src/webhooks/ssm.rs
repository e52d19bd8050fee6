//! Webhook secrets from SSM Parameter Store (SecureString `/loyalty/{program}/{platform}`, and
//! `/loyalty/{program}/{platform}/previous` during a rotation), cached per container so that a
//! delivery costs no extra round trip once warm. Secrets are never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ssm::Client;

use super::{Platform, Secrets};

/// A rotated secret is picked up within this time.
const CACHE_TTL: Duration = Duration::from_secs(300);

type Cached = (Instant, Vec<String>);

pub struct SsmSecrets {
    client: Client,
    cache: Mutex<HashMap<(String, Platform), Cached>>,
}

/// The parameter that holds a program's secret for a platform.
pub fn parameter_name(program: &str, platform: Platform) -> String {
    format!("/loyalty/{program}/{}", platform.as_str())
}

impl SsmSecrets {
    pub fn new(client: Client) -> SsmSecrets {
        SsmSecrets {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn fetch(&self, name: &str) -> Option<String> {
        match self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
        {
            Ok(output) => output.parameter.and_then(|p| p.value),
            Err(e) => {
                // A missing parameter is "not configured" (401); say nothing of the value.
                tracing::info!(parameter = name, error = %aws_sdk_ssm::error::DisplayErrorContext(&e), "no webhook secret");
                None
            }
        }
    }
}

#[async_trait]
impl Secrets for SsmSecrets {
    async fn secrets(&self, program: &str, platform: Platform) -> Vec<String> {
        let key = (program.to_string(), platform);
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, values)) = cache.get(&key) {
                if at.elapsed() < CACHE_TTL {
                    return values.clone();
                }
            }
        }
        let name = parameter_name(program, platform);
        let mut values = Vec::new();
        if let Some(current) = self.fetch(&name).await {
            values.push(current);
            if let Some(previous) = self.fetch(&format!("{name}/previous")).await {
                values.push(previous);
            }
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, (Instant::now(), values.clone()));
        }
        values
    }
}
