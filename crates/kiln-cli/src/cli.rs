//! The command line, as clap types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Kiln: sandboxes, previews, releases and deployments for generated apps.
#[derive(Debug, Parser)]
#[command(name = "kiln", version)]
pub struct Cli {
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// API URL (default: from `kiln login` / `kiln up`).
    #[arg(long, global = true, env = "KILN_API_URL")]
    pub api: Option<String>,
    /// API token (default: from `kiln login` / `kiln up`).
    #[arg(long, global = true, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the whole platform in this process on the embedded defaults.
    Up(UpArgs),
    /// Run an edge as its own process, following the control plane's routes (operator token).
    Edge(EdgeArgs),
    /// Remember an API URL and token for later commands.
    Login {
        /// API URL, e.g. http://127.0.0.1:7070.
        #[arg(long)]
        url: String,
        /// API token.
        #[arg(long)]
        token: String,
    },
    /// Orgs (operator token).
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// Apps.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Sandboxes: the editable machines of apps.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Point the app's preview URL at a sandbox port; prints the URL once it answers.
    Preview {
        /// App id or slug.
        app: String,
        /// The port the dev server listens on (bound to 0.0.0.0).
        #[arg(long)]
        port: u16,
        /// Seconds to wait for the port to answer.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Freeze a sandbox's workspace (or a local directory) into an immutable release.
    Publish {
        /// App id or slug.
        app: String,
        /// The sandbox whose workspace to publish (default: the app's newest).
        #[arg(long, conflicts_with = "dir")]
        sandbox: Option<String>,
        /// Publish this local directory instead (uploaded in resumable parts).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Shell command that serves the app.
        #[arg(long)]
        start: String,
        /// Port the app listens on.
        #[arg(long)]
        port: u16,
        /// Shell command run in the sandbox first (e.g. `npm run build`).
        #[arg(long)]
        build: Option<String>,
        /// Health check path.
        #[arg(long)]
        health: Option<String>,
    },
    /// Deploy a release to the app's production URL.
    Deploy {
        /// App id or slug.
        app: String,
        /// Release id or `vN` (default: the newest).
        #[arg(long)]
        release: Option<String>,
    },
    /// Point production back at an earlier release, without rebuilding.
    Rollback {
        /// App id or slug.
        app: String,
        /// Release id or `vN` (default: the previously live one).
        #[arg(long)]
        to: Option<String>,
    },
    /// Releases: list them, or verify one's signature and artifact.
    Releases {
        /// App id or slug (to list), or `verify`.
        app: String,
        /// With `verify`: the release id.
        release: Option<String>,
    },
    /// Deployment history of an app, newest first.
    Deployments {
        /// App id or slug.
        app: String,
    },
    /// An app's configuration variables and secrets.
    #[command(subcommand)]
    Env(EnvCommand),
    /// S3 buckets of apps, and presigned URLs.
    #[command(subcommand)]
    Bucket(BucketCommand),
    /// Scheduled jobs run from an app's live release.
    #[command(subcommand)]
    Cron(CronCommand),
    /// Managed databases (PostgreSQL, MySQL, Redis) of an app.
    #[command(subcommand)]
    Db(DbCommand),
    /// Nodes and their drivers.
    Nodes,
    /// Machine images on this node (works without a running platform).
    #[command(subcommand)]
    Image(ImageCommand),
}

/// `kiln image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build (or find cached) the image's root file system and the VM guest image made from
    /// it (kernel, initramfs, root disk), and print their paths.
    Build {
        /// The image, `name` or `name:version`.
        #[arg(long, default_value = "default")]
        image: String,
        /// TOML configuration file (as for `kiln up`): images dir, bin dir, `[vm]` kernel.
        #[arg(long, env = "KILN_CONFIG_FILE")]
        config: Option<PathBuf>,
    },
}

/// `kiln bucket …`.
#[derive(Debug, Subcommand)]
pub enum BucketCommand {
    /// Create a bucket with its own key pair (the secret is shown this once).
    Create {
        /// App id or slug.
        app: String,
        /// Bucket name: 3-63 lowercase letters, digits and hyphens, unique on the platform.
        name: String,
    },
    /// List an app's buckets.
    List {
        /// App id or slug.
        app: String,
    },
    /// Delete a bucket with all its objects.
    Delete {
        /// Bucket name.
        bucket: String,
    },
    /// Print a presigned URL for one object.
    Presign {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
        /// `GET` (download) or `PUT` (upload).
        #[arg(long, default_value = "GET")]
        method: String,
        /// Seconds the URL stays valid (1 to 604800).
        #[arg(long, default_value_t = 3600)]
        expires: u64,
    },
}

/// `kiln edge`.
#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// Address end users connect to.
    #[arg(long, env = "KILN_EDGE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Pin each worker thread to its own CPU (for a node that runs the edge alone).
    #[arg(long, env = "KILN_EDGE_PIN_WORKERS")]
    pub pin_workers: bool,
    /// Also serve HTTPS here.
    #[arg(long, env = "KILN_EDGE_HTTPS_ADDR")]
    pub https_listen: Option<std::net::SocketAddr>,
    /// Certificate chain (PEM) served for the names it covers.
    #[arg(long, env = "KILN_EDGE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, env = "KILN_EDGE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Directory of the local certificate authority that signs served names no
    /// certificate covers (made on first use; copy it between edges to share one root).
    #[arg(long, env = "KILN_EDGE_LOCAL_CA_DIR", default_value = "edge-ca")]
    pub local_ca_dir: std::path::PathBuf,
}

/// `kiln up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// TOML configuration file.
    #[arg(long, env = "KILN_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// `kiln orgs …`.
#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an org.
    Create {
        /// Human name.
        name: String,
        /// DNS label.
        #[arg(long)]
        slug: String,
        /// Base domain of its apps.
        #[arg(long)]
        base_domain: String,
    },
    /// Show an org.
    Show {
        /// Id or slug.
        org: String,
    },
    /// Issue an API token of an org (shown once).
    Token {
        /// Id or slug.
        org: String,
        /// Token name.
        #[arg(long)]
        name: String,
    },
}

/// `kiln apps …`.
#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create an app.
    Create {
        /// Human name.
        name: String,
        /// DNS label (derived from the name when absent).
        #[arg(long)]
        slug: Option<String>,
    },
    /// List apps.
    List,
    /// Show an app and its URLs.
    Show {
        /// Id or slug.
        app: String,
    },
    /// Delete an app and its sandboxes.
    Delete {
        /// Id or slug.
        app: String,
    },
}

/// `kiln sandbox …`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox for an app and wait until it runs.
    Create {
        /// App id or slug.
        app: String,
        /// Memory limit in MiB.
        #[arg(long)]
        memory_mib: Option<u32>,
        /// Virtual CPUs.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Environment, KEY=VALUE (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// List an app's sandboxes.
    List {
        /// App id or slug.
        app: String,
    },
    /// Run a command in a sandbox, streaming its output; exits with its exit code.
    Exec {
        /// Sandbox id.
        sandbox: String,
        /// Working directory relative to the workspace.
        #[arg(long)]
        cwd: Option<String>,
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Copy a file: `LOCAL SBX:PATH` uploads, `SBX:PATH LOCAL` downloads.
    Cp {
        /// Source.
        from: String,
        /// Destination.
        to: String,
    },
    /// Start a supervised process (e.g. the dev server).
    Run {
        /// Sandbox id.
        sandbox: String,
        /// Process name.
        #[arg(long)]
        name: String,
        /// Port it serves.
        #[arg(long)]
        port: Option<u16>,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List supervised processes.
    Ps {
        /// Sandbox id.
        sandbox: String,
    },
    /// Print a supervised process's log.
    Logs {
        /// Sandbox id.
        sandbox: String,
        /// Process name.
        name: String,
        /// Keep printing new output.
        #[arg(long, short)]
        follow: bool,
    },
    /// Delete a sandbox and its workspace.
    Delete {
        /// Sandbox id.
        sandbox: String,
    },
}

/// `kiln env …`.
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Set variables: `kiln env set APP KEY=VALUE… [--secret]`.
    Set {
        /// App id or slug.
        app: String,
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        vars: Vec<String>,
        /// Encrypt at rest and never show the values again.
        #[arg(long)]
        secret: bool,
    },
    /// Remove variables.
    Unset {
        /// App id or slug.
        app: String,
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List variables (secret values are hidden).
    List {
        /// App id or slug.
        app: String,
    },
}

/// `kiln cron …`.
#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Schedule a command: `kiln cron add APP --schedule "*/5 * * * *" -- CMD…`.
    Add {
        /// App id or slug.
        app: String,
        /// Cron expression: 5 fields, or 6 with seconds first.
        #[arg(long)]
        schedule: String,
        /// Job name, unique in the app (default: derived from the command).
        #[arg(long)]
        name: Option<String>,
        /// IANA time zone the schedule is read in (default: UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// Start a slot even while the previous run still goes.
        #[arg(long)]
        allow_overlap: bool,
        /// Seconds a run may take before it is killed (default: 3600).
        #[arg(long)]
        timeout: Option<u32>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List an app's jobs with their next slot.
    List {
        /// App id or slug.
        app: String,
    },
    /// A job's runs, newest first: slot, outcome, exit code, and the log tail with `--logs`.
    Runs {
        /// Job id.
        job: String,
        /// Print each run's log tail too.
        #[arg(long)]
        logs: bool,
    },
    /// Delete a job and its history.
    Delete {
        /// Job id.
        job: String,
    },
}

/// `kiln db …`.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create a database; prints its URL (with the password, shown only now).
    Create {
        /// App id or slug.
        app: String,
        /// `postgres`, `mysql` or `redis`.
        #[arg(long)]
        engine: String,
        /// Name within the app (default: `main`).
        #[arg(long, default_value = "main")]
        name: String,
        /// Seconds to wait for it to be healthy.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// List an app's databases (URLs masked).
    List {
        /// App id or slug.
        app: String,
    },
    /// Show one database (URL masked).
    Show {
        /// Database id.
        db: String,
    },
    /// Delete a database: its server, data and credentials. Says which apps lose it.
    Delete {
        /// Database id.
        db: String,
    },
    /// Issue a new credential, restart the app's machines with it, revoke the old one.
    Rotate {
        /// Database id.
        db: String,
    },
}
