//! Configuration of `kiln up`: a TOML file read into [`RawConfig`], `KILN_*` variables on
//! top (the variables win), validated once into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The TOML file as written by an operator. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Store, artifacts, objects, machine state.
    pub data_dir: Option<PathBuf>,
    /// Control-plane API listen address.
    pub api_addr: Option<String>,
    /// Edge HTTP listen address.
    pub edge_http_addr: Option<String>,
    /// Edge HTTPS listen address.
    pub edge_https_addr: Option<String>,
    /// Pin each edge worker thread to its own CPU.
    pub edge_pin_workers: Option<bool>,
    /// A certificate chain (PEM) the edge serves for the names it covers, e.g. a wildcard
    /// for the base domain; app URLs are `https://` when it is set.
    pub edge_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `edge_tls_cert`.
    pub edge_tls_key: Option<PathBuf>,
    /// S3-compatible endpoint listen address.
    pub s3_addr: Option<String>,
    /// The S3 URL handed to clients (presigned URLs), when not `http://{s3_addr}`.
    pub s3_public_url: Option<String>,
    /// Base domain of the default org.
    pub base_domain: Option<String>,
    /// Machine driver: `process`, `qemu` or `firecracker`.
    pub runtime: Option<String>,
    /// The operator token (value).
    pub operator_token: Option<String>,
    /// A file holding the operator token.
    pub operator_token_file: Option<PathBuf>,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: Option<String>,
    /// Where built images are kept (may be shared between data dirs).
    pub images_dir: Option<PathBuf>,
    /// Where the `kiln-guest` and `kiln-launch` binaries are.
    pub bin_dir: Option<PathBuf>,
    /// Machine network.
    #[serde(default)]
    pub network: RawNetwork,
    /// Size limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Virtual machines (the `qemu` and `firecracker` drivers).
    #[serde(default)]
    pub vm: RawVm,
}

/// `[vm]` of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVm {
    /// A guest kernel image instead of the one `scripts/setup.sh` unpacks.
    pub kernel: Option<PathBuf>,
    /// The modules directory (`lib/modules/<version>`) of that kernel.
    pub kernel_modules: Option<PathBuf>,
    /// Size of each VM's workspace disk in MiB (sparse).
    pub workspace_mib: Option<u64>,
}

/// `[network]` of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// IPv4 CIDR that machine addresses come from.
    pub subnet: Option<String>,
    /// Whether machines may reach the internet (NAT).
    pub egress: Option<bool>,
}

/// `[limits]` of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest file accepted by a sandbox file write, in bytes.
    pub max_file_bytes: Option<u64>,
    /// Largest release artifact, in bytes.
    pub max_artifact_bytes: Option<u64>,
    /// Seconds a new deployment has to pass its health check.
    pub health_timeout_s: Option<u64>,
    /// Seconds a replaced deployment's machine stays warm for an instant rollback.
    pub warm_window_s: Option<u64>,
    /// Default memory of a sandbox in MiB.
    pub sandbox_memory_mib: Option<u32>,
    /// Default vCPUs of a sandbox.
    pub sandbox_vcpus: Option<u32>,
    /// Most processes (and threads) in one machine.
    pub machine_pids_max: Option<u32>,
}

/// A certificate chain and its key, both PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// API listen address.
    pub api_addr: SocketAddr,
    /// Edge HTTP listen address.
    pub edge_http_addr: SocketAddr,
    /// Edge HTTPS listen address.
    pub edge_https_addr: SocketAddr,
    /// Pin each edge worker thread to its own CPU (for a node that runs the edge alone).
    pub edge_pin_workers: bool,
    /// The certificate chain and key files the edge serves, when the operator gave them.
    pub edge_tls: Option<TlsFiles>,
    /// S3 endpoint listen address.
    pub s3_addr: SocketAddr,
    /// The S3 URL handed to clients; `None` means `http://{s3_addr}`.
    pub s3_public_url: Option<String>,
    /// Base domain of the default org.
    pub base_domain: String,
    /// Requested driver; `None` picks the best available.
    pub runtime: Option<String>,
    /// Operator token given by the operator, if any.
    pub operator_token: Option<String>,
    /// Metadata store URL.
    pub database_url: String,
    /// Image cache.
    pub images_dir: PathBuf,
    /// Directory of the helper binaries.
    pub bin_dir: PathBuf,
    /// Machine subnet, as CIDR text.
    pub subnet: String,
    /// Whether machines may reach the internet.
    pub egress: bool,
    /// Largest sandbox file write.
    pub max_file_bytes: u64,
    /// Largest release artifact.
    pub max_artifact_bytes: u64,
    /// Time a new deployment has to pass its health check.
    pub health_timeout: std::time::Duration,
    /// Time a replaced deployment's machine stays warm.
    pub warm_window: std::time::Duration,
    /// Default sandbox memory.
    pub sandbox_memory_mib: u32,
    /// Default sandbox vCPUs.
    pub sandbox_vcpus: u32,
    /// Most processes per machine.
    pub machine_pids_max: u32,
    /// Guest kernel for VM drivers; `None` uses the one `scripts/setup.sh` unpacks.
    pub vm_kernel: Option<PathBuf>,
    /// Modules directory of [`Self::vm_kernel`].
    pub vm_kernel_modules: Option<PathBuf>,
    /// Size of each VM's workspace disk in MiB.
    pub vm_workspace_mib: u64,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// A value is invalid.
    #[error("{name}: {detail}")]
    Invalid {
        /// The setting (TOML key or variable).
        name: &'static str,
        /// What to fix.
        detail: String,
    },
}

impl Config {
    /// The URL end users reach `host` at through the edge: `https://` on the HTTPS port when
    /// the operator gave the edge a certificate, else `http://`; the port is left out when it
    /// is the scheme's default.
    pub fn app_url(&self, host: &str) -> String {
        let (scheme, port, default) = match self.edge_tls {
            Some(_) => ("https", self.edge_https_addr.port(), 443),
            None => ("http", self.edge_http_addr.port(), 80),
        };
        if port == default {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{port}")
        }
    }

    /// Reads the file (if any), applies `KILN_*` variables from `env`, validates.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?
            }
            None => RawConfig::default(),
        };
        Self::from_raw(raw, env)
    }

    fn from_raw(
        raw: RawConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let data_dir = env("KILN_DATA_DIR")
            .map(PathBuf::from)
            .or(raw.data_dir)
            .unwrap_or_else(|| default_data_dir(&env));
        // Machines and sockets are addressed by absolute paths.
        let data_dir = std::path::absolute(&data_dir).map_err(|e| ConfigError::Invalid {
            name: "KILN_DATA_DIR",
            detail: format!("`{}` cannot be made absolute: {e}", data_dir.display()),
        })?;
        let addr = |var: &'static str, file: Option<String>, default: &str| {
            let text = env(var).or(file).unwrap_or_else(|| default.to_owned());
            text.parse::<SocketAddr>()
                .map_err(|_| ConfigError::Invalid {
                    name: var,
                    detail: format!("`{text}` is not an address: use IP:PORT, e.g. 127.0.0.1:7070"),
                })
        };
        let operator_token = match env("KILN_OPERATOR_TOKEN").or(raw.operator_token) {
            Some(token) => Some(token),
            None => match raw.operator_token_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|source| ConfigError::Read { path, source })?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            },
        };
        let runtime = env("KILN_RUNTIME").or(raw.runtime);
        if let Some(r) = &runtime
            && !matches!(r.as_str(), "process" | "qemu" | "firecracker")
        {
            return Err(ConfigError::Invalid {
                name: "KILN_RUNTIME",
                detail: format!("`{r}` is not a driver: use process, qemu or firecracker"),
            });
        }
        let base_domain = env("KILN_BASE_DOMAIN")
            .or(raw.base_domain)
            .unwrap_or_else(|| "localhost".to_owned());
        crate::validate::domain("base_domain", &base_domain).map_err(|e| ConfigError::Invalid {
            name: "KILN_BASE_DOMAIN",
            detail: e.problem().detail,
        })?;
        let database_url = env("KILN_DATABASE_URL")
            .or(raw.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("kiln.db").display()));
        let bin_dir = env("KILN_BIN_DIR")
            .map(PathBuf::from)
            .or(raw.bin_dir)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(Path::to_owned))
            })
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin"));
        let egress = match env("KILN_NETWORK_EGRESS") {
            Some(v) => parse_bool("KILN_NETWORK_EGRESS", &v)?,
            None => raw.network.egress.unwrap_or(true),
        };
        let edge_tls = match (
            env("KILN_EDGE_TLS_CERT")
                .map(PathBuf::from)
                .or(raw.edge_tls_cert),
            env("KILN_EDGE_TLS_KEY")
                .map(PathBuf::from)
                .or(raw.edge_tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (cert, _) => {
                return Err(ConfigError::Invalid {
                    name: if cert.is_some() {
                        "KILN_EDGE_TLS_KEY"
                    } else {
                        "KILN_EDGE_TLS_CERT"
                    },
                    detail: "the edge's certificate and its key go together; set both or neither"
                        .into(),
                });
            }
        };
        let edge_pin_workers = match env("KILN_EDGE_PIN_WORKERS") {
            Some(v) => parse_bool("KILN_EDGE_PIN_WORKERS", &v)?,
            None => raw.edge_pin_workers.unwrap_or(false),
        };
        let vm_workspace_mib = match env("KILN_VM_WORKSPACE_MIB") {
            Some(v) => v.parse::<u64>().map_err(|_| ConfigError::Invalid {
                name: "KILN_VM_WORKSPACE_MIB",
                detail: format!("`{v}` is not a size in MiB"),
            })?,
            None => raw.vm.workspace_mib.unwrap_or(8192),
        };
        if vm_workspace_mib < 64 {
            return Err(ConfigError::Invalid {
                name: "KILN_VM_WORKSPACE_MIB",
                detail: format!("{vm_workspace_mib} MiB is too small; use at least 64"),
            });
        }
        Ok(Config {
            vm_kernel: env("KILN_VM_KERNEL").map(PathBuf::from).or(raw.vm.kernel),
            vm_kernel_modules: env("KILN_VM_MODULES")
                .map(PathBuf::from)
                .or(raw.vm.kernel_modules),
            vm_workspace_mib,
            api_addr: addr("KILN_API_ADDR", raw.api_addr, "127.0.0.1:7070")?,
            edge_http_addr: addr("KILN_EDGE_HTTP_ADDR", raw.edge_http_addr, "127.0.0.1:8080")?,
            edge_https_addr: addr(
                "KILN_EDGE_HTTPS_ADDR",
                raw.edge_https_addr,
                "127.0.0.1:8443",
            )?,
            edge_pin_workers,
            edge_tls,
            s3_addr: addr("KILN_S3_ADDR", raw.s3_addr, "127.0.0.1:7090")?,
            s3_public_url: env("KILN_S3_PUBLIC_URL").or(raw.s3_public_url),
            base_domain,
            runtime,
            operator_token,
            database_url,
            images_dir: env("KILN_IMAGES_DIR")
                .map(PathBuf::from)
                .or(raw.images_dir)
                .unwrap_or_else(|| data_dir.join("images")),
            bin_dir,
            subnet: env("KILN_NETWORK_SUBNET")
                .or(raw.network.subnet)
                .unwrap_or_else(|| "10.88.0.0/16".to_owned()),
            egress,
            max_file_bytes: raw.limits.max_file_bytes.unwrap_or(100 << 20),
            max_artifact_bytes: raw.limits.max_artifact_bytes.unwrap_or(2 << 30),
            health_timeout: std::time::Duration::from_secs(
                raw.limits.health_timeout_s.unwrap_or(60),
            ),
            warm_window: std::time::Duration::from_secs(raw.limits.warm_window_s.unwrap_or(300)),
            sandbox_memory_mib: raw.limits.sandbox_memory_mib.unwrap_or(1024),
            sandbox_vcpus: raw.limits.sandbox_vcpus.unwrap_or(1),
            machine_pids_max: raw.limits.machine_pids_max.unwrap_or(1024),
            data_dir,
        })
    }
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(ConfigError::Invalid {
            name,
            detail: format!("`{value}` is not a boolean: use true or false"),
        }),
    }
}

/// `/var/lib/kiln` for root, `~/.local/share/kiln` for anyone else.
fn default_data_dir(env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    if nix_is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    match env("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/kiln"),
        None => PathBuf::from("/var/lib/kiln"),
    }
}

fn nix_is_root() -> bool {
    // The owner of /proc/self is the effective uid; avoids an unsafe geteuid call.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn vm_settings_come_from_file_and_variables() {
        let raw: RawConfig =
            toml::from_str("[vm]\nkernel = \"/k/vmlinuz\"\nworkspace_mib = 512\n").expect("toml");
        let cfg = Config::from_raw(raw, env_of(&[("KILN_VM_MODULES", "/k/modules")]))
            .expect("valid config");
        assert_eq!(cfg.vm_kernel.as_deref(), Some(Path::new("/k/vmlinuz")));
        assert_eq!(
            cfg.vm_kernel_modules.as_deref(),
            Some(Path::new("/k/modules"))
        );
        assert_eq!(cfg.vm_workspace_mib, 512);
        let small = Config::from_raw(
            RawConfig::default(),
            env_of(&[("KILN_VM_WORKSPACE_MIB", "8")]),
        );
        assert!(small.is_err());
    }

    #[test]
    fn variables_win_over_the_file() {
        let raw: RawConfig = toml::from_str(
            "api_addr = \"127.0.0.1:1000\"\nbase_domain = \"file.test\"\n[network]\negress = false\n",
        )
        .expect("valid toml");
        let cfg = Config::from_raw(
            raw,
            env_of(&[("KILN_API_ADDR", "127.0.0.1:2000"), ("KILN_DATA_DIR", "/d")]),
        )
        .expect("valid config");
        assert_eq!(cfg.api_addr.port(), 2000);
        assert_eq!(cfg.base_domain, "file.test");
        assert!(!cfg.egress);
        assert_eq!(cfg.database_url, "sqlite:///d/kiln.db");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_raw(RawConfig::default(), env_of(&[("KILN_API_ADDR", "nope")]))
            .expect_err("bad address");
        assert!(err.to_string().contains("KILN_API_ADDR"), "{err}");
        let err = Config::from_raw(RawConfig::default(), env_of(&[("KILN_RUNTIME", "docker")]))
            .expect_err("bad runtime");
        assert!(
            err.to_string().contains("process, qemu or firecracker"),
            "{err}"
        );
        assert!(toml::from_str::<RawConfig>("apii_addr = \"x\"").is_err());
    }

    #[test]
    fn app_urls_are_https_once_the_edge_has_a_certificate() {
        let plain = Config::from_raw(
            RawConfig::default(),
            env_of(&[("KILN_EDGE_HTTP_ADDR", "0.0.0.0:80")]),
        )
        .expect("valid config");
        assert_eq!(plain.app_url("shop.apps.test"), "http://shop.apps.test");
        let raw: RawConfig = toml::from_str(
            "edge_https_addr = \"0.0.0.0:8443\"\nedge_tls_cert = \"/c.pem\"\nedge_tls_key = \"/k.pem\"\n",
        )
        .expect("valid toml");
        let secure = Config::from_raw(raw, env_of(&[])).expect("valid config");
        assert_eq!(
            secure.app_url("shop.apps.test"),
            "https://shop.apps.test:8443"
        );

        let half = Config::from_raw(
            RawConfig::default(),
            env_of(&[("KILN_EDGE_TLS_CERT", "/c.pem")]),
        )
        .expect_err("a certificate without its key");
        assert!(half.to_string().contains("KILN_EDGE_TLS_KEY"), "{half}");
    }
}
