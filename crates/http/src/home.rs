//! The start page served at `/` when `demos.enabled` is on (the default in development mode):
//! what this server is, where its endpoints are, how to get a token. The demo applications will
//! be served from here once they exist.
//!
//! The page is embedded in the binary and filled in once, when the router is built, with
//! what a visitor needs to know about this node (mode, whether the API wants a key). It never
//! shows a secret.

use axum::body::Bytes;
use axum::response::Html;

use crate::config::Config;

/// The page, with `{{placeholders}}` filled in by [`render`].
const TEMPLATE: &str = include_str!("../assets/index.html");

/// The start page for `config`, as served.
pub fn render(config: &Config) -> Html<Bytes> {
    let (ws, http) = if config.tls.is_enabled() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let api = &config.api;
    let (api_access, curl_key) = if !api.key.is_empty() {
        (
            "Send the key configured as <code>api.key</code> in the <code>X-API-Key</code> header \
             (or <code>Authorization: apikey KEY</code>).",
            " \\\n  -H \"X-API-Key: $API_KEY\"",
        )
    } else if api.insecure {
        (
            "On this node it answers without a key, to clients on the same machine only \
             (<code>api.insecure</code>, development mode); set <code>api.key</code> for anything \
             else.",
            "",
        )
    } else {
        (
            "It is disabled on this node: set <code>api.key</code> to turn it on.",
            " \\\n  -H \"X-API-Key: $API_KEY\"",
        )
    };
    let clients = if config.client.allow_anonymous {
        "This node accepts connections without a token (<code>client.allow_anonymous</code>); \
         they connect as anonymous users."
    } else {
        "This node needs a connection token from every client (or a connect proxy that \
         admits it)."
    };
    let page = TEMPLATE
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{mode}}", config.mode.as_str())
        .replace("{{ws}}", ws)
        .replace("{{http}}", http)
        .replace("{{api}}", api_access)
        .replace("{{curl_key}}", curl_key)
        .replace("{{clients}}", clients)
        // Configured text last, so that nothing in it is taken for a placeholder.
        .replace("{{address}}", &escape(&config.address.to_string()))
        .replace("{{node}}", &escape(&config.node_name));
    Html(Bytes::from(page))
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let mut config = Config::development();
        config.node_name = "<node>".into();
        let page = render(&config).0;
        let page = std::str::from_utf8(&page).unwrap();
        assert!(!page.contains("{{"), "{page}");
        assert!(page.contains("&lt;node&gt;"), "{page}");
        assert!(page.contains("/connection/websocket"));
        assert!(page.contains("switchboard gentoken --user ID"));
    }

    #[test]
    fn the_api_sentence_follows_the_key() {
        let mut config = Config::development();
        config.api.key = "s3cret-value".into();
        let page = render(&config).0;
        let page = std::str::from_utf8(&page).unwrap();
        assert!(page.contains("X-API-Key: $API_KEY"), "{page}");
        assert!(
            !page.contains("s3cret-value"),
            "the key must never be shown"
        );
        assert!(!page.contains("answers without a key"), "{page}");
    }
}
