//! The CLI's own settings: which API to talk to and with which token. Written by
//! `kiln up` and `kiln login`, read by every other verb.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What `~/.config/kiln/cli.toml` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// API base URL.
    pub api_url: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
}

/// `KILN_CLI_CONFIG`, else `$XDG_CONFIG_HOME/kiln/cli.toml`, else `~/.config/kiln/cli.toml`.
pub fn path() -> PathBuf {
    if let Some(path) = std::env::var_os("KILN_CLI_CONFIG") {
        return PathBuf::from(path);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/etc"));
    base.join("kiln").join("cli.toml")
}

/// Reads the profile; a missing file is an empty profile.
pub fn load() -> anyhow::Result<Profile> {
    let path = path();
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("read {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profile::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Writes the profile atomically, readable only by its owner (it holds a token).
pub fn save(profile: &Profile) -> anyhow::Result<PathBuf> {
    let path = path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    kiln_control::write_private_file(&path, toml::to_string(profile)?.as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}
