//! The VM's initramfs, in two parts the kernel unpacks one after the other (Linux accepts
//! concatenated cpio archives):
//!
//! - the **base**, shared by every VM of a kernel: busybox (static), the virtio modules in
//!   load order and `/init` ([`INIT_SCRIPT`]), which mounts the disks, configures the network
//!   and `switch_root`s into the guest agent;
//! - the **machine part**, one per boot: the machine's address, hostname and the agent's
//!   settings file with its token and environment. Secrets travel here rather than on the
//!   kernel command line, which every process in the guest can read in `/proc/cmdline`.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use kiln_guest::config::GuestConfig;

use super::{cpio::Cpio, kernel};
use crate::error::{IoContext, RuntimeError};

/// The `/init` of every VM.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Builds the base initramfs for a kernel whose modules are in `modules` (none when its
/// drivers are built in).
pub fn base(modules: Option<&Path>, busybox: &Path) -> Result<Vec<u8>, RuntimeError> {
    let busybox_bytes = fs::read(busybox).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RuntimeError::MissingProgram {
                program: "busybox",
                package: "busybox-static",
            }
        } else {
            RuntimeError::io(format!("read {}", busybox.display()), e)
        }
    })?;
    let order: Vec<PathBuf> = match modules {
        Some(dir) => kernel::module_load_order(dir, kernel::VM_MODULES)?,
        None => Vec::new(),
    };
    let mut cpio = Cpio::new();
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "newroot",
        "kiln",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(dir, 0o755);
    }
    // The kernel opens /dev/console for init's standard streams before devtmpfs is mounted.
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox_bytes);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes());
    let mut load_order = String::new();
    for path in &order {
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            RuntimeError::InvalidConfig(format!("odd module path {}", path.display()))
        })?;
        let bytes = fs::read(path).ctx(|| format!("read {}", path.display()))?;
        cpio.file(&format!("lib/modules/{name}"), 0o644, &bytes);
        load_order.push_str(name);
        load_order.push('\n');
    }
    cpio.file("lib/modules/load-order", 0o644, load_order.as_bytes());
    Ok(cpio.finish())
}

/// What one boot of a machine needs to know before its agent starts.
#[derive(Debug, Clone)]
pub struct MachineBoot {
    /// The machine's hostname (a DNS label, checked by the driver).
    pub hostname: String,
    /// The machine's address on its org's bridge.
    pub address: Ipv4Addr,
    /// The slice's prefix length.
    pub prefix: u8,
    /// The default gateway (the host's address on the bridge).
    pub gateway: Ipv4Addr,
    /// The unprivileged user's uid, gid and home (a fresh tmpfs every boot).
    pub user: (u32, u32, String),
    /// Most processes and threads the machine may have at once, agent included.
    pub pids_max: u32,
    /// `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
    pub etc: [(&'static str, String); 3],
    /// The agent's settings, token included.
    pub agent: GuestConfig,
}

/// The machine part of the initramfs.
pub fn machine_part(boot: &MachineBoot) -> Result<Vec<u8>, RuntimeError> {
    let (uid, gid, home) = &boot.user;
    let env = format!(
        "KILN_HOSTNAME={}\nKILN_ADDRESS={}\nKILN_PREFIX={}\nKILN_GATEWAY={}\nKILN_UID={uid}\nKILN_GID={gid}\nKILN_HOME={}\nKILN_PIDS_MAX={}\n",
        shell_quote(&boot.hostname),
        boot.address,
        boot.prefix,
        boot.gateway,
        shell_quote(home),
        boot.pids_max,
    );
    let agent = serde_json::to_vec(&boot.agent).map_err(|e| {
        RuntimeError::InvalidConfig(format!("the agent settings cannot be written: {e}"))
    })?;
    let mut cpio = Cpio::new();
    cpio.dir("kiln", 0o700);
    cpio.dir("kiln/etc", 0o755);
    cpio.file("kiln/machine.env", 0o600, env.as_bytes());
    cpio.file("kiln/agent.json", 0o600, &agent);
    for (name, text) in &boot.etc {
        cpio.file(&format!("kiln/etc/{name}"), 0o644, text.as_bytes());
    }
    Ok(cpio.finish())
}

/// `value` in single quotes for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn values_are_shell_quoted() {
        assert_eq!(shell_quote("app"), "'app'");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn the_machine_part_carries_settings_not_the_command_line() {
        let boot = MachineBoot {
            hostname: "sbx-1".into(),
            address: Ipv4Addr::new(10, 91, 0, 2),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 91, 0, 1),
            user: (1000, 1000, "/home/app".into()),
            pids_max: 256,
            etc: [
                ("hosts", "127.0.0.1 localhost\n".into()),
                ("hostname", "sbx-1\n".into()),
                ("resolv.conf", String::new()),
            ],
            agent: GuestConfig {
                listen: "tcp:10.91.0.2:7000".into(),
                machine_id: Some("sbx_1".into()),
                env: BTreeMap::from([("SECRET".into(), "v".into())]),
                token: Some(kiln_guest::protocol::AgentToken::new("tok")),
                workspace: "/workspace".into(),
            },
        };
        let bytes = machine_part(&boot).expect("archive");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("KILN_ADDRESS=10.91.0.2"), "{text}");
        assert!(text.contains("KILN_PIDS_MAX=256"), "{text}");
        assert!(text.contains("\"token\":\"tok\""), "{text}");
        assert!(text.contains("kiln/agent.json"), "{text}");
    }

    #[test]
    fn the_init_script_hands_over_to_the_agent() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/busybox sh\n"));
        assert!(INIT_SCRIPT.contains("switch_root /newroot /sbin/kiln-guest --config"));
        assert!(!INIT_SCRIPT.contains("/proc/cmdline"));
    }
}
