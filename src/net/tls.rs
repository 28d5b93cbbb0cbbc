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
#[derive(Debug, Clone)]
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
        Some(self.pick(hello.server_name(), None).key.clone())
    }
}

/// Chooses the certificate for a STARTTLS handshake on a stream whose
/// header addressed `domain`: by SNI when the client names a domain we
/// have a certificate for, else `domain`'s (peers such as Prosody 0.12
/// send no SNI on s2s), else the fallback.
#[derive(Debug)]
struct AddressedResolver {
    store: Arc<CertStore>,
    domain: String,
}

impl ResolvesServerCert for AddressedResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.store
                .pick(hello.server_name(), Some(&self.domain))
                .key
                .clone(),
        )
    }
}

impl CertStore {
    /// The certificate for `sni` if we have one, else `addressed`'s (the
    /// domain the stream header named), else the fallback.
    fn pick(&self, sni: Option<&str>, addressed: Option<&str>) -> &LoadedCert {
        let known = |name: &str| self.by_domain.get(&name.to_ascii_lowercase());
        sni.and_then(known)
            .or_else(|| addressed.and_then(known))
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
        let mut store = CertStore {
            by_domain,
            fallback,
        };
        store.adopt(config.components().into_iter().map(|(d, _)| d));
        Ok(store)
    }

    /// Domains with no certificate setting of their own (components',
    /// in-process services' such as the chat service) use a host's (or
    /// the fallback) certificate that names them, e.g. by a wildcard, so
    /// peers can authenticate them by certificate too.
    pub fn adopt(&mut self, domains: impl IntoIterator<Item = String>) {
        for domain in domains {
            let domain = domain.to_ascii_lowercase();
            if self.by_domain.contains_key(&domain) {
                continue;
            }
            let named = self
                .by_domain
                .values()
                .chain([&self.fallback])
                .find(|c| cert_names(c, &domain))
                .cloned();
            if let Some(cert) = named {
                self.by_domain.insert(domain, cert);
            }
        }
    }

    /// Channel-binding data for a finished server handshake on a stream
    /// whose header addressed `addressed` (None for direct TLS).
    pub fn channel_binding(
        &self,
        conn: &ServerConnection,
        addressed: Option<&str>,
    ) -> ChannelBindingData {
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
        let cert = self.pick(conn.server_name(), addressed);
        available.push((
            ChannelBindingType::TlsServerEndPoint,
            cert.end_point_hash.clone(),
        ));
        ChannelBindingData { available }
    }
}

/// Builds the rustls configuration of client streams: with `addressed`,
/// for STARTTLS on a stream whose header named that domain (its
/// certificate when the client sends no SNI); without, for direct TLS.
///
/// Session resumption (`[tls] session_tickets`, `session_cache`): each
/// configuration has its own ticket key and cache, so a session resumes
/// only where it began (the same certificate choice, hence the same
/// tls-server-end-point binding).
pub fn server_config(
    store: Arc<CertStore>,
    addressed: Option<&str>,
    tls: &crate::config::TlsConfig,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver(store, addressed));
    cfg.session_storage = if tls.session_cache > 0 {
        rustls::server::ServerSessionMemoryCache::new(tls.session_cache)
    } else {
        Arc::new(rustls::server::NoServerSessionStorage {})
    };
    if tls.session_tickets {
        cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    }
    if !tls.session_tickets && tls.session_cache == 0 {
        cfg.send_tls13_tickets = 0;
    }
    Ok(Arc::new(cfg))
}

fn resolver(store: Arc<CertStore>, addressed: Option<&str>) -> Arc<dyn ResolvesServerCert> {
    match addressed {
        Some(domain) => Arc::new(AddressedResolver {
            store,
            domain: domain.to_ascii_lowercase(),
        }),
        None => store,
    }
}

/// The certificates s2s peers are checked against: the system's roots plus
/// `[s2s] ca_file`.
pub fn s2s_roots(ca_file: &str) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "some system CA certificates could not be read");
    }
    roots.add_parsable_certificates(native.certs);
    if !ca_file.is_empty() {
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{ca_file}: {e}"))? {
            let cert = cert.map_err(|e| format!("{ca_file}: {e}"))?;
            roots.add(cert).map_err(|e| format!("{ca_file}: {e}"))?;
        }
    }
    Ok(Arc::new(roots))
}

/// Always presents one certificate (ours, for the sending domain).
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks the handshake signatures of a peer's certificate (the peer
/// holds the key of the certificate it sent) with the provider's
/// algorithms; shared by our two custom verifiers, which differ only in
/// how they judge the certificate itself.
#[derive(Debug)]
struct HandshakeSignatures(Arc<rustls::crypto::CryptoProvider>);

type SignatureCheck = Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>;

impl HandshakeSignatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> SignatureCheck {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> SignatureCheck {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the receiving server's certificate normally (`roots`, name),
/// but lets the handshake finish when that fails: the stream is then
/// encrypted but not authenticated by certificate, and dialback
/// (XEP-0220) authenticates it instead of SASL EXTERNAL. Whether the
/// certificate was valid is decided again after the handshake with
/// `peer_cert_valid_for` on the connection's own peer certificates, so
/// nothing per-connection is kept here. The handshake signatures are
/// still verified: the peer must hold the key of the certificate it sent.
#[derive(Debug)]
struct DialbackFallbackVerifier {
    /// None when there are no roots at all (no system roots, no
    /// `ca_file`): then no certificate is valid.
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    signatures: HandshakeSignatures,
}

impl rustls::client::danger::ServerCertVerifier for DialbackFallbackVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let checked = match &self.webpki {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err("no trust anchors configured".to_string()),
        };
        if let Err(error) = checked {
            tracing::info!(
                peer = ?server_name,
                error,
                "s2s peer certificate not valid; encrypting anyway, authentication needs dialback"
            );
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> SignatureCheck {
        self.signatures.tls12(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> SignatureCheck {
        self.signatures.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.signatures.schemes()
    }
}

/// The rustls client configuration of outgoing s2s streams sent from
/// `domain`: the peer's certificate is checked against `roots` (a failure
/// leaves the stream to dialback instead of aborting it, see
/// `DialbackFallbackVerifier`), and ours for `domain` is presented as the
/// client certificate (SASL EXTERNAL, XEP-0178).
pub fn s2s_client_config(
    roots: Arc<rustls::RootCertStore>,
    store: &CertStore,
    domain: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = if roots.is_empty() {
        None
    } else {
        Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| e.to_string())?,
        )
    };
    let verifier = DialbackFallbackVerifier {
        webpki,
        signatures: HandshakeSignatures(provider.clone()),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(ClientCert(
            store.pick(Some(domain), None).key.clone(),
        )));
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate, still checking the handshake
/// signatures (the peer holds the key of what it sent). Only for probes
/// that judge the certificate elsewhere or not at all (`ctl check`'s port
/// checks), never for a stream that carries anything.
#[derive(Debug)]
struct AnyServerCert(HandshakeSignatures);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> SignatureCheck {
        self.0.tls12(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> SignatureCheck {
        self.0.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.schemes()
    }
}

/// A client configuration for probing our own listeners: any certificate
/// accepted (see `AnyServerCert`), no client certificate.
pub fn probe_client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(HandshakeSignatures(provider))))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Asks s2s peers for a certificate without requiring one, and accepts any
/// at the TLS level (it only proves the peer holds the key); whether it is
/// trusted, and for which domain, is decided later by
/// `peer_cert_valid_for`, so a peer with a certificate we do not trust can
/// still use dialback.
#[derive(Debug)]
struct AnyClientCert(HandshakeSignatures);

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> SignatureCheck {
        self.0.tls12(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> SignatureCheck {
        self.0.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.schemes()
    }
}

/// The rustls configuration of incoming s2s streams addressed to
/// `addressed`: our certificates as for clients, and the peer asked for
/// its certificate.
pub fn s2s_server_config(
    store: Arc<CertStore>,
    addressed: &str,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(AnyClientCert(HandshakeSignatures(provider))))
        .with_cert_resolver(resolver(store, Some(addressed)));
    Ok(Arc::new(cfg))
}

/// The ALPN protocol of direct-TLS s2s streams (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// The rustls configuration of incoming direct-TLS s2s streams (XEP-0368):
/// the certificate chosen by SNI (no header has named a domain yet), ALPN
/// "xmpp-server", and the peer asked for its certificate.
pub fn s2s_direct_server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(AnyClientCert(HandshakeSignatures(provider))))
        .with_cert_resolver(resolver(store, None));
    cfg.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
    Ok(Arc::new(cfg))
}

/// Whether the certificate chain a peer presented chains to `roots` and
/// names `domain` (RFC 6125 DNS-ID): what SASL EXTERNAL on s2s needs
/// (XEP-0178 §2).
pub fn peer_cert_valid_for(
    chain: &[CertificateDer<'_>],
    roots: &rustls::RootCertStore,
    domain: &str,
) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let Ok(name) = rustls_pki_types::ServerName::try_from(domain) else {
        return false;
    };
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        rustls_pki_types::UnixTime::now(),
        algs.all,
    )
    .is_ok()
        && rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// Does the leaf of `cert` name `domain` (a SAN, wildcards included)?
fn cert_names(cert: &LoadedCert, domain: &str) -> bool {
    certified_names(&cert.key, domain)
}

/// Loads a certificate chain and its key as the server does (for `ctl
/// check`, which must judge exactly what the server would present).
pub fn load_certified(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    load(cert, key).map(|c| c.key)
}

/// Does the leaf of `key` name `domain`, as a client's check would find it?
pub fn certified_names(key: &CertifiedKey, domain: &str) -> bool {
    let (Some(leaf), Ok(name)) = (
        key.cert.first(),
        rustls_pki_types::ServerName::try_from(domain),
    ) else {
        return false;
    };
    rustls::server::ParsedCertificate::try_from(leaf)
        .is_ok_and(|parsed| rustls::client::verify_server_name(&parsed, &name).is_ok())
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

    /// Outgoing s2s TLS presents the sending domain's `[[host]] cert` as
    /// the client certificate (XEP-0178), other domains the fallback; and
    /// STARTTLS without SNI gets the addressed domain's certificate.
    #[test]
    fn component_domains_use_a_certificate_that_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a.example".to_string(), "*.a.example".to_string()];
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        let (c, k) = (dir.path().join("a.pem"), dir.path().join("a.key"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.key_pair.serialize_pem()).unwrap();
        let mut config = Config::default();
        config.tls.dev_cert_dir = dir.path().join("dev");
        config.host = vec![crate::config::HostConfig {
            domain: "a.example".into(),
            cert: Some(c),
            key: Some(k),
            allow_registration: false,
        }];
        for domain in ["echo.a.example", "other.example"] {
            config.component.push(crate::config::ComponentConfig {
                domain: domain.into(),
                secret: "s".into(),
            });
        }
        let mut store = CertStore::from_config(&config).unwrap();
        // An in-process service's domain (the chat service) the same way.
        store.adopt(["conference.a.example".to_string()]);
        let host_der = ck.cert.der().to_vec();
        let picked = |d: &str| store.pick(None, Some(d)).key.cert[0].to_vec();
        // *.a.example names echo.a.example: the host's certificate.
        assert_eq!(picked("echo.a.example"), host_der);
        assert_eq!(picked("conference.a.example"), host_der);
        // Nothing names other.example: the fallback.
        assert_eq!(picked("other.example"), store.fallback.key.cert[0].to_vec());
    }

    #[test]
    fn host_certificates_for_s2s_client_auth_and_sni_less_starttls() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["a.example".to_string()]).unwrap();
        let (c, k) = (dir.path().join("a.pem"), dir.path().join("a.key"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.key_pair.serialize_pem()).unwrap();
        let mut config = Config::default();
        config.tls.dev_cert_dir = dir.path().join("dev");
        config.host = vec![
            crate::config::HostConfig {
                domain: "a.example".into(),
                cert: Some(c),
                key: Some(k),
                allow_registration: false,
            },
            crate::config::HostConfig {
                domain: "b.example".into(),
                cert: None,
                key: None,
                allow_registration: false,
            },
        ];
        let store = CertStore::from_config(&config).unwrap();
        let roots = Arc::new(rustls::RootCertStore::empty());
        let presented = |domain: &str| {
            let cfg = s2s_client_config(roots.clone(), &store, domain).unwrap();
            let key = cfg
                .client_auth_cert_resolver
                .resolve(&[], &[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
                .unwrap();
            key.cert[0].to_vec()
        };
        let host_der = ck.cert.der().to_vec();
        let fallback_der = store.fallback.key.cert[0].to_vec();
        assert_eq!(presented("a.example"), host_der);
        assert_eq!(presented("b.example"), fallback_der);
        assert_eq!(
            store.pick(None, Some("a.example")).key.cert[0].to_vec(),
            host_der
        );
        assert_eq!(
            store.pick(None, Some("b.example")).key.cert[0].to_vec(),
            fallback_der
        );
        assert_eq!(
            store.pick(Some("b.example"), Some("a.example")).key.cert[0].to_vec(),
            host_der
        );
        assert_eq!(store.pick(None, None).key.cert[0].to_vec(), fallback_der);
    }
}
