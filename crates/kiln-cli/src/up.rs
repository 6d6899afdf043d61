//! `kiln up`: the whole platform in this process.

use anyhow::Context;
use kiln_control::{Config, Platform};
use tokio_util::sync::CancellationToken;

use crate::cli::UpArgs;
use crate::profile::{self, Profile};

/// Starts the platform and serves until SIGINT or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    crate::logging::init();
    let config = Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    if args.check_config {
        println!("configuration is valid");
        return Ok(());
    }
    let platform = Platform::start(config.clone()).await?;
    let api_url = format!("http://{}", platform.api_addr);
    let token = match &config.operator_token {
        Some(token) => token.clone(),
        None => std::fs::read_to_string(&platform.operator_token_file)
            .with_context(|| format!("read {}", platform.operator_token_file.display()))?
            .trim()
            .to_owned(),
    };
    let profile_path = profile::save(&Profile {
        api_url: Some(api_url.clone()),
        token: Some(token),
    })?;
    if platform.generated_operator_token.is_some() {
        println!(
            "operator token written to {}",
            platform.operator_token_file.display()
        );
    }
    println!("API      {api_url}");
    println!("API docs {api_url}/v1/openapi.json");
    println!(
        "apps     {}",
        config.app_url(&format!("<app>.{}", config.base_domain))
    );
    println!("HTTPS    {} (edge)", platform.edge_https_addr);
    if config.edge_tls.is_none() {
        println!(
            "         certificates from the local authority: trust {}",
            config
                .data_dir
                .join(kiln_control::edge_tls::LOCAL_CA_DIR)
                .join("ca.pem")
                .display()
        );
    }
    println!("CLI configured in {}", profile_path.display());

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::logging::shutdown_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    platform.run(shutdown).await
}
