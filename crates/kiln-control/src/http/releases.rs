//! Artifacts uploads, releases, deployments and rollback.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kiln_api::List;
use kiln_api::releases::{
    DeployConfig, Deployment, Release, ReleaseConfig, RollbackConfig, Upload, UploadCompleted,
    UploadConfig, Verification,
};

use super::ApiJson;
use super::apps::Scope;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::service::Service;

/// Starts a chunked, resumable artifact upload.
#[utoipa::path(post, path = "/v1/artifacts/uploads", request_body = UploadConfig, responses((status = 201, body = Upload)))]
pub async fn create_upload(
    State(service): State<Service>,
    _caller: Caller,
    ApiJson(config): ApiJson<UploadConfig>,
) -> ApiResult<(StatusCode, Json<Upload>)> {
    Ok((
        StatusCode::CREATED,
        Json(service.create_upload(config).await?),
    ))
}

/// Where an upload stands: which parts arrived (to resume).
#[utoipa::path(get, path = "/v1/artifacts/uploads/{id}", responses((status = 200, body = Upload)))]
pub async fn upload_status(
    State(service): State<Service>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Upload>> {
    Ok(Json(service.upload_status(&id).await?))
}

/// Stores part `n` (1-based) of an upload; each part is checked for its size.
#[utoipa::path(put, path = "/v1/artifacts/uploads/{id}/parts/{n}", request_body = Vec<u8>, responses((status = 200, body = Upload)))]
pub async fn put_part(
    State(service): State<Service>,
    _caller: Caller,
    Path((id, n)): Path<(String, u32)>,
    body: Body,
) -> ApiResult<Json<Upload>> {
    Ok(Json(service.put_part(&id, n, body).await?))
}

/// Completes an upload: the whole digest is verified before the artifact is stored.
#[utoipa::path(post, path = "/v1/artifacts/uploads/{id}/complete", responses((status = 200, body = UploadCompleted)))]
pub async fn complete_upload(
    State(service): State<Service>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<UploadCompleted>> {
    Ok(Json(service.complete_upload(&id).await?))
}

/// Publishes a release from a sandbox or an uploaded artifact.
#[utoipa::path(post, path = "/v1/apps/{app}/releases", request_body = ReleaseConfig, responses((status = 201, body = Release)))]
pub async fn publish(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
    ApiJson(config): ApiJson<ReleaseConfig>,
) -> ApiResult<(StatusCode, Json<Release>)> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(service.publish(&caller, &org, &app, config).await?),
    ))
}

/// The app's releases, newest first.
#[utoipa::path(get, path = "/v1/apps/{app}/releases", responses((status = 200, body = List<Release>)))]
pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
) -> ApiResult<Json<List<Release>>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.list_releases(&org, &app).await?))
}

/// A release.
#[utoipa::path(get, path = "/v1/releases/{rel}", responses((status = 200, body = Release)))]
pub async fn get(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(rel): Path<String>,
) -> ApiResult<Json<Release>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.get_release(&org, &rel).await?))
}

/// Checks a release's signature and its stored artifact's digest.
#[utoipa::path(get, path = "/v1/releases/{rel}/verify", responses((status = 200, body = Verification)))]
pub async fn verify(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(rel): Path<String>,
) -> ApiResult<Json<Verification>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.verify_release(&org, &rel).await?))
}

/// Deploys a release to the app's production URL.
#[utoipa::path(post, path = "/v1/apps/{app}/deployments", request_body = DeployConfig, responses((status = 201, body = Deployment)))]
pub async fn deploy(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
    ApiJson(config): ApiJson<DeployConfig>,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(service.deploy(&caller, &org, &app, &config.release).await?),
    ))
}

/// Deployment history, newest first; the live one has `live: true`.
#[utoipa::path(get, path = "/v1/apps/{app}/deployments", responses((status = 200, body = List<Deployment>)))]
pub async fn deployments(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
) -> ApiResult<Json<List<Deployment>>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.list_deployments(&org, &app).await?))
}

/// Re-points production to an earlier release, without rebuilding.
#[utoipa::path(post, path = "/v1/apps/{app}/rollback", request_body = RollbackConfig, responses((status = 200, body = Deployment)))]
pub async fn rollback(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
    ApiJson(config): ApiJson<RollbackConfig>,
) -> ApiResult<Json<Deployment>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(
        service
            .rollback(&caller, &org, &app, config.release.as_deref())
            .await?,
    ))
}
