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
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "kiln-root",
            "-m",
            "0",
            "-N",
            &inode_count,
            "-d",
            &root_s,
            &out_s,
            &size,
        ],
        None,
    )
    .await?;
    // The image carries an empty placeholder where the process driver bind-mounts the agent.
    // debugfs does not follow symbolic links when it unlinks, and Debian's /sbin is one
    // (to usr/sbin), so the path is resolved inside the tree first.
    let target = resolve_in_tree(rootfs, AGENT_PATH)?;
    let script = format!(
        "rm {target}\nwrite {agent} {target}\nsif {target} mode 0100755\nsif {target} uid 0\nsif {target} gid 0\n",
        agent = agent.display()
    );
    run_tool("debugfs", &["-w", "-f", "-", &out_s], Some(&script)).await?;
    Ok(())
}

/// `path` inside the tree at `root` with every symbolic link in its directories resolved
/// against that tree (never against the host), as an absolute path within the tree.
fn resolve_in_tree(root: &Path, path: &str) -> Result<String, RuntimeError> {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_owned)
        .collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        match component.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let here = root.join(resolved.join("/")).join(&component);
        // The last component is the file itself, never followed.
        let is_last = pending.is_empty();
        match fs::symlink_metadata(&here) {
            Ok(meta) if meta.file_type().is_symlink() && !is_last => {
                hops += 1;
                if hops > 40 {
                    return Err(RuntimeError::InvalidConfig(format!(
                        "too many symbolic links resolving {path} in {}",
                        root.display()
                    )));
                }
                let target = fs::read_link(&here).ctx(|| format!("read {}", here.display()))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty())
                        .rev()
                        .map(str::to_owned),
                );
            }
            _ => resolved.push(component),
        }
    }
    Ok(format!("/{}", resolved.join("/")))
}

/// Creates a sparse ext4 workspace of `size_mib` at `out`, its root owned by `uid:gid`.
pub async fn create_workspace(
    out: &Path,
    size_mib: u64,
    uid: u32,
    gid: u32,
) -> Result<(), RuntimeError> {
    let file = fs::File::create(out).ctx(|| format!("create {}", out.display()))?;
    file.set_len(size_mib << 20)
        .ctx(|| format!("size {}", out.display()))?;
    drop(file);
    let owner = format!("root_owner={uid}:{gid}");
    let out_s = out.display().to_string();
    run_tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "workspace",
            "-m",
            "0",
            "-E",
            &owner,
            &out_s,
        ],
        None,
    )
    .await?;
    // The workspace is the app's directory: a root-only lost+found in it would be published
    // with the app and could not be unpacked by the unprivileged user. e2fsck recreates it
    // should it ever need it.
    run_tool("debugfs", &["-w", "-R", "rmdir /lost+found", &out_s], None).await?;
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

    #[test]
    fn paths_resolve_inside_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("usr/sbin")).expect("mkdir");
        std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).expect("link");
        std::os::unix::fs::symlink("/usr/sbin", root.join("abs")).expect("link");
        std::os::unix::fs::symlink("../../x", root.join("usr/sbin/up")).expect("link");
        for (path, want) in [
            ("/sbin/kiln-guest", "/usr/sbin/kiln-guest"),
            ("/abs/kiln-guest", "/usr/sbin/kiln-guest"),
            ("/usr/sbin/kiln-guest", "/usr/sbin/kiln-guest"),
            ("/sbin/up/y", "/x/y"),
            ("/sbin/up", "/usr/sbin/up"),
        ] {
            assert_eq!(
                resolve_in_tree(root, path).expect("resolves"),
                want,
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn a_root_disk_holds_the_tree_and_the_agent() {
        if !crate::spawn::on_path("mkfs.ext4") || !crate::spawn::on_path("debugfs") {
            eprintln!("skipped: e2fsprogs is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("root");
        // Like Debian's merged /usr: /sbin is a link to usr/sbin.
        fs::create_dir_all(tree.join("usr/sbin")).expect("mkdir");
        std::os::unix::fs::symlink("usr/sbin", tree.join("sbin")).expect("link");
        fs::create_dir_all(tree.join("etc")).expect("mkdir");
        fs::write(tree.join("etc/os-release"), "ID=test\n").expect("write");
        fs::write(tree.join("usr/sbin/kiln-guest"), "").expect("placeholder");
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

        let check = crate::spawn::command("e2fsck")
            .args(["-fn", &disk.display().to_string()])
            .output()
            .expect("run e2fsck");
        assert!(
            check.status.success(),
            "the root disk is consistent: {}",
            String::from_utf8_lossy(&check.stdout)
        );

        let ws = dir.path().join("ws.ext4");
        create_workspace(&ws, 64, 1000, 1000)
            .await
            .expect("workspace");
        let meta = fs::metadata(&ws).expect("stat");
        assert_eq!(meta.len(), 64 << 20);
        assert!(
            meta.blocks() * 512 < meta.len() / 2,
            "the workspace file is sparse"
        );
        let root = run_tool(
            "debugfs",
            &["-R", "stat /", &ws.display().to_string()],
            None,
        )
        .await
        .expect("debugfs stat");
        assert!(
            root.contains("User:  1000") && root.contains("Group:  1000"),
            "{root}"
        );
        let listing = run_tool("debugfs", &["-R", "ls /", &ws.display().to_string()], None)
            .await
            .expect("debugfs ls");
        assert!(
            !listing.contains("lost+found"),
            "the workspace starts empty: {listing}"
        );
    }
}
