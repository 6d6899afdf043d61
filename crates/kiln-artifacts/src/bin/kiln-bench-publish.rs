//! Benchmark of publishing a directory: `ArtifactStore::put_dir` beside the shell pipeline
//! `tar -C DIR -cf - . | zstd -3 -T1 | sha256sum` on the same ~100 MB tree of mixed files.
//!
//! Builds the tree in a temporary directory (a few thousand small text files, large
//! compressible text files, large random files, some scripts and symlinks), then runs each
//! contender `BENCH_RUNS` times (3 by default), interleaved so that both see the same machine,
//! and prints the medians and their ratio. `pack_dir_to` into a sink is timed too: the same
//! packing, compression and hashing as `put_dir` without writing the object to disk, which is
//! what the shell pipeline does. Run through `scripts/bench-publish.sh`.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiln_artifacts::{ArtifactStore, PackOptions, pack_dir_to};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const MIB: usize = 1024 * 1024;
const SMALL_FILES: usize = 3000;
const TEXT_FILES: usize = 20;
const TEXT_FILE_LEN: usize = 2 * MIB;
const RANDOM_FILES: usize = 12;
const RANDOM_FILE_LEN: usize = 4 * MIB;

const WORDS: &[&str] = &[
    "const",
    "let",
    "function",
    "return",
    "import",
    "export",
    "default",
    "from",
    "async",
    "await",
    "props",
    "state",
    "render",
    "div",
    "className",
    "onClick",
    "value",
    "true",
    "false",
    "null",
    "undefined",
    "user",
    "session",
    "request",
    "response",
    "error",
    "status",
    "200",
    "404",
    "GET",
    "POST",
    "/api/items",
    "handler",
    "module",
    "require",
    "map",
    "filter",
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kiln-bench-publish: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let runs: usize = match std::env::var("BENCH_RUNS") {
        Ok(text) => text.parse().context("BENCH_RUNS must be a number")?,
        Err(_) => 3,
    };
    if runs == 0 {
        bail!("BENCH_RUNS must be at least 1");
    }
    let work = tempfile::tempdir().context("create a temporary directory")?;
    let tree = work.path().join("tree");
    let started = Instant::now();
    let (files, bytes) = build_tree(&tree).context("build the tree")?;
    println!(
        "tree: {files} files, {:.1} MB, built in {:.1}s in {}",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        work.path().display()
    );

    let runtime = tokio::runtime::Runtime::new().context("start tokio")?;
    let mut put_dir_times = Vec::new();
    let mut sink_times = Vec::new();
    let mut shell_times = Vec::new();
    let mut ours = None;
    let mut shell_digest = String::new();
    for run in 1..=runs {
        // A fresh store each run, so every run writes its object.
        let root = work.path().join(format!("store-{run}"));
        let started = Instant::now();
        let (digest, size, _) = runtime.block_on(async {
            let store = ArtifactStore::open(&root).await?;
            store.put_dir(&tree, &PackOptions::default()).await
        })?;
        put_dir_times.push(started.elapsed());
        fs::remove_dir_all(&root).context("remove the store")?;
        if let Some((first, _)) = ours
            && first != digest
        {
            bail!("put_dir gave {digest} after {first}: not deterministic");
        }
        ours = Some((digest, size));

        let started = Instant::now();
        let (sunk, _) = pack_dir_to(&tree, io::sink())?;
        sink_times.push(started.elapsed());
        if sunk != digest {
            bail!("pack_dir_to gave {sunk}, put_dir {digest}");
        }

        let started = Instant::now();
        shell_digest = shell(&tree, "tar -C \"$1\" -cf - . | zstd -3 -T1 -q | sha256sum")?;
        shell_times.push(started.elapsed());
        eprintln!(
            "run {run}/{runs}: put_dir {:.3}s, pack_dir_to(sink) {:.3}s, shell {:.3}s",
            secs(put_dir_times[run - 1]),
            secs(sink_times[run - 1]),
            secs(shell_times[run - 1])
        );
    }
    let shell_size: u64 = shell(&tree, "tar -C \"$1\" -cf - . | zstd -3 -T1 -q | wc -c")?
        .trim()
        .parse()
        .context("parse the pipeline's size")?;
    let (digest, size) = ours.context("no run")?;

    let put_dir = median(&mut put_dir_times);
    let sink = median(&mut sink_times);
    let shell_median = median(&mut shell_times);
    let mb = bytes as f64 / 1e6;
    println!(
        "cores: {}; median of {runs} interleaved runs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| contender                                   | median s |   MB/s | output bytes | / shell |"
    );
    println!(
        "|---------------------------------------------|----------|--------|--------------|---------|"
    );
    for (name, time, out) in [
        ("ArtifactStore::put_dir (to disk, fsync)", put_dir, size),
        ("pack_dir_to(io::sink())", sink, size),
        ("tar | zstd -3 -T1 | sha256sum", shell_median, shell_size),
    ] {
        println!(
            "| {name:<43} | {:>8.3} | {:>6.1} | {out:>12} | {:>7.2} |",
            secs(time),
            mb / secs(time),
            secs(time) / secs(shell_median)
        );
    }
    println!();
    println!("put_dir digest: {digest}");
    println!(
        "shell digest:   sha256:{}",
        shell_digest.split_whitespace().next().unwrap_or("?")
    );
    println!(
        "(the digests differ: GNU tar records owners, mtimes and its own entry order; kiln's archive does not)"
    );
    Ok(())
}

/// Runs `script` with `bash -c` (for `pipefail`, so a failing tar is not hidden by the
/// pipeline's last command), `$1` = `dir`, and returns its stdout.
// The one-function-spawns rule is for the platform's processes (kiln_runtime::spawn, which
// clears the environment); this is a developer tool timing the host's own tar and zstd, and
// it keeps only PATH so the tools are found.
#[allow(clippy::disallowed_methods)]
fn shell(dir: &Path, script: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new("bash")
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("LC_ALL", "C")
        .arg("-c")
        .arg(format!("set -o pipefail; {script}"))
        .arg("bash")
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run `{script}`"))?;
    if !output.status.success() {
        bail!("`{script}` failed: {}", output.status);
    }
    String::from_utf8(output.stdout).context("pipeline output is not UTF-8")
}

/// Writes the benchmark tree; returns its file count and bytes.
fn build_tree(root: &Path) -> anyhow::Result<(usize, u64)> {
    // Seeded: every run of the benchmark packs the same tree.
    let mut rng = StdRng::seed_from_u64(0x6b696c6e);
    let mut files = 0;
    let mut bytes = 0u64;
    let mut put = |rel: String, data: &[u8]| -> anyhow::Result<()> {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().context("a parent")?)?;
        fs::write(&path, data).with_context(|| format!("write {}", path.display()))?;
        files += 1;
        bytes += data.len() as u64;
        Ok(())
    };
    for i in 0..SMALL_FILES {
        let len = rng.random_range(1024..8 * 1024);
        let text = text(&mut rng, len);
        put(
            format!("src/module-{:02}/file-{i:04}.js", i % 60),
            text.as_bytes(),
        )?;
    }
    for i in 0..TEXT_FILES {
        let text = text(&mut rng, TEXT_FILE_LEN);
        put(format!("data/log-{i:02}.txt"), text.as_bytes())?;
    }
    let mut blob = vec![0u8; RANDOM_FILE_LEN];
    for i in 0..RANDOM_FILES {
        rng.fill_bytes(&mut blob);
        put(format!("assets/blob-{i:02}.bin"), &blob)?;
    }
    put("bin/start".into(), b"#!/bin/sh\nexec node server.js\n")?;
    set_exec(&root.join("bin/start"))?;
    std::os::unix::fs::symlink("src/module-00/file-0000.js", root.join("index.js"))?;
    std::os::unix::fs::symlink(OsStr::new("../assets"), root.join("src/assets"))?;
    Ok((files, bytes))
}

fn set_exec(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// Code- and log-like text: compressible, but not trivially.
fn text(rng: &mut StdRng, len: usize) -> String {
    let mut out = String::with_capacity(len + 64);
    while out.len() < len {
        let words = rng.random_range(3..12);
        for w in 0..words {
            if w > 0 {
                out.push(' ');
            }
            out.push_str(WORDS[rng.random_range(0..WORDS.len())]);
            if rng.random_bool(0.2) {
                out.push_str(&rng.random_range(0..100_000u32).to_string());
            }
        }
        out.push('\n');
    }
    out.truncate(len);
    out
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
