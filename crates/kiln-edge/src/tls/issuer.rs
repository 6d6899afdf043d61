//! A certificate authority of the platform's own, for names no provided certificate covers:
//! a local install serves HTTPS (and HTTP/2 over ALPN) at once, and its clients trust one
//! root (`ca.pem`) instead of a certificate per name.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::TlsError;

/// The root certificate clients are given to trust.
const CA_FILE: &str = "ca.pem";
/// Its private key, readable by the owner only.
const KEY_FILE: &str = "ca-key.pem";
/// How long an issued certificate is valid.
const ISSUED_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Issued certificates start a little in the past, for clients whose clocks run behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Signs certificates for single names with a key kept on disk.
pub struct LocalIssuer {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
}

impl LocalIssuer {
    /// The authority kept in `dir` (`ca.pem`, `ca-key.pem`), made there on first use, so
    /// clients that trust it keep trusting the edge across restarts.
    pub fn load_or_create(dir: &Path) -> Result<LocalIssuer, TlsError> {
        let files = |source| TlsError::IssuerFiles {
            dir: dir.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(files)?;
        let key_path = dir.join(KEY_FILE);
        let ca_path = dir.join(CA_FILE);
        let key = match fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(TlsError::Sign)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = KeyPair::generate().map_err(TlsError::Sign)?;
                write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)
                    .map_err(files)?;
                // A new key makes any old root useless.
                remove_if_present(&ca_path).map_err(files)?;
                key
            }
            Err(e) => return Err(files(e)),
        };
        let ca_pem = match fs::read_to_string(&ca_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let pem = authority().self_signed(&key).map_err(TlsError::Sign)?.pem();
                write_atomically(&ca_path, pem.as_bytes(), 0o644).map_err(files)?;
                pem
            }
            Err(e) => return Err(files(e)),
        };
        let ca_der =
            CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| TlsError::Pem {
                what: "the local issuer's ca.pem",
                detail: e.to_string(),
            })?;
        Ok(LocalIssuer {
            issuer: Issuer::new(authority(), key),
            ca_pem,
            ca_der,
        })
    }

    /// The root certificate in PEM: what a client adds to its trusted roots.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A new key and certificate for `name`, and when it expires.
    pub(super) fn issue(&self, name: &str) -> Result<(CertifiedKey, SystemTime), TlsError> {
        let key = KeyPair::generate().map_err(TlsError::Sign)?;
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(TlsError::Sign)?;
        // The subject names the host alone (rcgen's default names rcgen).
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_owned());
        let now = SystemTime::now();
        let expires = now + ISSUED_LIFETIME;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = expires.into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(TlsError::Sign)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain = vec![cert.der().clone(), self.ca_der.clone()];
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key_der, &provider).map_err(TlsError::Key)?;
        Ok((certified, expires))
    }
}

/// The authority's parameters. The signing side is rebuilt from them and the stored key at
/// every start; only the name and key matter to a client checking a chain, and both are
/// unchanged. The name is neutral: end users may look at it.
fn authority() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Local certificate authority");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes through a temporary file and a rename, so a crash never leaves half a key.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let temporary = PathBuf::from(format!("{}.tmp", path.display()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    #[test]
    fn the_authority_survives_a_restart_and_signs_names() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let first = LocalIssuer::load_or_create(dir.path())?;
        let again = LocalIssuer::load_or_create(dir.path())?;
        assert_eq!(first.ca_pem(), again.ca_pem());
        let mode = fs::metadata(dir.path().join(KEY_FILE))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A certificate from the reloaded authority verifies against the root saved first.
        let (issued, _) = again.issue("shop.example.test")?;
        let leaf: &[u8] = issued.cert[0].as_ref();
        assert!(!leaf.windows(5).any(|w| w.eq_ignore_ascii_case(b"rcgen")));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(first.ca_der.clone())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()?;
        let name = rustls::pki_types::ServerName::try_from("shop.example.test")?;
        verifier.verify_server_cert(
            &issued.cert[0],
            &issued.cert[1..],
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )?;
        let other = rustls::pki_types::ServerName::try_from("other.example.test")?;
        assert!(
            verifier
                .verify_server_cert(
                    &issued.cert[0],
                    &[],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
        Ok(())
    }
}
