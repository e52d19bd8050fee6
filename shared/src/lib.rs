//! `loyalty-core`: the pure loyalty domain, the ports and adapters around it, and the services
//! and HTTP routes that the Lambda functions and `loyalty serve` share.

pub mod api;
pub mod audit;
#[cfg(feature = "aws")]
pub mod aws;
pub mod bucketing;
pub mod campaigns;
#[cfg(feature = "aws")]
pub mod config;
pub mod domain;
pub mod envelope;
pub mod fingerprint;
pub mod ids;
pub mod imports;
pub mod json_keys;
pub mod kpis;
pub mod liability;
#[cfg(feature = "platform-api")]
pub mod platforms;
pub mod ports;
pub mod queue;
pub mod report;
pub mod services;
pub mod store;
pub mod telemetry;
pub mod webhooks;
