//! Managed databases: create, list, read, delete, rotate credentials.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kiln_api::List;
use kiln_api::databases::{Database, DatabaseConfig, DatabaseDeleted, Rotated};

use super::ApiJson;
use super::apps::Scope;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::service::Service;

/// Creates a database for the app. Answers `201` with status `provisioning` (or, with
/// `?wait=S`, the final status) and the URL with its password, shown only here and on
/// rotation.
#[utoipa::path(post, path = "/v1/apps/{app}/databases", request_body = DatabaseConfig, responses((status = 201, body = Database)))]
pub async fn create(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
    ApiJson(config): ApiJson<DatabaseConfig>,
) -> ApiResult<(StatusCode, Json<Database>)> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    let database = service
        .create_database(&org, &app, config, scope.wait)
        .await?;
    Ok((StatusCode::CREATED, Json(database)))
}

/// Lists the app's databases (URLs masked).
#[utoipa::path(get, path = "/v1/apps/{app}/databases", responses((status = 200, body = List<Database>)))]
pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
) -> ApiResult<Json<List<Database>>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.list_databases(&org, &app).await?))
}

/// Reads a database (URL masked); `?wait=S` waits for a final status.
#[utoipa::path(get, path = "/v1/databases/{db}", responses((status = 200, body = Database)))]
pub async fn get(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(db): Path<String>,
) -> ApiResult<Json<Database>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.get_database(&org, &db, scope.wait).await?))
}

/// Deletes a database: server, data and credentials. Allowed while in use; answers which
/// apps lose it.
#[utoipa::path(delete, path = "/v1/databases/{db}", responses((status = 200, body = DatabaseDeleted)))]
pub async fn delete(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(db): Path<String>,
) -> ApiResult<Json<DatabaseDeleted>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.delete_database(&org, &db).await?))
}

/// Issues a new credential, restarts the app's machines with it, revokes the old one.
#[utoipa::path(post, path = "/v1/databases/{db}/credentials/rotate", responses((status = 200, body = Rotated)))]
pub async fn rotate(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(db): Path<String>,
) -> ApiResult<Json<Rotated>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.rotate_database(&org, &db).await?))
}
