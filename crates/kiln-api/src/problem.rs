//! RFC 9457 problem details: the one error shape of the API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Media type of every error answer.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An `application/problem+json` body (RFC 9457).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `/problems/not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
    /// The request field at fault, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Extra context, e.g. a log tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} (field `{field}`)", self.detail)?,
            None => f.write_str(&self.detail)?,
        }
        if let Some(tail) = &self.log_tail {
            write!(f, "\n--- log tail ---\n{}", tail.trim_end())?;
        }
        Ok(())
    }
}
