//! The opening handshake (RFC 6455 §4) for both roles, plus the permessage-deflate offer and
//! answer (RFC 7692 §5).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use sha1::{Digest, Sha1};

use super::deflate::{self, DeflateParams};
use super::error::HandshakeError;
use super::WsConfig;

/// The GUID that RFC 6455 §1.3 appends to the key.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A client never waits for a handshake response larger than this.
const MAX_RESPONSE_LEN: usize = 16 << 10;

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
///
/// ```
/// assert_eq!(
///     switchboard_ws::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
///     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
/// );
/// ```
pub fn accept_key(sec_websocket_key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(sec_websocket_key);
    sha.update(WS_GUID);
    BASE64.encode(sha.finalize())
}

/// What a valid upgrade request asked for and what the server answers.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeInfo {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept_key: String,
    /// The permessage-deflate parameters agreed on, if the config allows compression and the
    /// client offered it; pass them to the socket.
    pub deflate: Option<DeflateParams>,
    /// The subprotocols the client offered (`Sec-WebSocket-Protocol`), in order.
    pub protocols: Vec<String>,
}

impl UpgradeInfo {
    /// The headers of the `101 Switching Protocols` answer: `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Accept` and, when negotiated, `Sec-WebSocket-Extensions`. Add a
    /// `Sec-WebSocket-Protocol` yourself if you select one of [`UpgradeInfo::protocols`].
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(4);
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(v) = HeaderValue::from_str(&self.accept_key) {
            h.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(ext) = self.deflate.as_ref().map(DeflateParams::response_header) {
            if let Ok(v) = HeaderValue::from_str(&ext) {
                h.insert(SEC_WEBSOCKET_EXTENSIONS, v);
            }
        }
        h
    }

    /// Whether the client offered subprotocol `name`.
    pub fn offers_protocol(&self, name: &str) -> bool {
        self.protocols.iter().any(|p| p == name)
    }
}

/// Iterates over the comma-separated tokens of every value of header `name`.
fn header_tokens<'a>(
    headers: &'a HeaderMap,
    name: &'a HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Server side: checks an upgrade request and prepares the answer.
///
/// Requires `GET`, a `Connection` header with the `upgrade` token, `Upgrade: websocket`,
/// `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` of 16 base64-encoded bytes. When
/// `config.compression` is set and the client offers permessage-deflate, the first acceptable
/// offer is taken (always without context takeover in either direction, so an idle connection
/// holds no compression state).
pub fn validate_upgrade(
    headers: &HeaderMap,
    method: &Method,
    config: &WsConfig,
) -> Result<UpgradeInfo, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::MethodNotGet);
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if !has_token(headers, &UPGRADE, "websocket") {
        return Err(HandshakeError::MissingUpgradeWebsocket);
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes().trim_ascii())
        != Some(b"13")
    {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::MissingKey)?
        .as_bytes()
        .trim_ascii();
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    let deflate = if config.compression {
        deflate::negotiate_server(
            headers
                .get_all(SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )
    } else {
        None
    };
    let protocols = header_tokens(headers, &SEC_WEBSOCKET_PROTOCOL)
        .map(str::to_owned)
        .collect();
    Ok(UpgradeInfo {
        accept_key: accept_key(key),
        deflate,
        protocols,
    })
}

/// Client side: the upgrade request to send and the check of the server's answer.
///
/// ```
/// use switchboard_ws::{ClientHandshake, WsConfig};
/// let hs = ClientHandshake::new("127.0.0.1:8000", "/connection/websocket", &WsConfig::default())
///     .header("Origin", "http://localhost");
/// let request = hs.request_bytes();
/// assert!(request.starts_with(b"GET /connection/websocket HTTP/1.1\r\n"));
/// ```
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    host: String,
    path: String,
    key: String,
    headers: Vec<(String, String)>,
    protocols: Vec<String>,
    offer_deflate: bool,
}

/// The parts of a server's `101` answer that matter after the handshake.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// How many bytes of the buffer the HTTP response took; anything after it is already
    /// WebSocket frames.
    pub consumed: usize,
    /// The permessage-deflate parameters the server accepted, if any.
    pub deflate: Option<DeflateParams>,
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
}

impl ClientHandshake {
    /// A request for `path` on `host` (the `Host` header, e.g. `"127.0.0.1:8000"`) with a
    /// fresh random key; offers permessage-deflate when `config.compression` is set.
    pub fn new(host: &str, path: &str, config: &WsConfig) -> Self {
        let mut raw = [0u8; 16];
        fastrand::fill(&mut raw);
        Self {
            host: host.to_owned(),
            path: if path.is_empty() { "/" } else { path }.to_owned(),
            key: BASE64.encode(raw),
            headers: Vec::new(),
            protocols: Vec::new(),
            offer_deflate: config.compression,
        }
    }

    /// Adds a header to the request (e.g. `Origin`, `Cookie`, `Authorization`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Offers a subprotocol (`Sec-WebSocket-Protocol`).
    pub fn protocol(mut self, name: &str) -> Self {
        self.protocols.push(name.to_owned());
        self
    }

    /// The `Sec-WebSocket-Key` this request carries.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The HTTP/1.1 request to write to the connection.
    pub fn request_bytes(&self) -> Vec<u8> {
        let mut r = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n",
            self.path, self.host, self.key
        );
        if self.offer_deflate {
            r.push_str("Sec-WebSocket-Extensions: ");
            r.push_str(deflate::CLIENT_OFFER);
            r.push_str("\r\n");
        }
        if !self.protocols.is_empty() {
            r.push_str("Sec-WebSocket-Protocol: ");
            r.push_str(&self.protocols.join(", "));
            r.push_str("\r\n");
        }
        for (name, value) in &self.headers {
            r.push_str(name);
            r.push_str(": ");
            r.push_str(value);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        r.into_bytes()
    }

    /// Parses the server's answer from the start of `buf`.
    ///
    /// `Ok(None)`: incomplete, read more and call again with the longer buffer.
    /// `Ok(Some(resp))`: a valid `101`; bytes after `resp.consumed` are WebSocket frames.
    pub fn parse_response(&self, buf: &[u8]) -> Result<Option<ClientResponse>, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let consumed = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return if buf.len() > MAX_RESPONSE_LEN {
                    Err(HandshakeError::ResponseTooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(e) => return Err(HandshakeError::MalformedResponse(e.to_string())),
        };
        let code = resp.code.unwrap_or(0);
        if code != 101 {
            return Err(HandshakeError::UnexpectedStatus(code));
        }
        let mut map = HeaderMap::new();
        for h in resp.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|e| HandshakeError::MalformedResponse(e.to_string()))?;
            let value = HeaderValue::from_bytes(h.value)
                .map_err(|e| HandshakeError::MalformedResponse(e.to_string()))?;
            map.append(name, value);
        }
        if !has_token(&map, &UPGRADE, "websocket") {
            return Err(HandshakeError::MissingUpgradeWebsocket);
        }
        if !has_token(&map, &CONNECTION, "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        let expected = accept_key(self.key.as_bytes());
        if map
            .get(SEC_WEBSOCKET_ACCEPT)
            .map(|v| v.as_bytes().trim_ascii())
            != Some(expected.as_bytes())
        {
            return Err(HandshakeError::InvalidAcceptKey);
        }
        let mut deflate = None;
        for value in map.get_all(SEC_WEBSOCKET_EXTENSIONS) {
            let value = value
                .to_str()
                .map_err(|e| HandshakeError::MalformedResponse(e.to_string()))?;
            if !self.offer_deflate || deflate.is_some() {
                return Err(HandshakeError::UnexpectedExtension(value.to_owned()));
            }
            deflate = Some(
                deflate::parse_client_response(value)
                    .map_err(HandshakeError::UnexpectedExtension)?,
            );
        }
        let protocol = match map.get(SEC_WEBSOCKET_PROTOCOL) {
            None => None,
            Some(v) => {
                let p = String::from_utf8_lossy(v.as_bytes()).trim().to_owned();
                if !self.protocols.contains(&p) {
                    return Err(HandshakeError::UnexpectedProtocol(p));
                }
                Some(p)
            }
        };
        Ok(Some(ClientResponse {
            consumed,
            deflate,
            protocol,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        for (k, v) in extra {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn server_validation() {
        let cfg = WsConfig::default();
        let info = validate_upgrade(&request(&[]), &Method::GET, &cfg).unwrap();
        assert_eq!(info.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(info.deflate, None);
        let h = info.response_headers();
        assert_eq!(h[SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(h.get(SEC_WEBSOCKET_EXTENSIONS).is_none());

        assert_eq!(
            validate_upgrade(&request(&[]), &Method::POST, &cfg),
            Err(HandshakeError::MethodNotGet)
        );
        let mut h = request(&[]);
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        let err = validate_upgrade(&h, &Method::GET, &cfg).unwrap_err();
        assert_eq!(err, HandshakeError::UnsupportedVersion);
        assert_eq!(err.status_code(), http::StatusCode::UPGRADE_REQUIRED);
        let mut h = request(&[]);
        h.remove(SEC_WEBSOCKET_KEY);
        assert_eq!(
            validate_upgrade(&h, &Method::GET, &cfg),
            Err(HandshakeError::MissingKey)
        );
        let mut h = request(&[]);
        h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(
            validate_upgrade(&h, &Method::GET, &cfg),
            Err(HandshakeError::InvalidKey)
        );
        let mut h = request(&[]);
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(
            validate_upgrade(&h, &Method::GET, &cfg),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
        let mut h = request(&[]);
        h.remove(UPGRADE);
        assert_eq!(
            validate_upgrade(&h, &Method::GET, &cfg),
            Err(HandshakeError::MissingUpgradeWebsocket)
        );
    }

    #[test]
    fn server_deflate_and_protocols() {
        let h = request(&[
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
            (
                "sec-websocket-protocol",
                "centrifuge-json, centrifuge-protobuf",
            ),
        ]);
        let info = validate_upgrade(&h, &Method::GET, &WsConfig::default()).unwrap();
        assert_eq!(info.deflate, None, "compression disabled by default");
        assert!(info.offers_protocol("centrifuge-protobuf"));
        let info =
            validate_upgrade(&h, &Method::GET, &WsConfig::default().compression(true)).unwrap();
        let p = info.deflate.expect("negotiated");
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        assert_eq!(
            info.response_headers()[SEC_WEBSOCKET_EXTENSIONS],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn client_roundtrip() {
        let cfg = WsConfig::default().compression(true);
        let hs = ClientHandshake::new("example.com", "/chat", &cfg).protocol("chat");
        let req = String::from_utf8(hs.request_bytes()).unwrap();
        assert!(req.contains("Sec-WebSocket-Extensions: permessage-deflate"));
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: chat\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=10\r\n\r\n",
            accept_key(hs.key().as_bytes())
        );
        let mut bytes = resp.into_bytes();
        bytes.extend_from_slice(&[0x81, 0x00]);
        let bytes = &bytes[..];
        for cut in 0..bytes.len() - 2 {
            assert_eq!(hs.parse_response(&bytes[..cut]), Ok(None), "cut {cut}");
        }
        let r = hs.parse_response(bytes).unwrap().unwrap();
        assert_eq!(r.consumed, bytes.len() - 2);
        assert_eq!(r.protocol.as_deref(), Some("chat"));
        let d = r.deflate.unwrap();
        assert!(d.server_no_context_takeover);
        assert_eq!(d.client_max_window_bits, 10);

        let bad = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(
            hs.parse_response(bad),
            Err(HandshakeError::InvalidAcceptKey)
        );
        let forbidden = b"HTTP/1.1 403 Forbidden\r\n\r\n";
        assert_eq!(
            hs.parse_response(forbidden),
            Err(HandshakeError::UnexpectedStatus(403))
        );
    }
}
