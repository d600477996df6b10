//! One connection attempt: TCP, the WebSocket handshake, the `connect` command and its reply.

use bytes::Bytes;
use switchboard_ws::{ClientHandshake, Message, WsError, WsSocket};
use tokio::net::TcpStream;

use crate::client::Config;
use crate::error::ClientError;
use crate::protocol::{
    encode_command, lines, parse_line, to_params, ConnectRequest, Incoming, WireConnectResult,
};

/// The WebSocket over TCP the client uses.
pub(crate) type Socket = WsSocket<TcpStream>;

/// Where to connect, from a `ws://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host[:port]` as written in the URL, for the `Host` header.
    pub(crate) authority: String,
    /// `host:port` to dial (port 80 when the URL has none).
    pub(crate) addr: String,
    /// Path and query.
    pub(crate) path: String,
}

impl Endpoint {
    /// Parses a `ws://` URL. `wss://` (TLS) is not supported.
    pub(crate) fn parse(url: &str) -> Result<Self, ClientError> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| {
                if url.starts_with("wss://") || url.starts_with("https://") {
                    ClientError::protocol("TLS (wss://) is not supported")
                } else {
                    ClientError::protocol(format!("not a ws:// URL: {url}"))
                }
            })?;
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(ClientError::protocol(format!("no host in URL: {url}")));
        }
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        let has_port = match authority.rfind(']') {
            // [v6] or [v6]:port
            Some(i) => authority[i..].contains(':'),
            None => authority.contains(':'),
        };
        let addr = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority: authority.to_owned(),
            addr,
            path,
        })
    }
}

/// A connected session: the socket, the connect result, and lines that arrived with the reply.
#[derive(Debug)]
pub(crate) struct Connected {
    pub(crate) ws: Socket,
    pub(crate) result: WireConnectResult,
    pub(crate) rest: Vec<Bytes>,
}

/// A failed attempt: the error and whether trying again may help.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: ClientError,
    pub(crate) reconnect: bool,
}

/// Whether a close (or disconnect) code allows reconnecting: 3000-3499 and 4000-4499 do,
/// 3500-3999 and 4500-4999 do not, transport-level codes below 3000 do except 1009 (message
/// too big: it would happen again).
pub(crate) fn reconnect_allowed(code: u32) -> bool {
    match code {
        1009 => false,
        0..=2999 | 3000..=3499 | 4000..=4499 => true,
        _ => false,
    }
}

/// Code and reason for a failed socket, and whether to reconnect.
pub(crate) fn ws_failure(e: WsError) -> Failure {
    let (code, reason, reconnect) = match e {
        WsError::Io(e) => {
            return Failure {
                error: ClientError::Io(e),
                reconnect: true,
            }
        }
        WsError::Handshake(e) => {
            return Failure {
                error: ClientError::protocol(format!("websocket handshake failed: {e}")),
                reconnect: true,
            }
        }
        WsError::Protocol(p) => {
            let code = u32::from(p.close_code());
            (code, p.to_string(), reconnect_allowed(code))
        }
        other => (1006, other.to_string(), true),
    };
    Failure {
        error: ClientError::Disconnected { code, reason },
        reconnect,
    }
}

/// Connects and authenticates, bounded by the request timeout. `id` is the connect command's id.
pub(crate) async fn dial(config: &Config, id: u32) -> Result<Connected, Failure> {
    match tokio::time::timeout(config.timeout, dial_inner(config, id)).await {
        Ok(r) => r,
        Err(_) => Err(Failure {
            error: ClientError::Timeout,
            reconnect: true,
        }),
    }
}

async fn dial_inner(config: &Config, id: u32) -> Result<Connected, Failure> {
    let tcp = TcpStream::connect(&config.endpoint.addr)
        .await
        .map_err(|e| Failure {
            error: ClientError::Io(e),
            reconnect: true,
        })?;
    // Commands are small and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    let mut hs = ClientHandshake::new(
        &config.endpoint.authority,
        &config.endpoint.path,
        &config.ws,
    );
    for (name, value) in &config.headers {
        hs = hs.header(name, value);
    }
    let mut ws = Socket::connect(tcp, &hs, config.ws.clone())
        .await
        .map_err(ws_failure)?;
    let params = to_params(&ConnectRequest {
        token: &config.token,
        data: config.data.as_deref(),
        name: &config.name,
        version: &config.version,
    });
    ws.send(Message::Text(encode_command(id, "connect", &params)))
        .await
        .map_err(ws_failure)?;
    loop {
        let frame = match ws.recv().await.map_err(ws_failure)? {
            Some(Message::Text(frame)) => frame,
            Some(Message::Close(frame)) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| (f.code, f.reason));
                let _ = ws.close(code, "").await;
                return Err(Failure {
                    error: ClientError::Disconnected {
                        code: code.into(),
                        reason,
                    },
                    reconnect: reconnect_allowed(code.into()),
                });
            }
            None => {
                return Err(Failure {
                    error: ClientError::Disconnected {
                        code: 1006,
                        reason: "connection closed during connect".into(),
                    },
                    reconnect: true,
                })
            }
            Some(_) => continue,
        };
        let mut it = lines(&frame).collect::<Vec<_>>().into_iter();
        while let Some(line) = it.next() {
            match parse_line(&line) {
                Ok(Incoming::Reply { id: rid, result }) if rid == id => {
                    return match result {
                        Ok(raw) => {
                            let result = match raw {
                                Some(raw) => {
                                    serde_json::from_str(raw.get()).map_err(|e| Failure {
                                        error: ClientError::protocol(format!(
                                            "bad connect reply: {e}"
                                        )),
                                        reconnect: false,
                                    })?
                                }
                                None => WireConnectResult::default(),
                            };
                            Ok(Connected {
                                ws,
                                result,
                                rest: it.collect(),
                            })
                        }
                        Err(e) => Err(Failure {
                            reconnect: e.temporary,
                            error: ClientError::Server {
                                code: e.code,
                                message: e.message,
                                temporary: e.temporary,
                            },
                        }),
                    };
                }
                Ok(Incoming::Push(p)) => {
                    if let Some(d) = p.disconnect {
                        return Err(Failure {
                            error: ClientError::Disconnected {
                                code: d.code,
                                reason: d.reason,
                            },
                            reconnect: d.reconnect,
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failure {
                        error: ClientError::protocol(format!("malformed message from server: {e}")),
                        reconnect: false,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("ws://127.0.0.1:8000/connection/websocket").unwrap();
        assert_eq!(e.addr, "127.0.0.1:8000");
        assert_eq!(e.authority, "127.0.0.1:8000");
        assert_eq!(e.path, "/connection/websocket");
        let e = Endpoint::parse("ws://example.com").unwrap();
        assert_eq!((e.addr.as_str(), e.path.as_str()), ("example.com:80", "/"));
        let e = Endpoint::parse("ws://[::1]/x?cf_ws_frame_ping_pong=true").unwrap();
        assert_eq!(e.addr, "[::1]:80");
        assert_eq!(e.path, "/x?cf_ws_frame_ping_pong=true");
        let e = Endpoint::parse("ws://[::1]:9000?a=b").unwrap();
        assert_eq!((e.addr.as_str(), e.path.as_str()), ("[::1]:9000", "/?a=b"));
        assert!(Endpoint::parse("wss://example.com/").is_err());
        assert!(Endpoint::parse("example.com").is_err());
        assert!(Endpoint::parse("ws:///path").is_err());
    }

    #[test]
    fn reconnect_rules() {
        for code in [1000, 1001, 1006, 1011, 3000, 3001, 3499, 4000, 4499] {
            assert!(reconnect_allowed(code), "{code}");
        }
        for code in [1009, 3500, 3999, 4500, 4999, 5000] {
            assert!(!reconnect_allowed(code), "{code}");
        }
    }
}
