//! The reconciler: drives sandbox and deployment machines toward the stored intent. Every
//! step is idempotent, so a crash anywhere, a restart or a retry converges to the same state.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_runtime::MachineSpec;
use kiln_store::{Desired, SandboxRecord};
use tokio_util::sync::CancellationToken;

use crate::service::Service;
use crate::service::sandboxes_env;

/// How often machines are health-checked when nothing else wakes the loop.
const RESYNC: Duration = Duration::from_secs(2);

/// Runs until `shutdown` is cancelled.
pub async fn run(service: Service, shutdown: CancellationToken) {
    let in_flight = Arc::new(Mutex::new(HashSet::<String>::new()));
    loop {
        // Databases first: machines booting in this pass expect theirs to answer.
        if let Err(e) = service.databases_pass().await {
            tracing::warn!(error = %e, "database pass failed; retrying");
        }
        if let Err(e) = pass(&service, &in_flight).await {
            tracing::warn!(error = %e, "reconcile pass failed; retrying");
        }
        if let Err(e) = deployments_pass(&service).await {
            tracing::warn!(error = %e, "deployment pass failed; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = service.reconciler_woken() => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

async fn pass(
    service: &Service,
    in_flight: &Arc<Mutex<HashSet<String>>>,
) -> Result<(), kiln_store::StoreError> {
    for record in service.store().list_all_sandboxes().await? {
        let needs_work = match record.desired {
            Desired::Deleted => true,
            Desired::Running => match record.status.as_str() {
                "failed" => false,
                "running" => match service.machines().get(&record.id) {
                    Some(machine) => machine.agent.health().await.is_err(),
                    None => true,
                },
                _ => true,
            },
        };
        if !needs_work {
            continue;
        }
        // One task per sandbox at a time, so twenty creates boot side by side.
        if !in_flight
            .lock()
            .expect("in-flight lock is never poisoned")
            .insert(record.id.clone())
        {
            continue;
        }
        let service = service.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let id = record.id.clone();
            converge(&service, record).await;
            in_flight
                .lock()
                .expect("in-flight lock is never poisoned")
                .remove(&id);
            service.notify_change();
        });
    }
    Ok(())
}

async fn converge(service: &Service, record: SandboxRecord) {
    let store = service.store();
    match record.desired {
        Desired::Deleted => {
            service.machines().remove(&record.id);
            if let Err(e) = service.driver().destroy(&record.id).await {
                tracing::warn!(sandbox = %record.id, error = %e, "destroying machine failed; will retry");
                return;
            }
            if let Err(e) = store.purge_sandbox(&record.id).await {
                tracing::warn!(sandbox = %record.id, error = %e, "purging sandbox failed; will retry");
            }
        }
        Desired::Running => {
            if record.status == "running" {
                tracing::info!(sandbox = %record.id, "machine not answering; starting it again");
                service.machines().remove(&record.id);
                let _ = store
                    .set_sandbox_status(&record.id, "starting", None, None)
                    .await;
                service.notify_change();
            }
            match boot(service, &record).await {
                Ok(address) => {
                    let _ = store
                        .set_sandbox_status(&record.id, "running", Some(&address), None)
                        .await;
                }
                Err(error) => {
                    tracing::warn!(sandbox = %record.id, %error, "sandbox failed to start");
                    service.machines().remove(&record.id);
                    let _ = store
                        .set_sandbox_status(&record.id, "failed", None, Some(&error))
                        .await;
                }
            }
        }
    }
}

/// Starts (or adopts) the machine and brings back its supervised processes.
async fn boot(service: &Service, record: &SandboxRecord) -> Result<String, String> {
    let image = record.image.parse().map_err(|e| format!("{e}"))?;
    let mut env = sandboxes_env(record);
    env.extend(service.managed_env(&record.org_id, &record.app_id).await?);
    let spec = MachineSpec {
        id: record.id.clone(),
        org_id: record.org_id.clone(),
        image,
        vcpus: record.vcpus,
        memory_mib: record.memory_mib,
        pids_max: service.config().machine_pids_max,
        hostname: "sandbox".to_owned(),
        env,
    };
    let machine = service
        .driver()
        .start(&spec)
        .await
        .map_err(|e| e.to_string())?;
    let running: HashSet<String> = machine
        .agent
        .process_list()
        .await
        .map_err(|e| format!("guest agent: {e}"))?
        .into_iter()
        .map(|p| p.name)
        .collect();
    let stored = service
        .store()
        .list_processes(&record.id)
        .await
        .map_err(|e| format!("reading processes: {e}"))?;
    for process in stored {
        if running.contains(&process.name) {
            continue;
        }
        match serde_json::from_str(&process.spec) {
            Ok(spec) => {
                if let Err(e) = machine.agent.process_start(spec).await {
                    tracing::warn!(sandbox = %record.id, process = %process.name, error = %e, "restarting process failed");
                }
            }
            Err(e) => {
                tracing::warn!(sandbox = %record.id, process = %process.name, error = %e, "stored process spec unreadable")
            }
        }
    }
    let address = machine.address.to_string();
    service.machines().insert(machine);
    Ok(address)
}

/// Stops every machine this node runs (graceful shutdown of the embedded platform).
pub async fn stop_all(service: &Service) {
    for id in service.machines().ids() {
        service.machines().remove(&id);
        if let Err(e) = service.driver().stop(&id).await {
            tracing::warn!(machine = %id, error = %e, "stopping machine failed");
        }
    }
}

/// Brings production back after a restart (adopting or re-booting live deployments from
/// their artifacts), fails promotions a crash interrupted, and stops machines whose warm
/// window has passed.
pub async fn deployments_pass(service: &Service) -> Result<(), kiln_store::StoreError> {
    let promoting = service.promoting();
    let store = service.store();
    for record in store.list_active_deployments().await? {
        if promoting
            .lock()
            .expect("promoting lock is never poisoned")
            .contains(&record.id)
        {
            continue;
        }
        match record.status.as_str() {
            "live" if service.machines().get(&record.id).is_none() => {
                let release = store
                    .get_release(&record.org_id, None, &record.release_id)
                    .await?;
                let Ok(manifest) = serde_json::from_str(&release.manifest) else {
                    continue;
                };
                match service
                    .start_release_machine(&record, &release, &manifest)
                    .await
                {
                    Ok(address) => {
                        let address = address.to_string();
                        if record.address.as_deref() != Some(address.as_str()) {
                            store
                                .set_deployment_status(
                                    &record.id,
                                    "live",
                                    None,
                                    None,
                                    Some(&address),
                                )
                                .await?;
                            service.notify_change();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(deployment = %record.id, error = %e, "live deployment not serving; will retry")
                    }
                }
            }
            "pending" | "healthy" if service.machines().get(&record.id).is_none() => {
                let _ = service.driver().destroy(&record.id).await;
                store
                    .set_deployment_status(
                        &record.id,
                        "failed",
                        Some("interrupted by a restart of the platform; deploy again"),
                        None,
                        None,
                    )
                    .await?;
            }
            "superseded" => {
                let age = chrono::Utc::now() - record.updated_at;
                if age.to_std().unwrap_or_default() > service.config().warm_window {
                    service.machines().remove(&record.id);
                    if let Err(e) = service.driver().destroy(&record.id).await {
                        tracing::warn!(deployment = %record.id, error = %e, "stopping a warm machine failed; will retry");
                        continue;
                    }
                    store
                        .set_deployment_status(&record.id, "stopped", None, None, None)
                        .await?;
                    service.notify_change();
                } else if service.machines().get(&record.id).is_none() {
                    // After a restart a warm machine is adopted if it still runs, else forgotten.
                    let release = store
                        .get_release(&record.org_id, None, &record.release_id)
                        .await?;
                    if let Ok(manifest) = serde_json::from_str(&release.manifest)
                        && service
                            .start_release_machine(&record, &release, &manifest)
                            .await
                            .is_err()
                    {
                        let _ = service.driver().destroy(&record.id).await;
                        store
                            .set_deployment_status(&record.id, "stopped", None, None, None)
                            .await?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}
