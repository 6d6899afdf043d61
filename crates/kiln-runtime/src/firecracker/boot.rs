//! Booting one machine: the guest image's files, the tap, the jail, the Firecracker process,
//! its API calls, and the wait for the agent.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use kiln_guest::client::AgentClient;

use super::{
    AGENT_VSOCK_PORT, ApiClient, BootPlan, FirecrackerDriver, FirecrackerError, GUEST_CID,
    GuestBoot, GuestMachine, Jail, JailRecord, MAX_SOCKET_PATH, MachineRecord, PROBE_TIMEOUT,
    Sockets, agent_client, guest_mac, vmm,
};
use crate::{
    MachineInfo, MachineSpec,
    error::{IoContext, RuntimeError},
    lifecycle::Lifecycle,
    net,
    process::console_tail,
};

/// How long Firecracker may take to create its API socket.
const API_SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

impl FirecrackerDriver {
    /// Boots a machine whose leftovers are gone and whose address is allocated.
    pub(super) async fn boot_machine(
        &self,
        spec: &MachineSpec,
        mut record: MachineRecord,
    ) -> Result<MachineInfo, RuntimeError> {
        let started = Instant::now();
        let id = &spec.id;
        let dir = self.machine_dir(id);
        let address = record.address.expect("allocate always sets an address");
        let boot = self
            .inner
            .cfg
            .guest
            .prepare(&GuestMachine {
                spec,
                dir: &dir,
                address,
                slice: record.slice,
                agent_port: AGENT_VSOCK_PORT,
                pci: self.inner.cfg.enable_pci,
            })
            .await?;
        // Recorded before anything can fail, so a destroy finds the volume wherever the image
        // put it.
        record.workspace = Some(boot.workspace.clone());
        self.write_record(&record)?;
        check_boot_files(&boot)?;

        let jail = self.jail(id);
        let sockets = self.sockets(id, jail.as_ref());
        for socket in [&sockets.api, &sockets.vsock] {
            if socket.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(FirecrackerError::SocketPathTooLong {
                    path: socket.clone(),
                }
                .into());
            }
        }
        record.jail = jail.as_ref().map(JailRecord::from);
        self.write_record(&record)?;

        let org = net::bridge_name(record.slice);
        let owner = self.inner.cfg.jailer.as_ref().map(|j| (j.uid, j.gid));
        net::create_tap(&record.tap, &org, owner).await?;

        let plan = self.plan(spec, &record, &boot, jail.as_ref(), &sockets)?;
        let (program, mut args) = match (&self.inner.cfg.jailer, &jail) {
            (Some(cfg), Some(jail)) => (cfg.bin.clone(), jail.argv(cfg, &self.inner.firecracker)),
            _ => (
                self.inner.firecracker.clone(),
                vec![OsString::from("--api-sock"), sockets.api.clone().into()],
            ),
        };
        if self.inner.cfg.enable_pci {
            // Last, so that under the jailer it follows `--` and reaches Firecracker.
            args.push("--enable-pci".into());
        }
        let console = dir.join("console.log");
        let mut child = vmm::start(
            &program,
            &args,
            &dir,
            &console,
            &dir.join("firecracker.pid"),
        )?;
        let result = self
            .configure_and_wait(id, &plan, &sockets, &mut child, started, &console)
            .await;
        // Firecracker lives as long as the machine; dropping the handle leaves it running
        // and tokio reaps it when it exits.
        drop(child);
        let (agent, health) = result?;
        tracing::info!(machine = %id, %address, total = ?started.elapsed(), "machine booted");
        Ok(MachineInfo {
            id: id.clone(),
            address,
            agent,
            boot_id: health.boot_id,
        })
    }

    /// The boot plan with paths as Firecracker sees them; stages the files into the jail.
    fn plan(
        &self,
        spec: &MachineSpec,
        record: &MachineRecord,
        boot: &GuestBoot,
        jail: Option<&Jail>,
        sockets: &Sockets,
    ) -> Result<BootPlan, RuntimeError> {
        let dir = self.machine_dir(&spec.id);
        let address = record.address.expect("allocate always sets an address");
        let mut plan = BootPlan {
            kernel: boot.kernel.clone(),
            initrd: boot.initrd.clone(),
            boot_args: boot.boot_args.clone(),
            rootfs: boot.rootfs.clone(),
            workspace: boot.workspace.clone(),
            tap: record.tap.clone(),
            mac: guest_mac(address),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            vsock_cid: GUEST_CID,
            vsock_uds: sockets.vsock.clone(),
            log: dir.join("firecracker.log"),
            metrics: dir.join("metrics.json"),
        };
        match (jail, &self.inner.cfg.jailer) {
            (Some(jail), Some(cfg)) => {
                jail.create()?;
                plan.kernel = jail.stage(cfg, &boot.kernel, "vmlinux", false)?;
                if let Some(initrd) = &boot.initrd {
                    plan.initrd = Some(jail.stage(cfg, initrd, "initrd", false)?);
                }
                plan.rootfs = jail.stage(cfg, &boot.rootfs, "rootfs.ext4", false)?;
                plan.workspace = jail.stage(cfg, &boot.workspace, "workspace.ext4", true)?;
                plan.log = jail.stage_empty(cfg, "firecracker.log")?;
                plan.metrics = jail.stage_empty(cfg, "metrics.json")?;
                plan.vsock_uds = PathBuf::from("/vsock.sock");
            }
            _ => {
                // Firecracker opens its log and metrics files for appending; they must exist.
                for path in [&plan.log, &plan.metrics] {
                    fs::write(path, b"").ctx(|| format!("create {}", path.display()))?;
                }
            }
        }
        Ok(plan)
    }

    /// Sends the plan's API calls once the API socket is up, then waits for the agent.
    async fn configure_and_wait(
        &self,
        id: &str,
        plan: &BootPlan,
        sockets: &Sockets,
        child: &mut tokio::process::Child,
        started: Instant,
        console: &Path,
    ) -> Result<(AgentClient, kiln_guest::HealthInfo), RuntimeError> {
        let exited = |child: &mut tokio::process::Child| -> Result<(), RuntimeError> {
            match child.try_wait() {
                Ok(Some(status)) => Err(FirecrackerError::Exited {
                    id: id.to_owned(),
                    status: status.to_string(),
                    console: console_tail(console),
                }
                .into()),
                Ok(None) => Ok(()),
                Err(e) => Err(RuntimeError::io(
                    format!("check the firecracker of {id}"),
                    e,
                )),
            }
        };
        let socket_deadline = Instant::now() + API_SOCKET_TIMEOUT;
        // The socket file appears at bind(), a moment before Firecracker listens on it: wait
        // until a connection is taken, not merely for the file.
        while tokio::net::UnixStream::connect(&sockets.api).await.is_err() {
            exited(child)?;
            if Instant::now() >= socket_deadline {
                return Err(FirecrackerError::NoApiSocket {
                    id: id.to_owned(),
                    socket: sockets.api.clone(),
                    secs: API_SOCKET_TIMEOUT.as_secs(),
                    console: console_tail(console),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let api = ApiClient::new(&sockets.api);
        for request in plan.requests() {
            if let Err(e) = api.send(&request).await {
                // A Firecracker that died explains itself better on its console.
                exited(child)?;
                return Err(e.into());
            }
        }
        let configured = started.elapsed();

        let deadline = started + self.inner.cfg.boot_deadline;
        let agent = agent_client(&sockets.vsock);
        let probe = agent.clone().with_timeouts(PROBE_TIMEOUT, PROBE_TIMEOUT);
        let health = loop {
            exited(child)?;
            let now = Instant::now();
            if now >= deadline {
                return Err(FirecrackerError::GuestNeverAnswered {
                    id: id.to_owned(),
                    secs: self.inner.cfg.boot_deadline.as_secs(),
                    port: AGENT_VSOCK_PORT,
                    console: console_tail(console),
                }
                .into());
            }
            match tokio::time::timeout(deadline - now, probe.health()).await {
                Ok(Ok(health)) => break health,
                Ok(Err(e)) => tracing::trace!(machine = %id, error = %e, "agent not ready"),
                Err(_) => continue,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if health.machine_id.as_deref() != Some(id) {
            return Err(RuntimeError::AgentMismatch {
                endpoint: format!("vsock:{}", sockets.vsock.display()),
                found: health.machine_id.unwrap_or_default(),
                expected: id.to_owned(),
            });
        }
        tracing::debug!(machine = %id, ?configured, "firecracker configured");
        Ok((agent, health))
    }
}

/// Fails with [`FirecrackerError::BootFileMissing`] for the first boot file that is missing.
pub(super) fn check_boot_files(boot: &GuestBoot) -> Result<(), RuntimeError> {
    let files = [
        ("kernel", Some(&boot.kernel)),
        ("initrd", boot.initrd.as_ref()),
        ("root file system", Some(&boot.rootfs)),
        ("workspace drive", Some(&boot.workspace)),
    ];
    for (what, path) in files {
        if let Some(path) = path
            && !path.is_file()
        {
            return Err(FirecrackerError::BootFileMissing {
                what,
                path: path.clone(),
            }
            .into());
        }
    }
    Ok(())
}
