//! Behind API Gateway: the JWT authorizer has verified the token; this layer hands its claims
//! to the handlers as [`GatewayClaims`], so they see the same `Principal` as under
//! `loyalty serve`.

use axum::extract::Request;
use axum::Router;
use lambda_http::request::RequestContext;
use serde_json::{Map, Value};

use super::auth::GatewayClaims;

/// Adds the claims layer, and what every served router gets ([`super::edge`]), to a router a
/// Lambda function runs.
pub fn behind_gateway(router: Router) -> Router {
    super::edge(router).layer(axum::middleware::map_request(with_claims))
}

/// Copies the authorizer's verified claims onto the request. A request without them (a route
/// deployed without the authorizer) has none, and the handlers answer 401.
async fn with_claims(mut request: Request) -> Request {
    let claims = match request.extensions().get::<RequestContext>() {
        Some(RequestContext::ApiGatewayV2(context)) => context
            .authorizer
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .map(|jwt| {
                jwt.claims
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect::<Map<String, Value>>()
            }),
        _ => None,
    };
    if let Some(claims) = claims {
        request.extensions_mut().insert(GatewayClaims(claims));
    }
    request
}
