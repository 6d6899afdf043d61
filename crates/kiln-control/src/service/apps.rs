//! Apps.

use kiln_api::List;
use kiln_api::apps::{App, AppConfig, AppUrls};
use kiln_store::{AppRecord, Desired};

use super::{Service, not_found_as};
use crate::error::{ApiError, ApiResult};
use crate::validate;

/// Largest page a list answers.
pub(crate) const PAGE: u32 = 100;

impl Service {
    /// `POST /v1/apps`.
    pub async fn create_app(&self, org_id: &str, config: AppConfig) -> ApiResult<App> {
        validate::name("name", &config.name)?;
        let slug = match config.slug {
            Some(slug) => {
                validate::slug("slug", &slug)?;
                slug
            }
            None => {
                let slug = validate::slug_from_name(&config.name);
                if slug.is_empty() {
                    return Err(ApiError::invalid_field(
                        "slug",
                        "the name has no letters or digits to make a slug from: give a `slug`",
                    ));
                }
                slug
            }
        };
        let record = self
            .store()
            .create_app(org_id, &config.name, &slug)
            .await
            .map_err(|e| match e {
                kiln_store::StoreError::Conflict { .. } => ApiError::conflict(format!(
                    "an app with slug `{slug}` exists in this org: pick another slug"
                ))
                .with_field("slug"),
                other => other.into(),
            })?;
        self.notify_change();
        self.app_view(record).await
    }

    /// `GET /v1/apps`.
    pub async fn list_apps(&self, org_id: &str, after: Option<&str>) -> ApiResult<List<App>> {
        let records = self.store().list_apps(org_id, after, PAGE).await?;
        let next = (records.len() == PAGE as usize)
            .then(|| records.last().map(|r| r.id.clone()))
            .flatten();
        let mut items = Vec::with_capacity(records.len());
        for record in records {
            items.push(self.app_view(record).await?);
        }
        Ok(List { items, next })
    }

    /// `GET /v1/apps/{app}`.
    pub async fn get_app(&self, org_id: &str, app: &str) -> ApiResult<App> {
        let record = self.app_record(org_id, app).await?;
        self.app_view(record).await
    }

    /// `DELETE /v1/apps/{app}`: marks its sandboxes for deletion, then removes the app.
    pub async fn delete_app(&self, org_id: &str, app: &str) -> ApiResult<()> {
        let record = self.app_record(org_id, app).await?;
        let sandboxes = self
            .store()
            .list_sandboxes(org_id, Some(&record.id), None, u32::MAX)
            .await?;
        for sandbox in sandboxes {
            self.store()
                .set_sandbox_desired(&sandbox.id, Desired::Deleted)
                .await?;
        }
        // The app's databases go with it: server, data and credentials.
        for database in self.store().list_databases(&record.id).await? {
            self.store().delete_database(&database.id).await?;
        }
        self.wake_reconciler();
        self.delete_app_buckets(org_id, &record.id).await?;
        self.store().delete_app_cron_jobs(&record.id).await?;
        self.store().delete_app(org_id, &record.id).await?;
        self.notify_change();
        Ok(())
    }

    /// The app record visible in the org, by id or slug.
    pub(crate) async fn app_record(&self, org_id: &str, app: &str) -> ApiResult<AppRecord> {
        self.store()
            .get_app(org_id, app)
            .await
            .map_err(not_found_as("app", app))
    }

    async fn app_view(&self, record: AppRecord) -> ApiResult<App> {
        let org = self.store().get_org(&record.org_id).await?;
        let base = &org.base_domain;
        Ok(App {
            urls: AppUrls {
                preview: self
                    .config()
                    .app_url(&format!("{}.sandbox.{base}", record.slug)),
                production: self.config().app_url(&format!("{}.{base}", record.slug)),
            },
            id: record.id,
            org: record.org_id,
            name: record.name,
            slug: record.slug,
            created_at: record.created_at,
        })
    }
}
