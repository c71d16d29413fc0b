//! TLS for the device port: `CERT_DIR/fullchain.pem` and `CERT_DIR/privkey.pem`, TLS 1.2 and 1.3
//! (thermostats run OpenSSL 1.0.2, so 1.2 with ECDHE-AES-GCM is what they negotiate).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub fn install_crypto_provider() {
    // Another component may have installed it already; that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn server_config(dir: &Path) -> anyhow::Result<ServerConfig> {
    let chain_path = dir.join("fullchain.pem");
    let key_path = dir.join("privkey.pem");
    for p in [&chain_path, &key_path] {
        if !p.is_file() {
            bail!(
                "CERT_DIR is set but {} is missing (put fullchain.pem and privkey.pem there, or unset CERT_DIR for plain HTTP)",
                p.display()
            );
        }
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&chain_path)
        .with_context(|| format!("reading {}", chain_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificates in {}", chain_path.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", chain_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading the private key {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and private key do not form a usable pair")?;
    // A held response keeps only its send key once its head is out (`conn::sealed`).
    config.enable_secret_extraction = true;
    Ok(config)
}
