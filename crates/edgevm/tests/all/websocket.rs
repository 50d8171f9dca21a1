//! The TCP server mode with WebSocket (`websocket_server`): guest/examples/wschat.c behind the
//! host's handshake and framing, with a small RFC 6455 client over a real TcpStream —
//! messages, rooms, fragments, pings, binary and large messages, the close handshake — and
//! hostile clients: unmasked frames, huge lengths, oversize and fragment-flooded messages,
//! bad UTF-8, reserved bits and opcodes, bad and slowloris handshakes, abrupt closes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{guest, time_scale};
use crate::harness::{free_port, js, Server};

fn limit(secs: u64) -> Duration {
    Duration::from_secs(secs).mul_f64(time_scale())
}

/// A WebSocket client: masked frames out, frames in.
struct Ws {
    s: TcpStream,
    /// Bytes read past the last frame.
    buf: Vec<u8>,
}

/// A frame as a client sends it (masked).
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xA1, 0x5B, 0x07, 0xE4];
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

fn handshake_text(path: &str, version: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(limit(20))).unwrap();
    s
}

/// Everything the server sends until it closes (or the read timeout).
fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&b[..n]),
        }
    }
}

impl Ws {
    fn connect(port: u16, path: &str) -> Ws {
        let mut s = tcp(port);
        s.write_all(handshake_text(path, "13").as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).unwrap(), 1, "EOF in the handshake: {head:?}");
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{head}"
        );
        Ws { s, buf: Vec::new() }
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn frame(&mut self, first: u8, payload: &[u8]) {
        self.raw(&client_frame(first, payload));
    }

    fn text(&mut self, t: &str) {
        self.frame(0x81, t.as_bytes());
    }

    /// The next frame: (first byte, payload); None at EOF.
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "a server frame is masked");
                let (len, at) = match self.buf[1] {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let first = self.buf[0];
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((first, payload));
                }
            }
            let mut b = [0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn recv_text(&mut self) -> String {
        let (first, p) = self.recv().expect("EOF instead of a message");
        assert_eq!(first, 0x81, "not a final text frame: {p:?}");
        String::from_utf8(p).unwrap()
    }

    fn ask(&mut self, t: &str) -> String {
        self.text(t);
        self.recv_text()
    }

    /// The server closes: its close frame's code, then EOF.
    fn closed_with(&mut self) -> u16 {
        loop {
            match self.recv() {
                Some((0x88, p)) => {
                    assert!(p.len() >= 2, "close without a code");
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    assert!(self.recv().is_none(), "data after the close frame");
                    return code;
                }
                Some(_) => continue,
                None => panic!("EOF without a close frame"),
            }
        }
    }
}

#[test]
fn websocket_chat_with_real_clients_and_hostile_ones() {
    let port = free_port();
    let cfg = format!(
        r#"{{ "chat": {{ "filename": {},
              "websocket_server": {{ "port": {port}, "idle_timeout": 4, "max_message": 65536 }} }} }}"#,
        js(guest("example_wschat").to_str().unwrap())
    );
    let s = Server::with_config("ws-chat", &cfg);
    s.wait_log("WebSocket server on 127.0.0.1:", limit(10));

    // Two clients in one room, one in another; the room is the path they asked for.
    let mut a = Ws::connect(port, "/room1");
    assert_eq!(a.recv_text(), "welcome to /room1");
    let mut b = Ws::connect(port, "/room1");
    assert_eq!(b.recv_text(), "welcome to /room1");
    let mut c = Ws::connect(port, "/room2?x=1");
    assert_eq!(c.recv_text(), "welcome to /room2?x=1");
    assert_eq!(a.ask("/echo hi"), "hi");
    a.text("hello room");
    assert_eq!(b.recv_text(), "hello room");
    assert_eq!(c.ask("/echo only this"), "only this");

    // A fragmented message with a ping between its fragments: the pong comes at once, the
    // message whole.
    a.frame(0x01, b"/ec");
    a.frame(0x00, b"ho frag");
    a.frame(0x89, b"are you there");
    assert_eq!(a.recv(), Some((0x8A, b"are you there".to_vec())));
    a.frame(0x80, "ment é".as_bytes());
    assert_eq!(a.recv_text(), "fragment é");
    // Binary both ways; a binary message over 65535 bytes (64-bit length).
    a.frame(0x82, &[0, 1, 2, 255]);
    assert_eq!(a.recv(), Some((0x82, vec![0, 1, 2, 255])));
    a.text("/binary 70000");
    let (first, p) = a.recv().unwrap();
    assert_eq!((first, p.len()), (0x82, 70_000));
    assert!(p.iter().enumerate().all(|(i, &x)| x == i as u8));
    // A message of 1 MiB, what the host keeps for a connection: it goes out whole.
    a.text("/binary 1048576");
    let (first, p) = a.recv().unwrap();
    assert_eq!((first, p.len()), (0x82, 1 << 20));
    // The largest message (max_message: 65536), sent in one frame and echoed.
    let big = format!("/echo {}", "z".repeat(65536 - 6));
    assert_eq!(a.ask(&big).len(), 65530);
    // The program cannot send invalid UTF-8 as text.
    assert_eq!(a.ask("/badtext"), "-22");
    assert_eq!(a.ask("/count"), "9");

    // Hostile clients; each is closed with its code, the others keep being served.
    let hostile: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", vec![0x81, 0x02, b'h', b'i'], 1002),
        (
            "a 2^40-byte frame",
            vec![0x82, 0xFF, 0, 0, 1, 0, 0, 0, 0, 0],
            1009,
        ),
        (
            "a message over max_message in two fragments",
            [
                client_frame(0x01, &[b'a'; 40000]),
                client_frame(0x80, &[b'a'; 40000]),
            ]
            .concat(),
            1009,
        ),
        (
            "a flood of empty fragments",
            std::iter::once(client_frame(0x01, b""))
                .chain((0..5000).map(|_| client_frame(0x00, b"")))
                .flatten()
                .collect(),
            1008,
        ),
        ("bad UTF-8", client_frame(0x81, &[b'o', 0xC3, 0x28]), 1007),
        ("a reserved bit", client_frame(0xC1, b"x"), 1002),
        ("opcode 3", client_frame(0x83, b"x"), 1002),
        ("a ping of 126 bytes", client_frame(0x89, &[0; 126]), 1002),
        ("a continuation first", client_frame(0x80, b"x"), 1002),
    ];
    for (what, bytes, code) in hostile {
        let mut h = Ws::connect(port, "/room1");
        assert_eq!(h.recv_text(), "welcome to /room1", "{what}");
        h.raw(&bytes);
        assert_eq!(h.closed_with(), code, "{what}");
    }
    // Abrupt ends: half a frame, half a handshake, nothing at all.
    for cut in [client_frame(0x81, b"/echo lost")[..5].to_vec(), Vec::new()] {
        let mut h = Ws::connect(port, "/room1");
        h.raw(&cut);
        drop(h);
    }
    let mut half = tcp(port);
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    drop(half);
    assert_eq!(b.ask("/echo still here"), "still here");

    // Handshakes that are not WebSocket 13: refused with the reason, never reach the program.
    let refusals = [
        (
            handshake_text("/", "8"),
            "426 ",
            "Sec-WebSocket-Version: 13",
        ),
        (
            handshake_text("/", "13")
                .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            "400 ",
            "no Sec-WebSocket-Key",
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            "400 ",
            "Upgrade: websocket",
        ),
        (
            format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000)),
            "431 ",
            "longer than",
        ),
    ];
    for (req, status, says) in &refusals {
        let mut t = tcp(port);
        t.write_all(req.as_bytes()).unwrap();
        let answer = String::from_utf8_lossy(&read_to_end(&mut t)).to_string();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{req:?}: {answer}"
        );
        assert!(answer.contains(says), "{req:?}: {answer}");
    }
    // The close handshake, from the client and from the program.
    a.frame(0x88, &[0x03, 0xE8, b'o', b'k']);
    assert_eq!(a.closed_with(), 1000);
    assert_eq!(b.ask("/quit"), "bye");
    assert_eq!(b.closed_with(), 1000);
    // The connection number is a descriptor for write() and close().
    let mut e = Ws::connect(port, "/room4");
    assert_eq!(e.recv_text(), "welcome to /room4");
    assert_eq!(e.ask("/write written é"), "written é");
    e.text("/close");
    assert_eq!(e.closed_with(), 1000);

    // Silent clients are pinged after half of idle_timeout (2 s): one that answers stays,
    // one that does not is closed after idle_timeout.
    let mut d = Ws::connect(port, "/room3");
    assert_eq!(d.recv_text(), "welcome to /room3");
    let lively = std::thread::spawn(move || {
        for _ in 0..3 {
            let (first, p) = d.recv().expect("closed while answering pings");
            assert_eq!(first, 0x89);
            d.frame(0x8A, &p);
        }
        assert_eq!(d.ask("/echo alive"), "alive");
    });
    // Meanwhile a slowloris handshake is closed after the handshake time (here
    // idle_timeout, 4 s), unanswered.
    let mut slow = tcp(port);
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t0 = Instant::now();
    assert_eq!(read_to_end(&mut slow), b"");
    assert!(t0.elapsed() < limit(15), "slowloris handshake kept open");
    assert_eq!(c.recv(), Some((0x89, Vec::new())));
    assert_eq!(c.recv(), None, "a client that never answers stays open");
    lively.join().unwrap();

    // The statistics saw all of it.
    let t0 = Instant::now();
    while s.stat("chat", "tcp_connections_open") != 0.0 {
        assert!(t0.elapsed() < limit(20), "connections stay open");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.stat("chat", "tcp_connections") >= 22.0);
    // The four refusals, the slowloris and the half handshake.
    assert!(s.stat("chat", "tcp_refused") >= 6.0);
    assert!(s.stat("chat", "tcp_events") >= 30.0);
    assert!(s.stat("chat", "tcp_bytes_read") > 100_000.0);
    assert!(s.stat("chat", "tcp_bytes_written") > 1_150_000.0);
    assert_eq!(s.stat("chat", "tcp_failures"), 0.0);
    // HTTP still works beside it.
    assert!(s.ok("/chat/").contains("wschat"));
    s.stop();
}
