//! The demos' static pages and assets, embedded in the binary: `/` (the list of demos),
//! `/demos/<name>` (a demo's page) and `/demos/assets/<file>` (its script and the shared style).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// One embedded file: where it is served, its content type, its text.
struct Page {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every page and asset of the demos.
const PAGES: &[Page] = &[
    Page {
        path: "/",
        content_type: HTML,
        body: include_str!("../assets/index.html"),
    },
    Page {
        path: "/demos/assets/demo.css",
        content_type: CSS,
        body: include_str!("../assets/demo.css"),
    },
    Page {
        path: "/demos/assets/common.js",
        content_type: JS,
        body: include_str!("../assets/common.js"),
    },
    Page {
        path: "/demos/chat",
        content_type: HTML,
        body: include_str!("../assets/chat.html"),
    },
    Page {
        path: "/demos/assets/chat.js",
        content_type: JS,
        body: include_str!("../assets/chat.js"),
    },
];

/// The routes of [`PAGES`].
pub(crate) fn router() -> Router {
    let mut router = Router::new();
    for page in PAGES {
        let (content_type, body) = (page.content_type, page.body);
        router = router.route(
            page.path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    body,
                )
                    .into_response()
            }),
        );
    }
    router
}
