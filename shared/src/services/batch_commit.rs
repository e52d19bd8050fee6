//! A batch's commits written as one transaction where the store writes such a group all or
//! nothing (DynamoDB): the program's books are then one write for the whole group instead of
//! one per event, and the batch waits for one commit instead of one per message.
//!
//! Each message of a wave (at most one per FIFO group) is processed as if alone up to its
//! commit, which it hands to the group through its [`Seat`]: the first alone (on a cold start
//! it reads the program beside its member), then a few at a time, each letting the next one go
//! once its commit is handed in. Once every seat has handed in a commit or been given up (a
//! duplicate, a rejection, an error), the group's commits are sent together. When they are
//! refused together (a condition failed, too many items), nothing
//! was written, and each message commits alone as it would have without the batch: the single
//! commit's answer tells a duplicate from a conflict. When the answer is lost (a timeout), the
//! group may have been written: each commit sent alone then fails on its account's version or
//! its marker, and the message reads again and finds its event applied.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::{oneshot, Notify, Semaphore, SemaphorePermit};

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
    /// Turns: how many messages are processed at once, up to their commit.
    turns: Semaphore,
    /// The turns added once the first message has handed in its commit or finished: that one
    /// goes alone, since on a cold start it reads the program beside its member.
    later_turns: AtomicUsize,
    state: Mutex<Handed>,
    changed: Notify,
}

#[derive(Default)]
struct Handed {
    given_up: usize,
    commits: Vec<(Commit, oneshot::Sender<Answer>)>,
}

/// A message's place in its wave's group: used for its first commit, or given up when dropped.
/// It holds one of the group's turns until then.
pub(crate) struct Seat<'a> {
    group: &'a CommitGroup,
    used: bool,
    turn: Option<SemaphorePermit<'a>>,
}

impl CommitGroup {
    /// A group for `seats` messages, of which `at_once` are processed at a time.
    pub(crate) fn new(seats: usize, at_once: usize) -> CommitGroup {
        CommitGroup {
            seats,
            turns: Semaphore::new(1),
            later_turns: AtomicUsize::new(at_once.saturating_sub(1)),
            state: Mutex::new(Handed::default()),
            changed: Notify::new(),
        }
    }

    /// A message's seat, once it has its turn. Each of the `seats` messages takes one, and uses
    /// or drops it, for [`CommitGroup::write`] to finish.
    pub(crate) async fn seat(&self) -> Seat<'_> {
        // Never closed: a turn always comes once a seat ahead is used or dropped.
        let turn = self.turns.acquire().await.ok();
        Seat {
            group: self,
            used: false,
            turn,
        }
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
        // One transaction writes an item once: a member's first commit goes with the group,
        // any other of the same member alone (it then meets the first's new version).
        let mut members = HashSet::new();
        let (commits, later): (Vec<_>, Vec<_>) = commits
            .into_iter()
            .partition(|(c, _)| members.insert((c.program.clone(), c.member.clone())));
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
        let answers = commits.into_iter().map(|c| (c, together));
        for ((commit, answer), written) in answers.chain(later.into_iter().map(|c| (c, false))) {
            // A message that stopped waiting has nothing to be told.
            let _ = answer.send(if written {
                Answer::Written
            } else {
                Answer::Alone(Box::new(commit))
            });
        }
    }

    /// A message handed in its commit or finished: the others may go as many at a time as
    /// the group allows.
    fn one_done(&self) {
        let later = self.later_turns.swap(0, Ordering::SeqCst);
        if later > 0 {
            self.turns.add_permits(later);
        }
        self.changed.notify_one();
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
        // The next message may go while this one waits for the group.
        self.turn = None;
        self.group
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .commits
            .push((commit, sender));
        self.group.one_done();
        match answer.await {
            Ok(Answer::Written) => Ok(()),
            Ok(Answer::Alone(commit)) => {
                // Alone as in the wave: no more commits at a time than reads.
                let _turn = self.group.turns.acquire().await;
                services.commit(*commit).await
            }
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
            self.group.one_done();
        }
    }
}
