//! Every verb but `up`: each builds a request with the typed client and prints the answer.

mod apps;
mod buckets;
mod cron;
mod db;
mod orgs;
mod releases;
mod sandbox;

use std::process::ExitCode;

use anyhow::Context;
use kiln_api::Client;
use serde::Serialize;

use crate::cli::{Cli, Command};
use crate::profile::{self, Profile};

/// Runs one verb.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = Output { json: cli.json };
    let client = || client(cli.api.clone(), cli.token.clone());
    match cli.command {
        Command::Up(args) => crate::up::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Edge(args) => crate::edge::run(client()?, args)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Login { url, token } => {
            let client = Client::new(&url, Some(token.clone()));
            client.health().await.context("check the API")?;
            let path = profile::save(&Profile {
                api_url: Some(url),
                token: Some(token),
            })?;
            out.message(&format!("logged in; settings in {}", path.display()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Orgs(cmd) => orgs::run(&client()?, &out, cmd).await,
        Command::Apps(cmd) => apps::run(&client()?, &out, cmd).await,
        Command::Sandbox(cmd) => sandbox::run(&client()?, &out, cmd).await,
        Command::Preview { app, port, wait } => {
            let preview = client()?.preview(&app, port, wait).await?;
            out.print(&preview, || preview.url.clone());
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish {
            app,
            sandbox,
            dir,
            start,
            port,
            build,
            health,
        } => {
            let source = match dir {
                Some(dir) => releases::Source::Dir(dir),
                None => releases::Source::Sandbox(sandbox),
            };
            releases::publish(&client()?, &out, &app, source, start, port, build, health).await
        }
        Command::Deploy { app, release } => releases::deploy(&client()?, &out, &app, release).await,
        Command::Rollback { app, to } => releases::rollback(&client()?, &out, &app, to).await,
        Command::Releases { app, release } => {
            releases::releases(&client()?, &out, &app, release).await
        }
        Command::Deployments { app } => releases::deployments(&client()?, &out, &app).await,
        Command::Env(cmd) => releases::env(&client()?, &out, cmd).await,
        Command::Bucket(cmd) => buckets::run(&client()?, &out, cmd).await,
        Command::Cron(cmd) => cron::run(&client()?, &out, cmd).await,
        Command::Db(cmd) => db::run(&client()?, &out, cmd).await,
        Command::Image(cmd) => crate::image::run(&out, cmd)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Nodes => {
            let nodes = client()?.nodes().await?;
            out.print(&nodes, || {
                nodes
                    .items
                    .iter()
                    .map(|n| {
                        format!(
                            "{}  {}  driver={} accelerated={} machines={} cpus={} memory={}MiB",
                            n.id,
                            n.status,
                            n.driver,
                            n.hardware_accelerated,
                            n.machines_running,
                            n.cpus,
                            n.memory_mib
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn client(api: Option<String>, token: Option<String>) -> anyhow::Result<Client> {
    let profile = profile::load()?;
    let api = api.or(profile.api_url).context(
        "no API to talk to: run `kiln up`, or `kiln login --url URL --token TOKEN`, or pass --api",
    )?;
    Ok(Client::new(api, token.or(profile.token)))
}

/// Prints answers as JSON or as text.
pub struct Output {
    json: bool,
}

impl Output {
    /// Prints `value` as JSON, or the text `human` makes.
    pub fn print<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("answers always serialize")
            );
        } else {
            let text = human();
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }

    /// Prints a confirmation (as `{"ok": true, "message": …}` in JSON mode).
    pub fn message(&self, text: &str) {
        self.print(&serde_json::json!({"ok": true, "message": text}), || {
            text.to_owned()
        });
    }

    /// Whether JSON was asked for.
    pub fn json(&self) -> bool {
        self.json
    }
}
