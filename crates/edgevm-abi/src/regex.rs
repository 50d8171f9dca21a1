//! The regex calls of `kvm_api.h` (0x10030-0x10035): PCRE2 semantics (Varnish's engine is
//! PCRE2; the `pcre2` crate builds it from source), at most [`MAX_HANDLES`] compiled patterns
//! per VM. A VM's [`Regexes`] is part of its process state: handles compiled before
//! `wait_for_requests()` are frozen with the program and every request sees them; handles a
//! request compiles are dropped when it is reset (the runtime restores the frozen table).

use std::sync::Arc;

use pcre2::bytes::{Regex, RegexBuilder};

/// Compiled patterns per VM, as the reference allows.
pub const MAX_HANDLES: usize = 64;
/// PCRE2 match limit of every pattern (backtracking steps of one match attempt).
pub const MATCH_LIMIT: u32 = 200_000;
/// Longest pattern, subject or substitution a guest may pass (bytes).
pub const MAX_INPUT: usize = 1 << 20;

/// Why a regex call failed; the guest gets -1 and the program's log this text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegexError {
    /// The pattern did not compile.
    #[error("regex does not compile: {0}")]
    Compile(String),
    /// All handles are in use.
    #[error("too many regexes (at most {MAX_HANDLES} per VM)")]
    TooMany,
    /// No pattern with this handle.
    #[error("no regex with handle {0}")]
    BadHandle(i32),
    /// Matching failed (match or backtracking limit, bad UTF-8 in a UTF mode pattern).
    #[error("regex match failed: {0}")]
    Match(String),
    /// The result does not fit the guest's buffer.
    #[error("regex result of {need} bytes does not fit {room}")]
    TooLong { need: usize, room: usize },
}

/// A VM's compiled patterns, by handle. Cloning shares the compiled patterns.
#[derive(Clone, Default)]
pub struct Regexes {
    slots: Vec<Option<Arc<Regex>>>,
    /// Changed since the last [`Regexes::restore`]: restoring is free otherwise.
    changed: bool,
}

impl std::fmt::Debug for Regexes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Regexes")
            .field("live", &self.slots.iter().filter(|s| s.is_some()).count())
            .finish()
    }
}

impl Regexes {
    /// Compile `pattern` into the lowest free handle.
    pub fn compile(&mut self, pattern: &[u8]) -> Result<i32, RegexError> {
        let free = self.slots.iter().position(Option::is_none);
        if free.is_none() && self.slots.len() >= MAX_HANDLES {
            return Err(RegexError::TooMany);
        }
        let text = std::str::from_utf8(pattern)
            .map_err(|_| RegexError::Compile("the pattern is not UTF-8".into()))?;
        // A match runs on the host while the guest waits in its call: PCRE2's default match
        // limit (10 million) let catastrophic backtracking hold a thread for seconds. A
        // pattern can lower its limit further, not raise it past this.
        let re = RegexBuilder::new()
            .build(&format!("(*LIMIT_MATCH={MATCH_LIMIT}){text}"))
            .map_err(|e| RegexError::Compile(e.to_string()))?;
        let slot = Some(Arc::new(re));
        self.changed = true;
        Ok(match free {
            Some(i) => {
                self.slots[i] = slot;
                i as i32
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as i32
            }
        })
    }

    /// Free a handle (false if there was none).
    pub fn free(&mut self, handle: i32) -> bool {
        match usize::try_from(handle)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        {
            Some(s @ Some(_)) => {
                *s = None;
                self.changed = true;
                true
            }
            _ => false,
        }
    }

    /// The pattern behind a handle.
    pub fn get(&self, handle: i32) -> Result<&Regex, RegexError> {
        usize::try_from(handle)
            .ok()
            .and_then(|i| self.slots.get(i))
            .and_then(|s| s.as_deref())
            .ok_or(RegexError::BadHandle(handle))
    }

    /// Does `text` contain a match?
    pub fn is_match(&self, handle: i32, text: &[u8]) -> Result<bool, RegexError> {
        self.get(handle)?
            .is_match(text)
            .map_err(|e| RegexError::Match(e.to_string()))
    }

    /// Number of live handles.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// No live handle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The compiled patterns by handle, as compiled (for a snapshot file).
    pub fn patterns(&self) -> Vec<Option<String>> {
        self.slots
            .iter()
            .map(|s| s.as_ref().map(|r| r.as_str().to_string()))
            .collect()
    }

    /// A frozen table from [`Regexes::patterns`]: each pattern compiled again into its
    /// handle. A pattern must carry the match limit [`Regexes::compile`] puts in front.
    pub fn from_patterns(patterns: &[Option<String>]) -> Result<Regexes, RegexError> {
        if patterns.len() > MAX_HANDLES {
            return Err(RegexError::TooMany);
        }
        let prefix = format!("(*LIMIT_MATCH={MATCH_LIMIT})");
        let mut slots = Vec::with_capacity(patterns.len());
        for p in patterns {
            slots.push(match p {
                Some(p) if p.starts_with(&prefix) => Some(Arc::new(
                    RegexBuilder::new()
                        .build(p)
                        .map_err(|e| RegexError::Compile(e.to_string()))?,
                )),
                Some(_) => return Err(RegexError::Compile("no match limit".into())),
                None => None,
            });
        }
        Ok(Regexes {
            slots,
            changed: false,
        })
    }

    /// Put back `frozen`'s table (a request's reset); nothing to do if this one is unchanged.
    pub fn restore(&mut self, frozen: &Regexes) {
        if self.changed {
            *self = frozen.clone();
        }
    }

    /// Forget the changes made so far (at the freeze: the table becomes the frozen state).
    pub fn mark_frozen(&mut self) {
        self.changed = false;
    }
}

/// Varnish's `regsub`/`regsuball`: `text` with the first match (every match with `all`)
/// replaced by `subst`, in which `\0`..`\9` stand for the match and its groups (empty when a
/// group did not take part) and every other byte is literal. No match: `text` unchanged.
pub fn substitute(re: &Regex, text: &[u8], subst: &[u8], all: bool) -> Result<Vec<u8>, RegexError> {
    let mut out = Vec::with_capacity(text.len());
    let mut locs = re.capture_locations();
    let mut at = 0;
    let mut copied = 0;
    while at <= text.len() {
        let found = re
            .captures_read_at(&mut locs, text, at)
            .map_err(|e| RegexError::Match(e.to_string()))?;
        let Some(m) = found else { break };
        out.extend_from_slice(&text[copied..m.start()]);
        let mut i = 0;
        while i < subst.len() {
            match (subst[i], subst.get(i + 1)) {
                (b'\\', Some(d @ b'0'..=b'9')) => {
                    if let Some((s, e)) = locs.get(usize::from(d - b'0')) {
                        out.extend_from_slice(&text[s..e]);
                    }
                    i += 2;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        copied = m.end();
        if !all {
            break;
        }
        // An empty match moves on by one byte, or it would match there forever.
        at = if m.end() == m.start() {
            m.end() + 1
        } else {
            m.end()
        };
    }
    if copied <= text.len() {
        out.extend_from_slice(&text[copied..]);
    }
    if out.len() > MAX_INPUT {
        return Err(RegexError::TooLong {
            need: out.len(),
            room: MAX_INPUT,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_reused_limited_and_checked() {
        let mut r = Regexes::default();
        assert_eq!(r.compile(b"^a+$"), Ok(0));
        assert_eq!(r.compile(b"b"), Ok(1));
        assert!(r.free(0));
        assert!(!r.free(0));
        assert!(!r.free(-1));
        assert!(!r.free(99));
        assert_eq!(r.compile(b"c"), Ok(0), "the lowest free handle");
        assert!(matches!(
            r.compile(b"(unclosed"),
            Err(RegexError::Compile(_))
        ));
        assert!(matches!(
            r.compile(&[0xff, 0xfe]),
            Err(RegexError::Compile(_))
        ));
        for _ in 2..MAX_HANDLES {
            r.compile(b"x").unwrap();
        }
        assert_eq!(r.len(), MAX_HANDLES);
        assert_eq!(r.compile(b"y"), Err(RegexError::TooMany));
        assert_eq!(r.is_match(-5, b"").unwrap_err(), RegexError::BadHandle(-5));
    }

    #[test]
    fn pcre2_semantics() {
        let mut r = Regexes::default();
        let h = r.compile(br"(?i)^/img/(\w+)\.(png|jpe?g)$").unwrap();
        assert!(r.is_match(h, b"/IMG/cat.JPG").unwrap());
        assert!(!r.is_match(h, b"/img/cat.gif").unwrap());
        // Lookbehind and possessive quantifiers are PCRE, not POSIX.
        let h = r.compile(br"(?<=\$)\d++").unwrap();
        assert!(r.is_match(h, b"costs $42").unwrap());
        // Subjects need not be UTF-8.
        assert!(r.is_match(h, b"\xff$1").unwrap());
    }

    /// Catastrophic backtracking ends at PCRE2's match limit with an error, not after
    /// 2^n steps: a guest cannot hold a host thread with one call.
    #[test]
    fn backtracking_is_bounded() {
        let mut r = Regexes::default();
        let h = r.compile(b"^(a+)+$").unwrap();
        let mut text = vec![b'a'; 64];
        text.push(b'b');
        let t0 = std::time::Instant::now();
        assert!(matches!(r.is_match(h, &text), Err(RegexError::Match(_))));
        eprintln!("match limit reached after {:?}", t0.elapsed());
    }

    #[test]
    fn substitution_as_varnish_regsub() {
        let mut r = Regexes::default();
        let h = r.compile(br"(\w+)@(\w+)").unwrap();
        let re = r.get(h).unwrap();
        assert_eq!(
            substitute(re, b"a@b c@d", br"\2 at \1", false).unwrap(),
            b"b at a c@d"
        );
        assert_eq!(
            substitute(re, b"a@b c@d", br"\2 at \1", true).unwrap(),
            b"b at a d at c"
        );
        assert_eq!(substitute(re, b"none", b"x", true).unwrap(), b"none");
        assert_eq!(
            substitute(re, b"a@b", br"[\0|\9]\q", false).unwrap(),
            br"[a@b|]\q"
        );
        let empty = r.compile(b"x*").unwrap();
        let re = r.get(empty).unwrap();
        assert_eq!(substitute(re, b"abc", b"-", true).unwrap(), b"-a-b-c-");
    }

    #[test]
    fn patterns_round_trip() {
        let mut r = Regexes::default();
        r.compile(b"a+b").unwrap();
        r.compile(b"(?i)x").unwrap();
        r.free(0);
        let back = Regexes::from_patterns(&r.patterns()).unwrap();
        assert!(back.get(0).is_err());
        assert!(back.is_match(1, b"X").unwrap());
        assert!(Regexes::from_patterns(&[Some("(".into())]).is_err());
        assert!(Regexes::from_patterns(&[Some("x".into())]).is_err());
    }

    #[test]
    fn restore_puts_back_the_frozen_table() {
        let mut frozen = Regexes::default();
        frozen.compile(b"init").unwrap();
        frozen.mark_frozen();
        let mut vm = frozen.clone();
        vm.restore(&frozen);
        assert_eq!(vm.len(), 1);
        vm.compile(b"mine").unwrap();
        vm.free(0);
        assert!(vm.get(0).is_err());
        vm.restore(&frozen);
        assert_eq!(vm.len(), 1);
        assert!(vm.is_match(0, b"init").unwrap());
        assert!(vm.get(1).is_err());
    }
}
