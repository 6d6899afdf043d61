//! `Idempotency-Key` on creates: a repeat answers the original; the same key with another
//! body is a 409.

use std::future::Future;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::service::Service;

/// Largest answer kept for replay.
const MAX_STORED: usize = 1 << 20;

/// Runs `op` once per (org, key); replays its stored answer on a repeat.
pub async fn once<B, F, Fut>(
    service: &Service,
    org_id: &str,
    headers: &HeaderMap,
    body: &B,
    op: F,
) -> ApiResult<Response>
where
    B: Serialize,
    F: FnOnce() -> Fut,
    Fut: Future<Output = ApiResult<Response>>,
{
    let Some(key) = headers.get("idempotency-key") else {
        return op().await;
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::bad_request("`Idempotency-Key` must be 1 to 255 visible ASCII characters")
        })?;
    let mut hasher = Sha256::new();
    hasher.update(std::any::type_name::<B>());
    hasher.update(serde_json::to_vec(body).expect("request bodies always serialize"));
    let request_hash = hex::encode(hasher.finalize());

    let store = service.store();
    if let Some(stored) = store.get_idempotency(org_id, key).await? {
        if stored.request_hash != request_hash {
            return Err(ApiError::conflict(format!(
                "Idempotency-Key `{key}` was already used with another request body: use a new key"
            )));
        }
        return Ok(replay(stored.status, stored.body));
    }
    let response = op().await?;
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_STORED)
        .await
        .map_err(|e| ApiError::internal("buffering the answer", &e))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let record = kiln_store::IdempotencyRecord {
        org_id: org_id.to_owned(),
        key: key.to_owned(),
        request_hash,
        status: parts.status.as_u16(),
        body: text,
        created_at: Utc::now(),
    };
    if let Err(e) = store.put_idempotency(&record).await {
        // A concurrent twin won the race; its answer is equivalent.
        tracing::debug!(error = %e, "idempotency record not stored");
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

fn replay(status: u16, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
