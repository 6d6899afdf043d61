//! Cron jobs and their runs.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_api::List;
use kiln_api::cron::{CronJob, CronJobConfig, CronRun};

use super::ApiJson;
use super::apps::Scope;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::idempotency;
use crate::service::Service;

/// Creates a cron job; an invalid schedule or time zone is a 422 naming the wrong field.
#[utoipa::path(post, path = "/v1/apps/{app}/cron", request_body = CronJobConfig, responses((status = 201, body = CronJob)))]
pub async fn create(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
    headers: HeaderMap,
    ApiJson(config): ApiJson<CronJobConfig>,
) -> ApiResult<Response> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    idempotency::once(&service, &org, &headers, &config, || async {
        let job = service.create_cron_job(&org, &app, config.clone()).await?;
        Ok((StatusCode::CREATED, Json(job)).into_response())
    })
    .await
}

/// The app's cron jobs.
#[utoipa::path(get, path = "/v1/apps/{app}/cron", responses((status = 200, body = List<CronJob>)))]
pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
) -> ApiResult<Json<List<CronJob>>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.list_cron_jobs(&org, &app).await?))
}

/// Reads a cron job, with its next slot.
#[utoipa::path(get, path = "/v1/cron/{job}", responses((status = 200, body = CronJob)))]
pub async fn get(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(job): Path<String>,
) -> ApiResult<Json<CronJob>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.cron_job(&org, &job).await?))
}

/// Deletes a cron job and its run history.
#[utoipa::path(delete, path = "/v1/cron/{job}", responses((status = 204)))]
pub async fn delete(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(job): Path<String>,
) -> ApiResult<StatusCode> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    service.delete_cron_job(&org, &job).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The job's runs, newest slot first: each run, failure and skipped slot.
#[utoipa::path(get, path = "/v1/cron/{job}/runs", responses((status = 200, body = List<CronRun>)))]
pub async fn runs(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(job): Path<String>,
) -> ApiResult<Json<List<CronRun>>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.cron_runs(&org, &job).await?))
}
