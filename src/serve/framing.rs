//! Problem objects for the HTTP listener's own error answers.
//!
//! A request hyper cannot parse (a malformed request line, a bad header, an
//! unparsable `content-length`, a head too large) never reaches the router:
//! hyper answers it by itself with a bare status and no body
//! (`HTTP/1.1 400 Bad Request`, `content-length: 0`) and closes. A switch's
//! client then has nothing to log but the status. [`FramingProblems`] sits
//! between hyper and the socket and rewrites exactly those answers (status
//! 4xx or 5xx with an empty body: every answer of the router has a body)
//! into RFC 9457 problem objects like the router's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps a connection's I/O; see the module docs.
pub struct FramingProblems<T> {
    io: T,
    /// A rewritten answer being written: bytes, how many are out, and the
    /// length of hyper's original to report once all are.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> FramingProblems<T> {
    pub fn new(io: T) -> FramingProblems<T> {
        FramingProblems { io, pending: None }
    }
}

/// The problem answer for hyper's bare error answer `head`, or `None` when
/// `head` is anything else.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() < 16 || !head.starts_with(b"HTTP/1.") || !matches!(head[9], b'4' | b'5') {
        return None;
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None;
    }
    let text = std::str::from_utf8(&head[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.get(9..12)?.parse().ok()?;
    let mut others = Vec::new();
    let mut empty = false;
    for l in lines {
        let (name, value) = l.split_once(':')?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            empty = value.trim() == "0";
        } else if !name.eq_ignore_ascii_case("connection") {
            others.push(l);
        }
    }
    if !empty {
        return None;
    }
    let (code, detail) = match status {
        414 => ("uri_too_long", "the request target is too long"),
        431 => (
            "headers_too_large",
            "the request head (request line and headers) is too large",
        ),
        505 => (
            "http_version_not_supported",
            "the in-line API speaks HTTP/1.1 and HTTP/2",
        ),
        _ => (
            "bad_request",
            "the request could not be read as HTTP: a malformed request line, header or content-length",
        ),
    };
    let body = serde_json::json!({
        "type": format!("urn:fraudline:problem:{code}"),
        "title": status_line.get(13..).unwrap_or("error"),
        "status": status,
        "code": code,
        "detail": detail,
    })
    .to_string();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/problem+json\r\nconnection: close\r\n");
    for l in others {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<T: AsyncWrite + Unpin> FramingProblems<T> {
    /// Writes what is pending; `Ready(Ok(n))` with the original's length
    /// once it is all out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<usize>>> {
        while let Some((bytes, done, original)) = &mut self.pending {
            if *done == bytes.len() {
                let n = *original;
                self.pending = None;
                return Poll::Ready(Ok(Some(n)));
            }
            match Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(None))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingProblems<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingProblems<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            match rewrite(buf) {
                Some(bytes) => this.pending = Some((bytes, 0, buf.len())),
                None => return Pin::new(&mut this.io).poll_write(cx, buf),
            }
        }
        match this.drain(cx) {
            Poll::Ready(Ok(Some(n))) => Poll::Ready(Ok(n)),
            Poll::Ready(Ok(None)) => Pin::new(&mut this.io).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Not vectored: hyper then writes each answer's head as one buffer,
    /// which is what [`rewrite`] reads.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(Err(e)) = this.drain(cx) {
            return Poll::Ready(Err(e));
        }
        if this.pending.is_some() {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(Err(e)) = this.drain(cx) {
            return Poll::Ready(Err(e));
        }
        if this.pending.is_some() {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_error_answers_are_rewritten() {
        let bare = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite(bare).expect("rewritten")).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.contains("content-type: application/problem+json"));
        assert!(out.contains("date: x\r\n"));
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 400);
        assert_eq!(v["code"], "bad_request");
        // Answers with a body, successes and partial heads are left alone.
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}").is_none());
        let big =
            rewrite(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        assert!(String::from_utf8(big)
            .unwrap()
            .contains("headers_too_large"));
    }
}
