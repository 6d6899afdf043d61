//! `kiln publish`, `deploy`, `rollback`, `releases`, `deployments`.

use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use kiln_api::Client;
use kiln_api::releases::{Deployment, Release, ReleaseConfig};

use super::Output;
use crate::cli::EnvCommand;

/// What to publish.
pub enum Source {
    /// A sandbox's workspace (the app's newest sandbox when `None`).
    Sandbox(Option<String>),
    /// A local directory, packed here and uploaded in resumable parts.
    Dir(PathBuf),
}

/// `kiln publish`.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    client: &Client,
    out: &Output,
    app: &str,
    source: Source,
    start: String,
    port: u16,
    build: Option<String>,
    health: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut config = ReleaseConfig {
        start_cmd: Some(start),
        port: Some(port),
        build_cmd: build,
        health_path: health,
        ..ReleaseConfig::default()
    };
    match source {
        Source::Sandbox(Some(sandbox)) => config.sandbox = Some(sandbox),
        Source::Sandbox(None) => {
            let sandboxes = client.sandboxes(app).await?;
            let newest = sandboxes
                .items
                .iter()
                .max_by(|a, b| a.id.cmp(&b.id))
                .context("the app has no sandbox to publish: give --sandbox or --dir")?;
            config.sandbox = Some(newest.id.clone());
        }
        Source::Dir(dir) => config.artifact_digest = Some(upload_dir(client, out, &dir).await?),
    }
    let release = client.publish(app, &config).await?;
    out.print(&release, || describe(&release));
    Ok(ExitCode::SUCCESS)
}

/// Packs `dir` exactly as the platform packs a workspace, then uploads it part by part,
/// resuming any parts an earlier attempt already sent.
async fn upload_dir(
    client: &Client,
    out: &Output,
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    let mut file = tempfile::tempfile().context("create a temporary file")?;
    let (digest, size) = kiln_artifacts::pack_dir_to(dir, &mut file)
        .with_context(|| format!("pack {}", dir.display()))?;
    let digest = digest.to_string();
    let upload = client.create_upload(size, &digest).await?;
    let mut part = vec![0u8; usize::try_from(upload.part_size).context("part size")?];
    let mut sent = 0u64;
    for n in 1..=upload.parts {
        let offset = u64::from(n - 1) * upload.part_size;
        let len = upload.part_size.min(size - offset) as usize;
        if !upload.received.contains(&n) {
            file.seek(std::io::SeekFrom::Start(offset))?;
            file.read_exact(&mut part[..len])?;
            client
                .put_part(&upload.upload_id, n, part[..len].to_vec())
                .await?;
        }
        sent += len as u64;
        if !out.json() {
            eprint!(
                "\ruploading {:>3}%  {sent}/{size} bytes",
                sent * 100 / size.max(1)
            );
            std::io::stderr().flush().ok();
        }
    }
    if !out.json() {
        eprintln!();
    }
    Ok(client.complete_upload(&upload.upload_id).await?.digest)
}

/// `kiln deploy`.
pub async fn deploy(
    client: &Client,
    out: &Output,
    app: &str,
    release: Option<String>,
) -> anyhow::Result<ExitCode> {
    let release = match release {
        Some(release) => release,
        None => client
            .releases(app)
            .await?
            .items
            .first()
            .map(|r| r.id.clone())
            .context("the app has no release: publish one first")?,
    };
    let deployment = client.deploy(app, &release).await?;
    out.print(&deployment, || describe_deployment(&deployment));
    Ok(ExitCode::SUCCESS)
}

/// `kiln rollback`.
pub async fn rollback(
    client: &Client,
    out: &Output,
    app: &str,
    to: Option<String>,
) -> anyhow::Result<ExitCode> {
    let deployment = client.rollback(app, to.as_deref()).await?;
    out.print(&deployment, || describe_deployment(&deployment));
    Ok(ExitCode::SUCCESS)
}

/// `kiln releases APP` lists; `kiln releases verify REL` verifies.
pub async fn releases(
    client: &Client,
    out: &Output,
    app: &str,
    release: Option<String>,
) -> anyhow::Result<ExitCode> {
    if app == "verify" {
        let Some(release) = release else {
            bail!("give the release to verify: `kiln releases verify rel_…`");
        };
        let verification = client.verify_release(&release).await?;
        let ok = verification.signature_valid && verification.artifact_valid;
        out.print(&verification, || {
            if ok {
                format!("{release}: signature valid, artifact digest matches")
            } else {
                format!("{release}: NOT VALID\n{}", verification.problems.join("\n"))
            }
        });
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let list = client.releases(app).await?;
    out.print(&list, || {
        list.items
            .iter()
            .map(describe)
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

/// `kiln deployments`.
pub async fn deployments(client: &Client, out: &Output, app: &str) -> anyhow::Result<ExitCode> {
    let list = client.deployments(app).await?;
    out.print(&list, || {
        list.items
            .iter()
            .map(describe_deployment)
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

fn describe(release: &Release) -> String {
    format!(
        "{}  {}  {}  {} bytes  start=`{}` port={}  by {} at {}",
        release.id,
        release.version,
        release.digest,
        release.size,
        release.manifest.start_cmd,
        release.manifest.port,
        release.provenance.created_by,
        release.created_at.to_rfc3339()
    )
}

fn describe_deployment(d: &Deployment) -> String {
    let mut line = format!(
        "{}  {}  {}{}  by {} at {}  {}",
        d.id,
        d.version,
        d.status,
        if d.live { " (live)" } else { "" },
        d.created_by,
        d.created_at.to_rfc3339(),
        d.url
    );
    if let Some(reason) = &d.reason {
        line.push_str(&format!("\n  reason: {reason}"));
    }
    if let Some(diff) = &d.env_diff {
        for (label, names) in [
            ("added", &diff.added),
            ("removed", &diff.removed),
            ("changed", &diff.changed),
        ] {
            if !names.is_empty() {
                line.push_str(&format!("\n  env {label}: {}", names.join(", ")));
            }
        }
    }
    line
}

/// `kiln env set|unset|list`.
pub async fn env(client: &Client, out: &Output, cmd: EnvCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EnvCommand::Set { app, vars, secret } => {
            let mut set = Vec::new();
            for pair in &vars {
                let (name, value) = pair
                    .split_once('=')
                    .with_context(|| format!("`{pair}` is not KEY=VALUE"))?;
                set.push(client.set_env(&app, name, value, secret).await?);
            }
            out.print(&set, || {
                set.iter()
                    .map(|v| format!("set {}{}", v.name, if v.secret { " (secret)" } else { "" }))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        EnvCommand::Unset { app, names } => {
            for name in &names {
                client.unset_env(&app, name).await?;
            }
            out.message(&format!("unset {}", names.join(", ")));
        }
        EnvCommand::List { app } => {
            let list = client.env(&app).await?;
            out.print(&list, || {
                list.items
                    .iter()
                    .map(|v| match &v.value {
                        Some(value) => format!("{}={value}", v.name),
                        None => format!("{}=<secret>", v.name),
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
