//! What the edge serves HTTPS with: the operator's certificate, if given, and the local
//! issuer kept in the data directory for every served name it does not cover.

use std::path::Path;

use anyhow::Context;
use kiln_edge::{Certificate, LocalIssuer, TlsConfig};

use crate::config::TlsFiles;

/// Where the local issuer keeps its root and key, below a data directory.
pub const LOCAL_CA_DIR: &str = "edge-ca";

/// Reads the operator's certificate files and loads (or creates) the local issuer in
/// `ca_dir`.
pub fn load(files: Option<&TlsFiles>, ca_dir: &Path) -> anyhow::Result<TlsConfig> {
    let certificates = match files {
        Some(files) => {
            let read = |path: &Path| {
                std::fs::read(path).with_context(|| format!("read {}", path.display()))
            };
            let certificate = Certificate::from_pem(&read(&files.cert)?, &read(&files.key)?)
                .with_context(|| {
                    format!(
                        "the edge certificate {} with key {}",
                        files.cert.display(),
                        files.key.display()
                    )
                })?;
            vec![certificate]
        }
        None => Vec::new(),
    };
    let local_issuer = LocalIssuer::load_or_create(ca_dir).with_context(|| {
        format!(
            "the edge's local certificate authority in {}",
            ca_dir.display()
        )
    })?;
    Ok(TlsConfig {
        certificates,
        local_issuer: Some(local_issuer),
    })
}
