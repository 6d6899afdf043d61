//! The answers the edge makes itself, rendered with the org's brand.
//!
//! Each page is small, self-contained HTML (inline CSS, no script, no external resource but the
//! brand's own logo) or, for clients that ask for JSON, a small JSON error object. Every brand
//! field is escaped and every URL and colour checked, because a brand is org-supplied input.
//! Nothing here names the platform: end users see only the org's brand.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::EdgeBody;
use crate::routes::Brand;

/// The accent used when a brand has no colour, or one that is not a plain hex colour.
const NEUTRAL_ACCENT: &str = "#4b5563";

/// Which answer the edge is making.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// 404: no app at this host.
    NotFound,
    /// 502: the app is stopped or its machine refused the connection.
    NotRunning,
    /// 503: the app is starting; the page retries by itself.
    Starting,
    /// 504: the app did not answer in time.
    Timeout,
    /// 413: the request body is larger than the edge accepts.
    TooLarge,
    /// 400: the request could not be understood.
    BadRequest,
}

/// The words of one page.
struct Text {
    title: &'static str,
    heading: &'static str,
    explanation: &'static str,
    hint: &'static str,
}

impl PageKind {
    /// Every kind, for tests and previews.
    pub const ALL: [PageKind; 6] = [
        PageKind::NotFound,
        PageKind::NotRunning,
        PageKind::Starting,
        PageKind::Timeout,
        PageKind::TooLarge,
        PageKind::BadRequest,
    ];

    /// The HTTP status of this answer.
    pub fn status(self) -> StatusCode {
        match self {
            PageKind::NotFound => StatusCode::NOT_FOUND,
            PageKind::NotRunning => StatusCode::BAD_GATEWAY,
            PageKind::Starting => StatusCode::SERVICE_UNAVAILABLE,
            PageKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            PageKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            PageKind::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    /// The stable machine-readable code used in JSON answers.
    pub fn code(self) -> &'static str {
        match self {
            PageKind::NotFound => "not_found",
            PageKind::NotRunning => "not_running",
            PageKind::Starting => "starting",
            PageKind::Timeout => "timeout",
            PageKind::TooLarge => "too_large",
            PageKind::BadRequest => "bad_request",
        }
    }

    fn text(self) -> Text {
        match self {
            PageKind::NotFound => Text {
                title: "Page not found",
                heading: "There is nothing here",
                explanation: "No app is published at this address.",
                hint: "Check the address for typing mistakes, or ask whoever sent you the link.",
            },
            PageKind::NotRunning => Text {
                title: "App not running",
                heading: "This app is not running",
                explanation: "The app at this address is not running right now.",
                hint: "Try again in a few minutes.",
            },
            PageKind::Starting => Text {
                title: "Starting up",
                heading: "This app is starting",
                explanation: "The app at this address is starting up and will be ready in a moment.",
                hint: "This page reloads by itself every few seconds.",
            },
            PageKind::Timeout => Text {
                title: "App took too long",
                heading: "This app took too long to answer",
                explanation: "The app at this address did not answer in time.",
                hint: "Try again in a moment.",
            },
            PageKind::TooLarge => Text {
                title: "Request too large",
                heading: "That request is too large",
                explanation: "The request is larger than this address accepts.",
                hint: "Try again with a smaller upload.",
            },
            PageKind::BadRequest => Text {
                title: "Bad request",
                heading: "That request could not be understood",
                explanation: "The browser or program that sent it made a request this address cannot accept.",
                hint: "Check the address, or try again from a web browser.",
            },
        }
    }
}

/// Renders the HTML page for `kind` in `brand`'s colours.
pub fn render_html(kind: PageKind, brand: &Brand) -> String {
    let text = kind.text();
    let name = escape(brand.name.trim());
    let accent = accent_color(brand.primary_color.as_deref());
    let title = if name.is_empty() {
        text.title.to_owned()
    } else {
        format!("{} · {name}", text.title)
    };
    let refresh = if kind == PageKind::Starting {
        "<meta http-equiv=\"refresh\" content=\"2\">\n"
    } else {
        ""
    };
    // The logo's alt text is the brand name, so it doubles as the visible brand mark for
    // screen readers; without a logo the name is shown as text instead.
    let mark = match brand.logo_url.as_deref().and_then(safe_url_http) {
        Some(url) => format!(
            "<img class=\"logo\" src=\"{}\" alt=\"{name}\">\n",
            escape(url)
        ),
        None if !name.is_empty() => format!("<p class=\"brand\">{name}</p>\n"),
        None => String::new(),
    };
    let support = match brand.support_url.as_deref().and_then(safe_url_support) {
        Some(url) if !name.is_empty() => format!(
            "<p class=\"help\"><a href=\"{}\">Contact {name} support</a></p>\n",
            escape(url)
        ),
        Some(url) => format!(
            "<p class=\"help\"><a href=\"{}\">Get help</a></p>\n",
            escape(url)
        ),
        None => String::new(),
    };
    let (status_role, spinner) = if kind == PageKind::Starting {
        (
            " role=\"status\" aria-live=\"polite\"",
            "<span class=\"spinner\" aria-hidden=\"true\"></span>",
        )
    } else {
        ("", "")
    };
    format!(
        "<!doctype html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
{refresh}<title>{title}</title>
<style>
:root{{--accent:{accent};color-scheme:light dark}}
*{{box-sizing:border-box}}
body{{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;padding:1.5rem;font-family:system-ui,-apple-system,\"Segoe UI\",Roboto,\"Helvetica Neue\",Arial,sans-serif;line-height:1.5;background:#f5f6f8;color:#1f2328}}
main{{width:100%;max-width:34rem;padding:2rem 2.25rem;background:#fff;border-top:4px solid var(--accent);border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08),0 10px 30px rgba(0,0,0,.06)}}
.logo{{display:block;max-width:10rem;max-height:2.5rem;margin:0 0 1.5rem}}
.brand{{margin:0 0 1.5rem;font-weight:600;color:var(--accent)}}
.code{{margin:0 0 .25rem;font-size:.8125rem;font-weight:600;letter-spacing:.05em;text-transform:uppercase;color:#57606a}}
h1{{margin:0 0 .75rem;font-size:1.5rem;line-height:1.25}}
p{{margin:0 0 .75rem}}
.hint{{color:#57606a}}
.help{{margin:1.25rem 0 0}}
a{{color:var(--accent);text-underline-offset:.15em}}
a:focus-visible{{outline:2px solid var(--accent);outline-offset:2px}}
.spinner{{display:inline-block;width:.9em;height:.9em;margin-right:.5em;vertical-align:-.1em;border:2px solid currentColor;border-right-color:transparent;border-radius:50%}}
@media (prefers-reduced-motion:no-preference){{.spinner{{animation:spin .8s linear infinite}}}}
@keyframes spin{{to{{transform:rotate(360deg)}}}}
@media (prefers-color-scheme:dark){{body{{background:#0d1117;color:#e6edf3}}main{{background:#161b22}}.code,.hint{{color:#9da7b3}}}}
</style>
</head>
<body>
<main>
{mark}<p class=\"code\">Error {status}</p>
<h1{status_role}>{spinner}{heading}</h1>
<p>{explanation}</p>
<p class=\"hint\">{hint}</p>
{support}</main>
</body>
</html>
",
        status = kind.status().as_u16(),
        heading = text.heading,
        explanation = text.explanation,
        hint = text.hint,
    )
}

/// Renders the JSON answer for `kind`:
/// `{"error":{"status":…,"code":…,"message":…,"brand":…}}`.
pub fn render_json(kind: PageKind, brand: &Brand) -> String {
    serde_json::json!({
        "error": {
            "status": kind.status().as_u16(),
            "code": kind.code(),
            "message": kind.text().explanation,
            "brand": brand.name.trim(),
        }
    })
    .to_string()
}

/// Builds the complete response for `kind`, choosing JSON when the client asks for it.
pub(crate) fn response(
    kind: PageKind,
    brand: &Brand,
    request_headers: &HeaderMap,
) -> Response<EdgeBody> {
    let (body, content_type) = if wants_json(request_headers) {
        (render_json(kind, brand), "application/json")
    } else {
        (render_html(kind, brand), "text/html; charset=utf-8")
    };
    let mut response = Response::new(EdgeBody::Full(Some(Bytes::from(body))));
    *response.status_mut() = kind.status();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // An error page must never be cached in place of the app once it is back.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page needs only its inline style and the brand's logo; forbid everything else so a
    // hostile brand field could do nothing even if escaping had a hole.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    if kind == PageKind::Starting {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    response
}

/// Whether the client prefers JSON: it names a JSON type and does not name HTML (browsers
/// always name `text/html`; API clients such as fetch wrappers name JSON).
fn wants_json(headers: &HeaderMap) -> bool {
    let mut json = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for media in value.split(',') {
            let media = media.split(';').next().unwrap_or("").trim();
            if media.eq_ignore_ascii_case("text/html") {
                return false;
            }
            if media.eq_ignore_ascii_case("application/json")
                || media.to_ascii_lowercase().ends_with("+json")
            {
                json = true;
            }
        }
    }
    json
}

/// `#rgb` or `#rrggbb`, else the neutral accent; anything richer could smuggle CSS.
fn accent_color(color: Option<&str>) -> &str {
    match color.map(str::trim) {
        Some(c)
            if (c.len() == 4 || c.len() == 7)
                && c.starts_with('#')
                && c[1..].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            c
        }
        _ => NEUTRAL_ACCENT,
    }
}

/// An absolute `http(s)` URL, or `None`; `javascript:` and friends never reach an attribute.
fn safe_url_http(url: &str) -> Option<&str> {
    let url = url.trim();
    let rest = strip_prefix_ignore_case(url, "https://")
        .or_else(|| strip_prefix_ignore_case(url, "http://"))?;
    (!rest.is_empty() && plain_url_bytes(url)).then_some(url)
}

/// Like [`safe_url_http`], also allowing `mailto:`.
fn safe_url_support(url: &str) -> Option<&str> {
    let url = url.trim();
    match strip_prefix_ignore_case(url, "mailto:") {
        Some(rest) => (!rest.is_empty() && plain_url_bytes(url)).then_some(url),
        None => safe_url_http(url),
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// No spaces or control characters: a well-formed URL has them percent-encoded.
fn plain_url_bytes(url: &str) -> bool {
    !url.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

/// Escapes text for HTML content and double-quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Brand {
        Brand {
            name: "Clinic Cloud".into(),
            primary_color: Some("#0a7cff".into()),
            logo_url: Some("https://cdn.clinic.example/logo.svg".into()),
            support_url: Some("mailto:help@clinic.example".into()),
        }
    }

    fn assert_no_platform_name(s: &str) {
        assert!(
            !s.to_ascii_lowercase().contains("kiln"),
            "platform name leaked into: {s}"
        );
    }

    #[test]
    fn every_page_is_branded_and_never_names_the_platform() {
        for brand in [sample(), Brand::default()] {
            for kind in PageKind::ALL {
                let html = render_html(kind, &brand);
                assert_no_platform_name(&html);
                assert!(html.starts_with("<!doctype html>\n<html lang=\"en\">"));
                assert!(html.contains("<meta name=\"viewport\""));
                assert!(html.contains("<title>"));
                assert!(html.contains("<h1"));
                assert!(html.contains(&kind.status().as_u16().to_string()));
                assert!(!html.contains("<script"));
                if brand.name.is_empty() {
                    assert!(html.contains(NEUTRAL_ACCENT));
                    assert!(!html.contains("<img"));
                } else {
                    assert!(html.contains("Clinic Cloud"));
                    assert!(html.contains("--accent:#0a7cff"));
                    assert!(html.contains("alt=\"Clinic Cloud\""));
                    assert!(html.contains("href=\"mailto:help@clinic.example\""));
                }
                assert_eq!(
                    html.contains("http-equiv=\"refresh\""),
                    kind == PageKind::Starting
                );

                let json: serde_json::Value =
                    serde_json::from_str(&render_json(kind, &brand)).expect("valid JSON");
                assert_no_platform_name(&json.to_string());
                assert_eq!(json["error"]["status"], kind.status().as_u16());
                assert_eq!(json["error"]["code"], kind.code());
                assert_eq!(json["error"]["brand"], brand.name.as_str());

                let response = response(kind, &brand, &HeaderMap::new());
                assert_eq!(response.status(), kind.status());
                assert!(response.headers().get(header::SERVER).is_none());
                for (name, value) in response.headers() {
                    assert_no_platform_name(name.as_str());
                    assert_no_platform_name(value.to_str().expect("ascii header"));
                }
            }
        }
    }

    #[test]
    fn hostile_brand_fields_are_escaped_or_dropped() {
        let brand = Brand {
            name: "<script>alert(1)</script>\"'&".into(),
            primary_color: Some("red;}</style><script>x()</script>".into()),
            logo_url: Some("javascript:alert(1)".into()),
            support_url: Some("JavaScript:alert(2)".into()),
        };
        let html = render_html(PageKind::NotFound, &brand);
        assert!(!html.contains("<script"));
        assert!(!html.to_ascii_lowercase().contains("javascript:"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
        assert!(html.contains(NEUTRAL_ACCENT));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<a "));

        let quoted = Brand {
            logo_url: Some("https://x.example/\" onerror=\"alert(1)".into()),
            ..Brand::default()
        };
        let html = render_html(PageKind::NotFound, &quoted);
        assert!(
            html.contains("https://x.example/&quot; onerror=&quot;alert(1)")
                || !html.contains("<img")
        );
        assert!(!html.contains("\" onerror"));
    }

    #[test]
    fn colours_are_checked() {
        for (input, want) in [
            (Some("#abc"), "#abc"),
            (Some("#A1B2C3"), "#A1B2C3"),
            (Some(" #a1b2c3 "), "#a1b2c3"),
            (Some("#abcd"), NEUTRAL_ACCENT),
            (Some("red"), NEUTRAL_ACCENT),
            (Some("#ggg"), NEUTRAL_ACCENT),
            (Some("#fff;x"), NEUTRAL_ACCENT),
            (None, NEUTRAL_ACCENT),
        ] {
            assert_eq!(accent_color(input), want, "input {input:?}");
        }
    }

    #[test]
    fn json_is_chosen_only_when_asked_for() {
        let accept = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(v));
            wants_json(&h)
        };
        assert!(accept("application/json"));
        assert!(accept("application/json, text/plain, */*"));
        assert!(accept("application/problem+json"));
        assert!(!accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(!accept("*/*"));
        assert!(!wants_json(&HeaderMap::new()));
    }
}
