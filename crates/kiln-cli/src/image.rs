//! `kiln image build`: builds the machine image and its VM guest image on this node, like
//! `kiln up` would on first use, so an operator can prepare a node (or see where the files
//! are) without starting the platform. It embeds the runtime rather than calling the API
//! because images are node-local files, not platform resources.

use anyhow::Context;
use kiln_control::Config;
use kiln_runtime::{
    ImageRef, ImageStore,
    vm::{GuestImageStore, Kernel},
};
use serde::Serialize;

use crate::cli::ImageCommand;
use crate::commands::Output;

/// What `kiln image build` prints.
#[derive(Debug, Serialize)]
struct BuiltImage {
    image: String,
    rootfs: String,
    kernel: String,
    initramfs: String,
    root_disk: String,
}

/// Runs one `kiln image` verb.
pub async fn run(out: &Output, cmd: ImageCommand) -> anyhow::Result<()> {
    let ImageCommand::Build { image, config } = cmd;
    crate::logging::init();
    let config = Config::load(config.as_deref(), |k| std::env::var(k).ok())?;
    let image: ImageRef = image.parse()?;
    let images = ImageStore::new(&config.images_dir);
    let rootfs = images
        .ensure(&image)
        .await
        .with_context(|| format!("build image {image}"))?;
    let kernel = Kernel::locate(
        config.vm_kernel.as_deref(),
        config.vm_kernel_modules.as_deref(),
    )?;
    let agent = config.bin_dir.join("kiln-guest");
    anyhow::ensure!(
        agent.is_file(),
        "the guest agent {} does not exist; build it with `cargo build -p kiln-guest` or set KILN_BIN_DIR",
        agent.display()
    );
    let guest = GuestImageStore::new(images, kernel, agent)
        .ensure(&image)
        .await
        .with_context(|| format!("build the guest image of {image}"))?;
    let built = BuiltImage {
        image: image.to_string(),
        rootfs: rootfs.display().to_string(),
        kernel: guest.kernel.display().to_string(),
        initramfs: guest.initramfs.display().to_string(),
        root_disk: guest.root_disk.display().to_string(),
    };
    out.print(&built, || {
        format!(
            "image      {}\nrootfs     {}\nkernel     {}\ninitramfs  {}\nroot disk  {}",
            built.image, built.rootfs, built.kernel, built.initramfs, built.root_disk
        )
    });
    Ok(())
}
