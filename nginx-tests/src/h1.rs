//! HTTP/1.1 over a [`TlsConn`]: requests, paced reading, and response parsing (Content-Length,
//! chunked, read-until-close; multipart/byteranges).

use crate::tls::TlsConn;
use std::io::{self, Read};
use std::thread::sleep;
use std::time::Duration;

/// How the client reads: at most `chunk` bytes per read, sleeping `pause` after every
/// `pause_every` bytes, so that the server meets a full socket buffer again and again.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub chunk: usize,
    pub pause: Duration,
    pub pause_every: usize,
}

impl Pace {
    pub const FAST: Pace = Pace {
        chunk: 256 * 1024,
        pause: Duration::ZERO,
        pause_every: usize::MAX,
    };

    pub fn slow(chunk: usize, pause: Duration, pause_every: usize) -> Pace {
        Pace {
            chunk,
            pause,
            pause_every,
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl Response {
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `Host: localhost` and any extra header lines (each ending in CRLF).
pub fn get(path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra_headers}\r\n").into_bytes()
}

/// Something to do on the connection once a number of bytes has been read.
type Hook = (usize, Box<dyn FnOnce(&mut TlsConn) -> io::Result<()>>);

/// An HTTP/1.1 connection; keeps bytes read past one response for the next (keep-alive).
pub struct H1 {
    pub conn: TlsConn,
    buf: Vec<u8>,
    pub pace: Pace,
    since_pause: usize,
    scratch: Vec<u8>,
    read: usize,
    hook: Option<Hook>,
}

impl H1 {
    pub fn new(conn: TlsConn) -> H1 {
        H1 {
            conn,
            buf: Vec::new(),
            pace: Pace::FAST,
            since_pause: 0,
            scratch: Vec::new(),
            read: 0,
            hook: None,
        }
    }

    /// Runs `f` on the connection as soon as `bytes` more have been read (in the middle of a
    /// response, when a response is being read).
    pub fn after_reading(
        &mut self,
        bytes: usize,
        f: impl FnOnce(&mut TlsConn) -> io::Result<()> + 'static,
    ) {
        self.hook = Some((self.read + bytes, Box::new(f)));
    }

    /// Sends `GET path` and reads the response.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.conn.send(&get(path, ""))?;
        self.read_response()
    }

    /// Reads more bytes into the buffer; Ok(0) at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        if self.since_pause >= self.pace.pause_every {
            sleep(self.pace.pause);
            self.since_pause = 0;
        }
        self.scratch.resize(self.pace.chunk, 0);
        let n = match self.conn.stream.read(&mut self.scratch) {
            Ok(n) => n,
            // A close without close_notify is still an end of stream for a close-delimited body.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        self.buf.extend_from_slice(&self.scratch[..n]);
        self.since_pause += n;
        self.read += n;
        if self.hook.as_ref().is_some_and(|(at, _)| self.read >= *at) {
            let (_, f) = self.hook.take().expect("hook");
            f(&mut self.conn)?;
        }
        Ok(n)
    }

    fn eof(what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed in {what}"),
        )
    }

    fn take_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::other("line longer than 64 KiB"));
            }
            if self.fill()? == 0 {
                return Err(Self::eof("a header or chunk-size line"));
            }
        }
    }

    fn take_exact(&mut self, n: usize, body: &mut Vec<u8>) -> io::Result<()> {
        while self.buf.len() < n {
            let need = n - self.buf.len();
            if self.fill()? == 0 {
                return Err(Self::eof(&format!("a body ({need} of {n} bytes missing)")));
            }
        }
        body.extend_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        Ok(())
    }

    /// Reads one response (to a request that was not HEAD).
    pub fn read_response(&mut self) -> io::Result<Response> {
        let status_line = self.take_line()?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.take_line()?;
            if line.is_empty() {
                break;
            }
            let (n, v) = line
                .split_once(':')
                .ok_or_else(|| io::Error::other(format!("bad header {line:?}")))?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        let mut body = Vec::new();
        let bodiless = status == 204 || status == 304 || (100..200).contains(&status);
        if bodiless {
            // Nothing follows the header.
        } else if resp
            .header("Transfer-Encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            resp.chunked = true;
            loop {
                let line = self.take_line()?;
                let size_hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| io::Error::other(format!("bad chunk size line {line:?}")))?;
                if size == 0 {
                    // No trailers from nginx: the final empty line.
                    let end = self.take_line()?;
                    if !end.is_empty() {
                        return Err(io::Error::other(format!("trailer {end:?}")));
                    }
                    break;
                }
                self.take_exact(size, &mut body)?;
                let crlf = self.take_line()?;
                if !crlf.is_empty() {
                    return Err(io::Error::other("chunk not followed by CRLF"));
                }
            }
        } else if let Some(cl) = resp.header("Content-Length") {
            let n = cl
                .parse()
                .map_err(|_| io::Error::other(format!("bad Content-Length {cl}")))?;
            self.take_exact(n, &mut body)?;
        } else {
            while self.fill()? > 0 {}
            body.append(&mut self.buf);
        }
        resp.body = body;
        Ok(resp)
    }
}

/// One part of a multipart/byteranges body.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    pub first: u64,
    pub last: u64,
    pub total: u64,
    pub data: Vec<u8>,
}

/// Parses `Content-Range: bytes FIRST-LAST/TOTAL`.
pub fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let r = value.strip_prefix("bytes ")?;
    let (range, total) = r.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

/// Parses a multipart/byteranges body, strictly: each part's data is exactly the length its
/// Content-Range says and is followed by CRLF and the boundary.
pub fn multipart(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .ok_or_else(|| format!("no boundary in {content_type:?}"))?;
    let delim = format!("--{boundary}");
    let mut rest = body;
    let mut parts = Vec::new();
    // nginx starts the body with CRLF before the first delimiter.
    rest = rest.strip_prefix(b"\r\n").unwrap_or(rest);
    loop {
        rest = rest
            .strip_prefix(delim.as_bytes())
            .ok_or("expected a boundary")?;
        if let Some(after) = rest.strip_prefix(b"--") {
            if after != b"\r\n" && !after.is_empty() {
                return Err("bytes after the closing boundary".into());
            }
            return Ok(parts);
        }
        rest = rest.strip_prefix(b"\r\n").ok_or("no CRLF after boundary")?;
        let head_end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("part headers do not end")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        rest = &rest[head_end + 4..];
        let cr = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case("content-range"))
            })
            .and_then(|(_, v)| content_range(v.trim()))
            .ok_or_else(|| format!("part without Content-Range: {head:?}"))?;
        let len = (cr.1 - cr.0 + 1) as usize;
        if rest.len() < len + 2 {
            return Err("part data truncated".into());
        }
        parts.push(Part {
            first: cr.0,
            last: cr.1,
            total: cr.2,
            data: rest[..len].to_vec(),
        });
        rest = rest[len..]
            .strip_prefix(b"\r\n")
            .ok_or("part data not followed by CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_byteranges() {
        let body = b"\r\n--00000000001\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-2/10\r\n\r\nabc\r\n\
                     --00000000001\r\nContent-Type: text/plain\r\nContent-Range: bytes 8-9/10\r\n\r\nij\r\n\
                     --00000000001--\r\n";
        let parts = multipart("multipart/byteranges; boundary=00000000001", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[1],
            Part {
                first: 8,
                last: 9,
                total: 10,
                data: b"ij".to_vec()
            }
        );
        assert!(multipart("multipart/byteranges; boundary=00000000001", &body[..60]).is_err());
    }

    #[test]
    fn content_range_parse() {
        assert_eq!(content_range("bytes 5-9/100"), Some((5, 9, 100)));
        assert_eq!(content_range("bytes */100"), None);
    }
}
