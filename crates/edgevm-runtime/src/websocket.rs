//! The WebSocket side of the TCP server mode (`websocket_server`): the opening handshake and
//! the framing of RFC 6455, without I/O. `tcp_server.rs` feeds what a connection sent into
//! [`handshake`] until the connection is upgraded, then into a [`Decoder`], and sends what
//! they answer; the program sees whole messages.
//!
//! Bounds: the handshake's request is at most [`MAX_HANDSHAKE`] bytes; a message (all its
//! fragments together) at most the `max_message` given to the decoder (1009 beyond, said as
//! soon as a frame header announces it); at most [`MAX_FRAGMENTS`] frames per message (1008
//! beyond); control frames at most 125 bytes (1002). No extension is negotiated, so a
//! reserved bit is 1002, as is an unknown opcode or an unmasked client frame; invalid UTF-8
//! in a text message or a close reason is 1007.

use base64::Engine;
use sha1::{Digest, Sha1};

/// Most bytes of the handshake request (request line and headers).
pub const MAX_HANDSHAKE: usize = 8 << 10;
/// Headers of the handshake request.
const MAX_HEADERS: usize = 64;
/// Most frames (the first and its continuations) in one message: a flood of tiny fragments
/// closes the connection with 1008.
pub const MAX_FRAGMENTS: usize = 4096;
/// Largest payload of a control frame (RFC 6455 5.5).
const MAX_CONTROL: usize = 125;
/// The GUID of RFC 6455 4.2.2 that the accept key hashes with the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Opcodes.
pub const OP_CONTINUATION: u8 = 0x0;
/// A text frame.
pub const OP_TEXT: u8 = 0x1;
/// A binary frame.
pub const OP_BINARY: u8 = 0x2;
/// A close frame.
pub const OP_CLOSE: u8 = 0x8;
/// A ping.
pub const OP_PING: u8 = 0x9;
/// A pong.
pub const OP_PONG: u8 = 0xA;

/// Close codes the host sends.
pub const CLOSE_NORMAL: u16 = 1000;
/// The endpoint is going away (server shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Invalid UTF-8 in a text message or a close reason.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// A policy violation (too many fragments).
pub const CLOSE_POLICY: u16 = 1008;
/// A message or frame too big.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// The server failed (the program's VM ended).
pub const CLOSE_INTERNAL: u16 = 1011;

/// What the handshake request gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// More bytes are needed.
    Incomplete,
    /// Upgraded: `consumed` bytes were the request (what follows are frames), `response` is
    /// the 101 to send, `target` the request's target (path and query).
    Accept {
        /// Bytes of the request.
        consumed: usize,
        /// The `101 Switching Protocols` response.
        response: Vec<u8>,
        /// The request target, e.g. `/chat?room=1`.
        target: String,
    },
    /// Refused: send `response` (a 400, 426 or 431 with the reason) and close.
    Refuse {
        /// The HTTP error response.
        response: Vec<u8>,
        /// Why, for the response body and tests.
        why: String,
    },
}

fn refuse(status: &str, extra: &str, why: String) -> Handshake {
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    Handshake::Refuse { response, why }
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Look at the bytes a new connection sent so far: the opening handshake of RFC 6455 4.2.1
/// (a GET, HTTP/1.1, `Host`, `Upgrade: websocket`, `Connection: Upgrade`, a 16-byte
/// `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`). A wrong version is `426 Upgrade
/// Required` with `Sec-WebSocket-Version: 13`, a request over [`MAX_HANDSHAKE`] bytes is
/// `431`, anything else wrong `400` with the reason. No subprotocol or extension is
/// chosen (a client that asked for some sees none in the 101).
pub fn handshake(buf: &[u8]) -> Handshake {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HANDSHAKE => return Handshake::Incomplete,
        Ok(httparse::Status::Partial) => {
            return refuse(
                "431 Request Header Fields Too Large",
                "",
                format!("the WebSocket handshake is longer than {MAX_HANDSHAKE} bytes"),
            )
        }
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(
                "431 Request Header Fields Too Large",
                "",
                format!("the WebSocket handshake has more than {MAX_HEADERS} headers"),
            )
        }
        Err(e) => return refuse("400 Bad Request", "", format!("not an HTTP request: {e}")),
    };
    if consumed > MAX_HANDSHAKE {
        return refuse(
            "431 Request Header Fields Too Large",
            "",
            format!("the WebSocket handshake is longer than {MAX_HANDSHAKE} bytes"),
        );
    }
    let bad = |why: &str| refuse("400 Bad Request", "", why.to_string());
    if req.method != Some("GET") {
        return bad("a WebSocket handshake is a GET request");
    }
    if req.version != Some(1) {
        return bad("a WebSocket handshake is an HTTP/1.1 request");
    }
    let one = |name: &str| -> Result<Option<&[u8]>, Handshake> {
        let mut it = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name));
        let first = it.next().map(|h| h.value);
        if it.next().is_some() {
            return Err(refuse(
                "400 Bad Request",
                "",
                format!("more than one {name} header"),
            ));
        }
        Ok(first)
    };
    let all = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect::<Vec<_>>()
    };
    let host = match one("Host") {
        Ok(h) => h,
        Err(r) => return r,
    };
    if host.is_none() {
        return bad("the WebSocket handshake has no Host header");
    }
    if !all("Upgrade").iter().any(|v| has_token(v, "websocket")) {
        return bad("not a WebSocket handshake: no \"Upgrade: websocket\" header");
    }
    if !all("Connection").iter().any(|v| has_token(v, "upgrade")) {
        return bad("not a WebSocket handshake: no \"Connection: Upgrade\" header");
    }
    let version = match one("Sec-WebSocket-Version") {
        Ok(v) => v,
        Err(r) => return r,
    };
    match version {
        Some(v) if v.trim_ascii() == b"13" => {}
        Some(v) => {
            return refuse(
                "426 Upgrade Required",
                "Sec-WebSocket-Version: 13\r\n",
                format!(
                    "WebSocket version {:?} is not supported: only 13",
                    String::from_utf8_lossy(v)
                ),
            )
        }
        None => {
            return refuse(
                "426 Upgrade Required",
                "Sec-WebSocket-Version: 13\r\n",
                "the WebSocket handshake has no Sec-WebSocket-Version header (13)".into(),
            )
        }
    }
    let key = match one("Sec-WebSocket-Key") {
        Ok(Some(k)) => k.trim_ascii(),
        Ok(None) => return bad("the WebSocket handshake has no Sec-WebSocket-Key header"),
        Err(r) => return r,
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !decoded.is_ok_and(|k| k.len() == 16) {
        return bad("Sec-WebSocket-Key is not 16 bytes in base64");
    }
    // The key is base64: ASCII.
    let key = String::from_utf8_lossy(key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    )
    .into_bytes();
    Handshake::Accept {
        consumed,
        response,
        target: req.path.unwrap_or("/").to_string(),
    }
}

/// A frame the server sends (unmasked, final).
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xFFFF => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// A close frame with `code` and `reason` (at most 123 bytes of it are sent).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OP_CLOSE, &p)
}

/// What a client's frames amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A whole message (fragments reassembled, unmasked); `text` for a text message (valid
    /// UTF-8), else binary.
    Message {
        /// A text message.
        text: bool,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A ping: answer with a pong carrying `payload`.
    Ping(Vec<u8>),
    /// A pong (nothing to do).
    Pong,
    /// The client closes: answer with a close echoing `code` (none: an empty close) and
    /// close the connection.
    Close(Option<u16>),
}

/// A protocol violation: close the connection with this code and reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Fail {
    /// The close code (1002, 1007, 1008, 1009).
    pub code: u16,
    /// Why, sent as the close reason.
    pub why: &'static str,
}

fn fail(code: u16, why: &'static str) -> Fail {
    Fail { code, why }
}

/// Reassembles a client's frames into messages, within `max_message` bytes each.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The opcode of a fragmented message in progress, and its fragments so far.
    partial: Option<(u8, usize)>,
    message: Vec<u8>,
}

/// Whether a close code received from a client is one an endpoint may send (RFC 6455 7.4).
fn valid_close_code(c: u16) -> bool {
    matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

impl Decoder {
    /// A decoder for messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            partial: None,
            message: Vec::new(),
        }
    }

    /// Bytes of payload held for a message in progress.
    pub fn held(&self) -> usize {
        self.message.len()
    }

    /// Take every complete frame from the front of `buf` (the rest stays for more bytes)
    /// into `out`. A violation is an error: the caller closes with its code (nothing more
    /// is decoded). A frame announcing more than the message may hold fails at once,
    /// before its payload arrives.
    pub fn decode(&mut self, buf: &mut Vec<u8>, out: &mut Vec<Item>) -> Result<(), Fail> {
        let mut at = 0;
        let r = loop {
            match self.one(&buf[at..], out) {
                Ok(0) => break Ok(()),
                Ok(n) => at += n,
                Err(f) => break Err(f),
            }
        };
        buf.drain(..at);
        r
    }

    /// Decode one frame from the front of `b`: the bytes it took (0: incomplete).
    fn one(&mut self, b: &[u8], out: &mut Vec<Item>) -> Result<usize, Fail> {
        if b.len() < 2 {
            return Ok(0);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(fail(CLOSE_PROTOCOL, "reserved bits set"));
        }
        let op = b[0] & 0x0F;
        if !matches!(
            op,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(fail(CLOSE_PROTOCOL, "unknown opcode"));
        }
        if b[1] & 0x80 == 0 {
            return Err(fail(CLOSE_PROTOCOL, "client frames must be masked"));
        }
        let control = op & 0x8 != 0;
        let (len, mut at) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(0);
                }
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(0);
                }
                let n = u64::from_be_bytes(b[2..10].try_into().unwrap_or_default());
                if n >> 63 != 0 {
                    return Err(fail(CLOSE_PROTOCOL, "frame length with its top bit set"));
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        if control {
            if !fin {
                return Err(fail(CLOSE_PROTOCOL, "fragmented control frame"));
            }
            if len > MAX_CONTROL as u64 {
                return Err(fail(CLOSE_PROTOCOL, "control frame over 125 bytes"));
            }
        } else {
            match (op, self.partial) {
                (OP_CONTINUATION, None) => {
                    return Err(fail(CLOSE_PROTOCOL, "continuation without a message"))
                }
                (OP_TEXT | OP_BINARY, Some(_)) => {
                    return Err(fail(CLOSE_PROTOCOL, "new message inside a fragmented one"))
                }
                (OP_CONTINUATION, Some((_, n))) if n >= MAX_FRAGMENTS => {
                    return Err(fail(CLOSE_POLICY, "too many fragments in one message"))
                }
                _ => {}
            }
            if len > (self.max_message - self.message.len()) as u64 {
                return Err(fail(CLOSE_TOO_BIG, "message too big"));
            }
        }
        if b.len() < at + 4 {
            return Ok(0);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        let len = len as usize;
        if b.len() - at < len {
            return Ok(0);
        }
        let mut payload: Vec<u8> = b[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ mask[i & 3])
            .collect();
        let took = at + len;
        match op {
            OP_PING => out.push(Item::Ping(payload)),
            OP_PONG => out.push(Item::Pong),
            OP_CLOSE => {
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(fail(CLOSE_PROTOCOL, "close frame of one byte")),
                    _ => {
                        let c = u16::from_be_bytes([payload[0], payload[1]]);
                        if !valid_close_code(c) {
                            return Err(fail(CLOSE_PROTOCOL, "invalid close code"));
                        }
                        if std::str::from_utf8(&payload[2..]).is_err() {
                            return Err(fail(CLOSE_INVALID_DATA, "close reason not UTF-8"));
                        }
                        Some(c)
                    }
                };
                out.push(Item::Close(code));
            }
            _ => {
                let kind = match (op, self.partial) {
                    (OP_CONTINUATION, Some((k, n))) => {
                        self.partial = Some((k, n + 1));
                        k
                    }
                    _ => {
                        self.partial = Some((op, 1));
                        op
                    }
                };
                if self.message.is_empty() {
                    std::mem::swap(&mut self.message, &mut payload);
                } else {
                    self.message.extend_from_slice(&payload);
                }
                if fin {
                    self.partial = None;
                    let payload = std::mem::take(&mut self.message);
                    let text = kind == OP_TEXT;
                    if text && std::str::from_utf8(&payload).is_err() {
                        return Err(fail(CLOSE_INVALID_DATA, "text message not UTF-8"));
                    }
                    out.push(Item::Message { text, payload });
                }
            }
        }
        Ok(took)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> (Vec<Item>, Result<(), Fail>, usize) {
        let mut buf = bytes.to_vec();
        let mut out = Vec::new();
        let r = d.decode(&mut buf, &mut out);
        (out, r, buf.len())
    }

    #[test]
    fn the_accept_key_of_rfc_6455() {
        // RFC 6455 1.3's example.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    const GOOD: &str = "GET /chat?room=1 HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn a_handshake_is_accepted_whole_and_waited_for_in_parts() {
        let mut with_frame = GOOD.as_bytes().to_vec();
        with_frame.extend_from_slice(&client(0x81, b"hi"));
        match handshake(&with_frame) {
            Handshake::Accept {
                consumed,
                response,
                target,
            } => {
                assert_eq!(consumed, GOOD.len());
                assert_eq!(target, "/chat?room=1");
                let r = String::from_utf8(response).unwrap();
                assert!(r.starts_with("HTTP/1.1 101 "), "{r}");
                assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
            }
            h => panic!("{h:?}"),
        }
        for cut in 0..GOOD.len() {
            assert_eq!(handshake(&GOOD.as_bytes()[..cut]), Handshake::Incomplete);
        }
    }

    fn refused(text: &str) -> (String, String) {
        match handshake(text.as_bytes()) {
            Handshake::Refuse { response, why } => (String::from_utf8(response).unwrap(), why),
            h => panic!("{text:?}: {h:?}"),
        }
    }

    #[test]
    fn bad_handshakes_are_refused_with_the_reason() {
        let cases = [
            ("GET ", "POST ", "400 ", "a GET"),
            ("HTTP/1.1\r\nHost", "HTTP/1.0\r\nHost", "400 ", "HTTP/1.1"),
            ("Host: x\r\n", "", "400 ", "no Host"),
            (
                "Upgrade: WebSocket",
                "Upgrade: h2c",
                "400 ",
                "Upgrade: websocket",
            ),
            (
                "keep-alive, Upgrade",
                "keep-alive",
                "400 ",
                "Connection: Upgrade",
            ),
            ("Version: 13", "Version: 8", "426 ", "only 13"),
            (
                "Sec-WebSocket-Version: 13\r\n",
                "",
                "426 ",
                "no Sec-WebSocket-Version",
            ),
            ("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", "400 ", "16 bytes"),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "not base64!",
                "400 ",
                "16 bytes",
            ),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "",
                "400 ",
                "no Sec-WebSocket-Key",
            ),
            (
                "Host: x\r\n",
                "Host: x\r\nHost: y\r\n",
                "400 ",
                "more than one Host",
            ),
            ("GET /chat", "GET\x01/chat", "400 ", "not an HTTP request"),
        ];
        for (from, to, status, why) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let (r, w) = refused(&text);
            assert!(
                r.starts_with(&format!("HTTP/1.1 {status}")),
                "{text:?}: {r}"
            );
            assert!(w.contains(why), "{text:?}: {w}");
            assert!(r.ends_with(&format!("{w}\n")));
            if status == "426 " {
                assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{r}");
            }
        }
        // Too long, or too many headers.
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HANDSHAKE));
        assert!(refused(&long).0.starts_with("HTTP/1.1 431 "));
        let many = GOOD.replacen("Host: x\r\n", &"A: b\r\n".repeat(80), 1);
        assert!(refused(&many).0.starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn messages_fragments_and_control_frames() {
        let mut d = Decoder::new(1000);
        let mut bytes = client(0x81, "héllo".as_bytes());
        bytes.extend(client(0x02, b"ab")); // binary, not final
        bytes.extend(client(0x89, b"p1")); // a ping between fragments
        bytes.extend(client(0x00, b"cd"));
        bytes.extend(client(0x80, b"ef"));
        bytes.extend(client(0x8A, b""));
        bytes.extend(client(0x82, &[7u8; 300])); // 16-bit length
        bytes.extend(client(0x88, &[0x03, 0xE8, b'o', b'k']));
        let (out, r, left) = decode_all(&mut d, &bytes);
        assert_eq!(r, Ok(()));
        assert_eq!(left, 0);
        assert_eq!(
            out,
            vec![
                Item::Message {
                    text: true,
                    payload: "héllo".as_bytes().to_vec()
                },
                Item::Ping(b"p1".to_vec()),
                Item::Message {
                    text: false,
                    payload: b"abcdef".to_vec()
                },
                Item::Pong,
                Item::Message {
                    text: false,
                    payload: vec![7; 300]
                },
                Item::Close(Some(1000)),
            ]
        );
        // Byte by byte: the same, each frame when it is complete.
        let mut d = Decoder::new(1000);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for b in &bytes {
            buf.push(*b);
            d.decode(&mut buf, &mut out).unwrap();
        }
        assert_eq!(out.len(), 6);
        assert!(buf.is_empty());
    }

    #[test]
    fn violations_close_with_their_code() {
        let big = client(0x82, &[0; 1001]);
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], CLOSE_PROTOCOL), // unmasked
            (client(0xC1, b"x"), CLOSE_PROTOCOL),           // RSV1
            (client(0x83, b"x"), CLOSE_PROTOCOL),           // opcode 3
            (client(0x8B, b"x"), CLOSE_PROTOCOL),           // opcode 11
            (client(0x80, b"x"), CLOSE_PROTOCOL),           // continuation first
            (client(0x09, b"x"), CLOSE_PROTOCOL),           // fragmented ping
            (client(0x89, &[0; 126]), CLOSE_PROTOCOL),      // ping over 125
            (
                [client(0x01, b"a"), client(0x81, b"b")].concat(),
                CLOSE_PROTOCOL,
            ),
            (client(0x88, &[3]), CLOSE_PROTOCOL), // close of one byte
            (client(0x88, &[0x03, 0xED]), CLOSE_PROTOCOL), // 1005 may not be sent
            (client(0x88, &[0x03, 0xE8, 0xFF]), CLOSE_INVALID_DATA),
            (client(0x81, &[0xC3, 0x28]), CLOSE_INVALID_DATA),
            (big[..12].to_vec(), CLOSE_TOO_BIG), // said from the header alone
            (
                [client(0x01, &[0; 600]), client(0x80, &[0; 401])].concat(),
                CLOSE_TOO_BIG,
            ),
            // A length of 2^63 or more.
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                CLOSE_PROTOCOL,
            ),
            // 2^63 - 1: too big.
            (
                vec![0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
                CLOSE_TOO_BIG,
            ),
        ];
        for (bytes, code) in cases {
            let mut d = Decoder::new(1000);
            let (_, r, _) = decode_all(&mut d, &bytes);
            assert_eq!(r.map_err(|f| f.code), Err(code), "{bytes:?}");
        }
        // A text message split inside a character is fine once whole.
        let mut d = Decoder::new(1000);
        let bytes = [client(0x01, &[0xC3]), client(0x80, &[0xA9])].concat();
        let (out, r, _) = decode_all(&mut d, &bytes);
        assert_eq!(r, Ok(()));
        assert_eq!(
            out,
            vec![Item::Message {
                text: true,
                payload: "é".as_bytes().to_vec()
            }]
        );
    }

    #[test]
    fn a_flood_of_empty_fragments_is_bounded() {
        let mut d = Decoder::new(1000);
        let mut bytes = client(0x01, b"");
        for _ in 0..MAX_FRAGMENTS {
            bytes.extend(client(0x00, b""));
        }
        let (_, r, _) = decode_all(&mut d, &bytes);
        assert_eq!(r.map_err(|f| f.code), Err(CLOSE_POLICY));
    }

    #[test]
    fn server_frames() {
        assert_eq!(frame(OP_TEXT, b"hi"), vec![0x81, 2, b'h', b'i']);
        let f = frame(OP_BINARY, &[1; 200]);
        assert_eq!(&f[..4], &[0x82, 126, 0, 200]);
        let f = frame(OP_BINARY, &[1; 70_000]);
        assert_eq!(&f[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(f.len(), 70_010);
        let c = close_frame(1009, &"é".repeat(100));
        // 123 bytes of reason at most, cut at a character: 122.
        assert_eq!(&c[..4], &[0x88, 124, 0x03, 0xF1]);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }
}
