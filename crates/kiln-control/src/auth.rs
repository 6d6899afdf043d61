//! Bearer tokens: how they are made, stored (hashed) and resolved to a caller.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::service::Service;

/// Settings key of the operator token's hash.
pub const OPERATOR_TOKEN_HASH: &str = "operator_token_sha256";
/// Settings key of the default org's id.
pub const DEFAULT_ORG: &str = "default_org_id";

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The operator: acts on any org.
    Operator {
        /// The default org, used when a call names none.
        default_org: String,
    },
    /// A token of one org.
    Org {
        /// The org the token belongs to.
        org_id: String,
        /// The token's name, recorded as creator.
        token_name: String,
    },
}

impl Caller {
    /// The org an org-scoped call acts on: the token's own, or for the operator the one
    /// named by `?org=` (resolved by the caller of this function) or the default org.
    pub fn org_scope(&self, named: Option<&str>) -> ApiResult<String> {
        match (self, named) {
            (Caller::Operator { default_org }, None) => Ok(default_org.clone()),
            (Caller::Operator { .. }, Some(org)) => Ok(org.to_owned()),
            (Caller::Org { org_id, .. }, None) => Ok(org_id.clone()),
            (Caller::Org { org_id, .. }, Some(org)) if org == org_id => Ok(org_id.clone()),
            // Another org's id looks exactly like a missing one, so existence does not leak.
            (Caller::Org { .. }, Some(org)) => Err(ApiError::not_found("org", org)),
        }
    }

    /// Fails unless the caller is the operator.
    pub fn require_operator(&self) -> ApiResult<()> {
        match self {
            Caller::Operator { .. } => Ok(()),
            Caller::Org { .. } => Err(ApiError::forbidden("this call needs the operator token")),
        }
    }

    /// Whether the caller may act on `org_id`.
    pub fn can_access(&self, org_id: &str) -> bool {
        match self {
            Caller::Operator { .. } => true,
            Caller::Org { org_id: own, .. } => own == org_id,
        }
    }

    /// Name recorded as the actor.
    pub fn name(&self) -> &str {
        match self {
            Caller::Operator { .. } => "operator",
            Caller::Org { token_name, .. } => token_name,
        }
    }
}

/// A new random token with a recognisable prefix.
pub fn new_token(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let secret: String = (0..40)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}_{secret}")
}

/// The stored form of a token: tokens are long random strings, so a plain SHA-256 suffices.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl FromRequestParts<Service> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, service: &Service) -> ApiResult<Self> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        service.authenticate(token).await
    }
}
