//! Queue adapters: SQS in AWS, and a durable queue inside the SQLite database for the local
//! process (at-least-once, FIFO per member, retries with backoff, dead letters).

#[cfg(feature = "sqlite")]
pub mod local;
pub mod outbox;
#[cfg(feature = "aws")]
pub mod sqs_fifo;
