//! Presigned URLs (SigV4 query signing, signed by `aws-sigv4`): anyone holding the URL may do
//! one method on one key until it expires.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;

use crate::keys::BucketKey;

/// The shortest expiry a URL may have.
pub const MIN_EXPIRY: Duration = Duration::from_secs(1);
/// The longest expiry SigV4 allows (7 days).
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which request a presigned URL allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresignMethod {
    /// Download the object.
    Get,
    /// Upload (replace) the object.
    Put,
}

impl PresignMethod {
    fn as_str(self) -> &'static str {
        match self {
            PresignMethod::Get => "GET",
            PresignMethod::Put => "PUT",
        }
    }
}

/// Why a URL could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    /// The expiry is outside 1 s ..= 7 days.
    #[error("expiry must be between 1 second and 7 days (604800 s)")]
    Expiry,
    /// The object key is empty or too long.
    #[error("the object key must be 1 to 1024 bytes")]
    Key,
    /// The endpoint is not an absolute http(s) URL.
    #[error("S3 endpoint `{0}` is not an absolute http(s) URL")]
    Endpoint(String),
    /// The signer refused the request.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Presigns `method` on `key` in the key's bucket, path-style under `endpoint`
/// (e.g. `http://127.0.0.1:7090`), valid for `expires_in` from `now`.
pub fn presign(
    endpoint: &str,
    region: &str,
    bucket_key: &BucketKey,
    key: &str,
    method: PresignMethod,
    expires_in: Duration,
    now: SystemTime,
) -> Result<String, PresignError> {
    if !(MIN_EXPIRY..=MAX_EXPIRY).contains(&expires_in) {
        return Err(PresignError::Expiry);
    }
    if key.is_empty() || key.len() > 1024 {
        return Err(PresignError::Key);
    }
    let base = endpoint.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(PresignError::Endpoint(endpoint.to_owned()));
    }
    let url = format!("{base}/{}/{}", bucket_key.bucket, encode_key(key));
    let identity = aws_credential_types::Credentials::new(
        &bucket_key.access_key_id,
        &bucket_key.secret_access_key,
        None,
        None,
        "kiln",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires_in);
    // S3 signs the path exactly as sent: encoded once, never normalised.
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| PresignError::Signing(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        method.as_str(),
        url.as_str(),
        std::iter::empty(),
        SignableBody::UnsignedPayload,
    )
    .map_err(|e| PresignError::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| PresignError::Signing(e.to_string()))?
        .into_parts();
    let mut request = http::Request::builder()
        .method(method.as_str())
        .uri(url.as_str())
        .body(())
        .map_err(|e| PresignError::Endpoint(format!("{endpoint}: {e}")))?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(request.uri().to_string())
}

/// Percent-encodes a key for a URL path: everything but unreserved characters and `/`.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BucketKey {
        BucketKey {
            bucket: "photos".into(),
            access_key_id: "KILNAAAAAAAAAAAAAAAA".into(),
            secret_access_key: "s".repeat(40),
        }
    }

    #[test]
    fn a_url_carries_the_sigv4_query_and_the_encoded_key() {
        let url = presign(
            "http://127.0.0.1:7090/",
            "us-east-1",
            &key(),
            "a dir/ü.txt",
            PresignMethod::Get,
            Duration::from_secs(60),
            SystemTime::now(),
        )
        .expect("presign");
        assert!(
            url.starts_with("http://127.0.0.1:7090/photos/a%20dir/%C3%BC.txt?"),
            "{url}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Expires=60",
            "X-Amz-Signature=",
        ] {
            assert!(url.contains(part), "{url} lacks {part}");
        }
    }

    #[test]
    fn expiry_outside_one_second_to_seven_days_is_refused() {
        for secs in [0, 604_801] {
            let err = presign(
                "http://h",
                "us-east-1",
                &key(),
                "k",
                PresignMethod::Put,
                Duration::from_secs(secs),
                SystemTime::now(),
            );
            assert!(matches!(err, Err(PresignError::Expiry)), "{secs}");
        }
    }
}
