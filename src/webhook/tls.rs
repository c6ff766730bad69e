//! The webhook's TLS server config from PEM files, on rustls with the `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read TLS certificate {path}: {message} (--tls-cert-file must name a PEM \
         certificate chain, leaf first)"
    )]
    Cert { path: PathBuf, message: String },
    #[error(
        "cannot read TLS key {path}: {message} (--tls-key-file must name a PEM private key: \
         PKCS#8, PKCS#1 or SEC1)"
    )]
    Key { path: PathBuf, message: String },
    #[error(
        "TLS certificate {cert} and key {key} cannot be used together: {message} (--tls-key-file \
         must be the key of the --tls-cert-file certificate)"
    )]
    Config {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// Read `cert` (a PEM chain, leaf first) and `key` (PKCS#8, PKCS#1 or SEC1 PEM) into a server
/// config that speaks HTTP/1.1. Fails when the files are unreadable, hold no certificate or key,
/// or the key does not belong to the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let cert_error = |message: String| TlsError::Cert {
        path: cert.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block found".into()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_error = |message: String| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| config_error(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
