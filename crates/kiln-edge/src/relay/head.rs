//! Reading a request or response head with `httparse` (the parser hyper uses) and writing the
//! head that goes on: hop-by-hop headers dropped, the forwarding headers set.
//!
//! Only plain requests pass; whatever is unusual comes back as [`Request::Other`] so hyper,
//! with its checks and pages, deals with it. Being stricter than hyper here is always safe.

use std::mem::MaybeUninit;

use http::HeaderValue;

use crate::proxy::HOP_BY_HOP;

/// hyper's limit on header lines, kept so both paths refuse the same heads. Their slots are
/// left uninitialised until parsed, as hyper does: 3 KiB fewer bytes written per head.
const MAX_HEADERS: usize = 100;

/// Request bodies up to this size are read whole before the request goes on; longer ones
/// stream through hyper.
pub(crate) const MAX_INLINE_BODY: usize = 64 << 10;

/// What the bytes read so far hold.
#[derive(Debug)]
pub(crate) enum Request {
    /// The head is not complete yet.
    PartialHead,
    /// The head is complete but its (small) body is not.
    PartialBody,
    /// A plain request; its upstream form has been written out.
    Plain(Plain),
    /// Anything else, valid or not.
    Other,
}

/// A plain request: HTTP/1.1, one `Host`, no upgrade or `Expect`, at most a small body of
/// declared length.
#[derive(Debug)]
pub(crate) struct Plain {
    /// The host to route by, normalised.
    pub(crate) host: String,
    /// Bytes of the downstream buffer this request spans, head and body.
    pub(crate) len: usize,
    /// `HEAD`: the answer has no body whatever its headers say.
    pub(crate) head_method: bool,
    /// Sending it twice does no harm (RFC 9110 §9.2.2), so it may be retried.
    pub(crate) idempotent: bool,
    /// The client asked to close the connection after this answer.
    pub(crate) close: bool,
    /// The `Accept` header, for pages the edge answers with itself.
    pub(crate) accept: Option<HeaderValue>,
}

/// The downstream connection as the `X-Forwarded-*` headers describe it.
pub(crate) struct Downstream {
    /// The peer's address, for `X-Forwarded-For`.
    pub(crate) ip: String,
    /// It came over TLS (`X-Forwarded-Proto: https`).
    pub(crate) secure: bool,
}

/// Reads the request at the start of `buf` and, if it is plain, writes its upstream form
/// (head and body) to `out`.
pub(crate) fn request(
    buf: &[u8],
    max_head: usize,
    downstream: &Downstream,
    out: &mut Vec<u8>,
) -> Request {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Request::PartialHead,
        _ => return Request::Other,
    };
    let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Request::Other;
    };
    // Origin-form of RFC 3986 characters only: absolute-form, `*`, CONNECT and anything
    // unusual in a path (a fragment, quotes, braces) are hyper's to judge.
    if method == "CONNECT" || !target.starts_with('/') || !target.bytes().all(is_target_byte) {
        return Request::Other;
    }

    let mut host: Option<&[u8]> = None;
    let mut body_len: Option<usize> = None;
    let mut close = false;
    let mut accept = None;
    let mut forwarded_for: Vec<&str> = Vec::new();
    for header in parsed.headers.iter() {
        let (name, value) = (header.name, header.value);
        if name.eq_ignore_ascii_case("host") {
            if host.replace(value).is_some() {
                return Request::Other;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let Some(len) = parse_length(value) else {
                return Request::Other;
            };
            if body_len.replace(len).is_some() || len > MAX_INLINE_BODY {
                return Request::Other;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    // Upgrades, and headers the client names as hop-by-hop.
                    return Request::Other;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Request::Other;
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            match std::str::from_utf8(value) {
                Ok(v) if v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) => {
                    forwarded_for.push(v);
                }
                _ => return Request::Other,
            }
        } else if name.eq_ignore_ascii_case("accept") {
            accept = HeaderValue::from_bytes(value).ok();
        }
    }
    let Some(host_value) = host else {
        return Request::Other;
    };
    let Some(routing_host) = std::str::from_utf8(host_value)
        .ok()
        .and_then(crate::normalize_host)
    else {
        return Request::Other;
    };
    let len = head_len + body_len.unwrap_or(0);
    if buf.len() < len {
        return Request::PartialBody;
    }

    out.clear();
    for part in [method.as_bytes(), b" ", target.as_bytes(), b" HTTP/1.1\r\n"] {
        out.extend_from_slice(part);
    }
    for header in parsed.headers.iter() {
        if !is_hop_by_hop(header.name) && !is_forwarding(header.name) {
            push_header(out, header.name.as_bytes(), header.value);
        }
    }
    push_header(out, b"host", host_value);
    out.extend_from_slice(b"x-forwarded-for: ");
    for previous in forwarded_for {
        out.extend_from_slice(previous.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(downstream.ip.as_bytes());
    out.extend_from_slice(if downstream.secure {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    push_header(out, b"x-forwarded-host", host_value);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&buf[head_len..len]);

    Request::Plain(Plain {
        host: routing_host,
        len,
        head_method: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        close,
        accept,
    })
}

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: an answer to `HEAD`, a 204 or a 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: relayed as it is, chunk by chunk.
    Chunked,
    /// Everything until the machine closes the connection.
    UntilClose,
}

/// What the bytes read from the machine so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Response {
    /// The head is not complete yet.
    Partial,
    /// An interim (1xx) answer of this many bytes, which the edge drops.
    Interim(usize),
    /// A final answer, whose downstream head has been written out.
    Final(FinalHead),
    /// Not an answer the edge can pass on.
    Invalid,
}

/// A final response head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FinalHead {
    /// Bytes of the head in the upstream buffer.
    pub(crate) len: usize,
    pub(crate) framing: Framing,
    /// The machine connection can carry another request afterwards.
    pub(crate) reusable: bool,
    /// The downstream connection ends after this answer.
    pub(crate) close: bool,
}

/// Reads the response at the start of `buf` and, once its head is whole, writes the head that
/// goes downstream to `out`. `head_method` and `client_close` come from the request.
pub(crate) fn response(
    buf: &[u8],
    max_head: usize,
    head_method: bool,
    client_close: bool,
    out: &mut Vec<u8>,
) -> Response {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Response::Partial,
        _ => return Response::Invalid,
    };
    let (Some(version), Some(status)) = (parsed.version, parsed.code) else {
        return Response::Invalid;
    };
    match status {
        // The edge never asks to switch protocols on this path.
        101 => return Response::Invalid,
        100..=199 => return Response::Interim(len),
        _ => {}
    }

    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut upstream_close = version == 0;
    let mut dated = false;
    // Headers the `Connection` header names are hop-by-hop too.
    let mut named: Vec<&[u8]> = Vec::new();
    for header in parsed.headers.iter() {
        let (name, value) = (header.name, header.value);
        if name.eq_ignore_ascii_case("content-length") {
            match parse_length(value).map(|n| n as u64) {
                Some(n) if length.is_none_or(|seen| seen == n) => length = Some(n),
                _ => return Response::Invalid,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding of the last field decides.
            chunked = tokens(value)
                .last()
                .map(|coding| coding.eq_ignore_ascii_case(b"chunked"))
                .or(chunked);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    upstream_close = true;
                } else {
                    named.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case("date") {
            dated = true;
        }
    }
    let framing = if head_method || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let close = client_close || framing == Framing::UntilClose;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse reads exactly three digits.
    let digit = |n: u16| b'0' + (n % 10) as u8;
    out.extend_from_slice(&[digit(status / 100), digit(status / 10), digit(status), b' ']);
    out.extend_from_slice(parsed.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in parsed.headers.iter() {
        let name = header.name;
        // The body is relayed byte for byte, so its framing headers describe it downstream
        // too; a length beside a transfer coding is dropped, as the coding decides (RFC 9112
        // §6.3) and a message with both is what smuggling is made of.
        let keep = if name.eq_ignore_ascii_case("transfer-encoding") {
            true
        } else if name.eq_ignore_ascii_case("content-length") {
            chunked.is_none()
        } else {
            !is_hop_by_hop(name)
                && !named
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
        };
        if keep {
            push_header(out, name.as_bytes(), header.value);
        }
    }
    if !dated {
        // A proxy forwarding an answer without a date adds the time it received it
        // (RFC 9110 §6.6.1).
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        push_header(out, b"date", now.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    Response::Final(FinalHead {
        len,
        framing,
        reusable: !upstream_close && framing != Framing::UntilClose,
        close,
    })
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// A byte of an origin-form target: a path and query of unreserved characters, sub-delimiters,
/// `:`, `@`, `/`, `?` and percent-escapes (RFC 3986 §3.3–3.4).
fn is_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Headers the edge sets itself on the way upstream.
fn is_forwarding(name: &str) -> bool {
    [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: ASCII digits only, as hyper requires.
fn parse_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Downstream {
        Downstream {
            ip: "10.0.0.9".to_owned(),
            secure: false,
        }
    }

    fn plain(raw: &str) -> (Plain, String) {
        let mut out = Vec::new();
        match request(raw.as_bytes(), 32 << 10, &client(), &mut out) {
            Request::Plain(p) => (p, String::from_utf8(out).expect("utf-8")),
            other => panic!("not plain: {other:?}"),
        }
    }

    fn kind(raw: &str) -> &'static str {
        let mut out = Vec::new();
        match request(raw.as_bytes(), 1024, &client(), &mut out) {
            Request::PartialHead => "partial head",
            Request::PartialBody => "partial body",
            Request::Plain(_) => "plain",
            Request::Other => "other",
        }
    }

    #[test]
    fn a_plain_request_is_rewritten_for_the_machine() {
        let raw = "POST /a?b=1 HTTP/1.1\r\nHost: Shop.Example.test\r\nConnection: keep-alive\r\n\
             Keep-Alive: timeout=5\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\
             Content-Length: 3\r\nAccept: application/json\r\n\r\nabcGET / HTTP/1.1\r\n";
        let (p, out) = plain(raw);
        assert_eq!(p.host, "shop.example.test");
        // The request ends with its body; a pipelined one follows.
        assert_eq!(p.len, raw.find("GET").expect("second request"));
        assert!(!p.close && !p.head_method);
        assert_eq!(
            p.accept.as_ref().map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        assert_eq!(
            out,
            "POST /a?b=1 HTTP/1.1\r\nContent-Length: 3\r\nAccept: application/json\r\n\
             host: Shop.Example.test\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: Shop.Example.test\r\n\r\nabc"
        );
    }

    #[test]
    fn unusual_requests_are_left_to_hyper() {
        let host = "Host: a.test\r\n";
        assert_eq!(kind(&format!("GET / HTTP/1.1\r\n{host}\r\n")), "plain");
        assert_eq!(kind(&format!("GET / HTTP/1.1\r\n{host}")), "partial head");
        assert_eq!(
            kind(&format!(
                "PUT / HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nab"
            )),
            "partial body"
        );
        for other in [
            format!("GET / HTTP/1.0\r\n{host}\r\n"),
            "GET / HTTP/1.1\r\n\r\n".to_owned(),
            format!("GET / HTTP/1.1\r\n{host}{host}\r\n"),
            format!("GET http://b.test/ HTTP/1.1\r\n{host}\r\n"),
            format!("GET /a#frag HTTP/1.1\r\n{host}\r\n"),
            format!("CONNECT a.test:443 HTTP/1.1\r\n{host}\r\n"),
            format!("POST / HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n"),
            format!("POST / HTTP/1.1\r\n{host}Content-Length: 1\r\nContent-Length: 1\r\n\r\na"),
            format!("POST / HTTP/1.1\r\n{host}Content-Length: +1\r\n\r\na"),
            format!("POST / HTTP/1.1\r\n{host}Content-Length: 99999999\r\n\r\n"),
            format!("POST / HTTP/1.1\r\n{host}Expect: 100-continue\r\n\r\n"),
            format!("GET / HTTP/1.1\r\n{host}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            format!("GET / HTTP/1.1\r\n{host}Connection: close, X-Secret\r\n\r\n"),
            format!("GET / HTTP/1.1\r\n{host}X: {}\r\n\r\n", "y".repeat(2000)),
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_owned(),
            "BAD\r\n\r\n".to_owned(),
        ] {
            assert_eq!(kind(&other), "other", "{other:?}");
        }
    }

    fn final_head(raw: &str, head_method: bool) -> (FinalHead, String) {
        let mut out = Vec::new();
        match response(raw.as_bytes(), 32 << 10, head_method, false, &mut out) {
            Response::Final(head) => (head, String::from_utf8(out).expect("utf-8")),
            other => panic!("not final: {other:?}"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |raw: &str, head: bool| final_head(raw, head).0.framing;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Framing::Length(5)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\n\r\n", false),
            Framing::Empty
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Framing::Chunked
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Framing::UntilClose
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Framing::UntilClose
        );
        let (_, out) = final_head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip\r\nDate: D\r\n\r\n",
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nDate: D\r\nconnection: close\r\n\r\n"
        );

        let mut out = Vec::new();
        let mut answer = |raw: &str| response(raw.as_bytes(), 1024, false, false, &mut out);
        assert_eq!(answer("HTTP/1.1 200 OK\r\n"), Response::Partial);
        assert_eq!(
            answer("HTTP/1.1 103 Early Hints\r\n\r\n"),
            Response::Interim(28)
        );
        assert_eq!(answer("HTTP/1.1 101 Switching\r\n\r\n"), Response::Invalid);
        assert_eq!(
            answer("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Response::Invalid
        );
        assert_eq!(answer("nonsense\r\n\r\n"), Response::Invalid);
    }

    #[test]
    fn response_heads_lose_hop_by_hop_headers_and_keep_their_framing() {
        let date = "Date: Sat, 05 Dec 2026 00:00:00 GMT\r\n";
        let (head, out) = final_head(
            &format!(
                "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n\
                 X-Internal: 1\r\nServer: app\r\nContent-Length: 9\r\n\
                 Transfer-Encoding: chunked\r\n{date}\r\n"
            ),
            false,
        );
        assert_eq!(
            out,
            format!("HTTP/1.1 200 OK\r\nServer: app\r\nTransfer-Encoding: chunked\r\n{date}\r\n")
        );
        assert!(head.reusable && !head.close);

        let (head, out) = final_head(
            &format!("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n{date}\r\n"),
            false,
        );
        assert_eq!(
            out,
            format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{date}\r\n")
        );
        assert!(!head.reusable && !head.close);

        let (head, out) = final_head(&format!("HTTP/1.1 200 OK\r\n{date}\r\n"), false);
        assert_eq!(
            out,
            format!("HTTP/1.1 200 OK\r\n{date}connection: close\r\n\r\n")
        );
        assert!(!head.reusable && head.close);
    }

    #[test]
    fn an_answer_without_a_date_gets_the_time_it_was_received() {
        let (_, out) = final_head("HTTP/1.1 204 No Content\r\nServer: app\r\n\r\n", false);
        let date = out
            .strip_prefix("HTTP/1.1 204 No Content\r\nServer: app\r\ndate: ")
            .and_then(|rest| rest.strip_suffix("\r\n\r\n"))
            .unwrap_or_else(|| panic!("no date added: {out:?}"));
        let received = httpdate::parse_http_date(date).expect("an HTTP date");
        let age = std::time::SystemTime::now()
            .duration_since(received)
            .unwrap_or_default();
        assert!(age.as_secs() < 60, "{date}");
    }
}
