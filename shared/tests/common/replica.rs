//! Clients that play a DynamoDB replica a moment behind: moto's reads are always current, so an
//! interceptor takes from eventually consistent BatchGetItem answers what a replica would not
//! have yet.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextMut,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemOutput;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use serde_json::Value;

/// A replica behind on everything but the account: eventually consistent batch reads come
/// back without order records (`O#…`) and event markers (`E#…`). Counts the reads it aged.
#[derive(Debug, Default, Clone)]
pub struct BehindReplica(pub Arc<AtomicUsize>);

/// The request being answered is an eventually consistent BatchGetItem.
#[derive(Debug, Clone)]
struct Eventual;

impl Storable for Eventual {
    type Storer = StoreReplace<Self>;
}

/// What a replica a moment behind answers: it changes an eventually consistent BatchGetItem's
/// answer; every other answer is current.
pub trait Lag: std::fmt::Debug + Send + Sync + 'static {
    fn age(&self, answer: &mut BatchGetItemOutput);
}

/// A client's interceptor that answers its eventually consistent batch reads as `L` would.
#[derive(Debug, Clone)]
pub struct Replica<L>(pub L);

impl<L: Lag> Intercept for Replica<L> {
    fn name(&self) -> &'static str {
        "replica"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        mark_eventual(context, cfg);
        Ok(())
    }

    fn modify_before_attempt_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(answer) = eventual_answer(context, cfg) {
            self.0.age(answer);
        }
        Ok(())
    }
}

impl Lag for BehindReplica {
    fn age(&self, answer: &mut BatchGetItemOutput) {
        let behind = |item: &std::collections::HashMap<String, AttributeValue>| {
            item.get("SK")
                .and_then(|sk| sk.as_s().ok())
                .is_some_and(|sk| sk.starts_with("O#") || sk.starts_with("E#"))
        };
        for items in answer.responses.iter_mut().flat_map(|r| r.values_mut()) {
            items.retain(|item| !behind(item));
        }
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Marks the request as an eventually consistent BatchGetItem, for the answer's interceptor.
fn mark_eventual(context: &BeforeTransmitInterceptorContextRef<'_>, cfg: &mut ConfigBag) {
    let request = context.request();
    let batch_get = request
        .headers()
        .get("x-amz-target")
        .is_some_and(|t| t.ends_with(".BatchGetItem"));
    let body: Value = request
        .body()
        .bytes()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    let consistent = body["RequestItems"]
        .as_object()
        .is_some_and(|tables| tables.values().any(|t| t["ConsistentRead"] == true));
    if batch_get && !consistent {
        cfg.interceptor_state().store_put(Eventual);
    }
}

/// The answer of an eventually consistent BatchGetItem, to age.
fn eventual_answer<'a>(
    context: &'a mut FinalizerInterceptorContextMut<'_>,
    cfg: &ConfigBag,
) -> Option<&'a mut BatchGetItemOutput> {
    cfg.load::<Eventual>()?;
    let Some(Ok(output)) = context.output_or_error_mut() else {
        return None;
    };
    output.downcast_mut::<BatchGetItemOutput>()
}

impl BehindReplica {
    /// How many answers it aged.
    pub fn aged(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}
