//! Apps.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_api::List;
use kiln_api::apps::{App, AppConfig, Preview, PreviewConfig};
use serde::Deserialize;

use super::ApiJson;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::idempotency;
use crate::service::Service;

/// Query of org-scoped calls.
#[derive(Debug, Default, Deserialize)]
pub struct Scope {
    /// The org (operator only; id or slug).
    pub org: Option<String>,
    /// Cursor of a list.
    pub after: Option<String>,
    /// Seconds to wait for a final status.
    pub wait: Option<u64>,
}

/// Creates an app.
#[utoipa::path(post, path = "/v1/apps", request_body = AppConfig, responses((status = 201, body = App)))]
pub async fn create(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    headers: HeaderMap,
    ApiJson(config): ApiJson<AppConfig>,
) -> ApiResult<Response> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    idempotency::once(&service, &org, &headers, &config, || async {
        let app = service.create_app(&org, config.clone()).await?;
        Ok((StatusCode::CREATED, Json(app)).into_response())
    })
    .await
}

/// Lists the org's apps.
#[utoipa::path(get, path = "/v1/apps", responses((status = 200, body = List<App>)))]
pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
) -> ApiResult<Json<List<App>>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.list_apps(&org, scope.after.as_deref()).await?))
}

/// Reads an app by id or slug.
#[utoipa::path(get, path = "/v1/apps/{app}", responses((status = 200, body = App)))]
pub async fn get(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
) -> ApiResult<Json<App>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.get_app(&org, &app).await?))
}

/// Deletes an app and its sandboxes.
#[utoipa::path(delete, path = "/v1/apps/{app}", responses((status = 204)))]
pub async fn delete(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
) -> ApiResult<StatusCode> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    service.delete_app(&org, &app).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Points the app's preview URL at a port of its sandbox; answers once it answers through the
/// edge (`?wait=S`, default 30), else 503 with the dev server's log tail.
#[utoipa::path(post, path = "/v1/apps/{app}/preview", request_body = PreviewConfig, responses((status = 200, body = Preview)))]
pub async fn preview(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
    ApiJson(config): ApiJson<PreviewConfig>,
) -> ApiResult<Json<Preview>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(
        service.preview(&org, &app, config.port, scope.wait).await?,
    ))
}
