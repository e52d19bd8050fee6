//! Shop platforms' order APIs, read for reconciliation: WooCommerce's `wp-json/wc/v3/orders`
//! (pages counted in `X-WP-TotalPages`) and Shopify's Admin REST `orders.json?status=any`
//! (pages linked in `Link`), each order turned into the events its webhooks produce. Rate
//! limits (429 with `Retry-After`) and server errors are waited out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::webhooks::{shopify, woocommerce, Platform, PlatformEvent};

/// Attempts at one page when the platform says "too many requests" or fails.
const PAGE_ATTEMPTS: u32 = 8;
/// Shopify's Admin REST API version read.
pub const SHOPIFY_API: &str = "2025-01";
/// The platforms whose order API is read.
pub const RECONCILED: [Platform; 2] = [Platform::WooCommerce, Platform::Shopify];

/// Where a program's orders are and how to sign in: for WooCommerce the site and a REST API
/// key (read access); for Shopify `https://{shop}.myshopify.com` and an Admin API access token
/// with `read_orders` and `read_all_orders` (without it, orders older than 60 days are left
/// out). As JSON (the SSM parameter): `{"url", "key", "secret"}` or
/// `{"url", "token"}`. Never logged.
#[derive(Clone, Deserialize)]
pub struct ApiCredentials {
    pub url: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

impl std::fmt::Debug for ApiCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCredentials")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ApiCredentials {
    /// From `LOYALTY_WOOCOMMERCE_URL`, `_KEY`, `_SECRET` or `LOYALTY_SHOPIFY_URL`, `_TOKEN`.
    pub fn from_env(platform: Platform) -> Result<ApiCredentials, String> {
        let prefix = format!("LOYALTY_{}", platform.as_str().to_uppercase());
        let var = |suffix: &str| {
            std::env::var(format!("{prefix}_{suffix}"))
                .ok()
                .filter(|v| !v.is_empty())
        };
        let url = var("URL").ok_or_else(|| format!("{prefix}_URL is not set"))?;
        let credentials = ApiCredentials {
            url,
            key: var("KEY"),
            secret: var("SECRET"),
            token: var("TOKEN"),
        };
        credentials
            .auth(platform)
            .map(|_| credentials)
            .map_err(|missing| format!("{prefix}_{} is not set", missing.to_uppercase()))
    }

    pub fn from_json(platform: Platform, text: &str) -> Result<ApiCredentials, String> {
        let credentials: ApiCredentials = serde_json::from_str(text)
            .map_err(|e| format!("the API credentials are not valid JSON: {e}"))?;
        credentials
            .auth(platform)
            .map(|_| credentials)
            .map_err(|missing| format!("the API credentials lack {missing:?}"))
    }

    /// How requests sign in, or the field that is missing.
    fn auth(&self, platform: Platform) -> Result<Auth, &'static str> {
        match platform {
            Platform::WooCommerce => Ok(Auth::Basic {
                key: self.key.clone().ok_or("key")?,
                secret: self.secret.clone().ok_or("secret")?,
            }),
            _ => Ok(Auth::Token(self.token.clone().ok_or("token")?)),
        }
    }
}

#[derive(Clone)]
enum Auth {
    Basic { key: String, secret: String },
    Token(String),
}

/// A platform's order API.
pub struct OrderApi {
    platform: Platform,
    base: String,
    client: reqwest::Client,
    auth: Auth,
}

impl OrderApi {
    pub fn new(platform: Platform, credentials: &ApiCredentials) -> Result<OrderApi, String> {
        if !RECONCILED.contains(&platform) {
            return Err(format!(
                "reconciling with {platform} is not supported: its webhooks carry events that no order API gives back one for one"
            ));
        }
        let auth = credentials
            .auth(platform)
            .map_err(|missing| format!("the {platform} API credentials lack {missing:?}"))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("loyalty/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(OrderApi {
            platform,
            base: credentials.url.trim_end_matches('/').to_string(),
            client,
            auth,
        })
    }

    /// The first page of orders changed in `[after, before)`.
    pub fn first_page(&self, after: DateTime<Utc>, before: DateTime<Utc>) -> String {
        let stamp = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S").to_string();
        let (after, before) = (stamp(after), stamp(before));
        match self.platform {
            Platform::WooCommerce => format!(
                "{}/wp-json/wc/v3/orders?modified_after={after}&modified_before={before}&dates_are_gmt=true&orderby=modified&order=asc&per_page=100&page=1",
                self.base
            ),
            _ => format!(
                "{}/admin/api/{SHOPIFY_API}/orders.json?status=any&updated_at_min={after}Z&updated_at_max={before}Z&limit=250",
                self.base
            ),
        }
    }

    /// What an order amounts to: the events its webhooks produce, with their ids.
    pub fn events(&self, order: &Value) -> Result<Vec<PlatformEvent>, String> {
        let now = Utc::now();
        match self.platform {
            Platform::WooCommerce => woocommerce::order_events(order, now),
            _ => shopify::order_events(order, now),
        }
        .map_err(|e| e.to_string())
    }

    /// One page of orders and the URL of the next, waiting out rate limits.
    pub async fn page(&self, url: &str) -> Result<(Vec<Value>, Option<String>), String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = match &self.auth {
                Auth::Basic { key, secret } => self.client.get(url).basic_auth(key, Some(secret)),
                Auth::Token(token) => self.client.get(url).header("X-Shopify-Access-Token", token),
            };
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if attempt < PAGE_ATTEMPTS => {
                    tracing::warn!(error = %e, "platform unreachable; trying again");
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(format!("cannot read {}: {e}", self.base)),
            };
            let status = response.status();
            if (status.as_u16() == 429 || status.is_server_error()) && attempt < PAGE_ATTEMPTS {
                let wait = retry_after(response.headers()).unwrap_or_else(|| backoff(attempt));
                tracing::info!(%status, wait_ms = wait.as_millis() as u64, "platform asks to wait");
                tokio::time::sleep(wait).await;
                continue;
            }
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(format!(
                    "{} answered {status}: {}",
                    self.base,
                    body.chars().take(300).collect::<String>()
                ));
            }
            let next = self.next_page(url, response.headers());
            let body: Value = response
                .json()
                .await
                .map_err(|e| format!("{}: the answer is not JSON: {e}", self.base))?;
            let orders = match self.platform {
                Platform::WooCommerce => body,
                _ => body.get("orders").cloned().unwrap_or(Value::Null),
            };
            let Value::Array(orders) = orders else {
                return Err(format!("{}: the answer is not a list of orders", self.base));
            };
            let next = if orders.is_empty() { None } else { next };
            return Ok((orders, next));
        }
    }

    /// The page to read after `url`, whose `orders` held `fresh` not read before in this pass,
    /// given the platform's own next page (`more`). Shopify's is a cursor, which a change
    /// made while paging cannot shift. WooCommerce numbers its pages: an order changed meanwhile
    /// leaves its place (to the end of the list, or out of the window) and every order behind it
    /// moves up one, so the next page by number skips one. Its next page is therefore the first
    /// of those modified after the last one read (less a second: an order of that same second
    /// is read again and passed over); only a page that brought nothing new moves on by number
    /// (more than a page's worth of orders of one second).
    pub fn following(
        &self,
        url: &str,
        orders: &[Value],
        fresh: usize,
        more: Option<String>,
    ) -> Option<String> {
        let more = more?;
        if self.platform != Platform::WooCommerce || fresh == 0 {
            return Some(more);
        }
        let Some(last) = orders
            .last()
            .and_then(|o| o.get("date_modified_gmt"))
            .and_then(Value::as_str)
            .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S").ok())
        else {
            return Some(more);
        };
        let after = (last - chrono::Duration::seconds(1))
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string();
        let (head, rest) = url.split_once("modified_after=")?;
        let rest = rest.split_once('&').map_or("", |(_, tail)| tail);
        let (rest, _) = rest.rsplit_once("&page=").unwrap_or((rest, ""));
        Some(format!("{head}modified_after={after}&{rest}&page=1"))
    }

    /// WooCommerce says how many pages there are; Shopify links the next one.
    fn next_page(&self, url: &str, headers: &reqwest::header::HeaderMap) -> Option<String> {
        match self.platform {
            Platform::WooCommerce => {
                let total: u64 = headers
                    .get("x-wp-totalpages")?
                    .to_str()
                    .ok()?
                    .parse()
                    .ok()?;
                let (head, page) = url.rsplit_once("&page=")?;
                let page: u64 = page.parse().ok()?;
                (page < total).then(|| format!("{head}&page={}", page + 1))
            }
            _ => {
                let link = headers.get("link")?.to_str().ok()?;
                link.split(',').find_map(|part| {
                    let (target, rel) = part.split_once(';')?;
                    rel.contains("rel=\"next\"").then(|| {
                        target
                            .trim()
                            .trim_start_matches('<')
                            .trim_end_matches('>')
                            .to_string()
                    })
                })
            }
        }
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(120.0)))
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6)))
}
