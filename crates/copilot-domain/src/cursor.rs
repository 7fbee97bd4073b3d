//! The conversation-list cursor (DESIGN.md 3.7): opaque, versioned and tamper-evident.
//!
//! Layout before base64url: `[format version][status][lastActivityAt µs, i64 BE][id, 16 bytes]`
//! followed by the first 16 bytes of HMAC-SHA-256 over those bytes with the server's cursor key
//! ([`CursorKey`]): a cursor cannot be forged or edited without the key, and one from another
//! deployment does not decode. (Even a forged one could only move a caller within its own
//! visible list: the access rule is part of the query.)

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::id::ConversationId;
use crate::status::ConversationStatus;

const FORMAT_V2: u8 = 2;
const KEY_LABEL: &[u8] = b"copilot-state/list-cursor/v2";
const BODY_LEN: usize = 1 + 1 + 8 + 16;
const TAG_LEN: usize = 16;

/// The key that authenticates list cursors. Every instance of a deployment must use the same
/// one (the server derives it from `COPILOT_CURSOR_SECRET` or the JWT secret).
#[derive(Clone, PartialEq, Eq)]
pub struct CursorKey([u8; 32]);

impl CursorKey {
    /// A key derived from a secret (any length).
    pub fn derive(secret: &[u8]) -> Self {
        let digest = Sha256::new()
            .chain_update(KEY_LABEL)
            .chain_update(secret)
            .finalize();
        let mut key = [0u8; 32];
        key.copy_from_slice(&digest);
        Self(key)
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let mut out = [0u8; TAG_LEN];
        if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) {
            mac.update(body);
            out.copy_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        }
        out
    }
}

/// The fixed key of library use and tests; a server always sets its own.
impl Default for CursorKey {
    fn default() -> Self {
        Self::derive(b"")
    }
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}
/// 9999-12-31T23:59:59.999999Z.
const MAX_MICROS: i64 = 253_402_300_799_999_999;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListCursor {
    pub status: ConversationStatus,
    pub last_activity_micros: i64,
    pub id: ConversationId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor is malformed or was altered")]
    Malformed,
    #[error("cursor belongs to a listing with another status")]
    WrongListing,
}

impl ListCursor {
    /// The position right after a conversation last active at `last_activity_micros`.
    pub fn after(
        status: ConversationStatus,
        last_activity_micros: i64,
        id: ConversationId,
    ) -> Self {
        Self {
            status,
            last_activity_micros,
            id,
        }
    }

    pub fn encode(&self, key: &CursorKey) -> String {
        let mut bytes = Vec::with_capacity(BODY_LEN + TAG_LEN);
        bytes.push(FORMAT_V2);
        bytes.push(status_byte(self.status));
        bytes.extend_from_slice(&self.last_activity_micros.to_be_bytes());
        bytes.extend_from_slice(self.id.as_uuid().as_bytes());
        let tag = key.tag(&bytes);
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a cursor made with `key` and checks it was issued for a listing with `status`.
    pub fn decode(
        text: &str,
        status: ConversationStatus,
        key: &CursorKey,
    ) -> Result<Self, CursorError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CursorError::Malformed)?;
        if bytes.len() != BODY_LEN + TAG_LEN || bytes[0] != FORMAT_V2 {
            return Err(CursorError::Malformed);
        }
        let (body, given_tag) = bytes.split_at(BODY_LEN);
        // Constant-time comparison of the tag.
        let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).map_err(|_| CursorError::Malformed)?;
        mac.update(body);
        mac.verify_truncated_left(given_tag)
            .map_err(|_| CursorError::Malformed)?;
        let cursor_status = status_from_byte(body[1]).ok_or(CursorError::Malformed)?;
        let micros =
            i64::from_be_bytes(body[2..10].try_into().map_err(|_| CursorError::Malformed)?);
        // Only instants a store can hold (a forged tag once carried year -290,000 into a
        // PostgreSQL query: a 500, not the 400 it is).
        if !(0..=MAX_MICROS).contains(&micros) {
            return Err(CursorError::Malformed);
        }
        let uuid = Uuid::from_slice(&body[10..26]).map_err(|_| CursorError::Malformed)?;
        if cursor_status != status {
            return Err(CursorError::WrongListing);
        }
        Ok(Self {
            status: cursor_status,
            last_activity_micros: micros,
            id: ConversationId::from_uuid(uuid),
        })
    }
}

fn status_byte(s: ConversationStatus) -> u8 {
    match s {
        ConversationStatus::Active => 0,
        ConversationStatus::Archived => 1,
        ConversationStatus::All => 2,
    }
}

fn status_from_byte(b: u8) -> Option<ConversationStatus> {
    match b {
        0 => Some(ConversationStatus::Active),
        1 => Some(ConversationStatus::Archived),
        2 => Some(ConversationStatus::All),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CursorKey {
        CursorKey::derive(b"server secret")
    }

    /// A cursor made with another key (another deployment, or a forger without the key) does
    /// not decode, though its layout is right.
    #[test]
    fn a_cursor_of_another_key_is_malformed() {
        let text = sample().encode(&CursorKey::derive(b"someone else"));
        assert_eq!(
            ListCursor::decode(&text, ConversationStatus::Active, &key()),
            Err(CursorError::Malformed)
        );
    }

    fn sample() -> ListCursor {
        ListCursor {
            status: ConversationStatus::Active,
            last_activity_micros: 1_700_000_000_123_456,
            id: ConversationId::new_v7(chrono::Utc::now()),
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(
            ListCursor::decode(&c.encode(&key()), ConversationStatus::Active, &key()),
            Ok(c)
        );
    }

    #[test]
    fn any_altered_character_is_rejected() {
        let text = sample().encode(&key());
        for i in 0..text.len() {
            let mut chars: Vec<char> = text.chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let altered: String = chars.into_iter().collect();
            if altered != text {
                assert!(
                    ListCursor::decode(&altered, ConversationStatus::Active, &key()).is_err(),
                    "position {i}"
                );
            }
        }
    }

    /// A cursor whose tag is right but whose instant no store can hold is malformed.
    #[test]
    fn instants_out_of_range_are_malformed() {
        for micros in [i64::MIN, -1, MAX_MICROS + 1, i64::MAX] {
            let forged = ListCursor {
                last_activity_micros: micros,
                ..sample()
            };
            assert_eq!(
                ListCursor::decode(&forged.encode(&key()), ConversationStatus::Active, &key()),
                Err(CursorError::Malformed),
                "{micros}"
            );
        }
    }

    #[test]
    fn garbage_and_wrong_listing_are_rejected() {
        for bad in [
            "",
            "abc",
            "!!!!",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(
                ListCursor::decode(bad, ConversationStatus::Active, &key()),
                Err(CursorError::Malformed)
            );
        }
        let text = sample().encode(&key());
        assert_eq!(
            ListCursor::decode(&text, ConversationStatus::All, &key()),
            Err(CursorError::WrongListing)
        );
        assert_eq!(
            ListCursor::decode(&text[..text.len() - 1], ConversationStatus::Active, &key()),
            Err(CursorError::Malformed)
        );
    }
}
