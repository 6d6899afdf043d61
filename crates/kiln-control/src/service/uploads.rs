//! Chunked, resumable artifact uploads: parts are checked one by one, the whole digest on
//! completion, and nothing is visible as an artifact before that.

use axum::body::Body;
use kiln_api::releases::{Upload, UploadCompleted, UploadConfig};
use kiln_artifacts::{ArtifactError, Digest};

use super::Service;
use crate::error::{ApiError, ApiResult};

impl Service {
    /// `POST /v1/artifacts/uploads`.
    pub async fn create_upload(&self, config: UploadConfig) -> ApiResult<Upload> {
        let digest: Digest = config.digest.parse().map_err(|e| {
            ApiError::invalid_field("digest", format!("{e}: give `sha256:` and 64 hex digits"))
        })?;
        let max = self.config().max_artifact_bytes;
        let info = self
            .artifacts()
            .create_upload(config.size, digest, max)
            .await
            .map_err(upload_error)?;
        self.upload_status(&info.id).await
    }

    /// `GET /v1/artifacts/uploads/{id}`.
    pub async fn upload_status(&self, id: &str) -> ApiResult<Upload> {
        let status = self
            .artifacts()
            .upload_status(id)
            .await
            .map_err(upload_error)?;
        Ok(Upload {
            upload_id: id.to_owned(),
            part_size: status.part_size,
            parts: status.parts,
            received: status.received,
        })
    }

    /// `PUT /v1/artifacts/uploads/{id}/parts/{n}`.
    pub async fn put_part(&self, id: &str, n: u32, body: Body) -> ApiResult<Upload> {
        let status = self
            .artifacts()
            .upload_status(id)
            .await
            .map_err(upload_error)?;
        // A part is at most `part_size`; one byte more is enough to know it is too big.
        let limit = usize::try_from(status.part_size)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
            ApiError::too_large(format!(
                "part {n} is larger than the part size of {} bytes",
                status.part_size
            ))
        })?;
        self.artifacts()
            .put_part(id, n, bytes)
            .await
            .map_err(upload_error)?;
        self.upload_status(id).await
    }

    /// `POST /v1/artifacts/uploads/{id}/complete`.
    pub async fn complete_upload(&self, id: &str) -> ApiResult<UploadCompleted> {
        let digest = self
            .artifacts()
            .complete_upload(id)
            .await
            .map_err(upload_error)?;
        Ok(UploadCompleted {
            digest: digest.to_string(),
        })
    }
}

fn upload_error(err: ArtifactError) -> ApiError {
    match err {
        ArtifactError::TooLarge { .. } => ApiError::too_large(format!(
            "{err}: split the app or raise `limits.max_artifact_bytes`"
        )),
        ArtifactError::UnknownUpload { .. } => {
            ApiError::not_found_detail(format!("{err}: start a new upload"))
        }
        ArtifactError::BadPart { .. } => {
            ApiError::unprocessable(format!("{err}: send the part again"))
        }
        ArtifactError::BadPartNumber { .. } => {
            ApiError::not_found_detail(format!("{err}: parts are numbered from 1"))
        }
        ArtifactError::InvalidDigest(_) => {
            ApiError::invalid_field("digest", format!("{err}: give `sha256:` and 64 hex digits"))
        }
        ArtifactError::NotFound { .. } => {
            ApiError::not_found_detail(format!("{err}: upload it first"))
        }
        ArtifactError::MissingParts(_) => {
            ApiError::unprocessable(format!("{err}: send them, then complete again"))
        }
        ArtifactError::DigestMismatch { .. } => ApiError::unprocessable(format!(
            "{err}: the parts do not add up to the declared digest; re-send the parts"
        ))
        .with_field("digest"),
        other => ApiError::internal("the artifact upload", &other),
    }
}
