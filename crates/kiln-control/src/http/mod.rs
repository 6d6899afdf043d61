//! The HTTP front end: one route table, one file per resource. Handlers authorize,
//! extract, call one [`Service`] method and serialize; nothing else.

mod apps;
mod buckets;
mod cron;
mod databases;
mod edge;
mod env;
mod extract;
mod openapi;
mod orgs;
mod releases;
mod sandboxes;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::{get, post};
use kiln_http::linger::{Lingering, expects_continue};

use crate::error::ApiError;
use crate::service::Service;

pub use extract::ApiJson;

/// The whole API, read top to bottom.
pub fn router(service: Service) -> Router {
    Router::new()
        .route("/v1/health", get(orgs::health))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/orgs", post(orgs::create))
        .route("/v1/orgs/{org}", get(orgs::get).patch(orgs::update))
        .route("/v1/orgs/{org}/tokens", post(orgs::create_token))
        .route("/v1/nodes", get(orgs::nodes))
        .route("/v1/edge/routes", get(edge::routes))
        .route("/v1/apps", post(apps::create).get(apps::list))
        .route("/v1/apps/{app}", get(apps::get).delete(apps::delete))
        .route("/v1/apps/{app}/preview", post(apps::preview))
        .route(
            "/v1/apps/{app}/releases",
            post(releases::publish).get(releases::list),
        )
        .route(
            "/v1/apps/{app}/deployments",
            post(releases::deploy).get(releases::deployments),
        )
        .route("/v1/apps/{app}/rollback", post(releases::rollback))
        .route(
            "/v1/apps/{app}/databases",
            post(databases::create).get(databases::list),
        )
        .route(
            "/v1/databases/{db}",
            get(databases::get).delete(databases::delete),
        )
        .route(
            "/v1/databases/{db}/credentials/rotate",
            post(databases::rotate),
        )
        .route("/v1/apps/{app}/env", get(env::list))
        .route(
            "/v1/apps/{app}/env/{name}",
            axum::routing::put(env::set).delete(env::unset),
        )
        .route(
            "/v1/apps/{app}/buckets",
            post(buckets::create).get(buckets::list),
        )
        .route(
            "/v1/buckets/{bucket}",
            get(buckets::get).delete(buckets::delete),
        )
        .route("/v1/buckets/{bucket}/presign", post(buckets::presign))
        .route("/v1/apps/{app}/cron", post(cron::create).get(cron::list))
        .route("/v1/cron/{job}", get(cron::get).delete(cron::delete))
        .route("/v1/cron/{job}/runs", get(cron::runs))
        .route("/v1/releases/{rel}", get(releases::get))
        .route("/v1/releases/{rel}/verify", get(releases::verify))
        .route("/v1/artifacts/uploads", post(releases::create_upload))
        .route("/v1/artifacts/uploads/{id}", get(releases::upload_status))
        .route(
            "/v1/artifacts/uploads/{id}/parts/{n}",
            axum::routing::put(releases::put_part),
        )
        .route(
            "/v1/artifacts/uploads/{id}/complete",
            post(releases::complete_upload),
        )
        .route(
            "/v1/apps/{app}/sandboxes",
            post(sandboxes::create).get(sandboxes::list),
        )
        .route(
            "/v1/sandboxes/{sbx}",
            get(sandboxes::get).delete(sandboxes::delete),
        )
        .route("/v1/sandboxes/{sbx}/exec", post(sandboxes::exec))
        .route("/v1/sandboxes/{sbx}/files/", get(sandboxes::list_root))
        .route(
            "/v1/sandboxes/{sbx}/files/{*path}",
            get(sandboxes::get_file)
                .put(sandboxes::put_file)
                .delete(sandboxes::delete_file),
        )
        .route(
            "/v1/sandboxes/{sbx}/processes",
            post(sandboxes::start_process).get(sandboxes::list_processes),
        )
        .route(
            "/v1/sandboxes/{sbx}/processes/{name}",
            axum::routing::delete(sandboxes::stop_process),
        )
        .route(
            "/v1/sandboxes/{sbx}/processes/{name}/logs",
            get(sandboxes::process_logs),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_request(lingering))
        .with_state(service)
}

/// What a handler leaves unread of a request body (one refused as too large, say) is read and
/// dropped beside the answer, so a client still sending it gets the answer, not a reset.
async fn lingering(request: Request) -> Request {
    if expects_continue(request.headers()) {
        return request;
    }
    request.map(|body| Body::new(Lingering::new(body)))
}

async fn not_found() -> ApiError {
    ApiError::not_found_detail("no such endpoint: see /v1/openapi.json for the API")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new_status(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this endpoint does not take that method: see /v1/openapi.json",
    )
}
