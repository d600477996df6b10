//! The server HTTP API (`POST /api/<method>`) with arbitrary bodies, driven in-process: the
//! server's real axum router (`switchboard_http::app::router`) over an in-memory hub, called
//! with `tower::ServiceExt::oneshot`, no sockets.
//!
//! Input: one flags byte, then the request body.
//! - bits 0-3: the method (the 13 API methods in `Method::parse` order; 13-15: unknown names);
//! - bits 4-5: credentials: `X-API-Key`, `Authorization: apikey`, none, a wrong key;
//! - bit 6: no `Content-Type` header.
//!
//! Besides "never panics": no 5xx, only the statuses the API documents, and every answer is a
//! JSON object (`{"result"}`, `{"error"}` or `{"replies"}` for a 200).
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard_hub::{Hub, MemoryBroker};
use switchboard_http::app::{self, AppState};
use switchboard_http::config::Config;
use tokio::runtime::Runtime;
use tokio_util::task::TaskTracker;

const KEY: &str = "fuzz-api-key";

const METHODS: [&str; 16] = [
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "batch",
    "nope",
    "openapi",
    "Publish",
];

static RT: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
});

static ROUTER: LazyLock<Router> = LazyLock::new(|| {
    RT.block_on(async {
        let mut config = Config::development();
        config.api.key = KEY.into();
        config.api.insecure = false;
        let memory = MemoryBroker::shared();
        let hub = Hub::with_presence(config.hub(), memory.clone(), memory, "fuzz".into());
        app::router(AppState {
            hub,
            config: Arc::new(config),
            tasks: TaskTracker::new(),
        })
    })
});

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(flags & 0x0f)];
    let mut req = Request::post(format!("/api/{method}"));
    req = match (flags >> 4) & 3 {
        0 => req.header("x-api-key", KEY),
        1 => req.header("authorization", format!("apikey {KEY}")),
        2 => req,
        _ => req.header("x-api-key", "wrong"),
    };
    if flags & 0x40 == 0 {
        req = req.header("content-type", "application/json");
    }
    let mut req = req
        .body(Body::from(body.to_vec()))
        .expect("a request with valid parts builds");
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));

    // Outside `block_on`: building the router the first time blocks on the runtime itself.
    let router = ROUTER.clone();
    let (status, answer) = RT.block_on(async {
        use tower::ServiceExt as _;
        let resp = router
            .oneshot(req)
            .await
            .expect("axum routers are infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("in-memory bodies do not fail");
        (status, bytes)
    });

    assert!(
        !status.is_server_error(),
        "{status} for POST /api/{method}: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        matches!(
            status,
            StatusCode::OK
                | StatusCode::BAD_REQUEST
                | StatusCode::UNAUTHORIZED
                | StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::PAYLOAD_TOO_LARGE
        ),
        "undocumented status {status} for POST /api/{method}"
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        return;
    }
    let v: Value = match serde_json::from_slice(&answer) {
        Ok(v) => v,
        // Client data comes back verbatim and may nest deeper than a tree can be built.
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => return,
        Err(e) => panic!(
            "{status} answer is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&answer)
        ),
    };
    let obj = v.as_object().expect("answers are JSON objects");
    if status == StatusCode::OK {
        assert!(
            obj.len() == 1
                && (obj.contains_key("result")
                    || obj.contains_key("error")
                    || obj.contains_key("replies")),
            "unexpected 200 answer {v}"
        );
    } else {
        assert!(obj.contains_key("error"), "{status} without error: {v}");
    }
});
