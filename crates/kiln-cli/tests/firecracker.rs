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
