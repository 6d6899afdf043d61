//! An app's configuration variables and secrets.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kiln_api::List;
use kiln_api::releases::{EnvVar, EnvVarConfig};

use super::ApiJson;
use super::apps::Scope;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::service::Service;

/// The app's variables; secret values are never shown.
#[utoipa::path(get, path = "/v1/apps/{app}/env", responses((status = 200, body = List<EnvVar>)))]
pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
) -> ApiResult<Json<List<EnvVar>>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.list_env(&org, &app).await?))
}

/// Sets a variable; `secret: true` encrypts it at rest and hides it from then on.
#[utoipa::path(put, path = "/v1/apps/{app}/env/{name}", request_body = EnvVarConfig, responses((status = 200, body = EnvVar)))]
pub async fn set(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path((app, name)): Path<(String, String)>,
    ApiJson(config): ApiJson<EnvVarConfig>,
) -> ApiResult<Json<EnvVar>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(
        service
            .set_env(&org, &app, &name, &config.value, config.secret)
            .await?,
    ))
}

/// Removes a variable.
#[utoipa::path(delete, path = "/v1/apps/{app}/env/{name}", responses((status = 204)))]
pub async fn unset(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    service.unset_env(&org, &app, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
