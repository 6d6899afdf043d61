//! The firecracker driver end to end. Needs root (taps, bridges, nftables) and `/dev/kvm`.
//!
//! Firecracker itself is not packaged for Debian, so most tests run the driver against
//! `fixtures/fake-firecracker.py`, which serves Firecracker's API and vsock socket but never
//! boots a kernel (see its docstring): the driver's real process handling, API calls, taps,
//! vsock handshake, errors and cleanup are exercised. With `KILN_FIRECRACKER_BIN` (plus
//! `KILN_FIRECRACKER_KERNEL` and `KILN_FIRECRACKER_ROOTFS`, a root file system whose init starts
//! `kiln-guest` as the kernel command line's `kiln.listen=`/`kiln.machine_id=` say) the last
//! test boots a real guest.
//!
//! Machines use `KILN_NETWORK_SUBNET` (default 10.92.0.0/16), one /22 per test.

mod common;

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{agent_bin, sh, unique_id};
use kiln_runtime::{
    Driver, Ipv4Cidr, MachineSpec, RuntimeError,
    firecracker::{
        FirecrackerConfig, FirecrackerDriver, FirecrackerError, FixedGuestImage, GuestImage,
        JailerConfig, jail_id, tap_name,
    },
};

/// Whether the driver can run here; prints why not.
fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the firecracker driver needs root (taps, bridges, nftables)");
        return false;
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("skipped: /dev/kvm cannot be opened");
        return false;
    }
    true
}

fn fake_firecracker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-firecracker.py")
}

/// The `index`th /22 of the test subnet.
fn subnet(index: u32) -> Ipv4Cidr {
    let base: Ipv4Cidr = std::env::var("KILN_NETWORK_SUBNET")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| "10.92.0.0/16".parse().expect("valid subnet"));
    let slice = base.slice(index * 4).expect("subnet has room for the test");
    Ipv4Cidr::new(slice.network(), 22).expect("a /22 at a /24 boundary multiple of 4")
}

/// A guest image of fixed files in `dir`; `kernel` is the kernel file's content.
fn image(dir: &Path, kernel: &[u8], extra_boot_args: &str) -> Arc<dyn GuestImage> {
    let kernel_path = dir.join("vmlinux");
    let rootfs = dir.join("rootfs.ext4");
    fs::write(&kernel_path, kernel).expect("write kernel");
    fs::write(&rootfs, b"rootfs").expect("write rootfs");
    Arc::new(FixedGuestImage {
        kernel: kernel_path,
        initrd: None,
        rootfs,
        extra_boot_args: extra_boot_args.to_owned(),
        workspace_mib: 16,
    })
}

/// An ELF header is all the fake checks of a kernel.
const FAKE_KERNEL: &[u8] = b"\x7fELF\x02\x01\x01\0fake kernel";

async fn driver(
    state: &Path,
    index: u32,
    guest: Arc<dyn GuestImage>,
    deadline: Duration,
) -> FirecrackerDriver {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cfg = FirecrackerConfig::new(state, guest);
    cfg.firecracker_bin = Some(fake_firecracker());
    cfg.subnet = subnet(index);
    cfg.boot_deadline = deadline;
    FirecrackerDriver::new(cfg)
        .await
        .expect("firecracker driver")
}

/// Destroys its machines and shuts the driver down when dropped, so even a failing test leaves
/// no Firecracker, tap or bridge behind.
struct Cleanup {
    driver: FirecrackerDriver,
    ids: Vec<String>,
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
                driver.shutdown_all().await;
            });
        })
        .join()
        .expect("cleanup thread");
    }
}

fn spec(id: &str) -> MachineSpec {
    let mut spec = common::spec(id, "org_fc", 256);
    spec.vcpus = 2;
    spec
}

fn requests(state: &Path, id: &str) -> Vec<serde_json::Value> {
    fs::read_to_string(state.join(id).join("fake-requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("recorded JSON"))
        .collect()
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn pid_of(state: &Path, id: &str) -> Option<i32> {
    fs::read_to_string(state.join(id).join("firecracker.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Asserts machine `id` holds nothing on the host: no process, tap, sockets or address.
fn assert_stopped(state: &Path, id: &str, pid: Option<i32>) {
    assert!(!link_exists(&tap_name(id)), "tap of {id} left behind");
    for name in ["firecracker.pid", "api.sock", "vsock.sock"] {
        assert!(
            !state.join(id).join(name).exists(),
            "{name} of {id} left behind"
        );
    }
    if let Some(pid) = pid {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "firecracker of {id} (pid {pid}) still runs"
        );
    }
    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(state.join(id).join("machine.json")).expect("machine record"),
    )
    .expect("record JSON");
    assert!(record["address"].is_null(), "address kept: {record}");
}

#[tokio::test]
async fn a_guest_that_never_answers_fails_clearly_within_the_deadline() {
    if !can_run() {
        return;
    }
    let state = tempfile::tempdir().expect("state");
    let files = tempfile::tempdir().expect("files");
    let deadline = Duration::from_secs(3);
    let driver = driver(
        state.path(),
        0,
        image(files.path(), FAKE_KERNEL, ""),
        deadline,
    )
    .await;
    let id = unique_id("fc_silent");
    let _cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![id.clone()],
    };

    let started = Instant::now();
    let err = driver.start(&spec(&id)).await.expect_err("no guest agent");
    let took = started.elapsed();
    let text = err.to_string();
    assert!(
        matches!(
            &err,
            RuntimeError::Firecracker(FirecrackerError::GuestNeverAnswered { .. })
        ),
        "{err:?}"
    );
    assert!(
        text.contains(&format!(
            "machine {id}: the guest never answered within 3 s"
        )),
        "{text}"
    );
    // The serial console tail is quoted.
    assert!(text.contains("no guest agent in this image"), "{text}");
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(5),
        "{took:?}"
    );

    // Every API call, in order, with the machine's own values.
    let seen = requests(state.path(), &id);
    let paths: Vec<&str> = seen.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(
        paths,
        [
            "/logger",
            "/metrics",
            "/machine-config",
            "/boot-source",
            "/drives/rootfs",
            "/drives/workspace",
            "/network-interfaces/eth0",
            "/vsock",
            "/actions"
        ]
    );
    let machine_dir = state.path().join(&id);
    let body = |path: &str| {
        seen.iter()
            .find(|r| r["path"] == path)
            .map(|r| r["body"].clone())
            .expect("request present")
    };
    assert_eq!(
        body("/machine-config"),
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 256})
    );
    let net = body("/network-interfaces/eth0");
    assert_eq!(net["host_dev_name"], tap_name(&id).as_str());
    let slice = subnet(0).slice(0).expect("first slice");
    let address = slice.host(2);
    let [a, b, c, d] = address.octets();
    assert_eq!(
        net["guest_mac"],
        format!("02:4b:{a:02x}:{b:02x}:{c:02x}:{d:02x}").as_str()
    );
    let boot = body("/boot-source");
    let args = boot["boot_args"].as_str().expect("boot args");
    assert!(
        args.contains(&format!("ip={address}::{}:255.255.255.0:", slice.host(1))),
        "{args}"
    );
    assert!(args.contains(&format!("kiln.machine_id={id}")), "{args}");
    assert!(args.contains("kiln.listen=vsock:1000"), "{args}");
    assert_eq!(
        body("/vsock")["uds_path"],
        machine_dir.join("vsock.sock").to_string_lossy().as_ref()
    );
    let workspace = body("/drives/workspace");
    assert_eq!(workspace["is_read_only"], false);
    let drive = PathBuf::from(workspace["path_on_host"].as_str().expect("path"));
    // A real ext4 volume: the superblock magic 0xEF53 at byte 1080.
    let bytes = fs::read(&drive).expect("workspace drive");
    assert_eq!(&bytes[1080..1082], &[0x53, 0xef], "not ext4");
    assert_eq!(body("/drives/rootfs")["is_read_only"], true);

    // The failed boot left nothing running, and the machine can be destroyed.
    assert_stopped(state.path(), &id, None);
    assert!(driver.running().await.expect("running").is_empty());
    driver.destroy(&id).await.expect("destroy");
    assert!(!machine_dir.exists());
    driver.shutdown_all().await;
}

#[tokio::test]
async fn a_jailed_firecracker_gets_every_file_inside_its_jail() {
    if !can_run() {
        return;
    }
    let state = tempfile::tempdir().expect("state");
    let files = tempfile::tempdir().expect("files");
    let chroot_base = tempfile::tempdir().expect("chroot base");
    let mut cfg = FirecrackerConfig::new(state.path(), image(files.path(), FAKE_KERNEL, ""));
    cfg.firecracker_bin = Some(fake_firecracker());
    cfg.jailer = Some(JailerConfig {
        bin: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-jailer.py"),
        uid: 65534,
        gid: 65534,
        chroot_base: chroot_base.path().to_owned(),
    });
    cfg.subnet = subnet(4);
    cfg.boot_deadline = Duration::from_secs(2);
    let driver = FirecrackerDriver::new(cfg).await.expect("jailed driver");
    let id = unique_id("fc_jailed");
    let _cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![id.clone()],
    };

    // The fake jails itself and drops to 65534 before it is configured, so the boot gets as
    // far as a guest that never answers only if every file was staged in the jail for that user.
    let err = driver.start(&spec(&id)).await.expect_err("no guest agent");
    assert!(
        matches!(
            &err,
            RuntimeError::Firecracker(FirecrackerError::GuestNeverAnswered { .. })
        ),
        "{err}"
    );
    let jail = jail_id(&id);
    let record = chroot_base.path().join(format!("{jail}.requests.jsonl"));
    let seen: Vec<serde_json::Value> = fs::read_to_string(&record)
        .expect("the fake jailer's record")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let body = |path: &str| {
        seen.iter()
            .find(|r| r["path"] == path)
            .map(|r| r["body"].clone())
            .unwrap_or_else(|| panic!("no {path} in {seen:?}"))
    };
    assert_eq!(body("/boot-source")["kernel_image_path"], "/vmlinux");
    assert_eq!(body("/drives/rootfs")["path_on_host"], "/rootfs.ext4");
    assert_eq!(body("/drives/workspace")["path_on_host"], "/workspace.ext4");
    assert_eq!(body("/vsock")["uds_path"], "/vsock.sock");
    assert_eq!(body("/logger")["log_path"], "/firecracker.log");
    assert_eq!(
        seen.last().map(|r| r["body"].clone()),
        Some(serde_json::json!({"action_type": "InstanceStart"}))
    );
    // The writable drive was handed to the jailed user; the jail is gone after the failure.
    let workspace = state.path().join(&id).join("workspace.ext4");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&fs::metadata(&workspace).expect("workspace")),
        65534
    );
    assert!(
        !chroot_base
            .path()
            .join("fake-firecracker.py")
            .join(&jail)
            .exists(),
        "jail left behind"
    );
    assert_stopped(state.path(), &id, None);
}

#[tokio::test]
async fn refusals_and_missing_files_are_clear() {
    if !can_run() {
        return;
    }
    let state = tempfile::tempdir().expect("state");
    let files = tempfile::tempdir().expect("files");

    // A kernel Firecracker cannot load: its fault_message reaches the caller.
    let driver_bad = driver(
        state.path(),
        1,
        image(files.path(), b"not a kernel", ""),
        Duration::from_secs(5),
    )
    .await;
    let id = unique_id("fc_refused");
    let err = driver_bad.start(&spec(&id)).await.expect_err("refused");
    assert_eq!(
        err.to_string(),
        "Firecracker refused PUT /actions (400 Bad Request): Failed to load kernel: Invalid Elf magic number"
    );
    assert_stopped(state.path(), &id, None);
    driver_bad.destroy(&id).await.expect("destroy");

    // A missing kernel is reported before Firecracker starts.
    let gone = tempfile::tempdir().expect("files");
    let missing: Arc<dyn GuestImage> = Arc::new(FixedGuestImage {
        kernel: gone.path().join("vmlinux"),
        initrd: None,
        rootfs: files.path().join("rootfs.ext4"),
        extra_boot_args: String::new(),
        workspace_mib: 16,
    });
    let driver_missing = driver(state.path(), 1, missing, Duration::from_secs(5)).await;
    let id = unique_id("fc_nokernel");
    let err = driver_missing
        .start(&spec(&id))
        .await
        .expect_err("no kernel");
    let text = err.to_string();
    assert!(
        text.starts_with("the guest kernel ") && text.contains("does not exist"),
        "{text}"
    );
    assert!(!state.path().join(&id).join("fake-requests.jsonl").exists());
    assert_stopped(state.path(), &id, None);
    driver_missing.destroy(&id).await.expect("destroy");
    driver_missing.shutdown_all().await;
}

#[tokio::test]
async fn a_missing_binary_is_reported_at_construction() {
    let state = tempfile::tempdir().expect("state");
    let files = tempfile::tempdir().expect("files");
    let mut cfg = FirecrackerConfig::new(state.path(), image(files.path(), FAKE_KERNEL, ""));
    cfg.firecracker_bin = Some(files.path().join("no-firecracker"));
    let err = FirecrackerDriver::new(cfg)
        .await
        .expect_err("missing binary");
    let text = err.to_string();
    assert!(
        text.contains("no-firecracker") && text.contains("KILN_FIRECRACKER_BIN"),
        "{text}"
    );
}

#[tokio::test]
async fn machines_boot_stop_restart_and_are_adopted() {
    if !can_run() {
        return;
    }
    let state = tempfile::tempdir().expect("state");
    let files = tempfile::tempdir().expect("files");
    let agent = agent_bin();
    let guest = image(
        files.path(),
        FAKE_KERNEL,
        &format!("kiln.fake_agent={}", agent.display()),
    );
    let deadline = Duration::from_secs(10);
    let driver1 = driver(state.path(), 2, guest.clone(), deadline).await;
    let id = unique_id("fc_life");
    let _cleanup = Cleanup {
        driver: driver1.clone(),
        ids: vec![id.clone()],
    };

    let machine = driver1.start(&spec(&id)).await.expect("boot");
    assert!(
        machine.agent.endpoint().to_string().starts_with("vsock:"),
        "{}",
        machine.agent.endpoint()
    );
    assert_eq!(machine.address, subnet(2).host(2));
    assert!(link_exists(&tap_name(&id)), "tap missing");
    let (code, out, _) = sh(&machine.agent, "echo hello > note.txt && cat note.txt").await;
    assert_eq!((code, out.as_str()), (Some(0), "hello\n"));
    assert_eq!(driver1.running().await.expect("running"), vec![id.clone()]);

    // A new driver on the same state directory adopts the machine instead of rebooting it.
    let driver2 = driver(state.path(), 2, guest, deadline).await;
    let adopted = driver2.start(&spec(&id)).await.expect("adopt");
    assert_eq!(adopted.boot_id, machine.boot_id);
    assert_eq!(adopted.address, machine.address);

    // Stop: the guest is asked to shut down, then everything is gone but the workspace.
    let pid = pid_of(state.path(), &id);
    assert!(pid.is_some());
    driver2.stop(&id).await.expect("stop");
    assert_stopped(state.path(), &id, pid);
    assert!(driver2.running().await.expect("running").is_empty());
    driver2.stop(&id).await.expect("stop is idempotent");

    // A restart is a new boot that keeps the workspace.
    let again = driver2.start(&spec(&id)).await.expect("restart");
    assert_ne!(again.boot_id, machine.boot_id);
    let (code, out, _) = sh(&again.agent, "cat note.txt").await;
    assert_eq!((code, out.as_str()), (Some(0), "hello\n"));

    let pid = pid_of(state.path(), &id);
    driver2.destroy(&id).await.expect("destroy");
    assert!(!state.path().join(&id).exists(), "machine directory kept");
    assert!(!link_exists(&tap_name(&id)));
    if let Some(pid) = pid {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z"), "pid {pid} runs");
    }
    driver2.destroy(&id).await.expect("destroy is idempotent");
    driver2.shutdown_all().await;
    assert!(
        !link_exists(&kiln_runtime::net::bridge_name(
            subnet(2).slice(0).expect("slice")
        )),
        "idle bridge kept"
    );
}

/// Boots a real guest where Firecracker and a guest image are configured
/// (`KILN_FIRECRACKER_KERNEL`, `KILN_FIRECRACKER_ROOTFS`, optionally `KILN_FIRECRACKER_INITRD`);
/// on a host where guests cannot boot (e.g. a PVM host, where stock kernels hang), the driver
/// must say so within its deadline. Without a configured image it boots the newest
/// `/boot/vmlinuz-*` over an empty root file system: no agent can answer, so the driver must
/// report that clearly (or report Firecracker's exit when the guest kernel panics and reboots).
#[tokio::test]
async fn real_firecracker_boots_a_sandbox_or_explains_why_not() {
    let Some(bin) = std::env::var_os("KILN_FIRECRACKER_BIN") else {
        eprintln!("skipped: set KILN_FIRECRACKER_BIN to run Firecracker for real");
        return;
    };
    let files = tempfile::tempdir().expect("files");
    let configured = std::env::var_os("KILN_FIRECRACKER_KERNEL")
        .zip(std::env::var_os("KILN_FIRECRACKER_ROOTFS"))
        .map(|(k, r)| (PathBuf::from(k), PathBuf::from(r)));
    let with_agent = configured.is_some();
    let (kernel, rootfs) = match configured {
        Some(pair) => pair,
        None => {
            let Some(kernel) = newest_host_kernel() else {
                eprintln!(
                    "skipped: no guest image (KILN_FIRECRACKER_KERNEL, KILN_FIRECRACKER_ROOTFS) and no /boot/vmlinuz-*"
                );
                return;
            };
            let rootfs = files.path().join("empty.ext4");
            let status = kiln_runtime::spawn::command("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&rootfs)
                .arg("8M")
                .status()
                .expect("run mkfs.ext4");
            assert!(status.success(), "mkfs.ext4 failed");
            (kernel, rootfs)
        }
    };
    if !can_run() {
        return;
    }
    let state = tempfile::tempdir().expect("state");
    let guest: Arc<dyn GuestImage> = Arc::new(FixedGuestImage {
        kernel,
        initrd: std::env::var_os("KILN_FIRECRACKER_INITRD")
            .filter(|_| with_agent)
            .map(PathBuf::from),
        rootfs,
        extra_boot_args: String::new(),
        workspace_mib: 64,
    });
    let deadline = Duration::from_secs(if with_agent { 30 } else { 15 });
    let mut cfg = FirecrackerConfig::new(state.path(), guest)
        .with_env(|name| std::env::var(name).ok())
        .expect("firecracker environment");
    cfg.firecracker_bin = Some(bin.into());
    cfg.subnet = subnet(3);
    cfg.boot_deadline = deadline;
    let driver = FirecrackerDriver::new(cfg).await.expect("driver");
    let id = unique_id("fc_real");
    let _cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![id.clone()],
    };
    let started = Instant::now();
    match driver.start(&spec(&id)).await {
        Ok(machine) => {
            assert!(with_agent, "a guest without an agent cannot answer");
            eprintln!("guest agent ready after {:?}", started.elapsed());
            let (code, out, _) = sh(&machine.agent, "echo kept > kept.txt && uname -s").await;
            assert_eq!((code, out.as_str()), (Some(0), "Linux\n"));
            driver.stop(&id).await.expect("stop");
            let again = driver.start(&spec(&id)).await.expect("restart");
            let (_, out, _) = sh(&again.agent, "cat kept.txt").await;
            assert_eq!(out, "kept\n");
            assert_ne!(again.address, Ipv4Addr::UNSPECIFIED);
        }
        Err(RuntimeError::Firecracker(e @ FirecrackerError::GuestNeverAnswered { .. })) => {
            assert!(started.elapsed() < deadline + Duration::from_secs(10));
            eprintln!("the guest never answered (as the driver reports it): {e}");
        }
        Err(RuntimeError::Firecracker(e @ FirecrackerError::Exited { .. })) if !with_agent => {
            eprintln!("the agent-less guest ended (as the driver reports it): {e}");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    driver.destroy(&id).await.expect("destroy");
    driver.shutdown_all().await;
}

/// The newest `/boot/vmlinuz-*` (Firecracker boots bzImages on x86_64).
fn newest_host_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}
