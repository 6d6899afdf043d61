//! The machine launcher: what `kiln-launch <launch.json>` does to turn a prepared network
//! namespace and cgroups into a running, VM-shaped machine with the guest agent as PID 1.
//!
//! The process driver prepares everything that needs host tools (cgroups with limits, the
//! network namespace with its veth, the `/etc` files) and writes a [`LaunchConfig`]; the launcher
//! does what must happen inside the new process tree, in this order:
//!
//! 1. `setsid`, so the machine outlives the control plane (which may be killed with SIGKILL and
//!    adopt the machine after restarting);
//! 2. join the machine's cgroups, then `setns` into its network namespace (which the driver
//!    creates meanwhile);
//! 3. bind the agent's listening unix socket on the host path (the only host-side handle on the
//!    machine) and keep it open across `exec`;
//! 4. `unshare` the pid namespace and fork: the child is PID 1 of the new pid namespace;
//! 5. the child unshares mount, uts and ipc namespaces, makes all mounts private, assembles
//!    the root (image read-only, workspace, tmpfs, `/proc`, read-only `/sys`, a minimal `/dev`,
//!    generated `/etc` files, the agent binary), `pivot_root`s into it, sets the hostname,
//!    drops dangerous capabilities from the bounding set and execs the agent;
//! 6. the parent records the child's host pid and waits, exiting with the child's status.
//!
//! This runs in a fresh single-threaded process, which is what makes `fork` sound here.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    io::{self, ErrorKind},
    os::{
        fd::{AsRawFd, RawFd},
        unix::{fs::symlink, net::UnixListener},
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{FcntlArg, FdFlag, fcntl},
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
    sys::{
        signal::Signal,
        wait::{WaitStatus, waitpid},
    },
    unistd::{ForkResult, Pid, chdir, execve, pivot_root, sethostname, setsid},
};
use serde::{Deserialize, Serialize};

/// Everything the launcher needs, written by the driver as `<machine dir>/launch.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchConfig {
    /// The machine id, passed to the agent.
    pub id: String,
    /// The hostname inside the machine.
    pub hostname: String,
    /// The read-only image root.
    pub rootfs: PathBuf,
    /// The writable workspace volume, mounted at `/workspace`.
    pub workspace: PathBuf,
    /// Directory holding the generated `hosts`, `hostname` and `resolv.conf`.
    pub etc_dir: PathBuf,
    /// The agent binary on the host, bind-mounted at [`crate::image::AGENT_PATH`].
    pub agent_bin: PathBuf,
    /// The named network namespace to join.
    pub netns: PathBuf,
    /// The cgroup directories to join.
    pub cgroups: Vec<PathBuf>,
    /// Where to bind the agent's listening socket.
    pub socket: PathBuf,
    /// Where to write the host pid of the machine's PID 1.
    pub init_pid_file: PathBuf,
    /// uid and gid the agent runs commands as; they also own the home tmpfs.
    pub run_as: Option<(u32, u32)>,
    /// The unprivileged user's home directory, a fresh tmpfs on every boot.
    pub user_home: String,
    /// Base environment the agent passes to commands.
    pub env: BTreeMap<String, String>,
}

/// The launcher failed before the agent was exec'd; printed to the machine's console log.
#[derive(Debug, thiserror::Error)]
#[error("kiln-launch: cannot {what}: {source}")]
pub struct LaunchError {
    what: String,
    #[source]
    source: io::Error,
}

trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, LaunchError>;
}

impl<T, E: Into<io::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, LaunchError> {
        self.map_err(|e| LaunchError {
            what: what(),
            source: e.into(),
        })
    }
}

/// How long the launcher waits for the driver to create the network namespace.
const NETNS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Exit status when the launcher fails before forking.
pub const EXIT_SETUP_FAILED: i32 = 125;
/// Exit status of the machine's PID 1 when assembling the root or exec'ing the agent failed.
pub const EXIT_EXEC_FAILED: i32 = 126;

/// Capabilities the agent keeps in its bounding set (Docker's default set minus `MKNOD` and
/// `NET_RAW`). Everything else — `SYS_ADMIN`, `SYS_MODULE`, `SYS_PTRACE`, `DAC_READ_SEARCH`,
/// `NET_ADMIN`, … — could be used to leave the machine and is gone for the agent and all its
/// descendants.
const KEPT_CAPS: &[u32] = &[
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    18, // SYS_CHROOT
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// Runs the launcher with the config at `path`; returns the process exit code.
pub fn run(path: &Path) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_SETUP_FAILED;
        }
    };
    match launch(&config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            EXIT_SETUP_FAILED
        }
    }
}

fn load(path: &Path) -> Result<LaunchConfig, LaunchError> {
    let text = fs::read(path).ctx(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text)
        .map_err(io::Error::from)
        .ctx(|| format!("parse {}", path.display()))
}

fn launch(cfg: &LaunchConfig) -> Result<i32, LaunchError> {
    // Fails only if we already lead a process group, which a freshly spawned child does not.
    let _ = setsid();
    reset_signals()?;

    let pid = std::process::id().to_string();
    for dir in &cfg.cgroups {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, &pid).ctx(|| format!("join cgroup {}", dir.display()))?;
    }

    enter_netns(&cfg.netns)?;
    // /proc/sys/net belongs to the namespace of the writer, so this affects only the machine.
    for iface in ["all", "default"] {
        let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"), "1");
    }

    match fs::remove_file(&cfg.socket) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).ctx(|| format!("remove stale {}", cfg.socket.display()));
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(&cfg.socket).ctx(|| format!("bind {}", cfg.socket.display()))?;
    let listen_fd = listener.as_raw_fd();
    fcntl(&listener, FcntlArg::F_SETFD(FdFlag::empty()))
        .ctx(|| "keep the agent socket open across exec".to_owned())?;

    // Only the pid namespace is entered before the fork (it applies to children). The mount
    // namespace is unshared by the child alone: pivot_root moves the root of every process in
    // the namespace, and this process must keep seeing the host to record the child's pid.
    unshare(CloneFlags::CLONE_NEWPID).ctx(|| "unshare the pid namespace".to_owned())?;

    // SAFETY: the launcher is single-threaded (a plain `main`, no runtime), so the child is a
    // faithful copy with no locks held by other threads; it only mounts, execs or exits.
    #[allow(unsafe_code)]
    let fork = unsafe { nix::unistd::fork() }.ctx(|| "fork the machine's PID 1".to_owned())?;
    match fork {
        ForkResult::Child => {
            let err = boot_child(cfg, listen_fd);
            eprintln!("{err}");
            // Never return into the parent's code path.
            std::process::exit(EXIT_EXEC_FAILED);
        }
        ForkResult::Parent { child } => {
            // Only the agent serves the socket; our copy would keep it accepting after the
            // agent died.
            drop(listener);
            if let Err(e) = fs::write(&cfg.init_pid_file, child.as_raw().to_string()) {
                eprintln!(
                    "kiln-launch: cannot write {}: {e}",
                    cfg.init_pid_file.display()
                );
            }
            // The launcher is what reports the machine's end; it must not be the OOM victim.
            let _ = fs::write("/proc/self/oom_score_adj", "-1000");
            Ok(wait_for(child))
        }
    }
}

/// Joins the machine's named network namespace, waiting for it to appear.
///
/// The driver starts the launcher while it is still creating the namespace, so that joining
/// the cgroups (a v1 cgroup migration waits for an RCU grace period, about 10 ms) overlaps
/// with `ip netns add`. Until `ip` has bind-mounted the namespace the path is missing or an
/// empty file (`setns` then fails with EINVAL), so both are retried for a while.
fn enter_netns(path: &Path) -> Result<(), LaunchError> {
    let deadline = std::time::Instant::now() + NETNS_WAIT;
    loop {
        let attempt = fs::File::open(path)
            .and_then(|ns| setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
        match attempt {
            Ok(()) => return Ok(()),
            Err(e)
                if std::time::Instant::now() < deadline
                    && (e.kind() == ErrorKind::NotFound
                        || e.raw_os_error() == Some(nix::libc::EINVAL)) =>
            {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            Err(e) => {
                return Err(e).ctx(|| format!("enter network namespace {}", path.display()));
            }
        }
    }
}

/// Gives the machine a clean signal state, like a freshly booted kernel would: ignored signals
/// and the blocked mask survive `exec`, so without this whatever the control plane ignored
/// (SIGPIPE, for one) would be ignored by every process in the machine.
fn reset_signals() -> Result<(), LaunchError> {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, sigprocmask};
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL registers no Rust code as a handler, so no handler can
        // run concurrently with anything; the launcher installs no handlers of its own.
        #[allow(unsafe_code)]
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .ctx(|| "clear the signal mask".to_owned())
}

fn wait_for(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                eprintln!("kiln-launch: machine init exited with status {code}");
                return code;
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                eprintln!("kiln-launch: machine init killed by {signal}");
                return 128 + signal as i32;
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("kiln-launch: waitpid: {e}");
                return EXIT_SETUP_FAILED;
            }
        }
    }
}

/// PID 1 of the machine: assemble the root and exec the agent. Returns only on failure.
fn boot_child(cfg: &LaunchConfig, listen_fd: RawFd) -> LaunchError {
    match assemble_and_exec(cfg, listen_fd) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn assemble_and_exec(
    cfg: &LaunchConfig,
    listen_fd: RawFd,
) -> Result<std::convert::Infallible, LaunchError> {
    // If the launcher dies, so does the machine: nothing would report its end otherwise.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "set the parent-death signal".into())?;

    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
        .ctx(|| "unshare mount, uts and ipc namespaces".into())?;
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .ctx(|| "make mounts private".into())?;

    let root = &cfg.rootfs;
    bind(root, root, false)?;
    build_root(cfg, root)?;
    // Last, so the mounts above could still create their mount points' contents in tmpfs.
    remount_bind(
        root,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;

    chdir(root).ctx(|| format!("chdir {}", root.display()))?;
    // Stack the new root over the old one and detach the old: no host path stays reachable.
    pivot_root(".", ".").ctx(|| "pivot_root into the machine root".into())?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detach the host root".into())?;
    chdir("/").ctx(|| "chdir /".into())?;

    sethostname(&cfg.hostname).ctx(|| format!("set hostname {}", cfg.hostname))?;
    drop_bounding_caps()?;
    close_other_fds(listen_fd)?;

    let agent = CString::new(crate::image::AGENT_PATH).expect("constant has no NUL");
    let mut args = vec![
        agent.clone(),
        cstr("--listen")?,
        cstr(&format!("fd:{listen_fd}"))?,
        cstr("--workspace")?,
        cstr("/workspace")?,
        cstr("--machine-id")?,
        cstr(&cfg.id)?,
    ];
    if let Some((uid, gid)) = cfg.run_as {
        args.push(cstr("--run-as")?);
        args.push(cstr(&format!("{uid}:{gid}"))?);
    }
    for (k, v) in &cfg.env {
        args.push(cstr("--env")?);
        args.push(cstr(&format!("{k}={v}"))?);
    }
    let env = [
        cstr(&format!("PATH={}", crate::spawn::SAFE_PATH))?,
        cstr(&format!("HOSTNAME={}", cfg.hostname))?,
    ];
    execve(&agent, &args, &env).ctx(|| format!("exec {}", crate::image::AGENT_PATH))
}

fn cstr(s: &str) -> Result<CString, LaunchError> {
    CString::new(s).ctx(|| format!("pass {s:?} as an argument"))
}

/// Mounts everything below the (still writable) bind of the image root.
fn build_root(cfg: &LaunchConfig, root: &Path) -> Result<(), LaunchError> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;

    bind(&cfg.workspace, &at("/workspace"), false)?;
    remount_bind(&at("/workspace"), safe)?;

    mount_fs("proc", &at("/proc"), safe | MsFlags::MS_NOEXEC, None)?;
    // Root inside the machine could otherwise write host-wide kernel settings through
    // /proc/sys (e.g. core_pattern) or trigger sysrq; file permissions alone allow it.
    for path in ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"] {
        let p = at(path);
        if p.exists() {
            bind(&p, &p, false)?;
            remount_bind(&p, safe | MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC)?;
        }
    }
    for path in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/kallsyms",
    ] {
        let p = at(path);
        if p.exists() {
            bind(Path::new("/dev/null"), &p, false)?;
        }
    }
    mount_fs(
        "sysfs",
        &at("/sys"),
        safe | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        None,
    )?;

    let (uid, gid) = cfg.run_as.unwrap_or((0, 0));
    let home_opts = format!("mode=755,uid={uid},gid={gid}");
    for (path, opts) in [
        ("/tmp", "mode=1777"),
        ("/var/tmp", "mode=1777"),
        ("/run", "mode=755"),
        (cfg.user_home.as_str(), home_opts.as_str()),
    ] {
        mount_fs("tmpfs", &at(path), safe, Some(opts))?;
    }
    let lock = at("/run/lock");
    fs::create_dir(&lock).ctx(|| format!("create {}", lock.display()))?;
    set_mode(&lock, 0o1777)?;

    build_dev(&at("/dev"))?;

    for name in ["hosts", "hostname", "resolv.conf"] {
        let target = at(&format!("/etc/{name}"));
        bind(&cfg.etc_dir.join(name), &target, false)?;
        remount_bind(&target, safe | MsFlags::MS_RDONLY)?;
    }

    let agent = at(crate::image::AGENT_PATH);
    bind(&cfg.agent_bin, &agent, false)?;
    remount_bind(
        &agent,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    Ok(())
}

/// A minimal `/dev`: the harmless character devices, a private devpts, `/dev/shm` and the
/// usual symlinks. No disks, no `/dev/kmsg`, no `/dev/mem`.
fn build_dev(dev: &Path) -> Result<(), LaunchError> {
    mount_fs(
        "tmpfs",
        dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        fs::File::create(&target).ctx(|| format!("create {}", target.display()))?;
        bind(&Path::new("/dev").join(name), &target, false)?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).ctx(|| format!("create {}", pts.display()))?;
    mount_fs(
        "devpts",
        &pts,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        // gid 5 is Debian's `tty` group.
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).ctx(|| format!("create {}", shm.display()))?;
    mount_fs(
        "tmpfs",
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).ctx(|| format!("create /dev/{link}"))?;
    }
    Ok(())
}

fn bind(source: &Path, target: &Path, recursive: bool) -> Result<(), LaunchError> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .ctx(|| format!("bind {} on {}", source.display(), target.display()))
}

/// Changes the flags of a bind mount (the only way to make a bind mount read-only).
fn remount_bind(target: &Path, flags: MsFlags) -> Result<(), LaunchError> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .ctx(|| format!("remount {} with {flags:?}", target.display()))
}

fn mount_fs(
    fstype: &str,
    target: &Path,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), LaunchError> {
    mount(Some(fstype), target, Some(fstype), flags, data)
        .ctx(|| format!("mount {fstype} on {}", target.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))
}

fn drop_bounding_caps() -> Result<(), LaunchError> {
    let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        if KEPT_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes an integer capability number and no pointers.
        #[allow(unsafe_code)]
        let rc = unsafe {
            nix::libc::prctl(
                nix::libc::PR_CAPBSET_DROP,
                nix::libc::c_ulong::from(cap),
                0 as nix::libc::c_ulong,
                0 as nix::libc::c_ulong,
                0 as nix::libc::c_ulong,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // EINVAL: the kernel does not know this capability number.
            if err.raw_os_error() != Some(nix::libc::EINVAL) {
                return Err(err).ctx(|| format!("drop capability {cap} from the bounding set"));
            }
        }
    }
    Ok(())
}

/// Marks every inherited descriptor except stdio and the agent socket close-on-exec, so
/// nothing the launcher or its parent held leaks into the machine.
fn close_other_fds(keep: RawFd) -> Result<(), LaunchError> {
    let entries = fs::read_dir("/proc/self/fd").ctx(|| "list /proc/self/fd".into())?;
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd <= 2 || fd == keep {
            continue;
        }
        // SAFETY: fcntl(F_SETFD) only changes a descriptor flag; an fd closed meanwhile (the
        // read_dir handle) yields EBADF, which is ignored.
        #[allow(unsafe_code)]
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    Ok(())
}
