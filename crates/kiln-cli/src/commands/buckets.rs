//! `kiln bucket …`.

use std::process::ExitCode;

use kiln_api::Client;
use kiln_api::buckets::{Bucket, BucketConfig, PresignConfig};

use super::Output;
use crate::cli::BucketCommand;

/// Runs a bucket verb.
pub async fn run(client: &Client, out: &Output, cmd: BucketCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BucketCommand::Create { app, name } => {
            let bucket = client.create_bucket(&app, &BucketConfig { name }).await?;
            out.print(&bucket, || describe(&bucket));
        }
        BucketCommand::List { app } => {
            let buckets = client.buckets(&app).await?;
            out.print(&buckets, || {
                buckets
                    .items
                    .iter()
                    .map(|b| format!("{}  {}  {}", b.name, b.access_key_id, b.endpoint))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        BucketCommand::Delete { bucket } => {
            client.delete_bucket(&bucket).await?;
            out.message(&format!("deleted bucket {bucket} and its objects"));
        }
        BucketCommand::Presign {
            bucket,
            key,
            method,
            expires,
        } => {
            let url = client
                .presign(
                    &bucket,
                    &PresignConfig {
                        method,
                        key,
                        expires_s: expires,
                    },
                )
                .await?;
            out.print(&url, || url.url.clone());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(bucket: &Bucket) -> String {
    let mut lines = vec![
        format!("bucket             {}", bucket.name),
        format!("endpoint           {}", bucket.endpoint),
        format!("region             {}", bucket.region),
        format!("access_key_id      {}", bucket.access_key_id),
    ];
    if let Some(secret) = &bucket.secret_access_key {
        lines.push(format!("secret_access_key  {secret}  (shown once)"));
    }
    lines.join("\n")
}
