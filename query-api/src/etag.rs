//! Entity tags of report answers: the lake table version the answer read
//! and a hash of who asked what. A conditional request whose `If-None-Match`
//! holds the tag of an unchanged table gets `304 Not Modified` before any
//! query runs.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The weak tag of an answer computed from table version `version` for the
/// request `parts` (tenant, query text, page…).
pub fn etag(version: u64, parts: &[&str]) -> String {
    // FNV-1a over the parts, each ended by a separator byte.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("W/\"{version}-{hash:016x}\"")
}

/// Whether `If-None-Match` in `headers` names `tag` (or is `*`).
pub fn matches(headers: &HeaderMap, tag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| candidate.trim() == "*" || strip(candidate) == strip(tag))
}

/// `304 Not Modified` with the tag (and `Vary: accept`, as the 200 has).
pub fn not_modified(tag: &str) -> Response {
    let mut response = with_tag(StatusCode::NOT_MODIFIED.into_response(), tag);
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// `response` with an `ETag` header.
pub fn with_tag(mut response: Response, tag: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(tag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_change_with_the_version_and_the_request() {
        let a = etag(7, &["acme", "SELECT 1"]);
        assert_eq!(a, etag(7, &["acme", "SELECT 1"]));
        assert_ne!(a, etag(8, &["acme", "SELECT 1"]));
        assert_ne!(a, etag(7, &["globex", "SELECT 1"]));
        assert_ne!(etag(7, &["ab", "c"]), etag(7, &["a", "bc"]));
    }

    #[test]
    fn if_none_match_lists_and_wildcards() {
        let tag = etag(1, &["x"]);
        let mut headers = HeaderMap::new();
        assert!(!matches(&headers, &tag));
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", {tag}")).unwrap(),
        );
        assert!(matches(&headers, &tag));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(matches(&headers, &tag));
    }
}
