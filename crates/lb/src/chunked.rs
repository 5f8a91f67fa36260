//! Where a chunked HTTP/1 body ends, found while its bytes pass through unchanged.
//!
//! The balancer relays a backend's `Transfer-Encoding: chunked` body as it is (the client speaks
//! HTTP/1.1 too), so it never decodes the data; it only has to know which byte is the last one
//! of the body, to give the connection back for the next request. [`Chunked::feed`] follows the
//! framing (RFC 9112 §7.1: size line with optional extensions, data, CRLF, ..., a zero-size
//! chunk, trailer lines, an empty line) across any split of the bytes into reads.

/// Where in the framing the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`size` so far).
    Size,
    /// After the size: an extension or whitespace, up to the line's end.
    SizeLine,
    /// The size line's LF.
    SizeLf,
    /// Data bytes still to pass.
    Data,
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after a chunk's data.
    DataLf,
    /// The start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// The LF of a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    /// The body is over.
    Done,
}

/// The framing state of one chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// The size being read, then the data bytes left in the current chunk.
    size: u64,
    /// Whether the size line had at least one digit.
    digits: bool,
}

/// The body's framing is broken: the connection cannot be used for anything after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: false,
        }
    }
}

impl Chunked {
    /// Whether the whole body has passed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Follows `bytes`, the next bytes of the body; returns how many of them belong to it (all
    /// of them unless the body ends inside `bytes`).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                State::Size => match hex(b) {
                    Some(d) => {
                        // More than 15 hex digits cannot be a real size.
                        if self.size > (u64::MAX >> 4) {
                            return Err(Malformed);
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits = true;
                    }
                    None if !self.digits => return Err(Malformed),
                    None => {
                        self.state = match b {
                            b'\r' => State::SizeLf,
                            b'\n' => self.after_size_line(),
                            _ => State::SizeLine,
                        };
                    }
                },
                State::SizeLine => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => self.state = self.after_size_line(),
                    _ => {}
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = self.after_size_line();
                }
                State::Data => {
                    let take =
                        (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    self.state = match b {
                        b'\r' => State::DataLf,
                        b'\n' => self.next_chunk(),
                        _ => return Err(Malformed),
                    };
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = self.next_chunk();
                }
                State::TrailerStart => {
                    self.state = match b {
                        b'\r' => State::EndLf,
                        b'\n' => State::Done,
                        _ => State::Trailer,
                    };
                    if self.state == State::Done {
                        return Ok(i + 1);
                    }
                }
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => self.state = State::TrailerStart,
                    _ => {}
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }

    /// The state after a size line: data, or the trailer section after the last chunk.
    fn after_size_line(&mut self) -> State {
        if self.size == 0 {
            State::TrailerStart
        } else {
            State::Data
        }
    }

    /// Ready for the next size line.
    fn next_chunk(&mut self) -> State {
        self.size = 0;
        self.digits = false;
        State::Size
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` split at every position (and byte by byte); the end must be found at
    /// `body.len() - extra` each time.
    fn ends_at(body: &[u8], extra: usize) {
        let want = body.len() - extra;
        for split in 0..=body.len() {
            let mut c = Chunked::default();
            let first = c.feed(&body[..split]).unwrap();
            let total = if c.is_done() {
                first
            } else {
                first + c.feed(&body[split..]).unwrap()
            };
            assert!(c.is_done(), "split at {split}");
            assert_eq!(total, want, "split at {split}");
        }
        let mut c = Chunked::default();
        let mut n = 0;
        for b in body {
            if c.is_done() {
                break;
            }
            n += c.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(n, want, "byte by byte");
    }

    #[test]
    fn the_end_is_found_however_the_bytes_are_split() {
        ends_at(b"5\r\nhello\r\n0\r\n\r\n", 0);
        ends_at(
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
            16,
        );
        // Extensions, upper-case hex, trailers.
        ends_at(b"A;name=v\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n", 0);
        // A data chunk that contains CRLFs and zeros.
        ends_at(b"4\r\n0\r\n\r\r\n0\r\n\r\n", 0);
    }

    #[test]
    fn a_body_cut_short_is_not_done() {
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"5\r\nhel").unwrap(), 6);
        assert!(!c.is_done());
        assert_eq!(c.feed(b"lo\r\n0\r\n").unwrap(), 7);
        assert!(!c.is_done(), "the final empty line is missing");
        assert_eq!(c.feed(b"\r\n").unwrap(), 2);
        assert!(c.is_done());
    }

    #[test]
    fn broken_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\rX",
            b"fffffffffffffffff\r\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(Malformed), "{bad:?}");
        }
    }
}
