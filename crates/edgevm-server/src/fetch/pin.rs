//! Pinned content (`sha256` / `md5` of a program or of a `download` entry): the file a
//! configuration names by its digest. A cached file with that digest is used without asking
//! the server; a download with another digest is refused before it is written anywhere.

use std::fmt;
use std::path::Path;

use md5::Md5;
use sha2::{Digest, Sha256};

/// An expected digest, lower-case hex (validated by edgevm-config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// `sha256`: 64 hex digits.
    Sha256(String),
    /// `md5`: 32 hex digits.
    Md5(String),
}

impl Pin {
    /// The configuration's pin: `sha256` when both are given (the stronger one).
    pub fn from_config(sha256: Option<&str>, md5: Option<&str>) -> Option<Pin> {
        match (sha256, md5) {
            (Some(s), _) => Some(Pin::Sha256(s.to_ascii_lowercase())),
            (None, Some(m)) => Some(Pin::Md5(m.to_ascii_lowercase())),
            (None, None) => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Pin::Sha256(_) => "sha256",
            Pin::Md5(_) => "md5",
        }
    }

    fn expected(&self) -> &str {
        match self {
            Pin::Sha256(h) | Pin::Md5(h) => h,
        }
    }

    /// The digest of `bytes` of this pin's kind, in hex.
    pub fn digest_of(&self, bytes: &[u8]) -> String {
        let raw: Vec<u8> = match self {
            Pin::Sha256(_) => Sha256::digest(bytes).to_vec(),
            Pin::Md5(_) => Md5::digest(bytes).to_vec(),
        };
        raw.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Ok when `bytes` have the pinned digest; else why not.
    pub fn check(&self, bytes: &[u8]) -> Result<(), String> {
        let found = self.digest_of(bytes);
        if found == self.expected() {
            Ok(())
        } else {
            Err(format!(
                "its {} is {found}, the configuration pins {}",
                self.kind(),
                self.expected()
            ))
        }
    }

    /// Whether the file at `path` exists and has the pinned digest.
    pub fn file_matches(&self, path: &Path) -> bool {
        std::fs::read(path).is_ok_and(|b| self.check(&b).is_ok())
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_the_known_ones() {
        let s =
            Pin::Sha256("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into());
        assert!(s.check(b"abc").is_ok());
        let e = s.check(b"abd").unwrap_err();
        assert!(e.contains("sha256") && e.contains("pins ba7816bf"), "{e}");
        let m = Pin::from_config(None, Some("900150983CD24FB0D6963F7D28E17F72")).unwrap();
        assert!(m.check(b"abc").is_ok());
        assert_eq!(
            Pin::from_config(Some("aa"), Some("bb")),
            Some(Pin::Sha256("aa".into()))
        );
        assert_eq!(Pin::from_config(None, None), None);
    }
}
