//! The redeem function: the member's redemptions, the shop's coupon checks, operators'
//! reversals and adjustments, behind API Gateway's JWT authorizer.

use axum::Router;
use loyalty_core::api::gateway::behind_gateway;
use loyalty_core::api::{redemption_router, AppState};

/// The routes this function serves.
pub fn app(state: AppState) -> Router {
    behind_gateway(redemption_router(state))
}
