//! JSON text checks the parser does not make: duplicate keys (a second, value-ignoring
//! pass) and the position of a trailing comma for error messages.

use std::collections::BTreeSet;

/// Duplicate keys of the top-level object (`'demo'`) and of its entries
/// (`'demo'.'concurrency'`), found by a second, value-ignoring pass.
pub(crate) struct DuplicateKeys(pub(crate) Vec<String>);

impl<'de> serde::Deserialize<'de> for DuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(KeyVisitor { parent: None })
            .map(DuplicateKeys)
    }
}

pub(crate) struct KeyVisitor<'p> {
    parent: Option<&'p str>,
}

impl<'de> serde::de::Visitor<'de> for KeyVisitor<'_> {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
        let mut seen = BTreeSet::new();
        let mut dups = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.parent {
                None => dups.extend(map.next_value_seed(EntrySeed(&key))?),
                Some(_) => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            if !seen.insert(key.clone()) {
                dups.push(match self.parent {
                    None => format!("'{key}'"),
                    Some(parent) => format!("'{parent}'.'{key}'"),
                });
            }
        }
        Ok(dups)
    }
}

/// Looks one level into an entry, if it is an object.
pub(crate) struct EntrySeed<'p>(&'p str);

impl<'de> serde::de::DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = Vec<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_any(EntryVisitor(self.0))
    }
}

pub(crate) struct EntryVisitor<'p>(&'p str);

impl<'de> serde::de::Visitor<'de> for EntryVisitor<'_> {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Vec<String>, A::Error> {
        KeyVisitor {
            parent: Some(self.0),
        }
        .visit_map(map)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Vec::new())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
    fn visit_str<E>(self, _: &str) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
    fn visit_unit<E>(self) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }
}

/// The position (1-based line, column) of the last comma before line/column `line:col` of
/// `text`, skipping whitespace (comments are already blanked out).
pub(crate) fn comma_before(text: &[u8], line: usize, col: usize) -> Option<(usize, usize)> {
    let mut off = 0usize;
    let mut l = 1;
    while l < line {
        off += text[off..].iter().position(|&c| c == b'\n')? + 1;
        l += 1;
    }
    let mut i = (off + col.saturating_sub(1)).min(text.len());
    while i > 0 {
        i -= 1;
        match text[i] {
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            b',' => {
                let line_start = text[..i]
                    .iter()
                    .rposition(|&c| c == b'\n')
                    .map_or(0, |p| p + 1);
                let line_no = text[..i].iter().filter(|&&c| c == b'\n').count() + 1;
                return Some((line_no, i - line_start + 1));
            }
            _ => return None,
        }
    }
    None
}
