//! The device certificate: made on first boot, kept on the data partition.
//!
//! Self-signed (no CA could vouch for `llamabox-1a2b.local`): phones pin its SHA-256
//! fingerprint, which pairing hands over inside the PAKE-sealed credential, so a
//! paired phone can tell this box from an impostor on the same network.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct Identity {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub fingerprint: String,
}

pub fn load_or_create(dir: &Path, device_name: &str) -> Result<Identity> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert_path.exists() || !key_path.exists() {
        let (cert, key) = generate(device_name)?;
        // Key first: a cert without its key is useless, a key without a cert is remade.
        crate::files::write_private(&key_path, key.as_bytes())?;
        crate::files::write_private(&cert_path, cert.as_bytes())?;
        tracing::info!("made the device certificate {}", cert_path.display());
    }
    let cert = CertificateDer::from_pem_file(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading {}", key_path.display()))?;
    let fingerprint = hex::encode(Sha256::digest(&cert));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .context("the device certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        config: Arc::new(config),
        fingerprint,
    })
}

fn generate(device_name: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![
        format!("{device_name}.local"),
        "localhost".to_string(),
    ])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device_name);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Llama Box");
    for ip in [
        std::net::IpAddr::from([127, 0, 0, 1]),
        crate::USB_GADGET_ADDRESS.into(),
    ] {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}
