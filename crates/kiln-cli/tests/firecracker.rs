//! `KILN_RUNTIME=firecracker` through the real `kiln` binary, against a stand-in Firecracker
//! that serves the API and vsock socket but boots nothing (no Firecracker binary can be
//! installed here): the node reports the driver, a sandbox gets the guest image the qemu
//! driver boots (kernel, root disk, per-machine initrd), and one that never answers fails with
//! the reason instead of hanging. A real boot is covered by the runtime's test gated on
//! `KILN_FIRECRACKER_BIN`.

use std::path::Path;

use kiln_api::sandboxes::{SandboxConfig, SandboxStatus};
use kiln_testkit::Kiln;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_sandbox_without_a_guest_fails_clearly() {
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: machines need root (bridges, taps)");
        return;
    }
    let fake = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kiln-runtime/tests/fixtures/fake-firecracker.py")
        .canonicalize()
        .expect("the stand-in Firecracker");
    let fake = fake.to_string_lossy();
    let kiln = Kiln::start(
        Path::new(env!("CARGO_BIN_EXE_kiln")),
        &[
            ("KILN_RUNTIME", "firecracker"),
            ("KILN_FIRECRACKER_BIN", fake.as_ref()),
            ("KILN_FIRECRACKER_PCI", "1"),
        ],
        None,
    )
    .await
    .expect("kiln up starts with the firecracker driver");
    let api = kiln.client();

    let nodes = api.nodes().await.expect("nodes");
    assert_eq!(nodes.items[0].driver, "firecracker");
    assert!(nodes.items[0].hardware_accelerated);

    api.create_app(&kiln_api::apps::AppConfig {
        name: "Shop".into(),
        slug: None,
    })
    .await
    .expect("app");
    let sandbox = api
        .create_sandbox("shop", &SandboxConfig::default(), 180)
        .await
        .expect("create answers");
    assert_eq!(sandbox.status, SandboxStatus::Failed, "{sandbox:?}");
    let error = sandbox.error.unwrap_or_default();
    assert!(
        error.contains("never answered") && error.contains("vsock port 1000"),
        "the reason names the silent guest: {error}"
    );
    // What the stand-in "booted": the guest image, with the machine's own initrd.
    assert!(
        error.contains("InstanceStart") || error.contains("Serial console tail"),
        "the serial console tail is quoted: {error}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(kiln.data_dir().join("microvms"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("sbx_"))
                .filter(|n| {
                    kiln.data_dir()
                        .join("microvms")
                        .join(n)
                        .join("firecracker.pid")
                        .exists()
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "no Firecracker left running: {leftovers:?}"
    );
}

/// With a real Firecracker (`KILN_FIRECRACKER_BIN`), `kiln up` boots its own guest image (the
/// one the qemu driver boots, with the agent on vsock): where the host can boot guests the
/// sandbox runs and executes a command; where it cannot (a PVM host, where stock kernels hang),
/// the sandbox fails with the reason, the silent guest, within the boot deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_firecracker_boots_a_sandbox_or_says_why() {
    let Some(bin) = std::env::var("KILN_FIRECRACKER_BIN").ok() else {
        eprintln!("SKIPPED: set KILN_FIRECRACKER_BIN to run Firecracker for real");
        return;
    };
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: machines need root (bridges, taps, /dev/kvm)");
        return;
    }
    let kiln = Kiln::start(
        Path::new(env!("CARGO_BIN_EXE_kiln")),
        &[
            ("KILN_RUNTIME", "firecracker"),
            ("KILN_FIRECRACKER_BIN", bin.as_str()),
            ("KILN_FIRECRACKER_PCI", "1"),
            ("KILN_NETWORK_SUBNET", "10.86.0.0/16"),
        ],
        None,
    )
    .await
    .expect("kiln up starts with the firecracker driver");
    let api = kiln.client();
    api.create_app(&kiln_api::apps::AppConfig {
        name: "Shop".into(),
        slug: None,
    })
    .await
    .expect("app");
    let started = std::time::Instant::now();
    let sandbox = api
        .create_sandbox("shop", &SandboxConfig::default(), 300)
        .await
        .expect("create answers");
    match sandbox.status {
        SandboxStatus::Running => {
            eprintln!("guest agent ready after {:?}", started.elapsed());
            let out = api
                .exec(
                    &sandbox.id,
                    &kiln_api::sandboxes::ExecConfig {
                        cmd: vec!["uname".into(), "-s".into()],
                        ..Default::default()
                    },
                )
                .await
                .expect("exec");
            assert_eq!((out.exit_code, out.stdout.as_str()), (0, "Linux\n"));
        }
        SandboxStatus::Failed => {
            let error = sandbox.error.unwrap_or_default();
            assert!(error.contains("never answered"), "{error}");
            eprintln!("the guest never answered (as the platform reports it): {error}");
        }
        other => panic!("sandbox neither ran nor failed: {other:?}"),
    }
    api.delete_sandbox(&sandbox.id).await.expect("delete");
}
