//! The versioned envelope shared by L1 and L2, and the one rule both apply before storing.
//!
//! L2 text format: `<version>|<kind>|<json>` with kind `v` (a row), `n` (no row: a negative
//! entry, version 0) or `t` (a tombstone left by a write). The Lua scripts parse the prefix.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub enum Entry<T> {
    Value { version: u64, value: Arc<T> },
    Absent,
    Tombstone { version: u64 },
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Value { version, value } => Self::Value {
                version: *version,
                value: value.clone(),
            },
            Self::Absent => Self::Absent,
            Self::Tombstone { version } => Self::Tombstone { version: *version },
        }
    }
}

impl<T> Entry<T> {
    /// What the entry answers a read: a row (`Some(Some(row))`) or "no row" (`Some(None)`); a
    /// tombstone answers nothing (`None`).
    pub fn answer(self) -> Option<Option<Arc<T>>> {
        match self {
            Self::Value { value, .. } => Some(Some(value)),
            Self::Absent => Some(None),
            Self::Tombstone { .. } => None,
        }
    }

    pub fn version(&self) -> u64 {
        match self {
            Self::Value { version, .. } | Self::Tombstone { version } => *version,
            Self::Absent => 0,
        }
    }

    /// DESIGN.md 5.2: a fill never lowers a key's version (a row replaces a tombstone of its own
    /// version); a tombstone needs a newer version; a negative entry only goes where nothing is.
    pub fn may_replace(&self, existing: Option<&Entry<T>>) -> bool {
        match (self, existing) {
            (_, None) => true,
            (Self::Absent, Some(_)) => false,
            (Self::Value { version, .. }, Some(e)) => {
                e.version() < *version
                    || (e.version() == *version && matches!(e, Entry::Tombstone { .. }))
            }
            (Self::Tombstone { version }, Some(e)) => e.version() < *version,
        }
    }
}

impl<T: Serialize> Entry<T> {
    pub fn encode(&self) -> String {
        match self {
            Self::Value { version, value } => {
                format!(
                    "{version}|v|{}",
                    serde_json::to_string(value.as_ref()).unwrap_or_default()
                )
            }
            Self::Absent => "0|n|".to_owned(),
            Self::Tombstone { version } => format!("{version}|t|"),
        }
    }
}

impl<T: DeserializeOwned> Entry<T> {
    /// `None` for anything unreadable (treated as a miss, never as data).
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '|');
        let version: u64 = parts.next()?.parse().ok()?;
        let kind = parts.next()?;
        let body = parts.next()?;
        match kind {
            "v" => serde_json::from_str(body).ok().map(|v| Self::Value {
                version,
                value: Arc::new(v),
            }),
            "n" => Some(Self::Absent),
            "t" => Some(Self::Tombstone { version }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: u64) -> Entry<String> {
        Entry::Value {
            version: v,
            value: Arc::new("x".into()),
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        for e in [value(7), Entry::Absent, Entry::Tombstone { version: 9 }] {
            let back = Entry::<String>::decode(&e.encode()).unwrap();
            assert_eq!(back.version(), e.version());
        }
        assert!(Entry::<String>::decode("garbage").is_none());
        assert!(Entry::<String>::decode("3|v|not json").is_none());
    }

    #[test]
    fn versions_never_go_down() {
        assert!(value(5).may_replace(None));
        assert!(value(5).may_replace(Some(&value(4))));
        assert!(
            !value(5).may_replace(Some(&value(6))),
            "an old row never replaces a newer one"
        );
        assert!(
            !value(5).may_replace(Some(&Entry::Tombstone { version: 6 })),
            "nor a newer tombstone"
        );
        assert!(
            value(6).may_replace(Some(&Entry::Tombstone { version: 6 })),
            "the row of the write"
        );
        assert!(Entry::<String>::Tombstone { version: 7 }.may_replace(Some(&value(6))));
        assert!(!Entry::<String>::Tombstone { version: 5 }.may_replace(Some(&value(6))));
        assert!(Entry::<String>::Absent.may_replace(None));
        assert!(!Entry::<String>::Absent.may_replace(Some(&Entry::Tombstone { version: 1 })));
        assert!(
            value(1).may_replace(Some(&Entry::Absent)),
            "a write after a negative entry"
        );
    }
}
