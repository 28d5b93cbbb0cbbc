//! TLS set-up: per-domain certificates chosen by SNI with a fallback, the
//! development certificate generated on first start, and the channel-binding
//! data (RFC 5929 tls-server-end-point, RFC 9266 tls-exporter) that SCRAM-PLUS
//! needs from a finished handshake.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

use crate::config::Config;
use crate::sasl::{ChannelBindingData, ChannelBindingType};

/// A certificate chain with its key, plus the tls-server-end-point hash of its leaf.
#[derive(Debug)]
struct LoadedCert {
    key: Arc<CertifiedKey>,
    end_point_hash: Vec<u8>,
}

/// Chooses the certificate for a handshake by the SNI name.
#[derive(Debug)]
pub struct CertStore {
    by_domain: HashMap<String, LoadedCert>,
    fallback: LoadedCert,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).key.clone())
    }
}

impl CertStore {
    fn pick(&self, sni: Option<&str>) -> &LoadedCert {
        sni.and_then(|name| self.by_domain.get(&name.to_ascii_lowercase()))
            .unwrap_or(&self.fallback)
    }

    /// Loads the configured certificates, generating the development
    /// certificate when no fallback is configured.
    pub fn from_config(config: &Config) -> Result<CertStore, String> {
        let fallback = if config.tls.cert.is_empty() {
            let (cert, key) = ensure_dev_cert(&config.tls.dev_cert_dir, &config.domains())?;
            load(&cert, &key)?
        } else {
            load(Path::new(&config.tls.cert), Path::new(&config.tls.key))?
        };
        let mut by_domain = HashMap::new();
        for h in &config.host {
            if let (Some(c), Some(k)) = (&h.cert, &h.key) {
                by_domain.insert(h.domain.to_ascii_lowercase(), load(c, k)?);
            }
        }
        Ok(CertStore {
            by_domain,
            fallback,
        })
    }

    /// Channel-binding data for a finished server handshake.
    pub fn channel_binding(&self, conn: &ServerConnection) -> ChannelBindingData {
        let mut available = Vec::new();
        // RFC 9266 forbids tls-exporter on TLS 1.2 without extended master
        // secret; offering it on TLS 1.3 only keeps that rule trivially true.
        if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            let mut out = vec![0u8; 32];
            if conn
                .export_keying_material(&mut out, b"EXPORTER-Channel-Binding", None)
                .is_ok()
            {
                available.push((ChannelBindingType::TlsExporter, out));
            }
        }
        let cert = self.pick(conn.server_name());
        available.push((
            ChannelBindingType::TlsServerEndPoint,
            cert.end_point_hash.clone(),
        ));
        ChannelBindingData { available }
    }
}

/// Builds the rustls configuration shared by STARTTLS and direct TLS.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(store);
    Ok(Arc::new(cfg))
}

fn load(cert: &Path, key: &Path) -> Result<LoadedCert, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{}: no certificate found", cert.display()))?;
    let end_point_hash = end_point_hash(leaf.as_ref());
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    Ok(LoadedCert {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        end_point_hash,
    })
}

/// Returns the dev certificate's paths, creating a self-signed one for all
/// configured domains if it is not there yet.
pub fn ensure_dev_cert(dir: &Path, domains: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("dev-cert.pem");
    let key = dir.join("dev-key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let generated = rcgen::generate_simple_self_signed(domains.to_vec())
        .map_err(|e| format!("generating a development certificate: {e}"))?;
    std::fs::write(&cert, generated.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    write_private(&key, generated.key_pair.serialize_pem().as_bytes())?;
    tracing::warn!(
        cert = %cert.display(),
        "generated a self-signed development certificate; configure [tls] cert/key for production"
    );
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// RFC 5929 §4.1: hash the certificate with its signature's hash function,
/// using SHA-256 when that is MD5 or SHA-1.
fn end_point_hash(cert_der: &[u8]) -> Vec<u8> {
    match signature_hash(cert_der) {
        Some(SigHash::Sha384) => sha2::Sha384::digest(cert_der).to_vec(),
        Some(SigHash::Sha512) => sha2::Sha512::digest(cert_der).to_vec(),
        _ => sha2::Sha256::digest(cert_der).to_vec(),
    }
}

enum SigHash {
    Sha384,
    Sha512,
}

/// Reads the outer signatureAlgorithm OID of a DER certificate:
/// `SEQUENCE { tbsCertificate, SEQUENCE { OID, … }, BIT STRING }`.
fn signature_hash(der: &[u8]) -> Option<SigHash> {
    fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        Some((tag, 2 + n, len))
    }
    let (_, hl, _) = header(der)?;
    let body = der.get(hl..)?;
    let (_, tbs_hl, tbs_len) = header(body)?;
    let alg = body.get(tbs_hl + tbs_len..)?;
    let (_, alg_hl, _) = header(alg)?;
    let oid_tlv = alg.get(alg_hl..)?;
    let (tag, oid_hl, oid_len) = header(oid_tlv)?;
    if tag != 0x06 {
        return None;
    }
    let oid = oid_tlv.get(oid_hl..oid_hl + oid_len)?;
    const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    match oid {
        SHA384_RSA | ECDSA_SHA384 => Some(SigHash::Sha384),
        SHA512_RSA | ECDSA_SHA512 => Some(SigHash::Sha512),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cert_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = ensure_dev_cert(dir.path(), &["localhost".into()]).unwrap();
        let before = std::fs::read(&c).unwrap();
        let (c2, _) = ensure_dev_cert(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(before, std::fs::read(&c2).unwrap());
        let loaded = load(&c, &k).unwrap();
        // rcgen signs with ECDSA P-256/SHA-256, so the end-point hash is SHA-256.
        assert_eq!(loaded.end_point_hash.len(), 32);
        let der: Vec<_> = CertificateDer::pem_file_iter(&c)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        assert!(signature_hash(der[0].as_ref()).is_none());
    }
}
