//! Response bodies rendered once per cached row. The caches hand out the same `Arc` for as long
//! as a row is current (L1, the merged effective configuration), so its JSON and `ETag` can be
//! kept beside it and a hot read serves bytes instead of serializing again.
//!
//! Entries are keyed by the row's address and hold a `Weak` to it: while the `Weak` lives, the
//! allocation cannot be reused, so an entry whose `Weak` points where the caller's `Arc` points
//! was rendered from that very row.

use std::sync::{Arc, Weak};

use axum::body::Bytes;
use axum::http::header::{CONTENT_TYPE, ETAG};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use quick_cache::sync::Cache;
use serde::Serialize;

use crate::error::ApiError;

/// Rows whose rendering is kept, per kind.
const CAPACITY: usize = 10_000;

pub struct RenderedJson<T> {
    entries: Cache<usize, Rendering<T>>,
    /// `copilot_http_rendered_total{kind, outcome}`.
    hit: metrics::Counter,
    miss: metrics::Counter,
}

struct Rendering<T> {
    row: Weak<T>,
    body: Bytes,
    etag: Option<HeaderValue>,
}

impl<T> Clone for Rendering<T> {
    fn clone(&self) -> Self {
        Self {
            row: self.row.clone(),
            body: self.body.clone(),
            etag: self.etag.clone(),
        }
    }
}

impl<T: Serialize> RenderedJson<T> {
    pub fn new(kind: &'static str) -> Self {
        let counter = |outcome: &'static str| metrics::counter!("copilot_http_rendered_total", "kind" => kind, "outcome" => outcome);
        Self {
            entries: Cache::new(CAPACITY),
            hit: counter("hit"),
            miss: counter("miss"),
        }
    }

    /// A 200 with `row` as JSON and the `ETag` `etag` gives it (rendered once per row).
    pub fn ok(&self, row: &Arc<T>, etag: impl FnOnce(&T) -> String) -> Result<Response, ApiError> {
        let address = Arc::as_ptr(row) as usize;
        let rendering = match self.entries.get(&address) {
            Some(found) if std::ptr::eq(found.row.as_ptr(), Arc::as_ptr(row)) => {
                self.hit.increment(1);
                found
            }
            _ => {
                self.miss.increment(1);
                let body = serde_json::to_vec(row.as_ref()).map_err(|e| {
                    tracing::error!(error = %e, "rendering a response");
                    ApiError::Internal
                })?;
                let rendering = Rendering {
                    row: Arc::downgrade(row),
                    body: Bytes::from(body),
                    etag: HeaderValue::from_str(&etag(row)).ok(),
                };
                self.entries.insert(address, rendering.clone());
                rendering
            }
        };
        let mut response = (StatusCode::OK, rendering.body).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(etag) = rendering.etag {
            headers.insert(ETAG, etag);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Row {
        n: u32,
    }

    async fn body(response: Response) -> Bytes {
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_row_is_rendered_once_and_a_new_row_at_a_reused_address_is_rendered_again() {
        let rendered = RenderedJson::new("test");
        let first = Arc::new(Row { n: 1 });
        let r = rendered.ok(&first, |r| format!("\"{}\"", r.n)).unwrap();
        assert_eq!(r.headers()[ETAG], "\"1\"");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(body(r).await, r#"{"n":1}"#);
        // Served from the entry: the tag function is not asked again.
        let r = rendered.ok(&first, |_| unreachable!()).unwrap();
        assert_eq!(body(r).await, r#"{"n":1}"#);
        drop(first);
        // Whatever address the next row gets, it is rendered from itself.
        for n in 2..50 {
            let row = Arc::new(Row { n });
            let r = rendered.ok(&row, |r| format!("\"{}\"", r.n)).unwrap();
            assert_eq!(r.headers()[ETAG], format!("\"{n}\"").as_str());
            assert_eq!(body(r).await, format!(r#"{{"n":{n}}}"#));
        }
    }
}
