//! Benchmark: sandbox create → first exec latency through the real API, beside a raw
//! `unshare` baseline doing the same work (new namespaces, run one command, collect its
//! output) in the same run. Prints p50/p95 and the ratio. Run by `scripts/bench-sandbox.sh`.

#![allow(clippy::disallowed_methods)] // the baseline is exactly a bare spawn

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use kiln_api::Client;
use kiln_api::apps::AppConfig;
use kiln_api::sandboxes::{ExecConfig, SandboxConfig};
use kiln_testkit::Kiln;

const SEQUENTIAL: usize = 50;
const CONCURRENT: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: kiln-bench-sandbox PATH/TO/kiln")?;
    let kiln = Kiln::start(&binary, &[("KILN_LOG", "warn")], None).await?;
    let api = kiln.client();
    api.create_app(&AppConfig {
        name: "bench".into(),
        slug: None,
    })
    .await?;
    // One sandbox first, so the image is built and caches are warm for both sides.
    let warm = create_and_exec(&api).await?;
    println!("warm-up create → first exec: {:.1} ms", ms(warm.0));
    api.delete_sandbox(&warm.1).await?;

    let mut kiln_seq = Vec::new();
    for _ in 0..SEQUENTIAL {
        let (took, id) = create_and_exec(&api).await?;
        kiln_seq.push(took);
        api.delete_sandbox(&id).await?;
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { create_and_exec(&api).await })
        })
        .collect();
    let mut kiln_conc = Vec::new();
    let mut ids = Vec::new();
    for task in tasks {
        let (took, id) = task.await??;
        kiln_conc.push(took);
        ids.push(id);
    }
    let kiln_conc_wall = started.elapsed();
    for id in ids {
        api.delete_sandbox(&id).await?;
    }

    let mut raw_seq = Vec::new();
    for _ in 0..SEQUENTIAL {
        raw_seq.push(raw_unshare().await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| tokio::spawn(raw_unshare()))
        .collect();
    let mut raw_conc = Vec::new();
    for task in tasks {
        raw_conc.push(task.await??);
    }
    let raw_conc_wall = started.elapsed();

    println!();
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "create → first exec", "p50 ms", "p95 ms", "wall ms"
    );
    report("kiln, 50 sequential", &mut kiln_seq, None);
    report("raw unshare, 50 sequential", &mut raw_seq, None);
    report("kiln, 20 concurrent", &mut kiln_conc, Some(kiln_conc_wall));
    report(
        "raw unshare, 20 concurrent",
        &mut raw_conc,
        Some(raw_conc_wall),
    );
    println!();
    println!(
        "ratio kiln/raw p50: sequential {:.2}x, concurrent {:.2}x",
        ms(pct(&kiln_seq, 50)) / ms(pct(&raw_seq, 50)),
        ms(pct(&kiln_conc, 50)) / ms(pct(&raw_conc, 50)),
    );
    Ok(())
}

/// Creates a sandbox, waits until it runs, runs one command; returns the time and the id.
async fn create_and_exec(api: &Client) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let sandbox = api
        .create_sandbox("bench", &SandboxConfig::default(), 60)
        .await?;
    let result = api
        .exec(
            &sandbox.id,
            &ExecConfig {
                cmd: vec!["echo".into(), "ready".into()],
                ..Default::default()
            },
        )
        .await?;
    anyhow::ensure!(
        result.stdout == "ready\n",
        "unexpected exec result {result:?}"
    );
    Ok((started.elapsed(), sandbox.id))
}

/// The floor: fresh mount, pid, net, uts and ipc namespaces running one command whose
/// output is collected, without images, addresses, limits or an agent.
async fn raw_unshare() -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = tokio::process::Command::new("unshare")
        .args([
            "--mount", "--pid", "--fork", "--net", "--uts", "--ipc", "--", "echo", "ready",
        ])
        .output()
        .await?;
    anyhow::ensure!(
        out.stdout == b"ready\n",
        "unshare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(started.elapsed())
}

fn report(label: &str, samples: &mut [Duration], wall: Option<Duration>) {
    samples.sort();
    let wall = wall.map_or_else(|| "-".to_owned(), |w| format!("{:.1}", ms(w)));
    println!(
        "{label:<34} {:>9.1} {:>9.1} {wall:>9}",
        ms(pct(samples, 50)),
        ms(pct(samples, 95))
    );
}

/// The p-th percentile of sorted samples.
fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
