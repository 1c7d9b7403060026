//! A minimal HTTP/2 client (RFC 9113) over a [`TlsConn`] that negotiated ALPN "h2": GET requests
//! on concurrent streams, bodies collected per stream.
//!
//! Written here rather than driving curl or nghttp so that the TLS version, cipher and socket
//! options are the same knobs as for HTTP/1.1, and nothing has to be installed. It decodes only
//! `:status` from response header blocks (always their first field, from nginx); the other
//! fields are skipped, which is safe because the client never relies on HPACK state.

use crate::tls::TlsConn;
use std::collections::BTreeMap;
use std::io::{self, Read};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The largest flow-control window: the client never has to send WINDOW_UPDATE for a stream,
/// and a connection can carry 2 GiB before the connection window runs out.
const MAX_WINDOW: u32 = (1 << 31) - 1;

#[derive(Debug, Default)]
pub struct H2Response {
    pub status: u16,
    pub body: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an N-bit prefix (RFC 7541, 5.1), `first` holding the pattern bits.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal field without indexing, name from the static table, raw (not Huffman) value.
fn hpack_literal(out: &mut Vec<u8>, name_index: usize, value: &str) {
    hpack_int(out, 0x00, 4, name_index);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

fn request_block(path: &str) -> Vec<u8> {
    // :method GET (static 2), :scheme https (static 7), :authority (1), :path (4).
    let mut b = vec![0x82, 0x87];
    hpack_literal(&mut b, 1, "localhost");
    hpack_literal(&mut b, 4, path);
    b
}

/// `:status` from the start of a response header block.
fn decode_status(block: &[u8]) -> Option<u16> {
    let mut i = 0;
    // Dynamic table size updates (001xxxxx) may come first; nginx sends one in its first block.
    while i < block.len() && block[i] & 0xe0 == 0x20 {
        if block[i] & 0x1f == 0x1f {
            i += 1;
            while block.get(i)? & 0x80 != 0 {
                i += 1;
            }
        }
        i += 1;
    }
    let b = *block.get(i)?;
    let static_status = |idx: u8| match idx {
        8 => Some(200),
        9 => Some(204),
        10 => Some(206),
        11 => Some(304),
        12 => Some(400),
        13 => Some(404),
        14 => Some(500),
        _ => None,
    };
    if b & 0x80 != 0 {
        return static_status(b & 0x7f);
    }
    // A literal with the :status name (static 8..14) and a raw three-digit value.
    let idx = if b & 0xc0 == 0x40 { b & 0x3f } else { b & 0x0f };
    static_status(idx)?;
    let len = *block.get(i + 1)?;
    if len != 3 {
        return None;
    }
    std::str::from_utf8(block.get(i + 2..i + 5)?)
        .ok()?
        .parse()
        .ok()
}

/// Whether a GOAWAY payload says NO_ERROR with a last stream of `last_asked` or later.
fn graceful_goaway_covers(payload: &[u8], last_asked: u32) -> bool {
    match payload {
        [a, b, c, d, 0, 0, 0, 0, ..] => {
            u32::from_be_bytes([*a, *b, *c, *d]) & 0x7fff_ffff >= last_asked
        }
        _ => false,
    }
}

/// Sends `GET` for every path on its own stream at once, then reads until every stream ended.
pub fn get_concurrent(conn: &mut TlsConn, paths: &[&str]) -> io::Result<Vec<H2Response>> {
    H2::open(conn)?.get(paths)
}

/// An HTTP/2 connection: the preface goes out once, then any number of [`H2::get`]s.
pub struct H2<'a> {
    conn: &'a mut TlsConn,
    next_stream: u32,
}

impl<'a> H2<'a> {
    /// Checks ALPN and sends the preface: the client's SETTINGS and the largest windows.
    pub fn open(conn: &'a mut TlsConn) -> io::Result<H2<'a>> {
        let alpn = conn
            .stream
            .ssl()
            .selected_alpn_protocol()
            .map(<[u8]>::to_vec);
        if alpn.as_deref() != Some(b"h2") {
            return Err(io::Error::other(format!(
                "ALPN h2 not negotiated: {alpn:?}"
            )));
        }
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut settings = Vec::new();
        settings.extend_from_slice(&2u16.to_be_bytes()); // ENABLE_PUSH
        settings.extend_from_slice(&0u32.to_be_bytes());
        settings.extend_from_slice(&4u16.to_be_bytes()); // INITIAL_WINDOW_SIZE
        settings.extend_from_slice(&MAX_WINDOW.to_be_bytes());
        out.extend(frame(SETTINGS, 0, 0, &settings));
        out.extend(frame(
            WINDOW_UPDATE,
            0,
            0,
            &(MAX_WINDOW - 65535).to_be_bytes(),
        ));
        conn.send(&out)?;
        Ok(H2 {
            conn,
            next_stream: 1,
        })
    }

    /// The connection under the streams.
    pub fn conn(&mut self) -> &mut TlsConn {
        self.conn
    }

    /// `GET` for every path on its own stream at once; returns when every stream ended.
    pub fn get(&mut self, paths: &[&str]) -> io::Result<Vec<H2Response>> {
        self.get_watching(paths, |_, _| Ok(()))
    }

    /// Like [`H2::get`], calling `on_data` with the connection and the body bytes received so
    /// far (all streams) after every DATA frame.
    pub fn get_watching(
        &mut self,
        paths: &[&str],
        mut on_data: impl FnMut(&mut TlsConn, usize) -> io::Result<()>,
    ) -> io::Result<Vec<H2Response>> {
        let mut out = Vec::new();
        let mut streams: BTreeMap<u32, (H2Response, bool)> = BTreeMap::new();
        for path in paths {
            let id = self.next_stream;
            self.next_stream += 2;
            out.extend(frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                id,
                &request_block(path),
            ));
            streams.insert(id, (H2Response::default(), false));
        }
        self.conn.send(&out)?;
        let mut received = 0;
        while streams.values().any(|(_, done)| !done) {
            let conn = &mut *self.conn;
            let mut head = [0u8; 9];
            conn.stream.read_exact(&mut head)?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0; len];
            conn.stream.read_exact(&mut payload)?;
            let unpadded = |p: &[u8]| -> io::Result<Vec<u8>> {
                if flags & PADDED == 0 {
                    return Ok(p.to_vec());
                }
                let pad = *p
                    .first()
                    .ok_or_else(|| io::Error::other("empty padded frame"))?
                    as usize;
                p.get(1..p.len().saturating_sub(pad))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| io::Error::other("bad padding"))
            };
            match kind {
                DATA | HEADERS => {
                    let (resp, done) = streams.get_mut(&id).ok_or_else(|| {
                        io::Error::other(format!("frame type {kind} on unknown stream {id}"))
                    })?;
                    let mut p = unpadded(&payload)?;
                    if kind == DATA {
                        resp.body.extend_from_slice(&p);
                        received += p.len();
                    } else if resp.status == 0 {
                        if flags & PRIORITY != 0 {
                            p.drain(..5.min(p.len()));
                        }
                        resp.status = decode_status(&p).ok_or_else(|| {
                            io::Error::other(format!("no :status in header block {p:02x?}"))
                        })?;
                    }
                    // CONTINUATION frames (a block over 16 KiB) carry no :status and are
                    // skipped.
                    if flags & END_STREAM != 0 {
                        *done = true;
                    }
                    if kind == DATA {
                        on_data(conn, received)?;
                    }
                }
                SETTINGS if flags & ACK == 0 => conn.send(&frame(SETTINGS, ACK, 0, &[]))?,
                PING if flags & ACK == 0 => conn.send(&frame(PING, ACK, 0, &payload))?,
                // A graceful GOAWAY (NO_ERROR) that covers every stream asked for: they
                // complete, and the server closes after them.
                GOAWAY if graceful_goaway_covers(&payload, self.next_stream - 2) => {}
                GOAWAY => {
                    return Err(io::Error::other(format!(
                        "GOAWAY from the server: {:02x?}",
                        &payload[..payload.len().min(8)]
                    )));
                }
                RST_STREAM => {
                    return Err(io::Error::other(format!(
                        "RST_STREAM on stream {id}: {payload:02x?}"
                    )))
                }
                _ => {}
            }
        }
        Ok(streams.into_values().map(|(r, _)| r).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_forms() {
        assert_eq!(decode_status(&[0x88]), Some(200));
        assert_eq!(decode_status(&[0x20, 0x8a]), Some(206));
        assert_eq!(decode_status(&[0x48, 3, b'4', b'1', b'6']), Some(416));
        assert_eq!(decode_status(&[0x3f, 0xe1, 0x1f, 0x8d]), Some(404));
        assert_eq!(decode_status(&[0x41, 3, b'x', b'y', b'z']), None);
    }

    #[test]
    fn hpack_integers() {
        let mut v = Vec::new();
        hpack_int(&mut v, 0, 5, 1337);
        assert_eq!(v, [31, 154, 10]);
    }
}
