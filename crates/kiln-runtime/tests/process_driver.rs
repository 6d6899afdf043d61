//! The process driver against real namespaces, cgroups, bridges and nftables (needs root and the
//! `kiln-guest` binary: `cargo build -p kiln-guest` first).
//!
//! Each test runs its own driver on its own state directory and /22 of 10.77.0.0/16 (the index
//! passed to `common::driver`), so the tests run in parallel without sharing anything but the
//! image cache and the `inet kiln` table.

mod common;

use std::{
    fs,
    net::{Ipv4Addr, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use common::{Cleanup, sh};
use kiln_guest::ProcessSpec;
use kiln_runtime::{Driver, MachineInfo, ProcessDriver, RuntimeError, net};

/// Asserts nothing of machine `id` is left on the host: processes, cgroups, netns, veth.
fn assert_no_traces(id: &str, init_pid: Option<i32>) {
    for controller in ["memory", "pids", "cpu"] {
        let cg = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("kiln")
            .join(id);
        assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    }
    assert!(!net::netns_path(id).exists(), "netns of {id} left behind");
    let veth = Path::new("/sys/class/net").join(net::veth_name(id));
    assert!(!veth.exists(), "veth of {id} left behind");
    if let Some(pid) = init_pid {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "PID 1 of {id} (host pid {pid}) still runs"
        );
    }
}

fn init_pid(state: &Path, id: &str) -> Option<i32> {
    fs::read_to_string(state.join(id).join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Starts a supervised HTTP server on port 8000 in the machine and waits until it answers.
async fn serve_http(m: &MachineInfo) {
    m.agent
        .process_start(ProcessSpec {
            name: "http".into(),
            cmd: ["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"]
                .map(String::from)
                .to_vec(),
            ..ProcessSpec::default()
        })
        .await
        .expect("start http server");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _, _) = sh(
            &m.agent,
            "curl -s -o /dev/null --max-time 1 http://127.0.0.1:8000/",
        )
        .await;
        if code == Some(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "http server in {} did not come up",
            m.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `from` can fetch `http://{to}:{port}/` within a short timeout.
async fn can_reach(from: &MachineInfo, to: Ipv4Addr, port: u16) -> bool {
    let (code, _, _) = sh(
        &from.agent,
        &format!("curl -s -o /dev/null --connect-timeout 1 --max-time 2 http://{to}:{port}/"),
    )
    .await;
    code == Some(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_a_vm_shaped_machine() {
    if !common::is_root() {
        return;
    }
    let (driver, state) = common::driver(0).await;
    let id = common::unique_id("boot");
    let cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![id.clone()],
    };
    assert_eq!(driver.name(), "process");
    assert!(!driver.hardware_accelerated());

    let spec = common::spec(&id, "org_a", 256);
    let started = Instant::now();
    let m = driver.start(&spec).await.expect("start");
    eprintln!("boot (create → agent health): {:?}", started.elapsed());
    assert_eq!(m.id, id);
    assert!(!m.boot_id.is_empty());
    assert!(
        "10.77.0.0/22"
            .parse::<kiln_runtime::Ipv4Cidr>()
            .expect("cidr")
            .contains(m.address),
        "{}",
        m.address
    );
    let health = m.agent.health().await.expect("health");
    assert_eq!(health.machine_id.as_deref(), Some(id.as_str()));
    assert_eq!(driver.running().await.expect("running"), vec![id.clone()]);

    // start is idempotent: the running machine is returned, not rebooted.
    let again = driver.start(&spec).await.expect("start again");
    assert_eq!(again.boot_id, m.boot_id);
    assert_eq!(again.address, m.address);

    // Only the machine's own processes are visible, with the agent as PID 1.
    let (code, out, err) = sh(&m.agent, "ps -e -o pid=,comm=").await;
    assert_eq!(code, Some(0), "{err}");
    let procs: Vec<(u32, String)> = out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.to_owned()))
        })
        .collect();
    assert!(procs.contains(&(1, "kiln-guest".to_owned())), "{out}");
    assert!(procs.len() < 8, "host processes visible: {out}");

    // Identity, user, network and mounts look like a small VM.
    let (_, out, _) = sh(
        &m.agent,
        "hostname; id -u; id -g; cat /etc/hostname; ip -4 -o addr show dev eth0; ip route; \
         cat /proc/self/mountinfo",
    )
    .await;
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(spec.hostname.as_str()));
    assert_eq!(lines.next(), Some("1000"));
    assert_eq!(lines.next(), Some("1000"));
    assert_eq!(lines.next(), Some(spec.hostname.as_str()));
    assert!(out.contains(&format!("inet {}/24", m.address)), "{out}");
    let [a, b, c, _] = m.address.octets();
    assert!(
        out.contains(&format!("default via {a}.{b}.{c}.1 dev eth0")),
        "{out}"
    );
    let root_mount = out
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("root in mountinfo");
    assert!(
        root_mount
            .split_whitespace()
            .nth(5)
            .is_some_and(|o| o.starts_with("ro")),
        "{root_mount}"
    );

    // The root is read-only even where permissions would allow a write; scratch space works.
    let (code, _, _) = sh(
        &m.agent,
        "touch /home/app/x /tmp/x /var/tmp/x /workspace/x /dev/shm/x",
    )
    .await;
    assert_eq!(code, Some(0), "writable places must be writable");
    let (code, _, err) = sh(&m.agent, "touch /sbin/kiln-guest").await;
    assert_ne!(code, Some(0), "agent binary must be read-only");
    assert!(
        err.contains("Read-only file system") || err.contains("Permission denied"),
        "{err}"
    );

    // Nothing of the host is visible: its data directory, its files, its devices.
    let marker = state.path().join("host-secret");
    fs::write(&marker, "secret").expect("marker");
    let (_, out, _) = sh(
        &m.agent,
        &format!(
            "for p in {} {} /work /var/cache/kiln-test /root/.cargo /dev/vda /dev/kmsg /sys/fs/cgroup/memory; \
             do test -e $p && echo visible $p; done; ls /dev",
            marker.display(),
            state.path().display()
        ),
    )
    .await;
    assert!(!out.contains("visible"), "{out}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd",
    ] {
        assert!(out.lines().any(|l| l == dev), "/dev/{dev} missing: {out}");
    }
    let (code, out, _) = sh(
        &m.agent,
        "head -c 4 /dev/urandom | wc -c; echo x > /dev/null",
    )
    .await;
    assert_eq!((code, out.trim()), (Some(0), "4"));

    let pid = init_pid(state.path(), &id);
    assert!(pid.is_some());
    driver.destroy(&id).await.expect("destroy");
    assert_no_traces(&id, pid);
    assert!(
        !state.path().join(&id).exists(),
        "destroy keeps the machine dir"
    );
    assert!(driver.running().await.expect("running").is_empty());
    driver.destroy(&id).await.expect("destroy is idempotent");
    driver
        .stop(&id)
        .await
        .expect("stop of a destroyed machine is a no-op");
    drop(cleanup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_survives_stop_and_start() {
    if !common::is_root() {
        return;
    }
    let (driver, state) = common::driver(1).await;
    let id = common::unique_id("ws");
    let _cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![id.clone()],
    };
    let spec = common::spec(&id, "org_a", 128);
    let m = driver.start(&spec).await.expect("start");
    let (code, _, err) = sh(
        &m.agent,
        "echo kept > /workspace/note && echo lost > /tmp/note",
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let pid = init_pid(state.path(), &id);

    driver.stop(&id).await.expect("stop");
    assert_no_traces(&id, pid);
    assert!(driver.running().await.expect("running").is_empty());
    assert!(m.agent.health().await.is_err(), "agent answers after stop");
    assert!(state.path().join(&id).join("workspace/note").is_file());
    driver.stop(&id).await.expect("stop is idempotent");

    let m2 = driver.start(&spec).await.expect("restart");
    assert_ne!(m2.boot_id, m.boot_id, "a stopped machine boots afresh");
    let (_, out, _) = sh(
        &m2.agent,
        "cat /workspace/note; cat /tmp/note 2>&1; stat -c %u:%g /workspace",
    )
    .await;
    assert!(out.starts_with("kept\n"), "{out}");
    assert!(
        out.contains("No such file"),
        "tmpfs must start empty: {out}"
    );
    assert!(out.trim_end().ends_with("1000:1000"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_with_sigkill() {
    if !common::is_root() {
        return;
    }
    let (driver, _state) = common::driver(2).await;
    let id = common::unique_id("oom");
    let _cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![id.clone()],
    };
    let m = driver
        .start(&common::spec(&id, "org_a", 64))
        .await
        .expect("start");
    assert_eq!(driver.oom_kills(&id).await.expect("oom_kills"), 0);
    let out = m
        .agent
        .exec_collect(kiln_guest::ExecRequest::new([
            "python3",
            "-c",
            "b = b'x' * (200 << 20); print(len(b))",
        ]))
        .await
        .expect("exec");
    assert_eq!(
        out.exit.signal,
        Some(9),
        "{:?} {}",
        out.exit,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(driver.oom_kills(&id).await.expect("oom_kills") >= 1);
    // The machine itself survives its process being killed.
    m.agent.health().await.expect("agent survives the OOM kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_are_isolated_from_each_other_and_the_host() {
    if !common::is_root() {
        return;
    }
    let (driver, _state) = common::driver(3).await;
    let (a1, a2, b1) = (
        common::unique_id("a1"),
        common::unique_id("a2"),
        common::unique_id("b1"),
    );
    let _cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![a1.clone(), a2.clone(), b1.clone()],
    };
    let specs = [
        common::spec(&a1, "org_a", 128),
        common::spec(&a2, "org_a", 128),
        common::spec(&b1, "org_b", 128),
    ];
    let (m_a1, m_a2, m_b1) = tokio::try_join!(
        driver.start(&specs[0]),
        driver.start(&specs[1]),
        driver.start(&specs[2]),
    )
    .expect("start three machines");
    assert_ne!(m_a1.address, m_a2.address);
    assert_eq!(
        m_a1.address.octets()[..3],
        m_a2.address.octets()[..3],
        "same org, same slice"
    );
    assert_ne!(
        m_a1.address.octets()[..3],
        m_b1.address.octets()[..3],
        "other org, other slice"
    );

    tokio::join!(serve_http(&m_a2), serve_http(&m_b1));
    // The host (the edge) reaches every machine.
    for m in [&m_a2, &m_b1] {
        let s =
            std::net::TcpStream::connect_timeout(&(m.address, 8000).into(), Duration::from_secs(2));
        assert!(s.is_ok(), "host cannot reach {}: {s:?}", m.address);
    }
    assert!(
        can_reach(&m_a1, m_a2.address, 8000).await,
        "same org must connect"
    );
    assert!(
        !can_reach(&m_a1, m_b1.address, 8000).await,
        "other org reachable from a1"
    );
    assert!(
        !can_reach(&m_b1, m_a2.address, 8000).await,
        "other org reachable from b1"
    );

    // A host service on 0.0.0.0 is not reachable, neither via the gateway nor the host's IPs.
    let listener = TcpListener::bind("0.0.0.0:0").expect("host listener");
    let port = listener.local_addr().expect("addr").port();
    let [a, b, c, _] = m_a1.address.octets();
    let (_, out, _) = sh(&m_a1.agent, "ip route get 1.1.1.1 2>&1; true").await;
    assert!(
        !can_reach(&m_a1, Ipv4Addr::new(a, b, c, 1), port).await,
        "host reachable via gateway"
    );
    let [a, b, c, _] = m_b1.address.octets();
    assert!(
        !can_reach(&m_a1, Ipv4Addr::new(a, b, c, 1), port).await,
        "host reachable via other gateway"
    );
    for host_ip in host_ipv4_addrs() {
        assert!(
            !can_reach(&m_a1, host_ip, port).await,
            "host reachable at {host_ip} ({out})"
        );
    }
    drop(listener);
}

/// The host's global IPv4 addresses (from `/proc/net/fib_trie` would be overkill: ask `ip`).
fn host_ipv4_addrs() -> Vec<Ipv4Addr> {
    let out = kiln_runtime::spawn::command("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(" kb-"))
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_driver_adopts_running_machines() {
    if !common::is_root() {
        return;
    }
    let (driver, state) = common::driver(4).await;
    let id = common::unique_id("adopt");
    let m = driver
        .start(&common::spec(&id, "org_a", 128))
        .await
        .expect("start");
    // The control plane goes away; the machine keeps running on its own.
    drop(driver);

    let driver = common::driver_on(state.path().to_owned(), 4).await;
    let _cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![id.clone()],
    };
    assert_eq!(driver.running().await.expect("running"), vec![id.clone()]);
    let adopted = driver
        .start(&common::spec(&id, "org_a", 128))
        .await
        .expect("adopt");
    assert_eq!(adopted.boot_id, m.boot_id, "adoption must not reboot");
    assert_eq!(adopted.address, m.address, "adoption keeps the address");

    // A machine whose agent died is stale: start cleans it up and boots it again.
    let pid = init_pid(state.path(), &id).expect("init pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill PID 1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !driver.running().await.expect("running").is_empty() {
        assert!(Instant::now() < deadline, "machine did not die");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rebooted = driver
        .start(&common::spec(&id, "org_a", 128))
        .await
        .expect("reboot");
    assert_ne!(rebooted.boot_id, m.boot_id);
    assert_eq!(
        rebooted.address, m.address,
        "a stale machine keeps its address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_boot_is_reported_and_cleaned_up() {
    if !common::is_root() {
        return;
    }
    let state = tempfile::tempdir().expect("state dir");
    // An "agent" that exits at once: the launcher works, PID 1 ends with status 1.
    let driver = common::driver_with_agent(state.path().to_owned(), 6, "/bin/false".into()).await;
    let id = common::unique_id("fail");
    let _cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![id.clone()],
    };
    let err = driver
        .start(&common::spec(&id, "org_a", 128))
        .await
        .expect_err("an agent that exits cannot boot");
    let msg = err.to_string();
    assert!(matches!(err, RuntimeError::BootFailed { .. }), "{msg}");
    assert!(msg.contains("machine init exited with status 1"), "{msg}");
    assert_no_traces(&id, None);
    assert!(driver.running().await.expect("running").is_empty());
    // The address went back to the pool, the workspace stays.
    let record = fs::read_to_string(state.path().join(&id).join("machine.json")).expect("record");
    assert!(record.contains("\"address\": null"), "{record}");
}

/// Boots and destroys machines one after another and reports create → first exec latency,
/// next to the floor: the same agent under a bare `unshare --mount --pid --fork --net --uts
/// --ipc` (no root file system, no network, no cgroups), measured in the same run so both
/// see the same load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_latency() {
    if !common::is_root() {
        return;
    }
    let (driver, state) = common::driver(5).await;
    // Warm the image cache and the bridge outside the measurement.
    let warm = common::unique_id("warm");
    let _cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![warm.clone()],
    };
    driver
        .start(&common::spec(&warm, "org_a", 128))
        .await
        .expect("warm up");
    let mut kiln = Vec::new();
    let mut raw = Vec::new();
    for round in 0..9 {
        let id = common::unique_id("lat");
        let started = Instant::now();
        let m = driver
            .start(&common::spec(&id, "org_a", 128))
            .await
            .expect("start");
        let health = started.elapsed();
        let out = m
            .agent
            .exec_collect(kiln_guest::ExecRequest::new(["true"]))
            .await
            .expect("exec");
        kiln.push((health, started.elapsed()));
        assert!(out.exit.success());
        destroy(&driver, &id).await;
        raw.push(raw_unshare_boot(&state.path().join(format!("raw{round}"))).await);
    }
    let p50 = |v: &mut Vec<(Duration, Duration)>| {
        v.sort_by_key(|s| s.1);
        v[v.len() / 2]
    };
    let (health, exec) = p50(&mut kiln);
    let (raw_health, raw_exec) = p50(&mut raw);
    eprintln!(
        "p50 over {} boots: create → agent health {health:?}, create → first exec {exec:?}; \
         bare unshare + agent: health {raw_health:?}, first exec {raw_exec:?}",
        kiln.len()
    );
    assert!(
        exec < Duration::from_secs(2),
        "booting is far too slow: {exec:?}"
    );
}

/// Runs the agent under a bare `unshare` and returns (spawn → health, spawn → first exec).
async fn raw_unshare_boot(dir: &Path) -> (Duration, Duration) {
    fs::create_dir_all(dir).expect("dir");
    let socket = dir.join("agent.sock");
    let started = Instant::now();
    let mut child = tokio::process::Command::from(kiln_runtime::spawn::command("unshare"));
    child
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--net",
            "--uts",
            "--ipc",
            "--kill-child",
        ])
        .arg(common::agent_bin())
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--workspace")
        .arg(dir)
        .arg("--machine-id")
        .arg("raw")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = child.spawn().expect("spawn unshare");
    let agent =
        kiln_guest::client::AgentClient::new(kiln_guest::client::Endpoint::Unix(socket.clone()));
    let health = loop {
        if socket.exists() && agent.health().await.is_ok() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bare agent did not start"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    agent
        .exec_collect(kiln_guest::ExecRequest::new(["true"]))
        .await
        .expect("exec");
    let exec = started.elapsed();
    child.kill().await.expect("kill unshare");
    (health, exec)
}

async fn destroy(driver: &ProcessDriver, id: &str) {
    driver.destroy(id).await.expect("destroy");
    assert_no_traces(id, None);
}

/// A machine survives its control plane being killed with SIGKILL mid-flight, and a new driver
/// on the same state directory adopts it without rebooting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_survives_control_plane_sigkill() {
    if !common::is_root() {
        return;
    }
    let state = tempfile::tempdir().expect("state dir");
    let id = common::unique_id("sigkill");
    // The "control plane": this test binary again, running only the helper below.
    let mut helper = tokio::process::Command::from(kiln_runtime::spawn::command(
        std::env::current_exe().expect("test executable"),
    ));
    helper
        .args([
            "control_plane_helper",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_STATE, state.path())
        .env(HELPER_ID, &id)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    for var in ["KILN_GUEST_BIN", "KILN_TEST_IMAGES_DIR"] {
        if let Some(value) = std::env::var_os(var) {
            helper.env(var, value);
        }
    }
    let mut helper = helper.spawn().expect("spawn helper");
    let stdout = helper.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let boot_id = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("helper output") {
            if let Some(boot_id) = line.strip_prefix("BOOTED ") {
                return boot_id.to_owned();
            }
        }
        panic!("helper exited without booting a machine");
    })
    .await
    .expect("helper boots within 30 s");
    helper.start_kill().expect("SIGKILL the helper");
    helper.wait().await.expect("reap the helper");

    let driver = common::driver_on(state.path().to_owned(), 7).await;
    let _cleanup = Cleanup {
        driver: driver.clone(),
        ids: vec![id.clone()],
    };
    assert_eq!(driver.running().await.expect("running"), vec![id.clone()]);
    let adopted = driver
        .start(&common::spec(&id, "org_a", 128))
        .await
        .expect("adopt");
    assert_eq!(
        adopted.boot_id, boot_id,
        "the machine must not have rebooted"
    );
    let (code, out, _) = sh(&adopted.agent, "echo alive").await;
    assert_eq!((code, out.as_str()), (Some(0), "alive\n"));
}

const HELPER_STATE: &str = "KILN_TEST_HELPER_STATE";
const HELPER_ID: &str = "KILN_TEST_HELPER_ID";

/// Not a test: the control plane that `machine_survives_control_plane_sigkill` kills. Boots a
/// machine, reports its boot id and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of machine_survives_control_plane_sigkill"]
async fn control_plane_helper() {
    let (Some(state), Some(id)) = (
        std::env::var_os(HELPER_STATE),
        std::env::var(HELPER_ID).ok(),
    ) else {
        eprintln!("skipped: only run by machine_survives_control_plane_sigkill");
        return;
    };
    let driver = common::driver_on(state.into(), 7).await;
    let m = driver
        .start(&common::spec(&id, "org_a", 128))
        .await
        .expect("start");
    println!("BOOTED {}", m.boot_id);
    tokio::time::sleep(Duration::from_secs(60)).await;
}
