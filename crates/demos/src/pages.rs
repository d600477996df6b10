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
    Page {
        path: "/demos/auction",
        content_type: HTML,
        body: include_str!("../assets/auction.html"),
    },
    Page {
        path: "/demos/assets/auction.js",
        content_type: JS,
        body: include_str!("../assets/auction.js"),
    },
    Page {
        path: "/demos/notifications",
        content_type: HTML,
        body: include_str!("../assets/notifications.html"),
    },
    Page {
        path: "/demos/assets/notifications.js",
        content_type: JS,
        body: include_str!("../assets/notifications.js"),
    },
    Page {
        path: "/demos/dashboard",
        content_type: HTML,
        body: include_str!("../assets/dashboard.html"),
    },
    Page {
        path: "/demos/assets/dashboard.js",
        content_type: JS,
        body: include_str!("../assets/dashboard.js"),
    },
    Page {
        path: "/demos/game",
        content_type: HTML,
        body: include_str!("../assets/game.html"),
    },
    Page {
        path: "/demos/assets/game.js",
        content_type: JS,
        body: include_str!("../assets/game.js"),
    },
    Page {
        path: "/demos/editor",
        content_type: HTML,
        body: include_str!("../assets/editor.html"),
    },
    Page {
        path: "/demos/assets/editor.js",
        content_type: JS,
        body: include_str!("../assets/editor.js"),
    },
    Page {
        path: "/demos/assets/crdt.js",
        content_type: JS,
        body: include_str!("../assets/crdt.js"),
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
