//! Builds the default image into the shared test cache (`KILN_TEST_IMAGES_DIR`, default
//! `/var/cache/kiln-test/images`) and checks what every driver relies on. The first run on a
//! machine takes about a minute (mmdebstrap); later runs reuse the build.

mod common;

use std::fs;

use kiln_runtime::{ImageStore, default_image};

#[tokio::test]
async fn default_image_has_what_machines_need() {
    if !common::is_root() {
        return;
    }
    let store = ImageStore::new(common::images_dir());
    let rootfs = store
        .ensure(&default_image())
        .await
        .expect("build default image");
    // A second call is a cache hit and returns the same directory.
    assert_eq!(store.ensure(&default_image()).await.expect("reuse"), rootfs);
    // A fresh store (another process) finds the finished build without rebuilding.
    let again = ImageStore::new(common::images_dir());
    assert_eq!(again.ensure(&default_image()).await.expect("reuse"), rootfs);

    for program in [
        "usr/bin/bash",
        "usr/bin/python3",
        "usr/bin/node",
        "usr/bin/npm",
        "usr/bin/git",
        "usr/bin/curl",
        "usr/bin/psql",
        "usr/bin/redis-cli",
        "usr/bin/ps",
        "usr/bin/mariadb",
    ] {
        assert!(
            rootfs.join(program).exists(),
            "{program} missing from the image"
        );
    }
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    assert!(
        passwd.contains("app:x:1000:1000:app:/home/app:/bin/bash"),
        "{passwd}"
    );
    assert!(rootfs.join("sbin/kiln-guest").is_file());
    assert!(rootfs.join("workspace").is_dir());
    let resolv = fs::read_to_string(rootfs.join("etc/resolv.conf")).expect("resolv.conf");
    assert!(
        resolv.is_empty(),
        "the build host's resolv.conf leaked: {resolv}"
    );
}
