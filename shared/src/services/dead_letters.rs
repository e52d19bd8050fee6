//! The queues' dead letters for operators: how many wait on each queue, and their way back.
//! Dead-letter queues are shared by every program, so these routes need an admin token that
//! is not limited to one program.

use serde_json::{json, Value};

use super::{ServiceError, Services};
use crate::ports::{DeadLetters, QueueName};

/// The queues whose messages can die: events and tier checks (notices are the brand's).
const QUEUES: [QueueName; 2] = [QueueName::Earn, QueueName::Tier];
/// Messages moved back by one redrive, a send and a delete each, one after another: about
/// what fits in the API function's 10 seconds with room to answer (a thousand did not, and the
/// operator got a timeout and no count). A larger backlog takes several; the answer says how
/// many remain.
pub const REDRIVE_MAX: usize = 100;

impl Services {
    fn dead_letter_queues(&self) -> Result<&dyn DeadLetters, ServiceError> {
        self.dead_letters
            .as_deref()
            .ok_or_else(|| ServiceError::NotFound {
                problem: "no-dead-letters",
                detail: "this deployment gives the API no access to the dead-letter queues".into(),
            })
    }

    /// `GET /v1/dead-letters`: how many messages wait in each dead-letter queue.
    pub async fn dead_letter_depths(&self) -> Result<Value, ServiceError> {
        let port = self.dead_letter_queues()?;
        let mut queues = Vec::new();
        for queue in QUEUES {
            let depth = port.dead_letter_count(queue).await?;
            queues.push(json!({"queue": queue.as_str(), "depth": depth}));
        }
        Ok(json!({"queues": queues}))
    }

    /// `POST /v1/dead-letters/{queue}/redrive`: up to [`REDRIVE_MAX`] messages back to their
    /// queue, processed again once (events keep their ids, so nothing applies twice).
    pub async fn redrive_dead_letters(&self, queue: &str, by: &str) -> Result<Value, ServiceError> {
        let name = QUEUES
            .into_iter()
            .find(|q| q.as_str() == queue)
            .ok_or_else(|| ServiceError::NotFound {
                problem: "unknown-queue",
                detail: format!("no dead-letter queue {queue:?}: earn or tier"),
            })?;
        let port = self.dead_letter_queues()?;
        let moved = port.redrive(name, REDRIVE_MAX).await?;
        // SQS's count is approximate (and a moment behind the moves): a guide for the next
        // call, not a promise.
        let remaining = port.dead_letter_count(name).await?;
        tracing::info!(queue, moved, remaining, by, "dead letters redriven");
        Ok(json!({"queue": queue, "moved": moved, "remaining": remaining}))
    }
}
