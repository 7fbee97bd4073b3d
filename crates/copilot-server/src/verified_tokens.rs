//! Verified bearer tokens, remembered (DESIGN.md 6.4 is unchanged: a token is accepted exactly
//! when verifying it would accept it). Verifying costs base64, an HMAC or signature check and
//! two JSON parses per request; a fleet's callers send the same few tokens thousands of times.
//! Entries are keyed by the token's SHA-256 (no token is kept in memory, and a collision would
//! need a SHA-256 collision), bounded in number, and never used at or past the token's `exp`.

use copilot_domain::Principal;
use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

/// Tokens remembered per instance; a token is ~200 bytes of key material we do not keep, so an
/// entry costs well under 200 bytes.
const CAPACITY: usize = 10_000;

pub struct VerifiedTokens {
    entries: Cache<[u8; 32], (Principal, u64)>,
    /// `copilot_auth_token_cache_total{outcome}`, taken once (after the recorder is installed).
    hit: metrics::Counter,
    miss: metrics::Counter,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        let counter = |outcome: &'static str| metrics::counter!("copilot_auth_token_cache_total", "outcome" => outcome);
        Self {
            entries: Cache::new(CAPACITY),
            hit: counter("hit"),
            miss: counter("miss"),
        }
    }
}

impl VerifiedTokens {
    pub fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The principal of a token verified before, while `now` (Unix seconds) is before its `exp`.
    pub fn get(&self, key: &[u8; 32], now: u64) -> Option<Principal> {
        let found = match self.entries.get(key) {
            Some((principal, exp)) if now < exp => Some(principal),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        };
        match found {
            Some(_) => self.hit.increment(1),
            None => self.miss.increment(1),
        }
        found
    }

    pub fn insert(&self, key: [u8; 32], principal: Principal, exp: u64) {
        self.entries.insert(key, (principal, exp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_used_until_its_exp_and_never_at_or_after_it() {
        let tokens = VerifiedTokens::default();
        let key = VerifiedTokens::key("a.b.c");
        assert_eq!(tokens.get(&key, 10), None);
        tokens.insert(key, Principal::service("backend"), 100);
        assert_eq!(tokens.get(&key, 99), Some(Principal::service("backend")));
        assert_eq!(tokens.get(&key, 100), None);
        // Gone, not only hidden: an earlier clock reading does not bring it back.
        assert_eq!(tokens.get(&key, 99), None);
        assert_eq!(tokens.get(&VerifiedTokens::key("a.b.d"), 10), None);
    }
}
