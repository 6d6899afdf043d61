//! Benchmark: sandbox create → first exec latency through the real API, beside two raw
//! baselines in the same run: the floor (`unshare` of the five namespaces running one
//! command) and the same machine work done with raw tools (a network namespace with a veth
//! and an address, memory/pids/cpu cgroups joined, `unshare` into the image root, one
//! command). Prints p50/p95 and the ratios. Run by `scripts/bench-platform.sh sandbox`.

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

    let rootfs = image_root()?;
    let mut same_seq = Vec::new();
    for i in 0..SEQUENTIAL {
        same_seq.push(same_work(i, &rootfs).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|i| tokio::spawn(same_work(SEQUENTIAL + i, rootfs.clone())))
        .collect();
    let mut same_conc = Vec::new();
    for task in tasks {
        same_conc.push(task.await??);
    }
    let same_conc_wall = started.elapsed();

    println!();
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "create → first exec", "p50 ms", "p95 ms", "wall ms"
    );
    report("kiln, 50 sequential", &mut kiln_seq, None);
    report("raw unshare, 50 sequential", &mut raw_seq, None);
    report("raw same work, 50 sequential", &mut same_seq, None);
    report("kiln, 20 concurrent", &mut kiln_conc, Some(kiln_conc_wall));
    report(
        "raw unshare, 20 concurrent",
        &mut raw_conc,
        Some(raw_conc_wall),
    );
    report(
        "raw same work, 20 concurrent",
        &mut same_conc,
        Some(same_conc_wall),
    );
    println!();
    println!(
        "ratio kiln/raw unshare p50: sequential {:.2}x, concurrent {:.2}x",
        ms(pct(&kiln_seq, 50)) / ms(pct(&raw_seq, 50)),
        ms(pct(&kiln_conc, 50)) / ms(pct(&raw_conc, 50)),
    );
    println!(
        "ratio kiln/raw same work p50: sequential {:.2}x, concurrent {:.2}x",
        ms(pct(&kiln_seq, 50)) / ms(pct(&same_seq, 50)),
        ms(pct(&kiln_conc, 50)) / ms(pct(&same_conc, 50)),
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

/// The built default image's root, from the images directory the platform used.
fn image_root() -> anyhow::Result<PathBuf> {
    let dir = kiln_testkit::images_dir();
    std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path().join("rootfs")))
        .find(|p| p.join("usr/bin/env").exists())
        .with_context(|| format!("no built image under {}", dir.display()))
}

/// The machine work with raw tools: netns + veth + address, three cgroups with limits joined,
/// `unshare` into the read-only image root, one command; torn down afterwards (not timed).
async fn same_work(i: usize, rootfs: impl AsRef<std::path::Path>) -> anyhow::Result<Duration> {
    let rootfs = rootfs.as_ref().display().to_string();
    let (ns, veth, cg) = (
        format!("rawb{i}"),
        format!("rawv{i}"),
        format!("rawbench{i}"),
    );
    let setup = format!(
        "set -e
ip netns add {ns}
ip link add {veth} type veth peer name eth0 netns {ns}
ip link set {veth} up
ip -n {ns} addr add 10.254.{hi}.{lo}/16 dev eth0
ip -n {ns} link set eth0 up
ip -n {ns} link set lo up
for c in memory pids cpu; do mkdir -p /sys/fs/cgroup/$c/{cg}; done
echo 1073741824 > /sys/fs/cgroup/memory/{cg}/memory.limit_in_bytes
echo 1024 > /sys/fs/cgroup/pids/{cg}/pids.max
echo 1024 > /sys/fs/cgroup/cpu/{cg}/cpu.shares
exec ip netns exec {ns} sh -c 'for c in memory pids cpu; do echo $$ > /sys/fs/cgroup/$c/{cg}/cgroup.procs; done; \
  exec unshare --mount --pid --fork --uts --ipc --root {rootfs} /usr/bin/env echo ready'",
        hi = i / 250,
        lo = i % 250 + 2,
    );
    let teardown = format!(
        "ip netns del {ns} 2>/dev/null; ip link del {veth} 2>/dev/null; \
         for c in memory pids cpu; do rmdir /sys/fs/cgroup/$c/{cg} 2>/dev/null; done; true"
    );
    let started = Instant::now();
    let out = tokio::process::Command::new("sh")
        .args(["-c", &setup])
        .output()
        .await?;
    let took = started.elapsed();
    tokio::process::Command::new("sh")
        .args(["-c", &teardown])
        .output()
        .await?;
    anyhow::ensure!(
        out.stdout == b"ready\n",
        "raw same work failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
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
