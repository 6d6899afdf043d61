//! Benchmark: machine boot → guest agent ready, for the `process` and `qemu` drivers in the
//! same run, through the real API. Each driver gets its own `kiln up`; a sandbox create with
//! `?wait` answers `running` once the driver's start returned, which is when the guest agent
//! answered its first health check; a first exec then proves the agent serves. Says whether
//! the VMs ran under KVM or TCG (the driver decides by a probe boot). Run by
//! `scripts/bench-platform.sh boot`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiln_api::Client;
use kiln_api::apps::AppConfig;
use kiln_api::sandboxes::{ExecConfig, SandboxConfig, SandboxStatus};
use kiln_testkit::Kiln;

/// Boots per driver: processes are cheap, VMs under TCG take seconds each.
const PROCESS_BOOTS: usize = 20;
const QEMU_BOOTS: usize = 5;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: kiln-bench-boot PATH/TO/kiln")?;
    // Two platforms at once must not share bridges: each gets its own /20 of the subnet.
    let base = std::env::var("KILN_NETWORK_SUBNET").unwrap_or_else(|_| "10.88.0.0/16".into());
    let prefix = base
        .strip_suffix(".0.0/16")
        .context("KILN_NETWORK_SUBNET must be a /16 like 10.88.0.0/16")?
        .to_owned();
    let mut rows = Vec::new();
    for (driver, boots, third) in [("process", PROCESS_BOOTS, 16), ("qemu", QEMU_BOOTS, 32)] {
        let subnet = format!("{prefix}.{third}.0/20");
        let config = "[limits]\nsandbox_memory_mib = 512\n[vm]\nworkspace_mib = 1024\n";
        let kiln = Kiln::start(
            &binary,
            &[
                ("KILN_LOG", "warn"),
                ("KILN_RUNTIME", driver),
                ("KILN_NETWORK_SUBNET", &subnet),
            ],
            Some(config),
        )
        .await
        .with_context(|| format!("start kiln up with the {driver} driver"))?;
        let api = kiln.client();
        let node = api
            .nodes()
            .await?
            .items
            .into_iter()
            .next()
            .context("a node")?;
        let mode = match (driver, node.hardware_accelerated) {
            ("process", _) => "namespaces",
            (_, true) => "KVM",
            (_, false) => "TCG",
        };
        api.create_app(&AppConfig {
            name: "bench".into(),
            slug: None,
        })
        .await?;
        // A first machine builds what is missing (image, root disk) and warms caches.
        let warm = boot_once(&api).await?;
        println!(
            "{driver} ({mode}): warm-up boot → agent ready {:.0} ms",
            ms(warm.ready)
        );
        let mut ready = Vec::new();
        let mut first_exec = Vec::new();
        for _ in 0..boots {
            let boot = boot_once(&api).await?;
            ready.push(boot.ready);
            first_exec.push(boot.first_exec);
        }
        rows.push((
            format!("{driver} ({mode}), {boots} boots"),
            ready,
            first_exec,
        ));
        drop(kiln);
    }
    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>14}",
        "boot → guest agent ready", "p50 ms", "min ms", "max ms", "+1st exec ms"
    );
    for (name, mut ready, mut exec) in rows {
        ready.sort();
        exec.sort();
        println!(
            "{:<34} {:>10.0} {:>10.0} {:>10.0} {:>14.0}",
            name,
            ms(ready[ready.len() / 2]),
            ms(ready[0]),
            ms(ready[ready.len() - 1]),
            ms(exec[exec.len() / 2]),
        );
    }
    Ok(())
}

struct Boot {
    /// Create request sent → the sandbox answered `running` (the agent answered health).
    ready: Duration,
    /// Then one `true` through the agent.
    first_exec: Duration,
}

async fn boot_once(api: &Client) -> anyhow::Result<Boot> {
    let started = Instant::now();
    let sandbox = api
        .create_sandbox("bench", &SandboxConfig::default(), 300)
        .await?;
    if sandbox.status != SandboxStatus::Running {
        bail!(
            "sandbox {} is {:?}: {:?}",
            sandbox.id,
            sandbox.status,
            sandbox.error
        );
    }
    let ready = started.elapsed();
    let exec = Instant::now();
    let out = api
        .exec(
            &sandbox.id,
            &ExecConfig {
                cmd: vec!["true".into()],
                ..Default::default()
            },
        )
        .await?;
    if out.exit_code != 0 {
        bail!("`true` exited with {}", out.exit_code);
    }
    let first_exec = exec.elapsed();
    api.delete_sandbox(&sandbox.id).await?;
    Ok(Boot { ready, first_exec })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
