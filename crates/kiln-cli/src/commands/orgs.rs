//! `kiln orgs …`.

use std::process::ExitCode;

use kiln_api::Client;
use kiln_api::orgs::{Brand, OrgConfig};

use super::Output;
use crate::cli::OrgsCommand;

/// Runs an orgs verb.
pub async fn run(client: &Client, out: &Output, cmd: OrgsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OrgsCommand::Create {
            name,
            slug,
            base_domain,
        } => {
            let org = client
                .create_org(&OrgConfig {
                    brand: Brand {
                        name: name.clone(),
                        ..Default::default()
                    },
                    name,
                    slug,
                    base_domain,
                })
                .await?;
            out.print(&org, || {
                format!("{}  {}  {}", org.id, org.slug, org.base_domain)
            });
        }
        OrgsCommand::Show { org } => {
            let org = client.org(&org).await?;
            out.print(&org, || {
                format!(
                    "{}  {}  {}  brand={}",
                    org.id, org.slug, org.base_domain, org.brand.name
                )
            });
        }
        OrgsCommand::Token { org, name } => {
            let token = client.create_token(&org, &name).await?;
            out.print(&token, || token.token.clone());
        }
    }
    Ok(ExitCode::SUCCESS)
}
