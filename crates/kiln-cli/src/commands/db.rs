//! `kiln db create|list|show|delete|rotate`.

use std::process::ExitCode;

use kiln_api::Client;
use kiln_api::databases::{Database, DatabaseConfig, DatabaseStatus};

use super::Output;
use crate::cli::DbCommand;

/// Runs one `kiln db` verb.
pub async fn run(client: &Client, out: &Output, cmd: DbCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DbCommand::Create {
            app,
            engine,
            name,
            wait,
        } => {
            let db = client
                .create_database(&app, &DatabaseConfig { engine, name }, wait)
                .await?;
            out.print(&db, || {
                format!(
                    "{}\n{}\n(the password is shown only now; `kiln db rotate {}` issues a new one)",
                    line(&db),
                    db.url.as_deref().unwrap_or_default(),
                    db.id
                )
            });
            Ok(if db.status == DatabaseStatus::Failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        DbCommand::List { app } => {
            let list = client.databases(&app).await?;
            out.print(&list, || {
                list.items.iter().map(line).collect::<Vec<_>>().join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Show { db } => {
            let db = client.database(&db, 0).await?;
            out.print(&db, || {
                let mut text = line(&db);
                if let Some(error) = &db.error {
                    text.push_str(&format!("\n{error}"));
                }
                text
            });
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Delete { db } => {
            let deleted = client.delete_database(&db).await?;
            out.print(&deleted, || {
                let mut text = format!("{} {}", deleted.id, status(deleted.status));
                for app in &deleted.detached_apps {
                    text.push_str(&format!(
                        "\napp {} ({}) loses {} from its {} at their next boot",
                        app.slug,
                        app.id,
                        app.env.join(", "),
                        app.machines.join(" and ")
                    ));
                }
                text
            });
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Rotate { db } => {
            let rotated = client.rotate_database(&db).await?;
            out.print(&rotated, || {
                format!(
                    "{}\n{}\nrevoked {}; restarted {}",
                    line(&rotated.database),
                    rotated.database.url.as_deref().unwrap_or_default(),
                    rotated.revoked_user,
                    rotated
                        .restarted_deployments
                        .iter()
                        .chain(&rotated.restarted_sandboxes)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn line(db: &Database) -> String {
    format!(
        "{}  {}  {}  {}  {}  [{}]",
        db.id,
        db.name,
        db.engine,
        status(db.status),
        db.url_masked,
        db.env.join(" ")
    )
}

fn status(status: DatabaseStatus) -> &'static str {
    match status {
        DatabaseStatus::Provisioning => "provisioning",
        DatabaseStatus::Healthy => "healthy",
        DatabaseStatus::Unhealthy => "unhealthy",
        DatabaseStatus::Failed => "failed",
        DatabaseStatus::Deleting => "deleting",
        DatabaseStatus::Deleted => "deleted",
    }
}
