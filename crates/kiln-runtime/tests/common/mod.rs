//! Shared setup of the integration tests: root check, the shared image cache, the binaries a
//! machine needs, drivers on private subnets and machines that are destroyed even when a test
//! fails.

#![allow(dead_code)] // Each test file uses a different subset.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use kiln_guest::{ExecRequest, client::AgentClient};
use kiln_runtime::{
    Driver, Ipv4Cidr, MachineSpec, ProcessDriver, ProcessDriverConfig, default_image,
};

/// Whether the tests can run; prints why not.
pub fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: the process driver needs root (namespaces, cgroups, bridges)");
    }
    root
}

/// The image cache shared by all test runs on this machine.
pub fn images_dir() -> PathBuf {
    std::env::var_os("KILN_TEST_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kiln-test/images"))
}

/// The guest agent binary: `KILN_GUEST_BIN`, or `kiln-guest` built into the same target
/// directory as this test. Cargo builds binaries of other packages only when asked, so run
/// `cargo build -p kiln-guest` first.
pub fn agent_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("KILN_GUEST_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/kiln-guest
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("kiln-guest"))
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        path.is_file(),
        "guest agent binary {} not found: run `cargo build -p kiln-guest` first (or set KILN_GUEST_BIN)",
        path.display()
    );
    path
}

/// The launcher built with this package.
pub fn launcher_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln-launch"))
}

/// A driver with its own state directory on its own /22 (four org slices) of 10.77.0.0/16,
/// `index` distinct per test so tests running in parallel never share bridges or addresses.
pub async fn driver(index: u8) -> (ProcessDriver, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state dir");
    let driver = driver_on(state.path().to_owned(), index).await;
    (driver, state)
}

/// A driver on an existing state directory (to test adoption).
pub async fn driver_on(state_dir: PathBuf, index: u8) -> ProcessDriver {
    driver_with_agent(state_dir, index, agent_bin()).await
}

/// A driver that boots `agent` as the machines' PID 1.
pub async fn driver_with_agent(state_dir: PathBuf, index: u8, agent: PathBuf) -> ProcessDriver {
    assert!(index < 64, "subnet index out of range");
    // `RUST_LOG=kiln_runtime=debug cargo test ...` shows what the driver does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cfg = ProcessDriverConfig::new(state_dir, images_dir(), agent, launcher_bin());
    cfg.subnet = format!("10.77.{}.0/22", index * 4)
        .parse::<Ipv4Cidr>()
        .expect("valid subnet");
    cfg.egress = false;
    ProcessDriver::new(cfg).await.expect("process driver")
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A machine id unique across parallel tests and test runs.
pub fn unique_id(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{n}", std::process::id())
}

/// A small machine spec.
pub fn spec(id: &str, org: &str, memory_mib: u32) -> MachineSpec {
    MachineSpec {
        id: id.to_owned(),
        org_id: org.to_owned(),
        image: default_image(),
        vcpus: 1,
        memory_mib,
        pids_max: 256,
        hostname: id.replace('_', "-"),
        env: BTreeMap::from([("KILN_TEST".to_owned(), "1".to_owned())]),
    }
}

/// Destroys the machines it holds when dropped, then shuts the driver down (which removes its
/// bridges), so even a failing test leaves no processes, cgroups or interfaces behind.
pub struct Cleanup {
    pub driver: ProcessDriver,
    pub ids: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let driver = self.driver.clone();
        let ids = std::mem::take(&mut self.ids);
        // A fresh runtime on a fresh thread: Drop may run inside the test's runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                for id in ids {
                    if let Err(e) = driver.destroy(&id).await {
                        eprintln!("cleanup of {id} failed: {e}");
                    }
                }
                // Also removes the test's org bridges.
                driver.shutdown_all().await;
            });
        })
        .join()
        .expect("cleanup thread");
    }
}

/// Runs `sh -c script` in the machine and returns (exit code, stdout, stderr).
pub async fn sh(agent: &AgentClient, script: &str) -> (Option<i32>, String, String) {
    let out = agent
        .exec_collect(ExecRequest::new(["sh", "-c", script]))
        .await
        .expect("exec");
    (
        out.exit.code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
