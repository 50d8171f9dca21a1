//! The `websocket` target: the host's WebSocket handshake and frame decoder
//! (`edgevm_runtime::websocket`), fed what a hostile client sends, cut at random places.

use edgevm_runtime::websocket::{handshake, Decoder, Handshake, Item, MAX_HANDSHAKE};

use crate::input::Input;

/// The first byte picks the largest message (64 bytes to 16 KiB) and the second how the
/// rest is cut into reads; the rest is the client's bytes: a handshake, then frames.
/// Checks: the handshake takes no more than it was given and answers HTTP/1.1; no message
/// is larger than allowed and every text message is UTF-8; the decoder holds no more than
/// one frame beyond what it consumed; a failure closes with a code the RFC allows.
pub fn websocket(data: &[u8]) {
    let mut input = Input::new(data);
    let max = 64usize << (input.u8() % 9);
    let cut = 1 + input.u8() as usize * 7;
    let bytes = input.bytes(usize::MAX);
    // The handshake, read in pieces.
    let mut got = Vec::new();
    let mut rest: &[u8] = bytes;
    let mut upgraded = false;
    while !rest.is_empty() {
        let n = cut.min(rest.len());
        got.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        match handshake(&got) {
            Handshake::Incomplete => assert!(got.len() < MAX_HANDSHAKE),
            Handshake::Refuse { response, why } => {
                assert!(response.starts_with(b"HTTP/1.1 4"));
                assert!(!why.is_empty());
                return;
            }
            Handshake::Accept {
                consumed,
                response,
                target,
            } => {
                assert!(consumed <= got.len() && consumed <= MAX_HANDSHAKE);
                assert!(response.starts_with(b"HTTP/1.1 101 "));
                assert!(!target.is_empty());
                got.drain(..consumed);
                upgraded = true;
                break;
            }
        }
    }
    // Frames: the raw bytes too when there was no handshake, so the decoder is always driven.
    let mut buf = if upgraded { got } else { bytes.to_vec() };
    let mut rest: &[u8] = if upgraded { rest } else { &[] };
    let mut d = Decoder::new(max);
    let mut out = Vec::new();
    loop {
        let r = d.decode(&mut buf, &mut out);
        for item in out.drain(..) {
            match item {
                Item::Message { text, payload } => {
                    assert!(payload.len() <= max);
                    assert!(!text || std::str::from_utf8(&payload).is_ok());
                }
                Item::Ping(p) => assert!(p.len() <= 125),
                Item::Pong | Item::Close(_) => {}
            }
        }
        if let Err(f) = r {
            assert!(matches!(f.code, 1002 | 1007 | 1008 | 1009), "{f:?}");
            return;
        }
        assert!(d.held() <= max);
        // What stays is one incomplete frame: its header and at most what it may carry.
        assert!(buf.len() <= 14 + max.max(125));
        if rest.is_empty() {
            return;
        }
        let n = cut.min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}
