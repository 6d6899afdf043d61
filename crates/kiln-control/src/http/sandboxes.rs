//! Sandboxes: lifecycle, exec, files and supervised processes.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use kiln_api::List;
use kiln_api::sandboxes::{
    DirEntry, ExecConfig, ExecResult, FileWritten, Process, ProcessConfig, Sandbox, SandboxConfig,
};
use serde::Deserialize;

use super::ApiJson;
use super::apps::Scope;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::idempotency;
use crate::service::Service;

/// Creates a sandbox for the app; `?wait=S` answers once it runs (or S seconds passed).
#[utoipa::path(post, path = "/v1/apps/{app}/sandboxes", request_body = SandboxConfig, responses((status = 201, body = Sandbox)))]
pub async fn create(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
    headers: HeaderMap,
    ApiJson(config): ApiJson<SandboxConfig>,
) -> ApiResult<Response> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    idempotency::once(&service, &org, &headers, &(&app, &config), || async {
        let sandbox = service
            .create_sandbox(&org, &app, config.clone(), scope.wait)
            .await?;
        Ok((StatusCode::CREATED, Json(sandbox)).into_response())
    })
    .await
}

/// Lists the app's sandboxes.
#[utoipa::path(get, path = "/v1/apps/{app}/sandboxes", responses((status = 200, body = List<Sandbox>)))]
pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(app): Path<String>,
) -> ApiResult<Json<List<Sandbox>>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(
        service
            .list_sandboxes(&org, &app, scope.after.as_deref())
            .await?,
    ))
}

/// Reads a sandbox; `?wait=S` waits for a final status.
#[utoipa::path(get, path = "/v1/sandboxes/{sbx}", responses((status = 200, body = Sandbox)))]
pub async fn get(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(sbx): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.get_sandbox(&org, &sbx, scope.wait).await?))
}

/// Deletes a sandbox: its machine and its workspace.
#[utoipa::path(delete, path = "/v1/sandboxes/{sbx}", responses((status = 204)))]
pub async fn delete(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(sbx): Path<String>,
) -> ApiResult<StatusCode> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    service.delete_sandbox(&org, &sbx).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a command; `Accept: application/x-ndjson` streams its output line by line.
#[utoipa::path(post, path = "/v1/sandboxes/{sbx}/exec", request_body = ExecConfig, responses((status = 200, body = ExecResult)))]
pub async fn exec(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(sbx): Path<String>,
    headers: HeaderMap,
    ApiJson(config): ApiJson<ExecConfig>,
) -> ApiResult<Response> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    let streaming = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if !streaming {
        return Ok(Json(service.exec(&org, &sbx, config).await?).into_response());
    }
    let events = service.exec_stream(&org, &sbx, config).await?;
    let lines = events.map(|event| {
        let mut line = serde_json::to_vec(&event).expect("exec events always serialize");
        line.push(b'\n');
        Ok::<_, std::io::Error>(line)
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// Query of file reads.
#[derive(Debug, Default, Deserialize)]
pub struct FileQuery {
    /// The org (operator only).
    pub org: Option<String>,
    /// Present to list a directory.
    pub list: Option<String>,
}

/// Lists the workspace root.
pub async fn list_root(
    State(service): State<Service>,
    caller: Caller,
    Query(query): Query<FileQuery>,
    Path(sbx): Path<String>,
) -> ApiResult<Response> {
    let org = service.scope(&caller, query.org.as_deref()).await?;
    Ok(Json(service.list_files(&org, &sbx, "").await?).into_response())
}

/// Reads a file, or lists a directory with `…/dir/?list`.
#[utoipa::path(get, path = "/v1/sandboxes/{sbx}/files/{path}", responses((status = 200, body = List<DirEntry>)))]
pub async fn get_file(
    State(service): State<Service>,
    caller: Caller,
    Query(query): Query<FileQuery>,
    Path((sbx, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let org = service.scope(&caller, query.org.as_deref()).await?;
    if query.list.is_some() {
        return Ok(Json(service.list_files(&org, &sbx, &path).await?).into_response());
    }
    let stream = service.get_file(&org, &sbx, &path).await?;
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// Writes a file from the raw body (parent directories are created).
#[utoipa::path(put, path = "/v1/sandboxes/{sbx}/files/{path}", request_body = Vec<u8>, responses((status = 200, body = FileWritten)))]
pub async fn put_file(
    State(service): State<Service>,
    caller: Caller,
    Query(query): Query<FileQuery>,
    Path((sbx, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<FileWritten>> {
    let org = service.scope(&caller, query.org.as_deref()).await?;
    let limit = service.config().max_file_bytes;
    let too_large = || {
        ApiError::too_large(format!(
            "the file is larger than the limit of {limit} bytes (`limits.max_file_bytes`): split it or raise the limit"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // Chunked bodies are counted as they stream; passing the limit aborts the write, and
    // the agent then discards its temporary file, so nothing half-written appears.
    let exceeded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = exceeded.clone();
    let mut seen = 0u64;
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .and_then(move |chunk| {
            seen += chunk.len() as u64;
            let over = seen > limit;
            if over {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            async move {
                if over {
                    Err(std::io::Error::other("body exceeds the size limit"))
                } else {
                    Ok(chunk)
                }
            }
        });
    match service.put_file(&org, &sbx, &path, Box::pin(stream)).await {
        Err(_) if exceeded.load(std::sync::atomic::Ordering::Relaxed) => Err(too_large()),
        other => Ok(Json(other?)),
    }
}

/// Deletes a file or a directory tree.
#[utoipa::path(delete, path = "/v1/sandboxes/{sbx}/files/{path}", responses((status = 204)))]
pub async fn delete_file(
    State(service): State<Service>,
    caller: Caller,
    Query(query): Query<FileQuery>,
    Path((sbx, path)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let org = service.scope(&caller, query.org.as_deref()).await?;
    service.delete_file(&org, &sbx, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts (or replaces) a supervised process such as the dev server.
#[utoipa::path(post, path = "/v1/sandboxes/{sbx}/processes", request_body = ProcessConfig, responses((status = 201, body = Process)))]
pub async fn start_process(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(sbx): Path<String>,
    ApiJson(config): ApiJson<ProcessConfig>,
) -> ApiResult<(StatusCode, Json<Process>)> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(service.start_process(&org, &sbx, config).await?),
    ))
}

/// Lists supervised processes.
#[utoipa::path(get, path = "/v1/sandboxes/{sbx}/processes", responses((status = 200, body = List<Process>)))]
pub async fn list_processes(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path(sbx): Path<String>,
) -> ApiResult<Json<List<Process>>> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    Ok(Json(service.list_processes(&org, &sbx).await?))
}

/// Stops a supervised process and forgets it.
#[utoipa::path(delete, path = "/v1/sandboxes/{sbx}/processes/{name}", responses((status = 204)))]
pub async fn stop_process(
    State(service): State<Service>,
    caller: Caller,
    Query(scope): Query<Scope>,
    Path((sbx, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let org = service.scope(&caller, scope.org.as_deref()).await?;
    service.stop_process(&org, &sbx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of log reads.
#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    /// The org (operator only).
    pub org: Option<String>,
    /// `1` to keep streaming new output.
    pub follow: Option<String>,
}

/// The process's captured output; `?follow=1` keeps streaming.
#[utoipa::path(get, path = "/v1/sandboxes/{sbx}/processes/{name}/logs", responses((status = 200, body = String)))]
pub async fn process_logs(
    State(service): State<Service>,
    caller: Caller,
    Query(query): Query<LogQuery>,
    Path((sbx, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let org = service.scope(&caller, query.org.as_deref()).await?;
    let follow = matches!(query.follow.as_deref(), Some("1" | "true" | ""));
    let stream = service.process_logs(&org, &sbx, &name, follow).await?;
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}
