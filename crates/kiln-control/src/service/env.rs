//! An app's configuration: variables and secrets. Secrets are sealed before they reach the
//! store and never answered back; releases name the variables, machines get the values at boot.

use std::collections::BTreeMap;

use kiln_api::List;
use kiln_api::releases::{EnvDiff, EnvSpec, EnvVar};
use sha2::{Digest, Sha256};

use super::{Service, not_found_as};
use crate::error::{ApiError, ApiResult};
use crate::validate;

impl Service {
    /// `PUT /v1/apps/{app}/env/{name}`.
    pub async fn set_env(
        &self,
        org_id: &str,
        app: &str,
        name: &str,
        value: &str,
        secret: bool,
    ) -> ApiResult<EnvVar> {
        let app = self.app_record(org_id, app).await?;
        validate::env("name", [(&name.to_owned(), &value.to_owned())])?;
        if name == "PORT" {
            return Err(ApiError::invalid_field(
                "name",
                "`PORT` is set by the platform from the release's port",
            ));
        }
        let stored = if secret {
            self.sealer().seal(value)
        } else {
            value.to_owned()
        };
        self.store().set_env(&app.id, name, &stored, secret).await?;
        let record = self
            .store()
            .list_env(&app.id)
            .await?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ApiError::not_found("variable", name))?;
        Ok(env_view(record))
    }

    /// `DELETE /v1/apps/{app}/env/{name}`.
    pub async fn unset_env(&self, org_id: &str, app: &str, name: &str) -> ApiResult<()> {
        let app = self.app_record(org_id, app).await?;
        self.store()
            .unset_env(&app.id, name)
            .await
            .map_err(not_found_as("variable", name))
    }

    /// `GET /v1/apps/{app}/env`: secrets without their values.
    pub async fn list_env(&self, org_id: &str, app: &str) -> ApiResult<List<EnvVar>> {
        let app = self.app_record(org_id, app).await?;
        let items = self
            .store()
            .list_env(&app.id)
            .await?
            .into_iter()
            .map(env_view)
            .collect();
        Ok(List { items, next: None })
    }

    /// What a release published now expects: every variable of the app's config.
    pub(crate) async fn env_manifest(&self, app_id: &str) -> ApiResult<Vec<EnvSpec>> {
        Ok(self
            .store()
            .list_env(app_id)
            .await?
            .into_iter()
            .map(|v| EnvSpec {
                name: v.name,
                secret: v.secret,
                source: "app".into(),
            })
            .collect())
    }

    /// Variables the platform's managed resources give every machine of the app (sandboxes
    /// and deployments alike), resolved at boot so a rotated credential reaches the next boot.
    /// Each resource kind adds its own variables here.
    pub(crate) async fn managed_env(
        &self,
        org_id: &str,
        app_id: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = BTreeMap::new();
        env.extend(self.database_env(app_id).await?);
        env.extend(self.bucket_env(org_id, app_id).await?);
        Ok(env)
    }

    /// The values for a release's variables, from the app's config as it is now.
    pub(crate) async fn resolve_env(
        &self,
        app_id: &str,
        wanted: &[EnvSpec],
    ) -> Result<BTreeMap<String, String>, String> {
        let stored = self
            .store()
            .list_env(app_id)
            .await
            .map_err(|e| format!("reading the app's config: {e}"))?;
        let mut env = BTreeMap::new();
        for spec in wanted {
            let Some(var) = stored.iter().find(|v| v.name == spec.name) else {
                return Err(format!(
                    "the release expects `{}`, which the app's config no longer has: set it with `kiln env set`",
                    spec.name
                ));
            };
            let value = if var.secret {
                self.sealer()
                    .open(&var.value)
                    .map_err(|e| format!("`{}`: {e}", spec.name))?
            } else {
                var.value.clone()
            };
            env.insert(spec.name.clone(), value);
        }
        Ok(env)
    }
}

/// Name → SHA-256 of the value: enough to tell what changed, nothing to leak.
pub(crate) fn fingerprint(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| (k.clone(), hex::encode(Sha256::digest(v.as_bytes()))))
        .collect()
}

/// The change from `old` to `new` fingerprints.
pub(crate) fn diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> EnvDiff {
    EnvDiff {
        added: new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .cloned()
            .collect(),
        removed: old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect(),
        changed: new
            .iter()
            .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
            .map(|(k, _)| k.clone())
            .collect(),
    }
}

fn env_view(record: kiln_store::EnvVarRecord) -> EnvVar {
    EnvVar {
        value: (!record.secret).then_some(record.value),
        name: record.name,
        secret: record.secret,
        updated_at: record.updated_at,
    }
}
