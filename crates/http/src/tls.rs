//! TLS termination with rustls, so `wss://` and `https://` work without a proxy in front.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

/// Section `[tls]`: both files set turns TLS on for the listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert_file: String,
    /// Private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key_file: String,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn is_enabled(&self) -> bool {
        !self.cert_file.is_empty() || !self.key_file.is_empty()
    }

    /// Loads the certificate and key into an acceptor (HTTP/1.1 over TLS).
    pub fn acceptor(&self) -> anyhow::Result<TlsAcceptor> {
        anyhow::ensure!(
            !self.cert_file.is_empty() && !self.key_file.is_empty(),
            "tls: set both cert_file and key_file"
        );
        let certs = load_certs(Path::new(&self.cert_file))?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).with_context(|| {
            format!(
                "tls.key_file: cannot read a private key from {}",
                self.key_file
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("tls: protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("tls: certificate and key do not match")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("tls.cert_file: cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls.cert_file: invalid PEM in {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "tls.cert_file: no certificate in {}",
        path.display()
    );
    Ok(certs)
}
