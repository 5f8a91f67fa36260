//! HTTP/1.1 body framing (RFC 9112 §6, §7.1), shared by the balancer's own hop (`lb::h1`, which
//! relays a chunked body unchanged and only needs to know where it ends) and the load generator
//! (`bench::h1`, which reads or skips it): [`parse_length`] for `Content-Length` values, and
//! [`Chunked`], an incremental chunked decoder fed whatever bytes have arrived, split anywhere.

/// The framing is broken: the connection cannot be used for anything after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A `Content-Length` value: digits only (surrounding whitespace allowed), at most 19 of them.
pub fn parse_length(value: &[u8]) -> Result<u64, Malformed> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(Malformed);
    }
    Ok(value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// Reading the hex size of a chunk (`digits` so far).
    #[default]
    Size,
    /// Whitespace after the size, before `;` or CRLF.
    SizeSpace,
    /// A chunk extension: skipped to the end of the line.
    Extension,
    /// The LF ending the size line.
    SizeLf,
    /// Chunk data, `left` bytes to go.
    Data,
    /// The CRLF after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line: skipped.
    Trailer,
    /// The LF of the final empty line.
    EndLf,
    Done,
}

/// An incremental `Transfer-Encoding: chunked` decoder: feed it whatever bytes have arrived.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u32,
    left: u64,
}

impl Chunked {
    /// Decodes from `input`, appending data to `out` when given. Returns the bytes used and
    /// whether the body (with its trailers) is complete; bytes after the end are not used.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<(usize, bool), Malformed> {
        let mut i = 0;
        while i < input.len() {
            if self.state == ChunkState::Data {
                let take = (input.len() - i).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                if let Some(out) = out.as_deref_mut() {
                    out.extend_from_slice(&input[i..i + take]);
                }
                i += take;
                self.left -= take as u64;
                if self.left == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        // Up to 15 hex digits: no overflow, and no chunk is that large anyway.
                        if self.digits >= 15 {
                            return Err(Malformed);
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                        ChunkState::Size
                    }
                    _ if self.digits == 0 => return Err(Malformed),
                    b' ' | b'\t' => ChunkState::SizeSpace,
                    b';' => ChunkState::Extension,
                    b'\r' => ChunkState::SizeLf,
                    b'\n' => self.end_of_size_line(),
                    _ => return Err(Malformed),
                },
                ChunkState::SizeSpace => match b {
                    b' ' | b'\t' => ChunkState::SizeSpace,
                    b';' => ChunkState::Extension,
                    b'\r' => ChunkState::SizeLf,
                    b'\n' => self.end_of_size_line(),
                    _ => return Err(Malformed),
                },
                ChunkState::Extension => match b {
                    b'\r' => ChunkState::SizeLf,
                    b'\n' => self.end_of_size_line(),
                    _ => ChunkState::Extension,
                },
                ChunkState::SizeLf => match b {
                    b'\n' => self.end_of_size_line(),
                    _ => return Err(Malformed),
                },
                ChunkState::DataCr => match b {
                    b'\r' => ChunkState::DataLf,
                    b'\n' => ChunkState::Size,
                    _ => return Err(Malformed),
                },
                ChunkState::DataLf => match b {
                    b'\n' => ChunkState::Size,
                    _ => return Err(Malformed),
                },
                ChunkState::TrailerStart => match b {
                    b'\r' => ChunkState::EndLf,
                    b'\n' => ChunkState::Done,
                    _ => ChunkState::Trailer,
                },
                ChunkState::Trailer => match b {
                    b'\n' => ChunkState::TrailerStart,
                    _ => ChunkState::Trailer,
                },
                ChunkState::EndLf => match b {
                    b'\n' => ChunkState::Done,
                    _ => return Err(Malformed),
                },
                // Data is handled above; nothing is read after the end.
                ChunkState::Data => return Err(Malformed),
                ChunkState::Done => return Ok((i - 1, true)),
            };
            if self.state == ChunkState::Done {
                return Ok((i, true));
            }
        }
        Ok((i, self.state == ChunkState::Done))
    }

    /// The size line is complete: data follows, or (size 0) the trailers.
    fn end_of_size_line(&mut self) -> ChunkState {
        let size = self.size;
        self.size = 0;
        self.digits = 0;
        if size == 0 {
            ChunkState::TrailerStart
        } else {
            self.left = size;
            ChunkState::Data
        }
    }
}

impl Chunked {
    /// Whether the whole body (with its trailers) has passed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` split at every position (and byte by byte); the end must be found at
    /// `body.len() - extra` each time, and the data decoded must be `data`.
    fn ends_at(body: &[u8], extra: usize, data: &[u8]) {
        let want = body.len() - extra;
        for split in 0..=body.len() {
            let mut c = Chunked::default();
            let mut out = Vec::new();
            let (first, done) = c.decode(&body[..split], Some(&mut out)).unwrap();
            let total = if done {
                first
            } else {
                first + c.decode(&body[split..], Some(&mut out)).unwrap().0
            };
            assert!(c.is_done(), "split at {split}");
            assert_eq!(total, want, "split at {split}");
            assert_eq!(out, data, "split at {split}");
        }
        let mut c = Chunked::default();
        let mut n = 0;
        for b in body {
            if c.is_done() {
                break;
            }
            n += c.decode(std::slice::from_ref(b), None).unwrap().0;
        }
        assert_eq!(n, want, "byte by byte");
    }

    #[test]
    fn the_end_is_found_however_the_bytes_are_split() {
        ends_at(b"5\r\nhello\r\n0\r\n\r\n", 0, b"hello");
        ends_at(
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
            16,
            b"hello world",
        );
        // Extensions, upper-case hex, trailers.
        ends_at(
            b"A;name=v\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n",
            0,
            b"0123456789",
        );
        // A data chunk that contains CRLFs and zeros.
        ends_at(b"4\r\n0\r\n\r\r\n0\r\n\r\n", 0, b"0\r\n\r");
    }

    #[test]
    fn a_body_cut_short_is_not_done() {
        let mut c = Chunked::default();
        assert_eq!(c.decode(b"5\r\nhel", None), Ok((6, false)));
        assert_eq!(c.decode(b"lo\r\n0\r\n", None), Ok((7, false)));
        assert!(!c.is_done(), "the final empty line is missing");
        assert_eq!(c.decode(b"\r\n", None), Ok((2, true)));
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
            assert_eq!(
                Chunked::default().decode(bad, None),
                Err(Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn content_lengths() {
        assert_eq!(parse_length(b"0"), Ok(0));
        assert_eq!(parse_length(b" 42 "), Ok(42));
        for bad in [
            &b""[..],
            b"-1",
            b"1,2",
            b"+3",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), Err(Malformed), "{bad:?}");
        }
    }
}
