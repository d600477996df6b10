//! Origin checks for browser connections (cross-site WebSocket hijacking protection).

use axum::http::{header, HeaderMap};

use crate::glob::glob_match;

/// Whether a request with these headers may open a client connection, given the configured
/// `client.allowed_origins`.
///
/// Requests without `Origin` (non-browser clients) are allowed. With an empty list only
/// same-origin requests are: the Origin's host (and port) must equal the `Host` header. An
/// `Origin` that is not visible ASCII is refused (no browser sends one; treating it as absent
/// would let it past the check).
pub fn allowed(headers: &HeaderMap, allowed_origins: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed_origins.is_empty() {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        return host.is_some() && host == origin_host;
    }
    let origin = origin.to_ascii_lowercase();
    allowed_origins
        .iter()
        .any(|pattern| glob_match(&pattern.to_ascii_lowercase(), &origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_by_default() {
        assert!(allowed(&headers(None, "a.com"), &[]));
        assert!(allowed(&headers(Some("https://a.com"), "a.com"), &[]));
        assert!(!allowed(&headers(Some("https://evil.com"), "a.com"), &[]));
    }

    #[test]
    fn non_ascii_origin_is_refused_not_ignored() {
        let mut h = headers(None, "a.com");
        h.insert(
            header::ORIGIN,
            axum::http::HeaderValue::from_bytes(b"https://\xe9vil.com").unwrap(),
        );
        assert!(!allowed(&h, &[]));
        assert!(!allowed(&h, &["*".into()]));
    }

    #[test]
    fn exact_and_glob() {
        let list = vec![
            "https://app.example.com".to_string(),
            "https://*.example.org".to_string(),
        ];
        assert!(allowed(
            &headers(Some("https://app.example.com"), "x"),
            &list
        ));
        assert!(allowed(&headers(Some("https://a.example.org"), "x"), &list));
        assert!(!allowed(&headers(Some("https://example.net"), "x"), &list));
        assert!(allowed(
            &headers(Some("http://anything"), "x"),
            &["*".into()]
        ));
    }
}
