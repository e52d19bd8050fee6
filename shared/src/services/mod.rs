//! Services: load state, call the domain, commit with a condition, publish what follows.
//!
//! The Lambda handlers and `loyalty serve` call these same functions; only the adapters behind
//! the ports differ.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::Program;
use crate::ports::{Clock, Queue, Store, StoreError};

pub mod batch;
pub mod campaign_tick;
pub mod campaigns;
pub mod earn;
pub mod events;
pub mod jobs;
pub mod members;
pub mod outbox;
pub mod programs;
pub mod redemptions;
pub mod webhooks;

/// How long a container trusts its cached copy of a program before reading it again. A program
/// saved through this process is seen at once; other containers see it within this time.
const PROGRAM_CACHE_TTL: Duration = Duration::from_secs(30);

/// Attempts at an optimistic commit before giving up (the message is then retried by the queue).
pub(crate) const COMMIT_ATTEMPTS: usize = 8;

/// Why a service call failed, in terms a caller can act on. The HTTP layer maps each to a status
/// and a problem type.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{detail}")]
    NotFound {
        problem: &'static str,
        detail: String,
    },
    #[error("{detail}")]
    Invalid {
        problem: &'static str,
        detail: String,
    },
    #[error("{detail}")]
    Conflict {
        problem: &'static str,
        detail: String,
    },
    #[error("{detail}")]
    Unprocessable {
        problem: &'static str,
        detail: String,
    },
    #[error("{detail}")]
    Unauthorized {
        problem: &'static str,
        detail: String,
    },
    #[error("{detail}")]
    Forbidden {
        problem: &'static str,
        detail: String,
    },
    #[error("temporarily unavailable: {0}")]
    Unavailable(#[source] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(problem: &'static str, detail: impl Into<String>) -> Self {
        ServiceError::Invalid {
            problem,
            detail: detail.into(),
        }
    }

    pub fn unknown_program(program: &str) -> Self {
        ServiceError::NotFound {
            problem: "unknown-program",
            detail: format!("program {program:?} does not exist"),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Transient { .. } => ServiceError::Unavailable(e),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

/// The services with their ports. Built once per process (or Lambda container).
pub struct Services {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub clock: Arc<dyn Clock>,
    programs: Mutex<HashMap<String, (Instant, Arc<Program>)>>,
    /// Each program's campaigns, trusted for as long as a program.
    campaigns: Mutex<HashMap<String, (Instant, CampaignList)>>,
}

/// A program's campaigns, by id.
pub(crate) type CampaignList = Arc<Vec<(String, crate::campaigns::Campaign)>>;

impl Services {
    pub fn new(store: Arc<dyn Store>, queue: Arc<dyn Queue>, clock: Arc<dyn Clock>) -> Services {
        Services {
            store,
            queue,
            clock,
            programs: Mutex::new(HashMap::new()),
            campaigns: Mutex::new(HashMap::new()),
        }
    }

    /// The current program, from the cache when fresh.
    pub async fn program(&self, id: &str) -> Result<Arc<Program>, ServiceError> {
        if let Some(program) = self.cached(id) {
            return Ok(program);
        }
        let stored = self
            .store
            .get_program(id)
            .await?
            .ok_or_else(|| ServiceError::unknown_program(id))?;
        let mut program = Program::from_json(&stored.file_json)
            .map_err(|e| ServiceError::Internal(format!("stored program {id} is invalid: {e}")))?;
        program.version = stored.version;
        let program = Arc::new(program);
        self.remember(&program);
        Ok(program)
    }

    fn cached(&self, id: &str) -> Option<Arc<Program>> {
        let cache = self.programs.lock().ok()?;
        let (at, program) = cache.get(id)?;
        (at.elapsed() < PROGRAM_CACHE_TTL).then(|| Arc::clone(program))
    }

    /// The program's campaigns, from the cache when fresh (else one query).
    pub(crate) async fn campaign_list(&self, program: &str) -> Result<CampaignList, ServiceError> {
        if let Some(list) = self.campaigns.lock().ok().and_then(|c| {
            c.get(program)
                .filter(|(at, _)| at.elapsed() < PROGRAM_CACHE_TTL)
                .map(|(_, l)| Arc::clone(l))
        }) {
            return Ok(list);
        }
        let mut list = Vec::new();
        for (id, json) in self.store.campaigns(program).await? {
            let campaign = serde_json::from_str(&json).map_err(|e| {
                ServiceError::Internal(format!("stored campaign {id} is corrupt: {e}"))
            })?;
            list.push((id, campaign));
        }
        let list = Arc::new(list);
        if let Ok(mut cache) = self.campaigns.lock() {
            cache.insert(program.to_string(), (Instant::now(), Arc::clone(&list)));
        }
        Ok(list)
    }

    /// Forgets a program's cached campaigns (after one is saved here).
    pub(crate) fn forget_campaigns(&self, program: &str) {
        if let Ok(mut cache) = self.campaigns.lock() {
            cache.remove(program);
        }
    }

    fn remember(&self, program: &Arc<Program>) {
        if let Ok(mut cache) = self.programs.lock() {
            cache.insert(program.id.clone(), (Instant::now(), Arc::clone(program)));
        }
    }
}
