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
    /// Bytes the guest may still print in this run (None = unlimited).
    budget: Option<usize>,
    /// The "output truncated" note was printed for this run.
    truncated: bool,
    /// What the program writes to fd 1 goes to the host's stdout (else to stderr, the log).
    to_stdout: bool,
}

impl Printer {
    /// A printer for program `name`; `raw` prints guest bytes unchanged; `to_stdout` prints
    /// what it writes to fd 1 on the host's stdout, else everything goes to stderr.
    pub fn new(name: &str, raw: bool, to_stdout: bool) -> Self {
        Printer {
            prefix: format!(">>> [{name}] "),
            raw,
            pending: [Vec::new(), Vec::new()],
            capture: None,
            budget: None,
            truncated: false,
            to_stdout,
        }
    }

    /// Keep a copy of everything printed from now on (see [`Printer::captured`]).
    pub fn start_capture(&mut self) {
        self.capture = Some(Vec::new());
    }

    /// What was printed since [`Printer::start_capture`] (flushed first).
    pub fn captured(&mut self) -> String {
        self.flush();
        String::from_utf8_lossy(self.capture.as_deref().unwrap_or_default()).into_owned()
    }

    /// Allow at most `bytes` of guest output until the next call (request VMs set this per
    /// request, so a hostile program cannot flood the server's log).
    pub fn set_budget(&mut self, bytes: Option<usize>) {
        self.budget = bytes;
        self.truncated = false;
    }

    fn emit(&mut self, fd: i32, data: &[u8]) {
        if let Some(c) = &mut self.capture {
            if c.len() < (1 << 20) {
                c.extend_from_slice(data);
            }
        }
        if fd == 2 || !self.to_stdout {
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
    fn room(&self) -> usize {
        // One byte past the budget, so that the write that overflows it is still seen (and
        // noted as truncated).
        self.budget
            .map_or(usize::MAX, |left| left.saturating_add(1))
    }

    fn write(&mut self, fd: i32, data: &[u8]) {
        let data = match &mut self.budget {
            Some(left) if data.len() > *left => {
                let keep = *left;
                *left = 0;
                if !self.truncated {
                    self.truncated = true;
                    let note = format!(
                        "{}(output of this request truncated: too much output)\n",
                        self.prefix
                    );
                    let cut = &data[..keep];
                    self.write_unbudgeted(fd, cut);
                    self.flush();
                    self.emit(2, note.as_bytes());
                }
                return;
            }
            Some(left) => {
                *left -= data.len();
                data
            }
            None => data,
        };
        self.write_unbudgeted(fd, data);
    }

    fn log(&mut self, line: &str) {
        let l = format!("{}{}\n", self.prefix, line);
        self.emit(2, l.as_bytes());
    }
}

impl Printer {
    fn write_unbudgeted(&mut self, fd: i32, data: &[u8]) {
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
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.flush();
    }
}
