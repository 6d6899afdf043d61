//! The sandbox conformance suite: one scenario, run through the real `kiln` binary against
//! every machine driver this host has, because the rest of the platform must not notice which
//! driver runs a machine. Create, exec (streamed and JSON), files, a supervised process, the
//! preview through the edge, a restart that keeps the workspace, a deployment from a release,
//! and a delete that leaves no VM or launcher process, no disk or state and no network
//! interface behind.
//!
//! `process` runs everywhere (as root). `qemu` needs QEMU and the guest kernel that
//! `scripts/setup.sh` installs; here it runs under TCG, so the scenario boots as few VMs as it
//! can: the sandbox once, once more for the restart, and one for the deployment.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_api::releases::ReleaseConfig;
use kiln_api::sandboxes::{ExecConfig, ExecEvent, ProcessConfig, SandboxConfig, SandboxStatus};
use kiln_testkit::{Kiln, cli_json, edge_client, problem};

const APP: &str = include_str!("fixtures/app.py");

/// Where the guest kernel comes from when no `KILN_VM_KERNEL` is set.
const KERNEL_DIR: &str = kiln_runtime::vm::kernel::DEFAULT_KERNEL_DIR;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_process_driver_conforms() {
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: machines need root (namespaces, bridges, cgroups)");
        return;
    }
    conformance("process", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_qemu_driver_conforms() {
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: VMs need root (tap devices, bridges)");
        return;
    }
    // Not skipped when the kernel is missing: scripts/setup.sh installs it, and CI must run
    // this on qemu.
    assert!(
        std::env::var_os("KILN_VM_KERNEL").is_some()
            || kiln_runtime::vm::Kernel::in_dir(Path::new(KERNEL_DIR)).is_ok(),
        "no guest kernel in {KERNEL_DIR}: run scripts/setup.sh (or set KILN_VM_KERNEL)"
    );
    conformance("qemu", 2).await;
}

/// A /20 of the node subnet for the driver numbered `index`, so the two runs (which go in
/// parallel) never share a bridge: from `KILN_NETWORK_SUBNET` when it is a /16, else from
/// the default 10.88.0.0/16.
fn subnet_for(index: u8) -> String {
    let base = std::env::var("KILN_NETWORK_SUBNET").unwrap_or_default();
    let network: Ipv4Addr = base
        .strip_suffix("/16")
        .and_then(|a| a.parse().ok())
        .unwrap_or(Ipv4Addr::new(10, 88, 0, 0));
    let [a, b, _, _] = network.octets();
    format!("{a}.{b}.{}.0/20", 16 * u16::from(index))
}

fn sh(script: &str) -> ExecConfig {
    ExecConfig {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

async fn conformance(driver: &str, index: u8) {
    let subnet = subnet_for(index);
    let config =
        "[limits]\nsandbox_memory_mib = 512\nhealth_timeout_s = 90\n[vm]\nworkspace_mib = 512\n";
    let mut kiln = Kiln::start(
        Path::new(env!("CARGO_BIN_EXE_kiln")),
        &[("KILN_RUNTIME", driver), ("KILN_NETWORK_SUBNET", &subnet)],
        Some(config),
    )
    .await
    .expect("kiln up starts");
    let api = kiln.client();
    let http = edge_client(kiln.edge_addr());
    let nodes = api.nodes().await.expect("nodes");
    assert_eq!(nodes.items[0].driver, driver, "the node reports its driver");
    let started = Instant::now();

    // --- create ---------------------------------------------------------------------------
    let app = cli_json(&kiln.cli(&["--json", "apps", "create", "Conform"]));
    let slug = app["slug"].as_str().expect("slug").to_owned();
    let sandbox = api
        .create_sandbox(&slug, &SandboxConfig::default(), 180)
        .await
        .expect("sandbox");
    assert_eq!(sandbox.status, SandboxStatus::Running, "{sandbox:?}");
    let sbx = sandbox.id.clone();
    let address = sandbox
        .address
        .clone()
        .expect("a running sandbox has an address");
    assert!(
        subnet
            .parse::<kiln_runtime::Ipv4Cidr>()
            .expect("cidr")
            .contains(address.parse().expect("IPv4")),
        "{address} is on the node subnet {subnet}"
    );
    eprintln!("[{driver}] sandbox running after {:?}", started.elapsed());

    // --- exec: JSON and streamed -------------------------------------------------------------
    let exec = kiln.cli(&[
        "--json",
        "sandbox",
        "exec",
        &sbx,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; id -un; exit 3",
    ]);
    assert_eq!(
        exec.status.code(),
        Some(3),
        "the CLI exits with the command's code"
    );
    let out: serde_json::Value = serde_json::from_slice(&exec.stdout).expect("JSON");
    assert_eq!(out["exit_code"], 3, "{out}");
    assert_eq!(
        out["stdout"], "out\napp\n",
        "commands run as the image's user: {out}"
    );
    assert_eq!(out["stderr"], "err\n", "{out}");
    let mut events = Box::pin(
        api.exec_stream(&sbx, &sh("for i in 1 2 3; do echo line$i; sleep 0.2; done"))
            .await
            .expect("stream"),
    );
    let (mut lines, mut exit, mut chunks) = (String::new(), None, 0);
    while let Some(event) = events.next().await {
        match event.expect("event") {
            ExecEvent::Stdout { stdout } => {
                lines.push_str(&stdout);
                chunks += 1;
            }
            ExecEvent::Stderr { .. } => {}
            ExecEvent::Exit { exit_code, .. } => exit = Some(exit_code),
        }
    }
    assert_eq!((lines.as_str(), exit), ("line1\nline2\nline3\n", Some(0)));
    assert!(
        chunks >= 2,
        "output arrives while the command runs, not at its end"
    );

    // --- files --------------------------------------------------------------------------------
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let local = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(local.path(), &blob).expect("write local");
    let cp = kiln.cli(&[
        "sandbox",
        "cp",
        &local.path().display().to_string(),
        &format!("{sbx}:data/blob.bin"),
    ]);
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    let back = api.get_file(&sbx, "data/blob.bin").await.expect("get");
    assert!(back == blob, "the bytes round-trip");
    let listed = api.list_files(&sbx, "data").await.expect("list");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].size, blob.len() as u64);
    api.put_file(&sbx, "gone.txt", "x").await.expect("put");
    api.delete_file(&sbx, "gone.txt").await.expect("delete");
    assert_eq!(problem(api.get_file(&sbx, "gone.txt").await).status, 404);
    api.put_file(&sbx, "app.py", APP).await.expect("app.py");
    api.put_file(&sbx, "VERSION", "1").await.expect("VERSION");

    // --- a supervised process, and the preview through the edge -----------------------------
    api.start_process(
        &sbx,
        &ProcessConfig {
            name: "dev".into(),
            cmd: vec!["python3".into(), "app.py".into()],
            cwd: None,
            env: BTreeMap::from([("PORT".to_owned(), "8000".to_owned())]),
            port: Some(8000),
        },
    )
    .await
    .expect("dev server");
    let preview = api.preview(&slug, 8000, 90).await.expect("preview").url;
    assert_eq!(get_text(&http, &preview).await, "version 1\n");
    let ps = api.processes(&sbx).await.expect("ps");
    assert_eq!(ps.items.len(), 1);
    eprintln!("[{driver}] preview answered after {:?}", started.elapsed());

    // --- restart: a crash of the control plane adopts the machine, a graceful stop and
    //     start boots it again; the workspace survives both -----------------------------------
    kiln.restart().await.expect("restart after kill -9");
    let api = kiln.client();
    let adopted = api.sandbox(&sbx, 180).await.expect("sandbox survives");
    assert_eq!(adopted.status, SandboxStatus::Running);
    assert_eq!(adopted.address.as_deref(), Some(address.as_str()));
    kiln.stop().expect("graceful stop");
    kiln.restart().await.expect("start again");
    let api = kiln.client();
    let rebooted = api.sandbox(&sbx, 180).await.expect("sandbox comes back");
    assert_eq!(rebooted.status, SandboxStatus::Running, "{rebooted:?}");
    let kept = api.get_file(&sbx, "data/blob.bin").await.expect("get");
    assert!(kept == blob, "the workspace survives a reboot");
    assert_eq!(
        get_text(&http, &preview).await,
        "version 1\n",
        "the dev server is supervised again and the preview URL is unchanged"
    );
    eprintln!("[{driver}] rebooted after {:?}", started.elapsed());

    // --- a deployment from a release serves from its own machine -----------------------------
    let release = api
        .publish(
            &slug,
            &ReleaseConfig {
                sandbox: Some(sbx.clone()),
                start_cmd: Some("python3 app.py".into()),
                port: Some(8000),
                ..Default::default()
            },
        )
        .await
        .expect("publish");
    let deployment = api.deploy(&slug, &release.id).await.expect("deploy");
    let production = app["urls"]["production"]
        .as_str()
        .expect("production URL")
        .to_owned();
    api.put_file(&sbx, "VERSION", "2").await.expect("edit");
    assert_eq!(get_text(&http, &preview).await, "version 2\n");
    assert_eq!(
        get_text(&http, &production).await,
        "version 1\n",
        "production serves the release, not the sandbox"
    );
    eprintln!("[{driver}] deployment live after {:?}", started.elapsed());

    // --- delete leaves nothing -------------------------------------------------------------
    let deleted = kiln.cli(&["sandbox", "delete", &sbx]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert_eq!(problem(api.sandbox(&sbx, 0).await).status, 404);
    assert_machine_gone(&kiln, &sbx).await;
    assert_eq!(
        get_text(&http, &production).await,
        "version 1\n",
        "deleting the sandbox does not touch production"
    );
    assert!(
        leftovers(&kiln, &deployment.id).len() > 1,
        "the check sees a running machine: the deployment's"
    );
    eprintln!("[{driver}] done after {:?}", started.elapsed());
}

/// GETs `url` through the edge until it answers 200 (a server may still be starting).
async fn get_text(http: &reqwest::Client, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match http.get(url).send().await {
            Ok(r) if r.status().as_u16() == 200 => return r.text().await.expect("body"),
            other => {
                assert!(
                    Instant::now() < deadline,
                    "{url} did not answer 200: {other:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// No process names the machine (a VM's QEMU or a launcher and its agent), no state or disk
/// is left in either driver's directory, and neither a tap nor a veth of it exists. Deletion
/// is asynchronous (the reconciler tears down), so this waits a little.
async fn assert_machine_gone(kiln: &Kiln, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leftovers = leftovers(kiln, id);
        if leftovers.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "machine {id} left behind: {leftovers:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn leftovers(kiln: &Kiln, id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for dir in ["machines", "vms"] {
        let path = kiln.data_dir().join(dir).join(id);
        if path.exists() {
            found.push(path.display().to_string());
        }
    }
    for iface in [
        kiln_runtime::net::tap_name(id),
        kiln_runtime::net::veth_name(id),
    ] {
        if Path::new("/sys/class/net").join(&iface).exists() {
            found.push(format!("interface {iface}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.filter_map(Result::ok) {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if cmdline.windows(id.len()).any(|w| w == id.as_bytes()) {
                found.push(format!(
                    "process {}: {}",
                    entry.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                ));
            }
        }
    }
    found
}
