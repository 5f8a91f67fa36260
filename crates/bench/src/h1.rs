//! A minimal HTTP/1.1 client for the generator: one request in flight per connection, written
//! with one `write_all` and answered into a buffer the connection reuses. No connection task, no
//! channel and no header map per request: the status line and headers are parsed with `httparse`
//! and only what the report needs is taken out (status, `X-Served-By`, `X-Cache`, and the body when
//! a field is to be counted).
//!
//! Framing (RFC 9112 section 6.3): no body for an answer to HEAD or a 1xx / 204 / 304 status;
//! otherwise `Transfer-Encoding: chunked`, else `Content-Length`, else until the server closes.
//! Interim 1xx answers (but 101) are skipped. `Connection: close`, an HTTP/1.0 answer without
//! `keep-alive` and a close-delimited body mark the connection as done after the answer.

use std::io;
use std::net::SocketAddr;

use framing::{Chunked as ChunkedBody, parse_length};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// TCP connect failed.
    Connect,
    /// The connection was closed or reset mid-request.
    Reset,
    /// Anything else: a malformed answer, an unexpected I/O error.
    Other,
}

/// The `X-Cache` outcome of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cache {
    Hit,
    Miss,
}

/// What the generator takes out of one answer.
#[derive(Debug, Default)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) served_by: Option<Vec<u8>>,
    pub(crate) cache: Option<Cache>,
    /// The body, only when it was asked for.
    pub(crate) body: Option<Vec<u8>>,
    /// The server ends the connection after this answer: open a new one for the next request.
    pub(crate) close: bool,
}

/// The most header bytes accepted (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// The most headers accepted in one answer.
const MAX_HEADERS: usize = 64;
const INITIAL_BUFFER: usize = 8 * 1024;

/// One HTTP/1.1 connection with its read buffer.
pub(crate) struct Conn<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[pos..len]`.
    pos: usize,
    len: usize,
    /// Answers completed on this connection.
    served: u64,
    /// Bytes of the current answer received so far (0: the server said nothing yet).
    received: usize,
}

/// Opens a TCP connection with Nagle's algorithm off (small requests must not wait).
pub(crate) async fn connect(addr: SocketAddr) -> Result<Conn, Failure> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|_| Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(Conn::new(stream))
}

fn io_failure(e: &io::Error) -> Failure {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Failure::Reset,
        _ => Failure::Other,
    }
}

/// How the body of an answer is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(crate) fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            pos: 0,
            len: 0,
            served: 0,
            received: 0,
        }
    }

    /// True when this connection has already carried an answer: a failure before the first byte
    /// of the next answer may then be the server closing an idle keep-alive connection.
    pub(crate) fn reused(&self) -> bool {
        self.served > 0
    }

    /// True when the server sent nothing of the answer to the last request.
    pub(crate) fn nothing_received(&self) -> bool {
        self.received == 0
    }

    /// Sends `request` (a complete serialized request) and reads the whole answer. `head`: the
    /// request was HEAD (its answer has no body). `keep_body`: return the (de-chunked) body.
    pub(crate) async fn round_trip(
        &mut self,
        request: &[u8],
        head: bool,
        keep_body: bool,
    ) -> Result<Response, Failure> {
        self.received = 0;
        self.stream
            .write_all(request)
            .await
            .map_err(|e| io_failure(&e))?;
        let response = self.read_response(head, keep_body).await?;
        self.served += 1;
        Ok(response)
    }

    /// Reads more bytes into the buffer (compacting or growing it when full). `Ok(0)` at EOF.
    async fn fill(&mut self, limit: usize) -> Result<usize, Failure> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        }
        if self.len == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.len, 0);
                self.len -= self.pos;
                self.pos = 0;
            } else if self.buf.len() < limit {
                let grown = (self.buf.len() * 2).min(limit);
                self.buf.resize(grown, 0);
            } else {
                // A head larger than the limit.
                return Err(Failure::Other);
            }
        }
        let n = self
            .stream
            .read(&mut self.buf[self.len..])
            .await
            .map_err(|e| io_failure(&e))?;
        self.len += n;
        self.received += n;
        Ok(n)
    }

    async fn read_response(&mut self, head: bool, keep_body: bool) -> Result<Response, Failure> {
        loop {
            let (mut response, framing, consumed) = loop {
                match parse_head(&self.buf[self.pos..self.len], head)? {
                    Some(parsed) => break parsed,
                    None => {
                        if self.fill(MAX_HEAD).await? == 0 {
                            return Err(Failure::Reset);
                        }
                    }
                }
            };
            self.pos += consumed;
            if (100..200).contains(&response.status) && response.status != 101 {
                // An interim answer (100 Continue, 103 Early Hints): the final one follows.
                continue;
            }
            let mut body = keep_body.then(Vec::new);
            match framing {
                Framing::None => {}
                Framing::Length(n) => self.read_length(n, body.as_mut()).await?,
                Framing::Chunked => self.read_chunked(body.as_mut()).await?,
                Framing::UntilClose => {
                    self.read_until_close(body.as_mut()).await?;
                    response.close = true;
                }
            }
            response.body = body;
            return Ok(response);
        }
    }

    async fn read_length(
        &mut self,
        mut left: u64,
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<(), Failure> {
        loop {
            let available = (self.len - self.pos) as u64;
            let take = available.min(left) as usize;
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            }
            self.pos += take;
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
            if self.fill(self.buf.len()).await? == 0 {
                return Err(Failure::Reset);
            }
        }
    }

    async fn read_chunked(&mut self, mut out: Option<&mut Vec<u8>>) -> Result<(), Failure> {
        let mut decoder = ChunkedBody::default();
        loop {
            let (used, done) = decoder
                .decode(&self.buf[self.pos..self.len], out.as_deref_mut())
                .map_err(|_| Failure::Other)?;
            self.pos += used;
            if done {
                return Ok(());
            }
            if self.fill(self.buf.len()).await? == 0 {
                return Err(Failure::Reset);
            }
        }
    }

    async fn read_until_close(&mut self, mut out: Option<&mut Vec<u8>>) -> Result<(), Failure> {
        loop {
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(&self.buf[self.pos..self.len]);
            }
            self.pos = self.len;
            if self.fill(self.buf.len()).await? == 0 {
                return Ok(());
            }
        }
    }
}

/// Parses a status line and headers from the start of `input`. `Ok(None)`: incomplete.
/// Returns what was taken out, how the body is framed and how many bytes the head took.
fn parse_head(input: &[u8], head: bool) -> Result<Option<(Response, Framing, usize)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let consumed = match parsed.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Failure::Other),
    };
    let status = parsed.code.ok_or(Failure::Other)?;
    let mut response = Response {
        status,
        // HTTP/1.0 closes unless it says keep-alive.
        close: parsed.version == Some(0),
        ..Response::default()
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).map_err(|_| Failure::Other)?;
            if length.is_some_and(|l| l != n) {
                return Err(Failure::Other);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // Chunked must be the last coding; otherwise the body runs until close.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    response.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && parsed.version == Some(0) {
                    response.close = false;
                }
            }
        } else if name.eq_ignore_ascii_case(api::headers::SERVED_BY.as_bytes()) {
            response.served_by = Some(h.value.to_vec());
        } else if name.eq_ignore_ascii_case(api::headers::CACHE.as_bytes()) {
            let v = h.value.trim_ascii();
            if v.eq_ignore_ascii_case(b"HIT") {
                response.cache = Some(Cache::Hit);
            } else if v.eq_ignore_ascii_case(b"MISS") {
                response.cache = Some(Cache::Miss);
            }
        }
    }
    let framing = if head || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if status == 101 {
        // Switching protocols: this connection no longer speaks HTTP/1.1.
        response.close = true;
    }
    Ok(Some((response, framing, consumed)))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// A stream that answers reads with the given pieces, one per read (then EOF), and swallows
    /// writes.
    struct Script {
        pieces: VecDeque<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Script {
        fn new<I: IntoIterator<Item = Vec<u8>>>(pieces: I) -> Conn<Script> {
            Conn::new(Script {
                pieces: pieces.into_iter().collect(),
                written: Vec::new(),
            })
        }
    }

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut piece) = self.pieces.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.pieces.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    use std::future::Future;

    /// Reads one answer from `pieces`, keeping the body.
    fn one(pieces: Vec<Vec<u8>>, head: bool) -> Result<Response, Failure> {
        run(async {
            let mut conn = Script::new(pieces);
            conn.round_trip(GET, head, true).await
        })
    }

    fn split_at_every_byte(answer: &[u8], check: impl Fn(Response)) {
        for i in 1..answer.len() {
            let r = one(vec![answer[..i].to_vec(), answer[i..].to_vec()], false)
                .unwrap_or_else(|e| panic!("split at {i}: {e:?}"));
            check(r);
        }
        let bytes = answer.iter().map(|&b| vec![b]).collect();
        check(one(bytes, false).expect("one byte per read"));
    }

    const LENGTH: &[u8] = b"HTTP/1.1 200 OK\r\nServer: t\r\nX-Served-By: gw-1\r\nx-cache: hit\r\n\
        Content-Length: 17\r\n\r\n{\"service_id\":1}\n";

    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Cache: MISS\r\n\r\n\
        4;name=\"va;l\"\r\nWiki\r\n1a ; x=y\r\nabcdefghijklmnopqrstuvwxyz\r\nB\r\n0123456789A\r\n\
        0\r\nX-Trailer: a\r\nOther: b\r\n\r\n";

    fn check_length(r: Response) {
        assert_eq!(r.status, 200);
        assert_eq!(r.served_by.as_deref(), Some(&b"gw-1"[..]));
        assert_eq!(r.cache, Some(Cache::Hit));
        assert_eq!(r.body.as_deref(), Some(&b"{\"service_id\":1}\n"[..]));
        assert!(!r.close);
    }

    fn check_chunked(r: Response) {
        assert_eq!(r.status, 200);
        assert_eq!(r.cache, Some(Cache::Miss));
        assert_eq!(r.served_by, None);
        assert_eq!(
            r.body.as_deref(),
            Some(&b"Wikiabcdefghijklmnopqrstuvwxyz0123456789A"[..])
        );
        assert!(!r.close);
    }

    #[test]
    fn content_length_body() {
        check_length(one(vec![LENGTH.to_vec()], false).unwrap());
        // The body is not kept unless asked for.
        let r = run(async {
            let mut conn = Script::new([LENGTH.to_vec()]);
            conn.round_trip(GET, false, false).await
        })
        .unwrap();
        assert_eq!(r.body, None);
        assert_eq!(r.status, 200);
    }

    #[test]
    fn chunked_body_split_across_reads() {
        check_chunked(one(vec![CHUNKED.to_vec()], false).unwrap());
        let (head, body) = CHUNKED.split_at(CHUNKED.len() - 90);
        let pieces = vec![head.to_vec(), body[..7].to_vec(), body[7..].to_vec()];
        check_chunked(one(pieces, false).unwrap());
    }

    #[test]
    fn an_answer_split_at_every_byte_boundary() {
        split_at_every_byte(LENGTH, check_length);
        split_at_every_byte(CHUNKED, check_chunked);
    }

    #[test]
    fn keep_alive_answers_follow_each_other_in_one_buffer() {
        // Two answers arriving in one read: the second is parsed from what the first left over.
        let mut both = CHUNKED.to_vec();
        both.extend_from_slice(LENGTH);
        run(async {
            let mut conn = Script::new([both]);
            check_chunked(conn.round_trip(GET, false, true).await.unwrap());
            assert!(conn.reused());
            check_length(conn.round_trip(GET, false, true).await.unwrap());
            // Then the server is gone: nothing of an answer came.
            assert_eq!(
                conn.round_trip(GET, false, true).await.unwrap_err(),
                Failure::Reset
            );
            assert!(conn.nothing_received());
            assert_eq!(conn.stream.written.len(), 3 * GET.len());
        });
    }

    #[test]
    fn connection_close_is_honoured() {
        let r = one(
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec(),
            ],
            false,
        )
        .unwrap();
        assert!(r.close);
        assert_eq!(r.body.as_deref(), Some(&b"ok"[..]));
        // HTTP/1.0 closes unless it says keep-alive.
        let r = one(
            vec![b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()],
            false,
        )
        .unwrap();
        assert!(r.close);
        let r = one(
            vec![
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n".to_vec(),
            ],
            false,
        )
        .unwrap();
        assert!(!r.close);
        // Neither length nor chunked: the body runs until the server closes.
        let r = one(
            vec![b"HTTP/1.1 200 OK\r\n\r\nuntil".to_vec(), b" close".to_vec()],
            false,
        )
        .unwrap();
        assert!(r.close);
        assert_eq!(r.body.as_deref(), Some(&b"until close"[..]));
    }

    #[test]
    fn head_204_and_304_answers_have_no_body() {
        let next = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz";
        for (first, head) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 612\r\n\r\n"[..], true),
            (
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                true,
            ),
            (&b"HTTP/1.1 204 No Content\r\n\r\n"[..], false),
            (
                &b"HTTP/1.1 304 Not Modified\r\nContent-Length: 612\r\n\r\n"[..],
                false,
            ),
        ] {
            let mut both = first.to_vec();
            both.extend_from_slice(next);
            run(async {
                let mut conn = Script::new([both]);
                let r = conn.round_trip(GET, head, true).await.unwrap();
                assert_eq!(r.body.as_deref(), Some(&b""[..]));
                assert!(!r.close);
                // The next answer starts right after the head.
                let r = conn.round_trip(GET, false, true).await.unwrap();
                assert_eq!(r.body.as_deref(), Some(&b"z"[..]));
            });
        }
    }

    #[test]
    fn interim_answers_are_skipped() {
        let r = one(
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            ],
            false,
        )
        .unwrap();
        assert_eq!(r.status, 201);
    }

    #[test]
    fn malformed_answers_fail_as_other() {
        for bad in [
            &b"HTTP/1.1 2x0 OK\r\n\r\n"[..],
            b"HTPT/1.1 200 OK\r\n\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1234567890abcdef0\r\n",
        ] {
            assert_eq!(
                one(vec![bad.to_vec()], false).unwrap_err(),
                Failure::Other,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_answer_cut_short_is_a_reset() {
        for cut in [
            &b"HTTP/1.1 200 OK\r\nContent-Le"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWi",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
        ] {
            assert_eq!(one(vec![cut.to_vec()], false).unwrap_err(), Failure::Reset);
        }
    }

    #[test]
    fn a_head_larger_than_the_limit_fails() {
        let mut huge = b"HTTP/1.1 200 OK\r\nX-Filler: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'x');
        assert_eq!(one(vec![huge], false).unwrap_err(), Failure::Other);
    }
}
