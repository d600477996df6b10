//! The browser SDK (`clients/js`), embedded in the binary and served at `/js/...`:
//!
//! | path | what | `Cache-Control` |
//! | --- | --- | --- |
//! | `/js/switchboard.js` | the ES module | `public, max-age=300, must-revalidate` |
//! | `/js/switchboard.iife.js` | the classic script (global `Switchboard`) | same |
//! | `/js/switchboard.<hash>.js`, `/js/switchboard.iife.<hash>.js` | the same bytes under a versioned name | `public, max-age=31536000, immutable` |
//!
//! `<hash>` is the content hash that is also the file's `ETag` (16 hex digits, FNV-1a 64 of the
//! bytes, computed at compile time). The plain names may change whenever the binary is
//! upgraded, so caches keep them for five minutes and then revalidate (`If-None-Match` gets a
//! `304`); a versioned name never changes meaning, so it is cached for a year. Another hash in a
//! versioned name is a 404, never older or newer bytes. Every answer carries
//! `Access-Control-Allow-Origin: *` (public code; module scripts from another origin need it).
//!
//! The files come from `clients/js/dist/`, which is committed (`scripts/test sdk` fails when it
//! is stale against the sources), so building the server needs no Node. They are served in every
//! mode: static, public and harmless.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The ES module.
const MODULE: &[u8] = include_bytes!("../../../clients/js/dist/switchboard.js");
/// The classic script.
const IIFE: &[u8] = include_bytes!("../../../clients/js/dist/switchboard.iife.js");

/// Cache policy of the unversioned names: five minutes, then revalidate.
const CACHE_SHORT: &str = "public, max-age=300, must-revalidate";
/// Cache policy of the versioned names.
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One embedded file.
struct Asset {
    /// Base name without `.js` (`switchboard`, `switchboard.iife`).
    stem: &'static str,
    bytes: &'static [u8],
    /// 16 hex digits of the content hash.
    hash: [u8; 16],
}

static ASSETS: [Asset; 2] = [
    Asset {
        stem: "switchboard",
        bytes: MODULE,
        hash: hex(fnv1a(MODULE)),
    },
    Asset {
        stem: "switchboard.iife",
        bytes: IIFE,
        hash: hex(fnv1a(IIFE)),
    },
];

/// The routes: `GET /js/{file}` (and `HEAD`).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/js/{file}", get(serve))
}

/// The content hash of the ES module as served (its ETag without quotes, and the `<hash>` of
/// its versioned name).
pub fn module_hash() -> &'static str {
    ASSETS[0].hash()
}

impl Asset {
    fn hash(&self) -> &str {
        // `hex` writes ASCII digits only.
        std::str::from_utf8(&self.hash).unwrap_or_default()
    }
}

/// `GET /js/{file}`.
async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some((asset, versioned)) = lookup(&file) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let etag = format!("\"{}\"", asset.hash());
    let cache = if versioned {
        CACHE_IMMUTABLE
    } else {
        CACHE_SHORT
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(asset.bytes))
    };
    let h = response.headers_mut();
    if !fresh {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The asset named `file` and whether the name was the versioned one.
fn lookup(file: &str) -> Option<(&'static Asset, bool)> {
    let stem = file.strip_suffix(".js")?;
    ASSETS.iter().find_map(|a| {
        if stem == a.stem {
            Some((a, false))
        } else {
            let hash = stem.strip_prefix(a.stem)?.strip_prefix('.')?;
            (hash == a.hash()).then_some((a, true))
        }
    })
}

/// `If-None-Match: "a", W/"b"` or `*` against our (strong) `etag`, with the weak comparison
/// RFC 9110 asks for on `If-None-Match`.
fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// FNV-1a, 64 bits: a content hash for cache validation (not a security property).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `value` as 16 lowercase hex digits.
const fn hex(value: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(v) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, v);
        }
        router::<()>()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    fn header_of(r: &Response, name: header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn serves_the_module_with_type_etag_and_short_cache() {
        let r = get("/js/switchboard.js", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            header_of(&r, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(header_of(&r, header::CACHE_CONTROL), CACHE_SHORT);
        assert_eq!(header_of(&r, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
        let etag = header_of(&r, header::ETAG).to_string();
        assert_eq!(etag, format!("\"{}\"", module_hash()));
        assert_eq!(module_hash().len(), 16);
        let body = to_bytes(r.into_body(), usize::MAX).await.expect("body");
        assert_eq!(&body[..], MODULE);
        assert!(body.starts_with(b"/*! switchboard-client"));
    }

    #[tokio::test]
    async fn if_none_match_gives_304_without_body() {
        let etag = format!("\"{}\"", module_hash());
        for value in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
            "*".to_string(),
        ] {
            let r = get("/js/switchboard.js", Some(&value)).await;
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{value}");
            assert_eq!(header_of(&r, header::ETAG), etag);
            let body = to_bytes(r.into_body(), usize::MAX).await.expect("body");
            assert!(body.is_empty());
        }
        let r = get("/js/switchboard.js", Some("\"0000000000000000\"")).await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn versioned_names_are_immutable_and_only_for_the_current_hash() {
        let iife_hash = ASSETS[1].hash().to_string();
        let r = get(&format!("/js/switchboard.iife.{iife_hash}.js"), None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header_of(&r, header::CACHE_CONTROL), CACHE_IMMUTABLE);
        let body = to_bytes(r.into_body(), usize::MAX).await.expect("body");
        assert_eq!(&body[..], IIFE);
        let r = get(&format!("/js/switchboard.{}.js", module_hash()), None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header_of(&r, header::CACHE_CONTROL), CACHE_IMMUTABLE);
        for path in [
            "/js/switchboard.0123456789abcdef.js",
            "/js/switchboard.iife.js.map",
            "/js/other.js",
            "/js/switchboard",
            "/js/switchboard..js",
        ] {
            assert_eq!(
                get(path, None).await.status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
    }

    #[test]
    fn hashes_differ_per_file_and_are_hex() {
        assert_ne!(ASSETS[0].hash(), ASSETS[1].hash());
        assert!(module_hash().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(&hex(fnv1a(b"")), b"cbf29ce484222325");
    }
}
