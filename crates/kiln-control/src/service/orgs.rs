//! Orgs, tokens and nodes.

use kiln_api::List;
use kiln_api::orgs::{Brand, Node, Org, OrgConfig, OrgUpdate, TokenCreated};
use kiln_store::{NewOrg, OrgRecord};

use super::{Service, not_found_as};
use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult};
use crate::validate;

impl Service {
    /// `POST /v1/orgs`.
    pub async fn create_org(&self, caller: &Caller, config: OrgConfig) -> ApiResult<Org> {
        caller.require_operator()?;
        validate::name("name", &config.name)?;
        validate::slug("slug", &config.slug)?;
        validate::domain("base_domain", &config.base_domain)?;
        validate_brand(&config.brand)?;
        for other in self.store().list_orgs().await? {
            if domains_overlap(&other.base_domain, &config.base_domain) {
                return Err(ApiError::conflict(format!(
                    "base domain `{}` overlaps `{}` of another org: hosts under it would be \
                     ambiguous; pick a domain of your own",
                    config.base_domain, other.base_domain
                ))
                .with_field("base_domain"));
            }
        }
        let record = self
            .store()
            .create_org(&NewOrg {
                name: config.name,
                slug: config.slug.clone(),
                base_domain: config.base_domain,
                brand: brand_json(&config.brand),
            })
            .await
            .map_err(|e| match e {
                kiln_store::StoreError::Conflict { .. } => ApiError::conflict(format!(
                    "an org with slug `{}` exists: pick another slug",
                    config.slug
                ))
                .with_field("slug"),
                other => other.into(),
            })?;
        self.notify_change();
        Ok(org_view(record))
    }

    /// `GET /v1/orgs/{org}`.
    pub async fn get_org(&self, caller: &Caller, org: &str) -> ApiResult<Org> {
        let record = self.visible_org(caller, org).await?;
        Ok(org_view(record))
    }

    /// `PATCH /v1/orgs/{org}`.
    pub async fn update_org(
        &self,
        caller: &Caller,
        org: &str,
        update: OrgUpdate,
    ) -> ApiResult<Org> {
        let record = self.visible_org(caller, org).await?;
        if let Some(name) = &update.name {
            validate::name("name", name)?;
        }
        if let Some(brand) = &update.brand {
            validate_brand(brand)?;
        }
        let brand = update.brand.as_ref().map(brand_json);
        let record = self
            .store()
            .update_org(&record.id, update.name.as_deref(), brand.as_deref())
            .await?;
        // The edge answers with the new brand from the next request on.
        self.refresh_routes()
            .await
            .map_err(|e| ApiError::internal("publishing the brand", &e))?;
        Ok(org_view(record))
    }

    /// `POST /v1/orgs/{org}/tokens`.
    pub async fn create_token(
        &self,
        caller: &Caller,
        org: &str,
        name: &str,
    ) -> ApiResult<TokenCreated> {
        validate::name("name", name)?;
        let record = self.visible_org(caller, org).await?;
        let token = auth::new_token("kt");
        let created = self
            .store()
            .create_token(&record.id, name, &auth::hash_token(&token))
            .await?;
        Ok(TokenCreated {
            id: created.id,
            name: created.name,
            token,
        })
    }

    /// `GET /v1/nodes`: this node (the embedded default runs exactly one).
    pub async fn nodes(&self, _caller: &Caller) -> ApiResult<List<Node>> {
        let driver = self.driver();
        let running = driver
            .running()
            .await
            .map_err(|e| ApiError::internal("listing machines", &e))?;
        Ok(List {
            items: vec![Node {
                id: self.inner.node_id.clone(),
                status: "ready".into(),
                driver: driver.name().into(),
                hardware_accelerated: driver.hardware_accelerated(),
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                memory_mib: host_memory_mib(),
                machines_running: running.len() as u32,
            }],
            next: None,
        })
    }

    async fn visible_org(&self, caller: &Caller, org: &str) -> ApiResult<OrgRecord> {
        let record = self
            .store()
            .get_org(org)
            .await
            .map_err(not_found_as("org", org))?;
        if caller.can_access(&record.id) {
            Ok(record)
        } else {
            Err(ApiError::not_found("org", org))
        }
    }
}

/// Whether one domain equals the other or lies beneath it.
fn domains_overlap(a: &str, b: &str) -> bool {
    let beneath = |x: &str, y: &str| x == y || x.ends_with(&format!(".{y}"));
    beneath(a, b) || beneath(b, a)
}

fn validate_brand(brand: &Brand) -> ApiResult<()> {
    if brand.name.chars().count() > 100 || brand.name.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "brand.name",
            "give a brand name of at most 100 characters without control characters",
        ));
    }
    if let Some(color) = &brand.primary_color {
        validate::color("brand.primary_color", color)?;
    }
    if let Some(url) = &brand.logo_url {
        validate::url("brand.logo_url", url)?;
    }
    if let Some(url) = &brand.support_url {
        validate::url("brand.support_url", url)?;
    }
    Ok(())
}

fn brand_json(brand: &Brand) -> String {
    serde_json::to_string(brand).expect("a brand always serializes")
}

/// The wire form of an org record.
pub(crate) fn org_view(record: OrgRecord) -> Org {
    Org {
        brand: serde_json::from_str(&record.brand).unwrap_or_default(),
        id: record.id,
        name: record.name,
        slug: record.slug,
        base_domain: record.base_domain,
        created_at: record.created_at,
    }
}

fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}
