//! TLS in front of the edge: a certificate chosen by SNI for each handshake, and ALPN offering
//! HTTP/2 and HTTP/1.1.
//!
//! A name gets the first provided certificate valid for it (an operator's wildcard for the
//! platform's domains, or one per custom domain). A name none covers gets one from the local
//! issuer, if the edge has one, and only when the edge serves that name (a route, or a host
//! under an org's base domain), so a stranger cannot make it sign certificates for arbitrary
//! names. Any other name fails the handshake.

mod issuer;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

pub use self::issuer::LocalIssuer;
use crate::routes::{Routes, normalize_host};

/// What the edge serves TLS with.
#[derive(Default)]
pub struct TlsConfig {
    /// Certificates with their keys; each is served for every name it is valid for, the
    /// first one winning. The first also answers clients that send no name.
    pub certificates: Vec<Certificate>,
    /// Signs a certificate, on first use, for a served name no certificate above covers.
    pub local_issuer: Option<LocalIssuer>,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{what} is not valid PEM: {detail}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The certificate PEM holds no certificate.
    #[error("the certificate file holds no certificate")]
    NoCertificate,
    /// The key is not one the TLS stack can sign with, or does not belong to the certificate.
    #[error("the private key cannot be used with this certificate: {0}")]
    Key(#[source] rustls::Error),
    /// The TLS stack refused its own settings (protocol versions of the crypto provider).
    #[error("the TLS stack cannot be set up: {0}")]
    Setup(#[source] rustls::Error),
    /// The first certificate of the chain cannot be parsed.
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(#[source] webpki::Error),
    /// The local issuer's files could not be read or written.
    #[error("local issuer files in {dir}: {source}")]
    IssuerFiles {
        /// The issuer's directory.
        dir: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A certificate could not be made.
    #[error("could not make a certificate: {0}")]
    Sign(#[source] rcgen::Error),
}

/// A certificate chain (leaf first) with its private key.
#[derive(Clone)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("chain_len", &self.key.cert.len())
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// A chain and key in PEM, as certificate authorities and `openssl` write them.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Certificate, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "the certificate file",
                detail: e.to_string(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
            what: "the key file",
            detail: e.to_string(),
        })?;
        Certificate::from_der(chain, key)
    }

    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Certificate, TlsError> {
        let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
        webpki::EndEntityCert::try_from(leaf).map_err(TlsError::Certificate)?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(TlsError::Key)?;
        Ok(Certificate { key: Arc::new(key) })
    }

    /// Whether the leaf is valid for `name` (wildcards included), by the rules clients use.
    fn is_valid_for(&self, name: &ServerName<'_>) -> bool {
        self.key.end_entity_cert().is_ok_and(|leaf| {
            webpki::EndEntityCert::try_from(leaf)
                .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
        })
    }
}

/// Issued certificates are made again this long before they expire.
const REISSUE_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most issued certificates kept; past it the cache starts over (names are issued again on
/// their next handshake).
const MAX_ISSUED: usize = 10_000;

/// Chooses the certificate for each handshake.
struct Resolver {
    certificates: Vec<Certificate>,
    issuer: Option<LocalIssuer>,
    routes: Routes,
    issued: Mutex<HashMap<String, (Arc<CertifiedKey>, SystemTime)>>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("certificates", &self.certificates.len())
            .field("local_issuer", &self.issuer.is_some())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().and_then(normalize_host) else {
            return self.certificates.first().map(|c| Arc::clone(&c.key));
        };
        let server_name = ServerName::try_from(name.as_str()).ok()?;
        if let Some(found) = self
            .certificates
            .iter()
            .find(|c| c.is_valid_for(&server_name))
        {
            return Some(Arc::clone(&found.key));
        }
        let issuer = self.issuer.as_ref()?;
        if !self.routes.current().serves(&name) {
            return None;
        }
        self.issued(issuer, name)
    }
}

impl Resolver {
    /// The issued certificate for `name`, made now if there is none or it is about to expire.
    fn issued(&self, issuer: &LocalIssuer, name: String) -> Option<Arc<CertifiedKey>> {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        if let Some((key, expires)) = issued.get(&name)
            && *expires > now + REISSUE_BEFORE
        {
            return Some(Arc::clone(key));
        }
        match issuer.issue(&name) {
            Ok((key, expires)) => {
                if issued.len() >= MAX_ISSUED {
                    issued.clear();
                }
                let key = Arc::new(key);
                issued.insert(name, (Arc::clone(&key), expires));
                Some(key)
            }
            Err(e) => {
                tracing::warn!(%name, error = %e, "could not issue a certificate");
                None
            }
        }
    }
}

/// The acceptor for the edge's TLS listener.
pub(crate) fn acceptor(config: TlsConfig, routes: Routes) -> Result<TlsAcceptor, TlsError> {
    let resolver = Resolver {
        certificates: config.certificates,
        issuer: config.local_issuer,
        routes,
        issued: Mutex::new(HashMap::new()),
    };
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Setup)?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
