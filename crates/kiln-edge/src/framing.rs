//! Spots HTTP/1 requests whose framing is ambiguous before hyper parses them.
//!
//! hyper already refuses a request with two differing `Content-Length` values, a
//! `Transfer-Encoding` whose last coding is not `chunked`, and `Transfer-Encoding` on HTTP/1.0.
//! It *accepts* a request carrying both `Content-Length` and `Transfer-Encoding: chunked`
//! (RFC 9112 §6.3 lets a server do so), silently drops the `Content-Length` and closes the
//! connection afterwards. That is safe, but such a request is the signature of a smuggling
//! attempt, and the edge refuses it outright, like nginx does: it must never reach an app.
//! Because hyper removes the evidence before the request reaches the service, this scanner
//! watches the raw bytes as hyper reads them, follows the message framing just far enough to
//! find each request head, and records the index of the first head carrying both headers.
//!
//! The scanner fails open: anything it does not understand (an upgrade, a malformed line that
//! hyper will refuse anyway) switches it off for the rest of the connection, leaving hyper's
//! own (safe) handling in charge. It never changes the bytes.

use std::sync::atomic::{AtomicU64, Ordering};

/// Shared between the scanner (in the connection's I/O) and the request handler.
#[derive(Debug)]
pub(crate) struct FramingVerdict {
    /// Index (0-based, per connection) of the first request head with both framing headers;
    /// `u64::MAX` while none has been seen.
    ambiguous_at: AtomicU64,
}

impl FramingVerdict {
    pub(crate) fn new() -> FramingVerdict {
        FramingVerdict {
            ambiguous_at: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether the request with this per-connection index had ambiguous framing.
    pub(crate) fn is_ambiguous(&self, index: u64) -> bool {
        self.ambiguous_at.load(Ordering::Acquire) == index
    }

    fn mark(&self, index: u64) {
        self.ambiguous_at.store(index, Ordering::Release);
    }
}

/// Where in the byte stream the scanner is.
#[derive(Debug)]
enum State {
    /// Reading the request line and header lines of a head.
    Head(Head),
    /// Skipping a fixed-length body: bytes left.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data: bytes left.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data: bytes of it seen.
    ChunkEnd(u8),
    /// Reading trailer lines up to the empty line that ends the message.
    Trailers,
    /// Gave up; hyper alone decides from here on.
    Off,
}

/// What the scanner learned about the head being read.
#[derive(Debug, Default)]
struct Head {
    request_line_seen: bool,
    content_length: Option<u64>,
    saw_content_length: bool,
    /// `Some(chunked)` once a `Transfer-Encoding` line was seen; the last one decides, as in
    /// hyper.
    transfer_encoding: Option<bool>,
    /// An upgrade or CONNECT hands the connection over to another protocol.
    leaves_http: bool,
}

/// Follows HTTP/1 framing over the bytes of one connection.
#[derive(Debug)]
pub(crate) struct FramingScanner {
    state: State,
    line: Vec<u8>,
    line_limit: usize,
    heads: u64,
    verdict: std::sync::Arc<FramingVerdict>,
}

impl FramingScanner {
    /// `line_limit` bounds buffering of one line; a longer one is hyper's to refuse (431).
    pub(crate) fn new(line_limit: usize, verdict: std::sync::Arc<FramingVerdict>) -> Self {
        FramingScanner {
            state: State::Head(Head::default()),
            line: Vec::new(),
            line_limit,
            heads: 0,
            verdict,
        }
    }

    /// Whether the scanner still follows the stream; once off, it costs nothing.
    pub(crate) fn is_active(&self) -> bool {
        !matches!(self.state, State::Off)
    }

    /// Feeds the next bytes the connection read, in order.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Body(left) | State::ChunkData(left) => {
                    let take = (*left).min(data.len() as u64);
                    *left -= take;
                    // `take` is at most `data.len()`, so it fits in usize.
                    data = &data[take as usize..];
                    if *left == 0 {
                        self.state = match self.state {
                            State::Body(_) => State::Head(Head::default()),
                            _ => State::ChunkEnd(0),
                        };
                    }
                }
                State::ChunkEnd(seen) => {
                    let expected = if *seen == 0 { b'\r' } else { b'\n' };
                    if data[0] != expected {
                        self.state = State::Off;
                        return;
                    }
                    data = &data[1..];
                    *seen += 1;
                    if *seen == 2 {
                        self.state = State::ChunkSize;
                    }
                }
                State::Head(_) | State::ChunkSize | State::Trailers => {
                    let end = data.iter().position(|&b| b == b'\n');
                    let (part, rest) = match end {
                        Some(i) => (&data[..i], &data[i + 1..]),
                        None => (data, &data[data.len()..]),
                    };
                    if self.line.len() + part.len() > self.line_limit {
                        self.state = State::Off;
                        return;
                    }
                    self.line.extend_from_slice(part);
                    data = rest;
                    if end.is_some() {
                        let mut line = std::mem::take(&mut self.line);
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        self.on_line(&line);
                        line.clear();
                        self.line = line;
                    }
                }
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        match &mut self.state {
            State::Head(head) => {
                if !head.request_line_seen {
                    // Empty lines before a request line are tolerated by hyper (RFC 9112 §2.2).
                    if line.is_empty() {
                        return;
                    }
                    head.request_line_seen = true;
                    if line.starts_with(b"CONNECT ") || line.starts_with(b"PRI ") {
                        head.leaves_http = true;
                    }
                    return;
                }
                if line.is_empty() {
                    self.end_of_head();
                    return;
                }
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    self.state = State::Off;
                    return;
                };
                let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
                if name.eq_ignore_ascii_case(b"content-length") {
                    head.saw_content_length = true;
                    match parse_decimal(value) {
                        Some(len) if head.content_length.is_none_or(|prev| prev == len) => {
                            head.content_length = Some(len);
                        }
                        // Invalid or conflicting lengths: hyper refuses the request itself.
                        _ => self.state = State::Off,
                    }
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    let last = value.rsplit(|&b| b == b',').next().map(trim);
                    head.transfer_encoding =
                        Some(last.is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked")));
                } else if name.eq_ignore_ascii_case(b"upgrade") {
                    head.leaves_http = true;
                }
            }
            State::ChunkSize => {
                let digits = line
                    .iter()
                    .position(|&b| b == b';' || b == b' ' || b == b'\t')
                    .map_or(line, |i| &line[..i]);
                self.state = match parse_hex(digits) {
                    Some(0) => State::Trailers,
                    Some(size) => State::ChunkData(size),
                    None => State::Off,
                };
            }
            // A blank line ends the trailers, and with them the message.
            State::Trailers if line.is_empty() => self.state = State::Head(Head::default()),
            _ => {}
        }
    }

    fn end_of_head(&mut self) {
        let State::Head(head) = std::mem::replace(&mut self.state, State::Off) else {
            return;
        };
        let index = self.heads;
        self.heads += 1;
        if head.saw_content_length && head.transfer_encoding.is_some() {
            self.verdict.mark(index);
            // hyper closes the connection after this request; nothing after it matters.
            return;
        }
        if head.leaves_http {
            return;
        }
        self.state = match (head.transfer_encoding, head.content_length) {
            (Some(true), _) => State::ChunkSize,
            // A non-chunked transfer coding: hyper answers 400 and closes.
            (Some(false), _) => State::Off,
            (None, Some(len)) if len > 0 => State::Body(len),
            (None, _) => State::Head(Head::default()),
        };
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        char::from(b).to_digit(16).map(|d| acc * 16 + u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Feeds `input` in pieces of `step` bytes and returns the flagged index, if any.
    fn scan(input: &str, step: usize) -> (Option<u64>, bool) {
        let verdict = Arc::new(FramingVerdict::new());
        let mut scanner = FramingScanner::new(8192, Arc::clone(&verdict));
        for piece in input.as_bytes().chunks(step) {
            scanner.feed(piece);
        }
        let at = verdict.ambiguous_at.load(Ordering::Acquire);
        ((at != u64::MAX).then_some(at), scanner.is_active())
    }

    #[test]
    fn flags_the_right_request_however_the_bytes_arrive() {
        let cases: &[(&str, Option<u64>, bool)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", None, true),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some(0),
                false,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n",
                Some(0),
                false,
            ),
            // The body contains text that looks like a smuggled head; it is body, not a head.
            (
                "POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\nGET / HTTP/1.1\r\n\r\n",
                None,
                true,
            ),
            // Chunked body with extension and trailer, then a smuggling head as request 2.
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nwiki\r\n0\r\nX-T: 1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some(1),
                false,
            ),
            (
                "\r\nGET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
                None,
                true,
            ),
            // After an upgrade the bytes are another protocol: stop looking.
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                None,
                false,
            ),
            // Conflicting lengths are hyper's to refuse; the scanner just steps aside.
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                None,
                false,
            ),
        ];
        for (input, want, active) in cases {
            for step in [1, 3, 7, input.len()] {
                assert_eq!(
                    scan(input, step),
                    (*want, *active),
                    "input {input:?} step {step}"
                );
            }
        }
    }

    #[test]
    fn long_lines_switch_it_off() {
        let verdict = Arc::new(FramingVerdict::new());
        let mut scanner = FramingScanner::new(16, verdict);
        scanner.feed(b"GET /a-very-long-path-indeed HTTP/1.1\r\n");
        assert!(!scanner.is_active());
    }
}
