//! A queue that is the outbox: what is sent is written to the store and relayed from there
//! (by `loyalty serve`'s relay, or the table's stream in AWS). Operators' commands use it to
//! feed the queues of a running system with nothing but access to its store.

use std::sync::Arc;

use async_trait::async_trait;

use crate::envelope::Envelope;
use crate::ports::{OutboxMessage, Queue, QueueError, QueueName, Store};

pub struct OutboxQueue {
    store: Arc<dyn Store>,
}

impl OutboxQueue {
    pub fn new(store: Arc<dyn Store>) -> OutboxQueue {
        OutboxQueue { store }
    }
}

#[async_trait]
impl Queue for OutboxQueue {
    async fn send(&self, queue: QueueName, message: &Envelope) -> Result<(), QueueError> {
        self.store
            .enqueue(&OutboxMessage::new(queue, message.clone()))
            .await
            .map_err(|e| QueueError {
                queue: queue.as_str(),
                message: e.to_string(),
                source: Some(Box::new(e)),
            })
    }
}
