//! `kiln sandbox …`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures::StreamExt;
use kiln_api::Client;
use kiln_api::sandboxes::{
    ExecConfig, ExecEvent, ExecResult, ProcessConfig, Sandbox, SandboxConfig,
};

use super::Output;
use crate::cli::SandboxCommand;

/// How long `create` waits for the machine to run.
const CREATE_WAIT_S: u64 = 120;

/// Runs a sandbox verb.
pub async fn run(client: &Client, out: &Output, cmd: SandboxCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SandboxCommand::Create {
            app,
            memory_mib,
            vcpus,
            env,
        } => {
            let config = SandboxConfig {
                image: None,
                vcpus,
                memory_mib,
                env: parse_env(&env)?,
            };
            let sandbox = client.create_sandbox(&app, &config, CREATE_WAIT_S).await?;
            out.print(&sandbox, || describe(&sandbox));
            if sandbox.status == kiln_api::sandboxes::SandboxStatus::Failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        SandboxCommand::List { app } => {
            let list = client.sandboxes(&app).await?;
            out.print(&list, || {
                list.items
                    .iter()
                    .map(describe)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        SandboxCommand::Exec {
            sandbox,
            cwd,
            timeout,
            cmd,
        } => {
            let config = ExecConfig {
                cmd,
                cwd,
                env: BTreeMap::new(),
                timeout_s: timeout,
                stdin: None,
            };
            return exec(client, out, &sandbox, &config).await;
        }
        SandboxCommand::Cp { from, to } => copy(client, out, &from, &to).await?,
        SandboxCommand::Run {
            sandbox,
            name,
            port,
            cmd,
        } => {
            let process = client
                .start_process(
                    &sandbox,
                    &ProcessConfig {
                        name,
                        cmd,
                        cwd: None,
                        env: BTreeMap::new(),
                        port,
                    },
                )
                .await?;
            out.print(&process, || {
                format!(
                    "{}  {}  {}",
                    process.name,
                    process.status,
                    process.cmd.join(" ")
                )
            });
        }
        SandboxCommand::Ps { sandbox } => {
            let list = client.processes(&sandbox).await?;
            out.print(&list, || {
                list.items
                    .iter()
                    .map(|p| {
                        format!(
                            "{}  {}  restarts={}  {}",
                            p.name,
                            p.status,
                            p.restarts,
                            p.cmd.join(" ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        SandboxCommand::Logs {
            sandbox,
            name,
            follow,
        } => {
            if follow {
                let mut stream = Box::pin(client.follow_process_logs(&sandbox, &name).await?);
                let mut stdout = std::io::stdout();
                while let Some(chunk) = stream.next().await {
                    stdout.write_all(&chunk?)?;
                    stdout.flush()?;
                }
            } else {
                let text = client.process_logs(&sandbox, &name).await?;
                if out.json() {
                    out.print(&serde_json::json!({ "log": text }), String::new);
                } else {
                    print!("{text}");
                }
            }
        }
        SandboxCommand::Delete { sandbox } => {
            client.delete_sandbox(&sandbox).await?;
            out.message(&format!("deleted sandbox {sandbox}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams the command's output as it comes; exits with the command's code.
async fn exec(
    client: &Client,
    out: &Output,
    sandbox: &str,
    config: &ExecConfig,
) -> anyhow::Result<ExitCode> {
    if out.json() {
        let result: ExecResult = client.exec(sandbox, config).await?;
        out.print(&result, String::new);
        return Ok(exit_code(result.exit_code));
    }
    let mut events = Box::pin(client.exec_stream(sandbox, config).await?);
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    while let Some(event) = events.next().await {
        match event? {
            ExecEvent::Stdout { stdout: s } => {
                stdout.write_all(s.as_bytes())?;
                stdout.flush()?;
            }
            ExecEvent::Stderr { stderr: s } => {
                stderr.write_all(s.as_bytes())?;
                stderr.flush()?;
            }
            ExecEvent::Exit {
                exit_code: code,
                reason,
                ..
            } => {
                if let Some(reason) = reason {
                    eprintln!("{reason}");
                }
                return Ok(exit_code(code));
            }
        }
    }
    bail!("the command's output ended without an exit status: the sandbox's machine went away")
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

/// `LOCAL SBX:PATH` uploads; `SBX:PATH LOCAL` downloads.
async fn copy(client: &Client, out: &Output, from: &str, to: &str) -> anyhow::Result<()> {
    match (remote(from), remote(to)) {
        (None, Some((sandbox, path))) => {
            let bytes = tokio::fs::read(from)
                .await
                .with_context(|| format!("read {from}"))?;
            let written = client.put_file(sandbox, path, bytes).await?;
            out.print(&written, || {
                format!("{} bytes → {sandbox}:{}", written.size, written.path)
            });
        }
        (Some((sandbox, path)), None) => {
            let bytes = client.get_file(sandbox, path).await?;
            let tmp = format!("{to}.part");
            tokio::fs::write(&tmp, &bytes)
                .await
                .with_context(|| format!("write {tmp}"))?;
            tokio::fs::rename(&tmp, to)
                .await
                .with_context(|| format!("write {to}"))?;
            out.print(
                &serde_json::json!({ "path": to, "size": bytes.len() }),
                || format!("{sandbox}:{path} → {to} ({} bytes)", bytes.len()),
            );
        }
        _ => bail!(
            "give one local path and one `SANDBOX:PATH`, e.g. `kiln sandbox cp app.js sbx_…:src/app.js`"
        ),
    }
    Ok(())
}

fn remote(arg: &str) -> Option<(&str, &str)> {
    arg.split_once(':')
        .filter(|(sbx, _)| sbx.starts_with("sbx_"))
}

fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("`{pair}` is not KEY=VALUE"))
        })
        .collect()
}

fn describe(sandbox: &Sandbox) -> String {
    let status = serde_json::to_value(sandbox.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut line = format!(
        "{}  {}  {}  {} vCPU  {} MiB  {}",
        sandbox.id,
        status,
        sandbox.image,
        sandbox.vcpus,
        sandbox.memory_mib,
        sandbox.address.as_deref().unwrap_or("-")
    );
    if let Some(error) = &sandbox.error {
        line.push_str(&format!("\n  error: {error}"));
    }
    line
}
