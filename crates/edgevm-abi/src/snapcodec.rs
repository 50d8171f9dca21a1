//! A tiny length-checked binary encoding for snapshot metadata (little-endian integers,
//! length-prefixed byte strings). Decoding never trusts a length: every read is checked
//! against what is left, so a truncated or corrupted input is an error, never a panic or a
//! huge allocation.

/// Appends values to a byte vector.
#[derive(Debug, Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// A u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A byte string (length first).
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    /// A UTF-8 string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
}

/// Why decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot metadata: {0}")]
pub struct DecodeError(pub String);

/// Reads values written by [`Writer`].
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Read from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| DecodeError(format!("truncated at byte {}", self.at)))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// A u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// A count of items that each take at least `min_item` bytes (bounded by what is left).
    pub fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u64()?;
        let left = (self.buf.len() - self.at) as u64;
        if n.saturating_mul(min_item.max(1) as u64) > left {
            return Err(DecodeError(format!("count {n} exceeds the data")));
        }
        Ok(n as usize)
    }

    /// A byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.count(1)?;
        self.take(n)
    }

    /// A UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("a string is not UTF-8".into()))
    }

    /// A u64 that must be 0 or 1.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u64()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError(format!("{v} is not a boolean"))),
        }
    }

    /// Everything was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "{} bytes left over",
                self.buf.len() - self.at
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut w = Writer::default();
        w.u64(7).str("héllo").bytes(&[1, 2, 3]).u64(1);
        let mut r = Reader::new(&w.0);
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.str().unwrap(), "héllo");
        assert_eq!(r.bytes().unwrap(), &[1, 2, 3]);
        assert!(r.bool().unwrap());
        r.finish().unwrap();
        for cut in 0..w.0.len() {
            let mut r = Reader::new(&w.0[..cut]);
            let ok = r.u64().is_ok()
                && r.str().is_ok()
                && r.bytes().is_ok()
                && r.bool().is_ok()
                && r.finish().is_ok();
            assert!(!ok, "cut at {cut} decoded");
        }
        // A huge length is an error, not an allocation.
        let mut w = Writer::default();
        w.u64(u64::MAX);
        assert!(Reader::new(&w.0).bytes().is_err());
        assert!(Reader::new(&w.0).count(8).is_err());
    }
}
