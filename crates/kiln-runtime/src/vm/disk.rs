//! The VM's disks, made with e2fsprogs and no loop mounts: the image's root file system as a
//! read-only ext4 (`mkfs.ext4 -d`, with the guest agent written in by `debugfs`, so the
//! shared image directory is never modified), and a machine's sparse ext4 workspace.

use std::{fs, path::Path};

use crate::{
    error::{IoContext, RuntimeError},
    image::AGENT_PATH,
    spawn::run_tool,
};

/// Bytes of headroom beyond the files in a root disk (journal, metadata, directories).
const ROOT_HEADROOM: u64 = 256 << 20;

/// Writes `out` as an ext4 image holding the tree `rootfs` plus `agent` at
/// [`AGENT_PATH`], sized to fit. Owners and modes come from the tree.
pub async fn build_root(rootfs: &Path, agent: &Path, out: &Path) -> Result<(), RuntimeError> {
    let root = rootfs.to_owned();
    let (bytes, inodes) = tokio::task::spawn_blocking(move || tree_size(&root))
        .await
        .map_err(|e| RuntimeError::io("measure the image tree", std::io::Error::other(e)))??;
    let agent_size = fs::metadata(agent)
        .ctx(|| format!("read {}", agent.display()))?
        .len();
    // Round to MiB; ext4 needs room for its own metadata beyond the file data.
    let size_mib = (bytes + agent_size + bytes / 5 + ROOT_HEADROOM) >> 20;
    let inode_count = (inodes + inodes / 2 + 4096).to_string();
    let size = format!("{size_mib}M");
    let out_s = out.display().to_string();
    let root_s = rootfs.display().to_string();
    let _ = fs::remove_file(out);
    run_tool(
        "mkfs.ext4",
        &[
            "-q", "-F", "-t", "ext4", "-L", "kiln-root", "-m", "0", "-N", &inode_count, "-d",
            &root_s, &out_s, &size,
        ],
        None,
    )
    .await?;
    // The image carries an empty placeholder where the process driver bind-mounts the agent.
    let script = format!(
        "rm {AGENT_PATH}\nwrite {agent} {AGENT_PATH}\nsif {AGENT_PATH} mode 0100755\nsif {AGENT_PATH} uid 0\nsif {AGENT_PATH} gid 0\n",
        agent = agent.display()
    );
    run_tool("debugfs", &["-w", "-f", "-", &out_s], Some(&script)).await?;
    Ok(())
}

/// Creates a sparse ext4 workspace of `size_mib` at `out`, its root owned by `uid:gid`.
pub async fn create_workspace(out: &Path, size_mib: u64, uid: u32, gid: u32) -> Result<(), RuntimeError> {
    let file = fs::File::create(out).ctx(|| format!("create {}", out.display()))?;
    file.set_len(size_mib << 20)
        .ctx(|| format!("size {}", out.display()))?;
    drop(file);
    let owner = format!("root_owner={uid}:{gid}");
    let out_s = out.display().to_string();
    run_tool(
        "mkfs.ext4",
        &["-q", "-F", "-t", "ext4", "-L", "workspace", "-m", "0", "-E", &owner, &out_s],
        None,
    )
    .await?;
    Ok(())
}

/// Bytes (in blocks actually used) and entries of a tree, without following links.
fn tree_size(root: &Path) -> Result<(u64, u64), RuntimeError> {
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).ctx(|| format!("list {}", dir.display()))? {
            let entry = entry.ctx(|| format!("list {}", dir.display()))?;
            let meta = entry
                .metadata()
                .ctx(|| format!("stat {}", entry.path().display()))?;
            entries += 1;
            // Rounded up to 4 KiB blocks, as ext4 stores them.
            bytes += meta.len().div_ceil(4096) * 4096;
            // Hard links count once per name: an overestimate, which is harmless.
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, entries))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[tokio::test]
    async fn a_root_disk_holds_the_tree_and_the_agent() {
        if !crate::spawn::on_path("mkfs.ext4") || !crate::spawn::on_path("debugfs") {
            eprintln!("skipped: e2fsprogs is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("root");
        fs::create_dir_all(tree.join("sbin")).expect("mkdir");
        fs::create_dir_all(tree.join("etc")).expect("mkdir");
        fs::write(tree.join("etc/os-release"), "ID=test\n").expect("write");
        fs::write(tree.join("sbin/kiln-guest"), "").expect("placeholder");
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF agent bytes").expect("write");
        let disk = dir.path().join("root.ext4");
        build_root(&tree, &agent, &disk).await.expect("build");
        let listing = run_tool(
            "debugfs",
            &["-R", "cat /sbin/kiln-guest", &disk.display().to_string()],
            None,
        )
        .await
        .expect("debugfs cat");
        assert_eq!(listing, "\x7fELF agent bytes");
        let stat = run_tool(
            "debugfs",
            &["-R", "stat /sbin/kiln-guest", &disk.display().to_string()],
            None,
        )
        .await
        .expect("debugfs stat");
        assert!(stat.contains("Mode:  0755"), "{stat}");
        let os = run_tool(
            "debugfs",
            &["-R", "cat /etc/os-release", &disk.display().to_string()],
            None,
        )
        .await
        .expect("debugfs cat");
        assert_eq!(os, "ID=test\n");

        let ws = dir.path().join("ws.ext4");
        create_workspace(&ws, 64, 1000, 1000).await.expect("workspace");
        let meta = fs::metadata(&ws).expect("stat");
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < meta.len() / 2, "the workspace file is sparse");
        let root = run_tool("debugfs", &["-R", "stat /", &ws.display().to_string()], None)
            .await
            .expect("debugfs stat");
        assert!(root.contains("User:  1000") && root.contains("Group:  1000"), "{root}");
    }
}
