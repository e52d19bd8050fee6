//! Webhook secrets from SSM Parameter Store (SecureString `/loyalty/{program}/{platform}`, and
//! `/loyalty/{program}/{platform}/previous` during a rotation), cached per container so that a
//! delivery costs no extra round trip once warm. Secrets are never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ssm::Client;

use super::{Platform, Secrets};
use crate::ports::StoreError;

/// A rotated secret is picked up within this time.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Entries kept at most (programs x platforms of one deployment); beyond it the stale ones go,
/// then all, so a flood of deliveries can never grow the cache without bound.
const CACHE_MAX: usize = 1024;

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

    /// The values of those of `names` that exist, in one request (at most ten names, SSM's
    /// limit). Throttling, denial or a network failure is an error: the delivery gets a 503 and
    /// the platform retries it.
    async fn fetch_all(&self, names: &[String]) -> Result<HashMap<String, String>, StoreError> {
        match self
            .client
            .get_parameters()
            .set_names(Some(names.to_vec()))
            .with_decryption(true)
            .send()
            .await
        {
            Ok(output) => Ok(output
                .parameters
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| Some((p.name?, p.value?)))
                .collect()),
            Err(e) => Err(unavailable(&names.join(", "), e)),
        }
    }

    /// The parameter's value; `None` only when it does not exist. Throttling, denial or a
    /// network failure is an error, as for [`Self::fetch_all`].
    #[cfg(feature = "platform-api")]
    async fn fetch(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
        {
            Ok(output) => Ok(output.parameter.and_then(|p| p.value)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                tracing::info!(parameter = name, "no webhook secret");
                Ok(None)
            }
            Err(e) => Err(unavailable(name, e)),
        }
    }

    fn cached(&self, key: &(String, Platform)) -> Option<Vec<String>> {
        let cache = self.cache.lock().ok()?;
        let (at, values) = cache.get(key)?;
        (at.elapsed() < CACHE_TTL).then(|| values.clone())
    }

    fn remember(&self, key: (String, Platform), values: Vec<String>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            }
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), values));
        }
    }
}

/// SSM could not answer for `names` (throttled, denied, unreachable): a transient error, logged
/// with the parameters' names and the cause, never their values.
fn unavailable<E>(names: &str, e: E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let cause = aws_sdk_ssm::error::DisplayErrorContext(&e).to_string();
    tracing::warn!(parameters = names, error = %cause, "webhook secret unavailable");
    StoreError::Transient {
        message: format!("cannot read {names} from SSM"),
        source: Some(Box::new(e)),
    }
}

#[async_trait]
impl Secrets for SsmSecrets {
    async fn secrets(&self, program: &str, platform: Platform) -> Result<Vec<String>, StoreError> {
        let key = (program.to_string(), platform);
        if let Some(values) = self.cached(&key) {
            return Ok(values);
        }
        // The current secret and the previous one (kept during a rotation) in one round trip;
        // a previous secret alone, without a current one, is not a configured platform.
        let current = parameter_name(program, platform);
        let previous = format!("{current}/previous");
        let mut found = self.fetch_all(&[current.clone(), previous.clone()]).await?;
        let values: Vec<String> = match found.remove(&current) {
            Some(current) => std::iter::once(current)
                .chain(found.remove(&previous))
                .collect(),
            None => {
                tracing::info!(parameter = current, "no webhook secret");
                Vec::new()
            }
        };
        // Only answers are cached, never a failure to get one.
        self.remember(key, values.clone());
        Ok(values)
    }
}

/// A program's API credentials for a platform's order API (`/loyalty/{program}/{platform}/api`,
/// a SecureString of JSON), read by the reconciliation job once per run, never cached.
#[cfg(feature = "platform-api")]
#[async_trait]
impl crate::services::reconcile::PlatformKeys for SsmSecrets {
    async fn api_credentials(
        &self,
        program: &str,
        platform: Platform,
    ) -> Result<Option<String>, StoreError> {
        self.fetch(&format!("{}/api", parameter_name(program, platform)))
            .await
    }
}
