//! Guest stdout/stderr printing: each line prefixed `>>> [name] ` (as the reference system
//! does), or raw.

use std::io::Write;

use edgevm_abi::linux::Output;

/// Prints guest output on the host's stdout/stderr.
pub struct Printer {
    prefix: String,
    raw: bool,
    pending: [Vec<u8>; 2],
    /// Captured copy of everything printed (for tests and error pages), capped.
    capture: Option<Vec<u8>>,
}

impl Printer {
    /// A printer for program `name`; `raw` prints guest bytes unchanged.
    pub fn new(name: &str, raw: bool) -> Self {
        Printer {
            prefix: format!(">>> [{name}] "),
            raw,
            pending: [Vec::new(), Vec::new()],
            capture: None,
        }
    }

    fn emit(&mut self, fd: i32, data: &[u8]) {
        if let Some(c) = &mut self.capture {
            if c.len() < (1 << 20) {
                c.extend_from_slice(data);
            }
        }
        if fd == 2 {
            let _ = std::io::stderr().lock().write_all(data);
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(data);
            let _ = o.flush();
        }
    }

    /// Print any partial last line.
    pub fn flush(&mut self) {
        for i in 0..2 {
            if !self.pending[i].is_empty() {
                let mut line = self.prefix.clone().into_bytes();
                line.append(&mut self.pending[i]);
                line.push(b'\n');
                self.emit(i as i32 + 1, &line);
            }
        }
    }
}

impl Output for Printer {
    fn write(&mut self, fd: i32, data: &[u8]) {
        if self.raw {
            self.emit(fd, data);
            return;
        }
        let i = if fd == 2 { 1 } else { 0 };
        self.pending[i].extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(n) = self.pending[i].iter().position(|&b| b == b'\n') {
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend(self.pending[i].drain(..=n));
        }
        if !out.is_empty() {
            self.emit(fd, &out);
        }
    }

    fn log(&mut self, line: &str) {
        let l = format!("{}{}\n", self.prefix, line);
        self.emit(2, l.as_bytes());
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.flush();
    }
}
