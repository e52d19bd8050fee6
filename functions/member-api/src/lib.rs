//! The member-api function: the member's routes (`/me`, `/me/ledger`, `/me/rewards`) and the
//! admin routes of the shared API, behind API Gateway's JWT authorizer.

use axum::Router;
use loyalty_core::api::gateway::behind_gateway;
use loyalty_core::api::{admin_router, member_router, AppState};

/// The routes this function serves.
pub fn app(state: AppState) -> Router {
    behind_gateway(member_router(state.clone()).merge(admin_router(state)))
}
