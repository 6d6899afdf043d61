//! The qemu driver with real VMs: boots one machine (under KVM where a probe boot works, TCG
//! otherwise) and checks the driver contract on it: the agent over TCP with its token, exec,
//! files, the memory and pids walls, the workspace disk surviving a stop, adoption by a new
//! driver, and destroy leaving no VM, disk or tap behind. Needs root, QEMU and the kernel
//! from `scripts/setup.sh`.

mod common;

use std::{path::PathBuf, time::Instant};

use bytes::Bytes;
use kiln_guest::{AgentClient, AgentError, Endpoint, ExecRequest};
use kiln_runtime::{
    Driver, Ipv4Cidr, QemuDriver, QemuDriverConfig,
    vm::{
        kernel::{DEFAULT_KERNEL_DIR, Kernel},
        qemu::AGENT_PORT,
    },
};

/// The node subnet of this test; no other test uses it.
const SUBNET: &str = "10.91.240.0/22";

async fn qemu_driver(state_dir: PathBuf) -> QemuDriver {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cfg = QemuDriverConfig::new(state_dir, common::images_dir(), common::agent_bin());
    cfg.subnet = SUBNET.parse::<Ipv4Cidr>().expect("valid subnet");
    cfg.workspace_mib = 256;
    QemuDriver::new(cfg).await.expect("qemu driver")
}

fn vm_prerequisites() -> bool {
    if !common::is_root() {
        return false;
    }
    if Kernel::in_dir(std::path::Path::new(DEFAULT_KERNEL_DIR)).is_err() {
        eprintln!("skipped: no guest kernel in {DEFAULT_KERNEL_DIR}; run scripts/setup.sh");
        return false;
    }
    true
}

/// Destroys the VM when dropped, so a failing test leaves no QEMU, tap or disk behind.
struct DestroyOnDrop(QemuDriver, String);

impl Drop for DestroyOnDrop {
    fn drop(&mut self) {
        let (driver, id) = (self.0.clone(), self.1.clone());
        // A fresh runtime on a fresh thread: Drop may run inside the test's runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                if let Err(e) = driver.destroy(&id).await {
                    eprintln!("cleanup of {id} failed: {e}");
                }
                let _ = driver.remove_idle_bridges().await;
            });
        })
        .join()
        .expect("cleanup thread");
    }
}

/// Forks sleeping children until a fork is refused, kills them, and prints how many forks
/// succeeded and the errno of the one that failed.
const FORK_UNTIL_REFUSED: &str = "\
import os, time
children, errno = [], None
try:
    for _ in range(1000):
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        children.append(pid)
except OSError as e:
    errno = e.errno
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(len(children), errno)
";

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_honours_the_driver_contract() {
    if !vm_prerequisites() {
        return;
    }
    let state = tempfile::tempdir().expect("state dir");
    let driver = qemu_driver(state.path().to_owned()).await;
    let id = common::unique_id("vm");
    let mut spec = common::spec(&id, "org_vmtest", 512);
    // Low enough for the fork test below to reach quickly under emulation.
    spec.pids_max = 64;
    let _cleanup = DestroyOnDrop(driver.clone(), id.clone());

    let started = Instant::now();
    let info = driver.start(&spec).await.expect("boot");
    eprintln!(
        "booted {id} at {} in {:?} ({})",
        info.address,
        started.elapsed(),
        driver.accel()
    );
    // Where the boot's time went, from the guest's side (init prints its uptime).
    let console =
        std::fs::read_to_string(state.path().join(&id).join("console.log")).unwrap_or_default();
    for line in console
        .lines()
        .filter(|l| l.contains("kiln-init") || l.contains("serving"))
    {
        eprintln!("  console: {line}");
    }
    assert_eq!(
        driver.hardware_accelerated(),
        driver.accel() == kiln_runtime::vm::Accel::Kvm
    );
    assert!(
        SUBNET
            .parse::<Ipv4Cidr>()
            .expect("cidr")
            .contains(info.address)
    );
    assert_eq!(driver.running().await.expect("running"), vec![id.clone()]);
    assert!(kiln_runtime::net::tap_exists(&id), "the VM has its tap");

    // The agent answers only with the machine's token.
    let anonymous = AgentClient::new(Endpoint::Tcp((info.address, AGENT_PORT).into()));
    assert!(
        matches!(anonymous.health().await, Err(AgentError::Unauthorized(_))),
        "an agent reached over the network must demand its token"
    );

    let out = info
        .agent
        .exec_collect(ExecRequest::new([
            "sh",
            "-c",
            "id -u; echo $KILN_TEST; hostname; cat /proc/cmdline; ls -ld /workspace | cut -d' ' -f3",
        ]))
        .await
        .expect("exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "1000", "{stdout}");
    assert_eq!(lines[1], "1", "{stdout}");
    assert_eq!(lines[2], spec.hostname, "{stdout}");
    assert!(
        !lines[3].contains("token"),
        "nothing secret on the kernel command line: {stdout}"
    );
    assert_eq!(lines[4], "app", "{stdout}");

    // Memory is the VM's wall: a process that outgrows it meets the guest's OOM killer, and
    // the driver reports the kill.
    assert_eq!(driver.oom_kills(&id).await.expect("oom count"), 0);
    let hog = info
        .agent
        .exec_collect(ExecRequest::new([
            "python3",
            "-c",
            "x = []\nwhile True: x.append(bytearray(32 << 20))",
        ]))
        .await
        .expect("exec");
    assert!(!hog.exit.success(), "the hog cannot finish: {:?}", hog.exit);
    assert!(
        driver.oom_kills(&id).await.expect("oom count") >= 1,
        "the guest's OOM kill is reported; the hog ended with {:?}",
        hog.exit
    );

    // `pids_max` is the guest's wall too: forks fail with EAGAIN once the machine, agent
    // included, has that many tasks, and the agent serves on once they are gone.
    let forks = info
        .agent
        .exec_collect(ExecRequest::new(["python3", "-c", FORK_UNTIL_REFUSED]))
        .await
        .expect("exec");
    let report = String::from_utf8_lossy(&forks.stdout);
    let (forked, errno) = report
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("fork report: {report:?} {forks:?}"));
    let forked: u32 = forked.parse().expect("fork count");
    assert_eq!(errno, "11", "the fork that failed met EAGAIN: {report}");
    assert!(
        (1..spec.pids_max).contains(&forked),
        "the wall is near pids_max ({}): {forked} forks succeeded",
        spec.pids_max
    );
    let after = info
        .agent
        .exec_collect(ExecRequest::new(["true"]))
        .await
        .expect("the agent runs commands again once the forks are gone");
    assert!(after.exit.success(), "{after:?}");

    info.agent
        .put_file(
            "keep/me.txt",
            None,
            futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"persisted"))]),
        )
        .await
        .expect("put");

    // Stop keeps the workspace disk; the next boot sees the file and keeps the address.
    driver.stop(&id).await.expect("stop");
    assert!(driver.running().await.expect("running").is_empty());
    assert!(!kiln_runtime::net::tap_exists(&id), "stop removes the tap");
    assert!(state.path().join(&id).join("workspace.ext4").is_file());
    let again = driver.start(&spec).await.expect("boot again");
    assert_eq!(again.address, info.address);
    assert_ne!(again.boot_id, info.boot_id);
    let kept = again
        .agent
        .get_file("keep/me.txt")
        .await
        .expect("get")
        .collect_bytes()
        .await
        .expect("read");
    assert_eq!(kept, b"persisted");

    // A new driver on the same state adopts the running VM instead of booting it again.
    let second = qemu_driver(state.path().to_owned()).await;
    let adopted = second.start(&spec).await.expect("adopt");
    assert_eq!(adopted.boot_id, again.boot_id, "adopted, not rebooted");
    assert_eq!(
        second.oom_kills(&id).await.expect("oom count"),
        0,
        "a fresh boot has no OOM kills yet"
    );

    second.destroy(&id).await.expect("destroy");
    assert!(second.running().await.expect("running").is_empty());
    assert!(
        !state.path().join(&id).exists(),
        "destroy removes the disk and state"
    );
    assert!(
        !kiln_runtime::net::tap_exists(&id),
        "destroy removes the tap"
    );
    second.remove_idle_bridges().await.expect("remove bridges");
}
