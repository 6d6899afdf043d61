//! The machine-readable form of the API, served at `/v1/openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use super::{apps, buckets, cron, databases, edge, env, orgs, releases, sandboxes};

#[derive(OpenApi)]
#[openapi(
    info(title = "Kiln API", version = "1"),
    paths(
        orgs::health,
        orgs::create,
        orgs::get,
        orgs::update,
        orgs::create_token,
        orgs::nodes,
        edge::routes,
        apps::create,
        apps::list,
        apps::get,
        apps::delete,
        apps::preview,
        releases::create_upload,
        releases::upload_status,
        releases::put_part,
        releases::complete_upload,
        releases::publish,
        releases::list,
        releases::get,
        releases::verify,
        releases::deploy,
        releases::deployments,
        releases::rollback,
        buckets::create,
        buckets::list,
        buckets::get,
        buckets::delete,
        buckets::presign,
        cron::create,
        cron::list,
        cron::get,
        cron::delete,
        cron::runs,
        databases::create,
        databases::list,
        databases::get,
        databases::delete,
        databases::rotate,
        env::list,
        env::set,
        env::unset,
        sandboxes::create,
        sandboxes::list,
        sandboxes::get,
        sandboxes::delete,
        sandboxes::exec,
        sandboxes::get_file,
        sandboxes::put_file,
        sandboxes::delete_file,
        sandboxes::start_process,
        sandboxes::list_processes,
        sandboxes::stop_process,
        sandboxes::process_logs,
    ),
    components(schemas(kiln_api::Problem, kiln_api::sandboxes::ExecEvent))
)]
struct ApiDoc;

/// The OpenAPI document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
