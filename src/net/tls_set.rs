//! Every TLS configuration the server hands out, built together from one
//! configuration snapshot, so a reload (SIGHUP, `ctl reload`) can replace
//! them all at once: new handshakes see the new certificates, streams
//! already encrypted keep the keys they negotiated.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::tls::{self, CertStore};
use crate::config::Config;

pub struct TlsSet {
    /// The certificates by domain (and the fallback).
    pub certs: Arc<CertStore>,
    /// Direct-TLS client streams (certificate by SNI).
    pub direct: Arc<ServerConfig>,
    /// STARTTLS on client streams, per addressed host (its certificate
    /// when the client sends no SNI).
    starttls: HashMap<String, Arc<ServerConfig>>,
    /// Outgoing s2s streams, per sending domain (each presents that
    /// domain's certificate).
    s2s_client: HashMap<String, Arc<ClientConfig>>,
    /// Incoming s2s STARTTLS, per addressed domain (asks for a client
    /// certificate).
    s2s_server: HashMap<String, Arc<ServerConfig>>,
    /// Incoming direct-TLS s2s streams (XEP-0368).
    pub s2s_direct: Arc<ServerConfig>,
    /// The roots peers' certificates are checked against.
    pub s2s_roots: Arc<RootCertStore>,
    /// The HTTPS listener (ALPN http/1.1, certificate by SNI).
    pub https: Arc<ServerConfig>,
}

impl TlsSet {
    /// Loads the certificates `config` names (generating the development
    /// one when none is configured) and builds every configuration.
    /// `services`: the in-process services' domains (a chat service),
    /// which federate with a host's certificate that names them.
    pub fn build(config: &Config, services: Vec<String>) -> Result<TlsSet, String> {
        let mut certs = CertStore::from_config(config)?;
        certs.adopt(services.iter().cloned());
        let certs = Arc::new(certs);
        let direct = tls::server_config(certs.clone(), None, &config.tls)?;
        let mut https = (*direct).clone();
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        let s2s_roots = tls::s2s_roots(&config.s2s.ca_file)?;
        let mut starttls = HashMap::new();
        for domain in config.domains() {
            let c = tls::server_config(certs.clone(), Some(&domain), &config.tls)?;
            starttls.insert(domain, c);
        }
        // Component domains and in-process services federate too (their
        // stanzas to and from other servers go over our s2s streams): each
        // gets the certificate that names it, else the fallback one.
        let mut s2s_client = HashMap::new();
        let mut s2s_server = HashMap::new();
        let components = config.components().into_iter().map(|(d, _)| d);
        for domain in config
            .domains()
            .into_iter()
            .chain(components)
            .chain(services)
        {
            let c = tls::s2s_client_config(s2s_roots.clone(), &certs, &domain)?;
            s2s_client.insert(domain.clone(), c);
            let c = tls::s2s_server_config(certs.clone(), &domain)?;
            s2s_server.insert(domain, c);
        }
        let s2s_direct = tls::s2s_direct_server_config(certs.clone())?;
        Ok(TlsSet {
            certs,
            direct,
            starttls,
            s2s_client,
            s2s_server,
            s2s_direct,
            s2s_roots,
            https: Arc::new(https),
        })
    }

    /// STARTTLS on a client stream whose header addressed `domain` (one of
    /// ours; otherwise the direct-TLS configuration).
    pub fn starttls(&self, domain: &str) -> Arc<ServerConfig> {
        self.starttls.get(domain).unwrap_or(&self.direct).clone()
    }

    /// Outgoing s2s streams sent from `domain`.
    pub fn s2s_client(&self, domain: &str) -> Option<Arc<ClientConfig>> {
        self.s2s_client.get(domain).cloned()
    }

    /// STARTTLS on an incoming s2s stream whose header addressed `domain`.
    pub fn s2s_starttls(&self, domain: &str) -> Option<Arc<ServerConfig>> {
        self.s2s_server.get(domain).cloned()
    }
}
