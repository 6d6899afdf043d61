//! Buckets and presigned URLs.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kiln_api::List;
use kiln_api::buckets::{Bucket, BucketConfig, PresignConfig, PresignedUrl};

use super::ApiJson;
use super::apps::Scope;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::service::Service;

/// Creates a bucket with its own key pair; the secret is in this answer only.
#[utoipa::path(post, path = "/v1/apps/{app}/buckets", request_body = BucketConfig, responses((status = 201, body = Bucket)))]
pub async fn create(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
    ApiJson(config): ApiJson<BucketConfig>,
) -> ApiResult<(StatusCode, Json<Bucket>)> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    let bucket = service.create_bucket(&org, &app, config).await?;
    Ok((StatusCode::CREATED, Json(bucket)))
}

/// The app's buckets (without secrets).
#[utoipa::path(get, path = "/v1/apps/{app}/buckets", responses((status = 200, body = List<Bucket>)))]
pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
) -> ApiResult<Json<List<Bucket>>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.list_buckets(&org, &app).await?))
}

/// One bucket (without its secret).
#[utoipa::path(get, path = "/v1/buckets/{bucket}", responses((status = 200, body = Bucket)))]
pub async fn get(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(bucket): Path<String>,
) -> ApiResult<Json<Bucket>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.get_bucket(&org, &bucket).await?))
}

/// Deletes a bucket, its objects and its keys.
#[utoipa::path(delete, path = "/v1/buckets/{bucket}", responses((status = 204)))]
pub async fn delete(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(bucket): Path<String>,
) -> ApiResult<StatusCode> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    service.delete_bucket(&org, &bucket).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A presigned GET or PUT URL for one key, valid 1 s to 7 days.
#[utoipa::path(post, path = "/v1/buckets/{bucket}/presign", request_body = PresignConfig, responses((status = 200, body = PresignedUrl)))]
pub async fn presign(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(bucket): Path<String>,
    ApiJson(config): ApiJson<PresignConfig>,
) -> ApiResult<Json<PresignedUrl>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.presign(&org, &bucket, config).await?))
}
