//! The reconciler's database pass: provisions new databases, starts provisioned ones this
//! node does not run yet (after a restart), finishes revocations a crash interrupted, logs in
//! to running ones again every [`RECHECK_EVERY`] (so `healthy` keeps meaning the issued URL
//! works, and a `failed` one that answers again becomes `healthy`), and deletes those asked to
//! go. One task per database at a time.

use std::time::Duration;

use kiln_databases::Login;
use kiln_store::{DatabaseRecord, Desired};

use super::Service;
use super::databases::{instance, is_provisioned};

/// How often a running database's login is checked again.
const RECHECK_EVERY: Duration = Duration::from_secs(15);

impl Service {
    /// One pass over every database; work runs in background tasks.
    pub async fn databases_pass(&self) -> Result<(), kiln_store::StoreError> {
        for record in self.store().list_all_databases().await? {
            let running = self.engines().is_running(&record.id);
            let needs_work = match (record.desired, record.status.as_str()) {
                (Desired::Deleted, _) => true,
                (Desired::Running, "provisioning") => true,
                (Desired::Running, "healthy" | "unhealthy") => {
                    !running
                        || record.retired_user.is_some()
                        || self.database_check_due(&record.id, RECHECK_EVERY)
                }
                (Desired::Running, "failed") if running => {
                    self.database_check_due(&record.id, RECHECK_EVERY)
                }
                // Provisioned once (its data is there) but not starting: keep trying.
                (Desired::Running, "failed") => self.engines().data_dir(&record.id).exists(),
                _ => false,
            };
            if !needs_work || !self.claim_database_task(&record.id) {
                continue;
            }
            let service = self.clone();
            tokio::spawn(async move {
                let id = record.id;
                // Read again under the claim: a rotation that held it may have changed the
                // login since the list was read.
                match service.store().get_database(None, &id).await {
                    Ok(record) => service.converge_database(record).await,
                    Err(e) => tracing::warn!(database = %id, error = %e, "database not read"),
                }
                service.release_database_task(&id);
                service.notify_change();
            });
        }
        Ok(())
    }

    async fn converge_database(&self, record: DatabaseRecord) {
        let recheck = record.desired == Desired::Running
            && record.status != "provisioning"
            && record.retired_user.is_none()
            && self.engines().is_running(&record.id);
        let result = match (record.desired, record.status.as_str()) {
            (Desired::Deleted, _) => self.remove_database(&record).await,
            (_, "provisioning") => self.provision_database(&record).await,
            _ if recheck => self.check_database(&record).await,
            _ => self.start_database(&record).await,
        };
        if let Err(error) = result {
            tracing::warn!(database = %record.id, %error, "database not converged");
            if record.desired == Desired::Running {
                // A provisioned server that refuses the login, or does not start after a
                // restart, is unhealthy, not failed: it keeps its variables (so no other
                // database of its engine takes them), and a later pass may find it well.
                let status = if is_provisioned(&record) {
                    "unhealthy"
                } else {
                    "failed"
                };
                let _ = self
                    .store()
                    .set_database_status(&record.id, status, Some(&error))
                    .await;
            }
        }
    }

    async fn provision_database(&self, record: &DatabaseRecord) -> Result<(), String> {
        let inst = instance(record).map_err(|e| e.problem().detail)?;
        let network = self
            .driver()
            .org_network(&record.org_id)
            .await
            .map_err(|e| format!("the org's network: {e}"))?;
        if network.gateway != inst.host {
            return Err(format!(
                "the org's address changed from {} to {}; delete and recreate the database",
                inst.host, network.gateway
            ));
        }
        let admin = self.unseal(&record.admin_password)?;
        let login = Login {
            user: record.login_user.clone(),
            password: self.unseal(&record.login_password)?,
        };
        let started = std::time::Instant::now();
        if let Err(e) = self.engines().provision(&inst, &admin, &login).await {
            let _ = kiln_runtime::net::revoke_org_service(&network, inst.port).await;
            return Err(e.to_string());
        }
        kiln_runtime::net::allow_org_service(&network, inst.port)
            .await
            .map_err(|e| format!("opening the org's firewall door: {e}"))?;
        self.store()
            .set_database_status(&record.id, "healthy", None)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(database = %record.id, engine = %inst.engine, ms = started.elapsed().as_millis() as u64, "database provisioned");
        Ok(())
    }

    async fn start_database(&self, record: &DatabaseRecord) -> Result<(), String> {
        let inst = instance(record).map_err(|e| e.problem().detail)?;
        let admin = self.unseal(&record.admin_password)?;
        let network = self
            .driver()
            .org_network(&record.org_id)
            .await
            .map_err(|e| format!("the org's network: {e}"))?;
        self.engines()
            .start(&inst, &admin)
            .await
            .map_err(|e| e.to_string())?;
        kiln_runtime::net::allow_org_service(&network, inst.port)
            .await
            .map_err(|e| format!("opening the org's firewall door: {e}"))?;
        if let Some(retired) = &record.retired_user {
            // A rotation was interrupted after the new login was stored: machines boot with
            // the new URL from now on, so the old login goes.
            self.engines()
                .remove_login(&inst, &admin, retired)
                .await
                .map_err(|e| e.to_string())?;
            self.store()
                .clear_retired_login(&record.id)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.check_database(record).await
    }

    /// Logs in with the issued credential and runs a query; `healthy` once that works.
    async fn check_database(&self, record: &DatabaseRecord) -> Result<(), String> {
        let inst = instance(record).map_err(|e| e.problem().detail)?;
        let login = Login {
            user: record.login_user.clone(),
            password: self.unseal(&record.login_password)?,
        };
        self.engines()
            .check(&inst, &login)
            .await
            .map_err(|e| e.to_string())?;
        if record.status != "healthy" {
            // The check came from the host, which the firewall does not stand between; make
            // sure the machines' door is open too before calling it healthy (idempotent).
            let network = self
                .driver()
                .org_network(&record.org_id)
                .await
                .map_err(|e| format!("the org's network: {e}"))?;
            kiln_runtime::net::allow_org_service(&network, inst.port)
                .await
                .map_err(|e| format!("opening the org's firewall door: {e}"))?;
            self.store()
                .set_database_status(&record.id, "healthy", None)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn remove_database(&self, record: &DatabaseRecord) -> Result<(), String> {
        let inst = instance(record).map_err(|e| e.problem().detail)?;
        self.engines()
            .destroy(&inst)
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(network) = self.driver().org_network(&record.org_id).await {
            kiln_runtime::net::revoke_org_service(&network, inst.port)
                .await
                .map_err(|e| format!("closing the org's firewall door: {e}"))?;
        }
        self.store()
            .purge_database(&record.id)
            .await
            .map_err(|e| e.to_string())?;
        self.forget_database_check(&record.id);
        Ok(())
    }

    fn unseal(&self, sealed: &str) -> Result<String, String> {
        self.sealer()
            .open(sealed)
            .map_err(|e| format!("opening a database secret: {e}"))
    }
}
