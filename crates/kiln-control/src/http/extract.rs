//! Extractors whose rejections are problem+json with a detail that says what to fix.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body; unknown fields and type errors answer 400 naming the field.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::bad_request("send the body as JSON with `Content-Type: application/json`")
        }
        JsonRejection::JsonDataError(e) => {
            // serde's message names the field and what was expected, e.g.
            // "unknown field `nmae`, expected `name` or `slug` at line 1 column 7".
            let text =
                std::error::Error::source(&e).map_or_else(|| e.body_text(), |s| s.to_string());
            let field = field_of(&text);
            let err = ApiError::bad_request(format!("the JSON body does not fit: {text}"));
            match field {
                Some(field) => err.with_field(&field),
                None => err,
            }
        }
        JsonRejection::JsonSyntaxError(e) => {
            let text =
                std::error::Error::source(&e).map_or_else(|| e.body_text(), |s| s.to_string());
            ApiError::bad_request(format!("the body is not valid JSON: {text}"))
        }
        JsonRejection::BytesRejection(e) => {
            ApiError::too_large(format!("could not read the body: {}", e.body_text()))
        }
        other => ApiError::bad_request(other.body_text()),
    }
}

/// The first backquoted name in a serde message (`unknown field `x``, `missing field `y``).
fn field_of(text: &str) -> Option<String> {
    let start = text.find('`')? + 1;
    let len = text[start..].find('`')?;
    let field = &text[start..start + len];
    (!field.is_empty() && field.len() < 64).then(|| field.to_owned())
}
