//! Campaign files: saved by admins (validated against the program, every problem named by
//! its field), versioned, and read back.

use serde_json::{json, Value};

use super::{ServiceError, Services};
use crate::campaigns::{Campaign, CampaignError};

/// Attempts at saving when another admin saves the same campaign at once.
const SAVE_ATTEMPTS: usize = 5;

impl Services {
    /// `PUT /v1/programs/{program}/campaigns/{campaign}`: 201 when new, 200 when updated.
    pub async fn put_campaign(
        &self,
        program_id: &str,
        id: &str,
        body: &[u8],
    ) -> Result<(bool, Value), ServiceError> {
        let program = self.program(program_id).await?;
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ServiceError::invalid(
                "invalid-campaign",
                "a campaign id is letters, digits, '-' and '_'",
            ));
        }
        let campaign = Campaign::from_json(body, &program).map_err(|e| match e {
            CampaignError::Syntax(_) => ServiceError::invalid("malformed-campaign", e.to_string()),
            CampaignError::Invalid(_) => ServiceError::invalid("invalid-campaign", e.to_string()),
        })?;
        let json =
            serde_json::to_string(&campaign).map_err(|e| ServiceError::Internal(e.to_string()))?;
        for _ in 0..SAVE_ATTEMPTS {
            let current = self.store.campaign(&program.id, id).await?.map(|(v, _)| v);
            if let Some(version) = self
                .store
                .put_campaign(&program.id, id, &json, current)
                .await?
            {
                let body = json!({"campaign": id, "version": version});
                return Ok((current.is_none(), body));
            }
        }
        Err(ServiceError::Conflict {
            problem: "campaign-changed",
            detail: format!("campaign {id} kept changing; read it again and retry"),
        })
    }

    /// `GET /v1/programs/{program}/campaigns/{campaign}`.
    pub async fn campaign(&self, program_id: &str, id: &str) -> Result<Value, ServiceError> {
        let program = self.program(program_id).await?;
        let (version, json) =
            self.store
                .campaign(&program.id, id)
                .await?
                .ok_or_else(|| ServiceError::NotFound {
                    problem: "unknown-campaign",
                    detail: format!("program {} has no campaign {id:?}", program.id),
                })?;
        let mut body: Value = serde_json::from_str(&json)
            .map_err(|e| ServiceError::Internal(format!("stored campaign {id} is corrupt: {e}")))?;
        body["id"] = json!(id);
        body["version"] = json!(version);
        Ok(body)
    }
}
