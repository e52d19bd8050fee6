//! A DynamoDB client's requests as they happened: each one's sending and its answer, in order,
//! named by its operation and body, so that a test sees from outside what was sent together.

use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Sent,
    Answered,
}

/// Every DynamoDB request of a client, in the order its sending and its answer happened, each
/// named by its operation and body.
#[derive(Debug, Default, Clone)]
pub struct Timeline(pub Arc<Mutex<Vec<(Phase, String)>>>);

/// The name of the request an operation sent, kept for its answer.
#[derive(Debug, Clone)]
struct Named(String);

impl Storable for Named {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Timeline {
    fn name(&self) -> &'static str {
        "timeline"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("?");
        let body = request
            .body()
            .bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let name = format!("{operation} {body}");
        cfg.interceptor_state().store_put(Named(name.clone()));
        self.0.lock().unwrap().push((Phase::Sent, name));
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let name = cfg
            .load::<Named>()
            .map_or_else(String::new, |n| n.0.clone());
        self.0.lock().unwrap().push((Phase::Answered, name));
        Ok(())
    }
}

impl Timeline {
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    /// Where the first request of `operation` whose body holds `part` was sent or answered.
    pub fn at(&self, phase: Phase, operation: &str, part: &str) -> usize {
        let prefix = format!("{operation} ");
        self.0
            .lock()
            .unwrap()
            .iter()
            .position(|(p, name)| *p == phase && name.starts_with(&prefix) && name.contains(part))
            .unwrap_or_else(|| panic!("no {operation} with {part:?} was {phase:?}: {self:?}"))
    }

    /// The name of the first request sent.
    pub fn first_sent(&self) -> String {
        let timeline = self.0.lock().unwrap();
        timeline
            .iter()
            .find(|(p, _)| *p == Phase::Sent)
            .map(|(_, name)| name.clone())
            .unwrap_or_default()
    }

    pub fn count(&self, operation: &str) -> usize {
        let prefix = format!("{operation} ");
        self.sent_where(|name| name.starts_with(&prefix))
    }

    /// The most requests of `operation` that were sent and not yet answered at one time.
    pub fn most_at_once(&self, operation: &str) -> usize {
        let prefix = format!("{operation} ");
        self.most_in_flight(|name| name.starts_with(&prefix))
    }

    /// The most requests named so that `is` holds that were sent and not yet answered at one
    /// time.
    pub fn most_in_flight(&self, is: impl Fn(&str) -> bool) -> usize {
        let (mut now, mut most) = (0_usize, 0_usize);
        for (phase, name) in self.0.lock().unwrap().iter() {
            if !is(name) {
                continue;
            }
            match phase {
                Phase::Sent => now += 1,
                Phase::Answered => now = now.saturating_sub(1),
            }
            most = most.max(now);
        }
        most
    }

    /// How many requests sent were named so that `is` holds.
    pub fn sent_where(&self, is: impl Fn(&str) -> bool) -> usize {
        let timeline = self.0.lock().unwrap();
        timeline
            .iter()
            .filter(|(p, name)| *p == Phase::Sent && is(name))
            .count()
    }
}
