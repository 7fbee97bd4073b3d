//! Conditional GET (RFC 9110 13.1.2): a `GET` whose `If-None-Match` names the `ETag` of the
//! answer it would get is answered `304 Not Modified` without a body. Applied in one place, after
//! the handler has run, so access rules and deadlines are exactly those of a full answer: a 304
//! is only ever sent where the same request would have been a 200.

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use copilot_domain::config::LevelVersions;

/// `response`, or a 304 in its place when `if_none_match` matches its `ETag`.
pub fn answer(if_none_match: Option<HeaderValue>, response: Response) -> Response {
    let Some(condition) = if_none_match else {
        return response;
    };
    if response.status() != StatusCode::OK {
        return response;
    }
    let matches = response
        .headers()
        .get(ETAG)
        .is_some_and(|etag| matches_any(condition.as_bytes(), etag.as_bytes()));
    if !matches {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::NOT_MODIFIED;
    // A 304 carries the validators and caching headers of the 200, never its content headers.
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::empty())
}

/// Weak comparison (RFC 9110 8.8.3.2) of `etag` with each entity tag of an `If-None-Match` list;
/// `*` matches any current representation.
fn matches_any(list: &[u8], etag: &[u8]) -> bool {
    let etag = opaque(etag.trim_ascii());
    list.split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|tag| tag == b"*" || (!tag.is_empty() && opaque(tag) == etag))
}

fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// The entity tag of an effective configuration: the versions of its three levels (versions
/// never repeat, and the merge is a function of the stored levels) and the user it was computed
/// for, hashed, since one URL answers each caller for itself.
pub fn effective_etag(versions: &LevelVersions, user: Option<&str>) -> String {
    // FNV-1a: stable across builds, so every instance of a fleet gives the same tag.
    let user_hash = user.map_or(0, |u| {
        u.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    });
    format!(
        "\"c{}.{}.{}.{user_hash:x}\"",
        versions.global.unwrap_or(0),
        versions.tenant.unwrap_or(0),
        versions.user.unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_uses_weak_comparison_lists_and_star() {
        assert!(matches_any(b"\"7\"", b"\"7\""));
        assert!(matches_any(b"W/\"7\"", b"\"7\""));
        assert!(matches_any(b"\"3\", W/\"7\"", b"\"7\""));
        assert!(matches_any(b"*", b"\"7\""));
        assert!(!matches_any(b"\"8\"", b"\"7\""));
        assert!(!matches_any(b"", b"\"7\""));
        assert!(!matches_any(b"7", b"\"7\""));
    }

    #[test]
    fn effective_tags_differ_by_level_version_and_user() {
        let v = |global, tenant, user| LevelVersions {
            global,
            tenant,
            user,
        };
        let base = effective_etag(&v(Some(1), Some(2), Some(3)), Some("alice"));
        assert_eq!(
            base,
            effective_etag(&v(Some(1), Some(2), Some(3)), Some("alice"))
        );
        assert_ne!(
            base,
            effective_etag(&v(Some(1), Some(2), Some(4)), Some("alice"))
        );
        assert_ne!(
            base,
            effective_etag(&v(Some(1), Some(5), Some(3)), Some("alice"))
        );
        assert_ne!(
            base,
            effective_etag(&v(None, Some(2), Some(3)), Some("alice"))
        );
        assert_ne!(
            base,
            effective_etag(&v(Some(1), Some(2), Some(3)), Some("bob"))
        );
        assert_ne!(base, effective_etag(&v(Some(1), Some(2), Some(3)), None));
    }
}
