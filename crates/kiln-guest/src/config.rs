//! `kiln-guest --config FILE`: the agent's settings as one JSON file, written by a VM driver
//! into the machine, so that secrets (the agent token, the environment) never appear on a
//! command line, where every process of the machine could read them in `/proc`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::ListenAddr;
use crate::protocol::AgentToken;

/// The contents of the `--config` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// Where to listen, as in `--listen`: `unix:PATH` or `tcp:IP:PORT`.
    pub listen: String,
    /// The machine's id, reported by `health`.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// Environment for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// When set, every connection must begin with this token.
    #[serde(default)]
    pub token: Option<AgentToken>,
    /// The workspace root.
    #[serde(default = "default_workspace")]
    pub workspace: PathBuf,
}

fn default_workspace() -> PathBuf {
    PathBuf::from("/workspace")
}

/// Why the `--config` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid config.
    #[error("invalid config file {path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        detail: String,
    },
}

impl GuestConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<GuestConfig, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |detail: String| ConfigError::Invalid {
            path: path.to_owned(),
            detail,
        };
        let config: GuestConfig =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        config.listen_addr().map_err(|e| invalid(e.to_string()))?;
        if let Some((key, _)) = config
            .env
            .iter()
            .find(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0'))
        {
            return Err(invalid(format!("environment variable {key:?} is invalid")));
        }
        Ok(config)
    }

    /// The parsed `listen` address.
    pub fn listen_addr(&self) -> Result<ListenAddr, crate::agent::listen::ParseListenAddrError> {
        self.listen.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.json");
        let cases = [
            (
                r#"{"listen":"tcp:10.0.0.2:7000","machine_id":"sbx_1","token":"t","env":{"A":"1"}}"#,
                true,
            ),
            (r#"{"listen":"unix:/run/a.sock"}"#, true),
            (r#"{"listen":"nowhere"}"#, false),
            (r#"{"listen":"unix:/a","extra":1}"#, false),
            (r#"{"listen":"unix:/a","env":{"A=B":"1"}}"#, false),
            ("{", false),
        ];
        for (text, ok) in cases {
            std::fs::write(&path, text).expect("write");
            assert_eq!(GuestConfig::load(&path).is_ok(), ok, "{text}");
        }
        std::fs::write(&path, cases[0].0).expect("write");
        let config = GuestConfig::load(&path).expect("valid");
        assert!(config.token.as_ref().is_some_and(|t| t.matches("t")));
        assert_eq!(config.workspace, PathBuf::from("/workspace"));
        assert!(!format!("{config:?}").contains("\"t\""));
        assert!(GuestConfig::load(&dir.path().join("missing")).is_err());
    }
}
