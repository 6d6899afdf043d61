//! Health, orgs, tokens and nodes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_api::orgs::{Node, Org, OrgConfig, OrgUpdate, TokenConfig, TokenCreated};
use kiln_api::{Health, List};

use super::ApiJson;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::service::Service;

/// Liveness, without auth.
#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Creates an org (operator only).
#[utoipa::path(post, path = "/v1/orgs", request_body = OrgConfig, responses((status = 201, body = Org)))]
pub async fn create(
    State(service): State<Service>,
    caller: Caller,
    ApiJson(config): ApiJson<OrgConfig>,
) -> ApiResult<(StatusCode, Json<Org>)> {
    Ok((
        StatusCode::CREATED,
        Json(service.create_org(&caller, config).await?),
    ))
}

/// Reads an org.
#[utoipa::path(get, path = "/v1/orgs/{org}", responses((status = 200, body = Org)))]
pub async fn get(
    State(service): State<Service>,
    caller: Caller,
    Path(org): Path<String>,
) -> ApiResult<Json<Org>> {
    Ok(Json(service.get_org(&caller, &org).await?))
}

/// Changes an org's name or brand.
#[utoipa::path(patch, path = "/v1/orgs/{org}", request_body = OrgUpdate, responses((status = 200, body = Org)))]
pub async fn update(
    State(service): State<Service>,
    caller: Caller,
    Path(org): Path<String>,
    ApiJson(update): ApiJson<OrgUpdate>,
) -> ApiResult<Json<Org>> {
    Ok(Json(service.update_org(&caller, &org, update).await?))
}

/// Issues an API token of the org; the token is shown once.
#[utoipa::path(post, path = "/v1/orgs/{org}/tokens", request_body = TokenConfig, responses((status = 201, body = TokenCreated)))]
pub async fn create_token(
    State(service): State<Service>,
    caller: Caller,
    Path(org): Path<String>,
    ApiJson(config): ApiJson<TokenConfig>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    Ok((
        StatusCode::CREATED,
        Json(service.create_token(&caller, &org, &config.name).await?),
    ))
}

/// Lists the nodes and their drivers.
#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = List<Node>)))]
pub async fn nodes(State(service): State<Service>, caller: Caller) -> ApiResult<Json<List<Node>>> {
    Ok(Json(service.nodes(&caller).await?))
}
