//! A batch's commits written as one transaction where the store writes such a group all or
//! nothing (DynamoDB): the program's books are then one write for the whole group instead of
//! one per event, and the batch waits for one commit instead of one per message.
//!
//! Each message of a wave (at most one per FIFO group) is processed as if alone up to its
//! commit, which it hands to the group through its [`Seat`]. Once every seat has handed in a
//! commit or been given up (a duplicate, a rejection, an error), the group's commits are sent
//! together. When they are refused together (a condition failed, two commits on one member,
//! too many items), nothing was written, and each message commits alone as it would have
//! without the batch: the single commit's answer tells a duplicate from a conflict.

use std::sync::Mutex;

use tokio::sync::{oneshot, Notify};

use super::Services;
use crate::ports::{Commit, CommitError, StoreError};

/// What the group answers a commit handed in.
enum Answer {
    Written,
    /// Not written: commit it alone.
    Alone(Box<Commit>),
}

/// The commits of one wave.
pub(crate) struct CommitGroup {
    seats: usize,
    state: Mutex<Handed>,
    changed: Notify,
}

#[derive(Default)]
struct Handed {
    given_up: usize,
    commits: Vec<(Commit, oneshot::Sender<Answer>)>,
}

/// A message's place in its wave's group: used for its first commit, or given up when dropped.
pub(crate) struct Seat<'a> {
    group: &'a CommitGroup,
    used: bool,
}

impl CommitGroup {
    pub(crate) fn new(seats: usize) -> CommitGroup {
        CommitGroup {
            seats,
            state: Mutex::new(Handed::default()),
            changed: Notify::new(),
        }
    }

    /// The seats, one per message of the wave; each must be used or dropped for
    /// [`CommitGroup::write`] to finish.
    pub(crate) fn seats(&self) -> Vec<Seat<'_>> {
        (0..self.seats)
            .map(|_| Seat {
                group: self,
                used: false,
            })
            .collect()
    }

    /// Waits for every seat, then writes the commits handed in and answers each.
    pub(crate) async fn write(&self, services: &Services) {
        let commits = loop {
            // A notice given before this wait is kept by `Notify` until it.
            let notified = self.changed.notified();
            if let Some(commits) = self.all_in() {
                break commits;
            }
            notified.await;
        };
        let together = commits.len() > 1
            && services.store.commits_together_atomically()
            && {
                let group = commits.iter().map(|(c, _)| c.clone()).collect();
                match services.commit_together(group).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::info!(commits = commits.len(), error = %e, "a batch's commits go one by one");
                        false
                    }
                }
            };
        for (commit, answer) in commits {
            // A message that stopped waiting has nothing to be told.
            let _ = answer.send(if together {
                Answer::Written
            } else {
                Answer::Alone(Box::new(commit))
            });
        }
    }

    fn all_in(&self) -> Option<Vec<(Commit, oneshot::Sender<Answer>)>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.given_up + state.commits.len() >= self.seats)
            .then(|| std::mem::take(&mut state.commits))
    }
}

impl Seat<'_> {
    /// Commits with the group, or alone when the group was not written.
    pub(crate) async fn commit(
        mut self,
        services: &Services,
        commit: Commit,
    ) -> Result<(), CommitError> {
        let (sender, answer) = oneshot::channel();
        self.used = true;
        self.group
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .commits
            .push((commit, sender));
        self.group.changed.notify_one();
        match answer.await {
            Ok(Answer::Written) => Ok(()),
            Ok(Answer::Alone(commit)) => services.commit(*commit).await,
            // Not known to be written: the message is retried, and its marker stops a repeat.
            Err(_) => Err(CommitError::Store(StoreError::Failed {
                message: "the batch's commit was abandoned".into(),
                source: None,
            })),
        }
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.group
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .given_up += 1;
            self.group.changed.notify_one();
        }
    }
}
