//! Finds where a chunked body ends (RFC 9112 §7.1) while it is relayed byte for byte.

/// Chunk-size lines and trailers longer than this are refused: nothing legitimate needs them.
const MAX_LINE: usize = 4096;

/// The body is not valid chunked encoding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` counts them.
    Size,
    /// A chunk extension, up to the CR.
    Extension,
    /// The LF ending a size line.
    SizeLf,
    /// Chunk data: `left` bytes to go.
    Data,
    /// The CRLF after chunk data.
    DataCr,
    DataLf,
    /// The start of a trailer line, or the empty line ending the body.
    LineStart,
    /// Inside a trailer line.
    Trailer,
    TrailerLf,
    /// The LF of the empty line ending the body.
    LastLf,
    Done,
}

/// Follows one chunked body.
#[derive(Debug)]
pub(crate) struct ChunkedEnd {
    state: State,
    left: u64,
    digits: u8,
    line: usize,
}

impl ChunkedEnd {
    pub(crate) fn new() -> ChunkedEnd {
        ChunkedEnd {
            state: State::Size,
            left: 0,
            digits: 0,
            line: 0,
        }
    }

    /// Reads the next bytes of the body: `Some(n)` when it ends after `n` of them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Data {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - i);
                self.left -= take as u64;
                i += take;
                if self.left == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(Malformed);
            }
            self.state = match (self.state, b) {
                (State::Size, b'\r') if self.digits > 0 => State::SizeLf,
                (State::Size, b';' | b' ' | b'\t') if self.digits > 0 => State::Extension,
                (State::Size, _) => {
                    let digit = char::from(b).to_digit(16).ok_or(Malformed)?;
                    // 15 hex digits cover any size; more would overflow.
                    if self.digits >= 15 {
                        return Err(Malformed);
                    }
                    self.digits += 1;
                    self.left = self.left * 16 + u64::from(digit);
                    State::Size
                }
                (State::Extension, b'\r') => State::SizeLf,
                (State::Extension, b'\n') => return Err(Malformed),
                (State::Extension, _) => State::Extension,
                (State::SizeLf, b'\n') => {
                    self.line = 0;
                    if self.left == 0 {
                        State::LineStart
                    } else {
                        State::Data
                    }
                }
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => {
                    self.line = 0;
                    self.digits = 0;
                    State::Size
                }
                (State::LineStart, b'\r') => State::LastLf,
                (State::LineStart | State::Trailer, b'\n') => return Err(Malformed),
                (State::Trailer, b'\r') => State::TrailerLf,
                (State::LineStart | State::Trailer, _) => State::Trailer,
                (State::TrailerLf, b'\n') => {
                    self.line = 0;
                    State::LineStart
                }
                (State::LastLf, b'\n') => {
                    self.state = State::Done;
                    return Ok(Some(i));
                }
                _ => return Err(Malformed),
            };
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the body ends when fed in pieces of `step` bytes.
    fn end_in_steps(body: &[u8], step: usize) -> Result<Option<usize>, Malformed> {
        let mut end = ChunkedEnd::new();
        let mut offset = 0;
        for piece in body.chunks(step) {
            if let Some(n) = end.feed(piece)? {
                return Ok(Some(offset + n));
            }
            offset += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn finds_the_end_however_the_bytes_arrive() {
        let body =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for step in [1, 2, 3, 7, body.len()] {
            assert_eq!(end_in_steps(body, step), Ok(Some(end)), "step {step}");
        }
        assert_eq!(end_in_steps(b"0\r\n\r\n", 1), Ok(Some(5)));
        assert_eq!(end_in_steps(b"5\r\nhel", 2), Ok(None));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"0\r\nX: 1\n\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            assert_eq!(end_in_steps(bad, 1), Err(Malformed), "{bad:?}");
        }
        let long_extension = [b"1;".as_slice(), &[b'x'; 5000]].concat();
        assert_eq!(end_in_steps(&long_extension, 64), Err(Malformed));
    }
}
