//! Helpers for Kiln's integration tests: start the real `kiln` binary on free loopback
//! ports with its own data dir, reach it with the typed client and the CLI, kill it.
#![forbid(unsafe_code)]
// Tests spawn the real binaries exactly as an operator would, environment included.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiln_api::Client;

/// Where built images are cached between test runs (building one takes about a minute).
pub fn images_dir() -> PathBuf {
    std::env::var_os("KILN_TEST_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kiln-test/images"))
}

/// Whether this process may create namespaces, bridges and cgroups.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A free TCP port on loopback (racy by nature, good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port works")
}

/// A running `kiln up`.
pub struct Kiln {
    binary: PathBuf,
    data_dir: PathBuf,
    _tmp: tempfile::TempDir,
    env: BTreeMap<String, String>,
    child: Option<Child>,
    /// API base URL.
    pub api_url: String,
    /// The operator token.
    pub token: String,
}

impl Kiln {
    /// Starts `kiln up` (the binary at `binary`) with `extra` variables and an optional
    /// TOML config text, and waits until the API answers.
    pub async fn start(
        binary: &Path,
        extra: &[(&str, &str)],
        config_toml: Option<&str>,
    ) -> anyhow::Result<Kiln> {
        let tmp = tempfile::Builder::new().prefix("kiln-test-").tempdir()?;
        // Managed database servers run as their own users and must reach their data
        // directories below this one (traverse only; the directory stays unlistable).
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )?;
        let data_dir = tmp.path().join("data");
        let api_addr = extra
            .iter()
            .find(|(k, _)| *k == "KILN_API_ADDR")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let port = api_addr.rsplit(':').next().unwrap_or_default().to_owned();
        let mut env = BTreeMap::new();
        env.insert("KILN_DATA_DIR".into(), data_dir.display().to_string());
        env.insert("KILN_API_ADDR".into(), api_addr);
        env.insert(
            "KILN_EDGE_HTTP_ADDR".into(),
            format!("127.0.0.1:{}", free_port()),
        );
        env.insert(
            "KILN_EDGE_HTTPS_ADDR".into(),
            format!("127.0.0.1:{}", free_port()),
        );
        env.insert("KILN_S3_ADDR".into(), format!("127.0.0.1:{}", free_port()));
        env.insert("KILN_IMAGES_DIR".into(), images_dir().display().to_string());
        env.insert("KILN_NETWORK_EGRESS".into(), "false".into());
        env.insert(
            "KILN_CLI_CONFIG".into(),
            tmp.path().join("cli.toml").display().to_string(),
        );
        env.insert("KILN_LOG".into(), "info,kiln=debug".into());
        if let Some(text) = config_toml {
            let path = tmp.path().join("kiln.toml");
            std::fs::write(&path, text)?;
            env.insert("KILN_CONFIG_FILE".into(), path.display().to_string());
        }
        for (k, v) in extra {
            env.insert((*k).into(), (*v).into());
        }
        let mut kiln = Kiln {
            binary: binary.to_owned(),
            data_dir,
            _tmp: tmp,
            env,
            child: None,
            api_url: format!("http://127.0.0.1:{port}"),
            token: String::new(),
        };
        kiln.spawn().await?;
        Ok(kiln)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("up")
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawn {}", self.binary.display()))?,
        );
        let deadline = Instant::now() + Duration::from_secs(300);
        let probe = Client::new(&self.api_url, None);
        loop {
            if probe.health().await.is_ok() {
                break;
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("kiln up exited with {status}; log:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "kiln up did not answer within 300 s; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.token = std::fs::read_to_string(self.data_dir.join("operator-token"))
            .context("read the operator token")?
            .trim()
            .to_owned();
        Ok(())
    }

    /// A client acting as the operator.
    pub fn client(&self) -> Client {
        Client::new(&self.api_url, Some(self.token.clone()))
    }

    /// A client acting with `token`.
    pub fn client_with(&self, token: &str) -> Client {
        Client::new(&self.api_url, Some(token.to_owned()))
    }

    /// Where the edge answers end users.
    pub fn edge_addr(&self) -> std::net::SocketAddr {
        self.env["KILN_EDGE_HTTP_ADDR"]
            .parse()
            .expect("the edge address was generated as IP:PORT")
    }

    /// Where the edge answers end users over HTTPS.
    pub fn edge_https_addr(&self) -> std::net::SocketAddr {
        self.env["KILN_EDGE_HTTPS_ADDR"]
            .parse()
            .expect("the edge address was generated as IP:PORT")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs the CLI (configured by `kiln up`) with `args`.
    pub fn cli(&self, args: &[&str]) -> Output {
        std::process::Command::new(&self.binary)
            .args(args)
            .env("KILN_CLI_CONFIG", &self.env["KILN_CLI_CONFIG"])
            .output()
            .expect("the kiln binary runs")
    }

    /// Starts a long-running CLI verb (e.g. `kiln edge`) configured like [`Kiln::cli`]; the
    /// process is killed when the returned guard drops.
    pub fn cli_process(&self, args: &[&str]) -> anyhow::Result<ChildGuard> {
        let child = std::process::Command::new(&self.binary)
            .args(args)
            .env("KILN_CLI_CONFIG", &self.env["KILN_CLI_CONFIG"])
            .env("KILN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn kiln {args:?}"))?;
        Ok(ChildGuard(child))
    }

    /// Kills `kiln up` with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `kiln up` again on the same data dir and ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn().await
    }

    /// Stops `kiln up` with SIGTERM and waits for it, as an operator would.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("not running");
        };
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        Ok(child.wait()?)
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir
            .parent()
            .map_or_else(|| PathBuf::from("kiln.log"), |p| p.join("kiln.log"))
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

/// A child process killed on drop.
pub struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A graceful stop tears the machines down, so tests leave nothing behind.
            if self.stop().is_err() {
                self.kill9();
            }
        }
    }
}

/// The problem of a call expected to fail; panics (failing the test) on anything else.
pub fn problem<T: std::fmt::Debug>(result: Result<T, kiln_api::ClientError>) -> kiln_api::Problem {
    match result {
        Err(kiln_api::ClientError::Problem(p)) => *p,
        other => panic!("expected a problem answer, got {other:?}"),
    }
}

/// The JSON a successful `kiln --json …` printed; panics with its output otherwise.
pub fn cli_json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "kiln failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

/// An HTTP client that sends every host to the edge at `edge`, as DNS would in production.
pub fn edge_client(edge: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(std::sync::Arc::new(ToEdge(edge)))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("a reqwest client with a resolver builds")
}

/// A client for the edge's HTTPS listener that trusts only `root` (PEM) and offers HTTP/2
/// and HTTP/1.1 by ALPN.
pub fn edge_tls_client(edge: std::net::SocketAddr, root: &[u8]) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .dns_resolver(std::sync::Arc::new(ToEdge(edge)))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root)?)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()?)
}

struct ToEdge(std::net::SocketAddr);

impl reqwest::dns::Resolve for ToEdge {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = self.0;
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
    }
}
