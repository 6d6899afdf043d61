//! `kiln apps …`.

use std::process::ExitCode;

use kiln_api::Client;
use kiln_api::apps::{App, AppConfig};

use super::Output;
use crate::cli::AppsCommand;

/// Runs an apps verb.
pub async fn run(client: &Client, out: &Output, cmd: AppsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AppsCommand::Create { name, slug } => {
            let app = client.create_app(&AppConfig { name, slug }).await?;
            out.print(&app, || describe(&app));
        }
        AppsCommand::List => {
            let apps = client.apps().await?;
            out.print(&apps, || {
                apps.items
                    .iter()
                    .map(|a| format!("{}  {}  {}", a.id, a.slug, a.name))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        AppsCommand::Show { app } => {
            let app = client.app(&app).await?;
            out.print(&app, || describe(&app));
        }
        AppsCommand::Delete { app } => {
            client.delete_app(&app).await?;
            out.message(&format!("deleted app {app}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(app: &App) -> String {
    format!(
        "{}  {}  {}\npreview     {}\nproduction  {}",
        app.id, app.slug, app.name, app.urls.preview, app.urls.production
    )
}
