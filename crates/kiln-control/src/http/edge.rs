//! Routes for edges running as their own processes (`kiln edge`).

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use kiln_api::edge::RouteSet;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::service::Service;

/// Longest long-poll.
const MAX_WAIT_S: u64 = 60;

/// Query of `GET /v1/edge/routes`.
#[derive(Debug, Default, Deserialize)]
pub struct RoutesQuery {
    /// Answer once the generation is greater than this.
    #[serde(default)]
    pub after: u64,
    /// Seconds to wait for that.
    #[serde(default)]
    pub wait: u64,
}

/// The route set; long-polls with `?after=G&wait=S` (operator token).
#[utoipa::path(get, path = "/v1/edge/routes", responses((status = 200, body = RouteSet)))]
pub async fn routes(
    State(service): State<Service>,
    caller: Caller,
    Query(query): Query<RoutesQuery>,
) -> ApiResult<Json<RouteSet>> {
    caller.require_operator()?;
    let wait = Duration::from_secs(query.wait.min(MAX_WAIT_S));
    Ok(Json(
        service.route_set(query.after, wait).await.as_ref().clone(),
    ))
}
