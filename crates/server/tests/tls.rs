//! TLS termination: `wss://` and `https://` straight to the server, with a certificate generated
//! by the test.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use switchboard_http::config::Config;
use switchboard_http::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

struct TlsServer {
    server: Server,
    connector: tokio_rustls::TlsConnector,
    _dir: tempfile::TempDir,
}

async fn start() -> TlsServer {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let mut config = Config::development();
    config.address = "127.0.0.1:0".parse().unwrap();
    config.tls.cert_file = cert_file.display().to_string();
    config.tls.key_file = key_file.display().to_string();
    let server = Server::start(config).await.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsServer {
        server,
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        _dir: dir,
    }
}

async fn tls_stream(s: &TlsServer) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(s.server.addr())
        .await
        .unwrap();
    s.connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn wss_connect_subscribe_publish() {
    let s = start().await;
    let url = format!(
        "wss://localhost:{}/connection/websocket",
        s.server.addr().port()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls_stream(&s).await)
        .await
        .unwrap();
    ws.send(Message::text(
        "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"secure\"}}\n{\"id\":3,\"publish\":{\"channel\":\"secure\",\"data\":{\"tls\":true}}}",
    ))
    .await
    .unwrap();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !seen.contains("\"pub\"") {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no publication over wss")
            .unwrap()
            .unwrap();
        seen.push_str(msg.to_text().unwrap());
        seen.push('\n');
    }
    assert!(seen.contains("{\"id\":1,\"connect\""), "{seen}");
    assert!(seen.contains("{\"tls\":true}"), "{seen}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn https_health_and_plaintext_refused() {
    let s = start().await;
    let mut tls = tls_stream(&s).await;
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tls.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(s.server.addr())
        .await
        .unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut buf),
    )
    .await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    s.server.shutdown().await;
}

#[test]
fn checkconfig_reports_bad_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        "[tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    let err = switchboard_http::config::load(&switchboard_http::config::Sources {
        file: Some(path),
        env: vec![],
        flags: vec![],
    })
    .unwrap_err();
    assert!(
        err.problems.iter().any(|p| p.contains("tls.cert_file")),
        "{:?}",
        err.problems
    );
}
