//! Buckets: S3 buckets of an app, each with its own key pair; presigned URLs; the variables
//! that hand a bucket to the app's machines; and the S3 listeners on each org's gateway.
//!
//! The store holds intent (the bucket row, with its sealed secret); the object store holds
//! the bytes. Creation writes the row first and deletion removes it first, so a crash leaves
//! at worst a directory without a row, which [`Service::reconcile_buckets`] removes at start.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use kiln_api::List;
use kiln_api::buckets::{Bucket, BucketConfig, PresignConfig, PresignedUrl};
use kiln_s3::{BucketKey, KeyRing, ObjectStore, ObjectStoreError, PresignMethod, S3Endpoint};
use kiln_store::BucketRecord;
use tokio_util::sync::CancellationToken;

use super::{Service, not_found_as};
use crate::error::{ApiError, ApiResult};

/// How long a multipart upload may receive nothing before it is aborted (the common S3
/// lifecycle rule for incomplete uploads).
const UPLOAD_IDLE_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often idle uploads are looked for.
const UPLOAD_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// The node's object store and its S3 front ends.
pub struct S3Node {
    objects: ObjectStore,
    keys: KeyRing,
    endpoint: S3Endpoint,
    /// What clients outside the platform are told (presigned URLs, `endpoint` of a bucket).
    public_url: String,
    /// The port of the public listener; machines reach the same port on their gateway.
    port: u16,
    /// Whether the public listener takes every interface (then no gateway listener is needed).
    listens_everywhere: bool,
    /// Org id → gateway address an S3 listener is bound on.
    gateways: tokio::sync::Mutex<HashMap<String, Ipv4Addr>>,
    /// Stops the gateway listeners.
    shutdown: CancellationToken,
}

impl S3Node {
    /// The node's S3 parts over an opened object store. `listen` is the public listener's
    /// bound address; `public_url` overrides the URL handed to clients.
    pub fn new(
        objects: ObjectStore,
        listen: SocketAddr,
        public_url: Option<String>,
        base_domain: &str,
    ) -> S3Node {
        let keys = KeyRing::default();
        let shown = if listen.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        } else {
            listen
        };
        let public_url = public_url
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{shown}"));
        let hosts =
            kiln_s3::VirtualHosts::new([format!("s3.{base_domain}"), base_domain.to_owned()]);
        S3Node {
            endpoint: S3Endpoint::new(objects.clone(), keys.clone(), hosts),
            objects,
            keys,
            public_url,
            port: listen.port(),
            listens_everywhere: listen.ip().is_unspecified(),
            gateways: tokio::sync::Mutex::default(),
            shutdown: CancellationToken::new(),
        }
    }

    /// The S3 protocol service, to serve on the public listener.
    pub fn endpoint(&self) -> &S3Endpoint {
        &self.endpoint
    }

    /// The URL clients outside the platform use.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Stops the gateway listeners.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

fn invalid(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::unprocessable(detail).with_field(field)
}

fn object_store_error(err: ObjectStoreError) -> ApiError {
    match err {
        ObjectStoreError::InvalidBucketName { .. } => invalid("name", err.to_string()),
        other => ApiError::internal("the object store", &other),
    }
}

impl Service {
    /// The node's S3 parts.
    pub fn s3(&self) -> &S3Node {
        &self.inner.s3
    }

    /// `POST /v1/apps/{app}/buckets`: the answer is the only one that shows the secret.
    pub async fn create_bucket(
        &self,
        org_id: &str,
        app: &str,
        config: BucketConfig,
    ) -> ApiResult<Bucket> {
        kiln_s3::validate_bucket_name(&config.name).map_err(object_store_error)?;
        let app = self.app_record(org_id, app).await?;
        let key = BucketKey::generate(&config.name);
        let record = self
            .store()
            .create_bucket(
                &config.name,
                org_id,
                &app.id,
                &key.access_key_id,
                &self.sealer().seal(&key.secret_access_key),
            )
            .await
            .map_err(|e| match e {
                kiln_store::StoreError::Conflict { .. } => ApiError::conflict(format!(
                    "bucket name `{}` is taken on this platform: bucket names are global, pick another",
                    config.name
                ))
                .with_field("name"),
                other => other.into(),
            })?;
        let s3 = self.s3();
        // A directory without a row is what an interrupted delete leaves: stale, so replace it.
        if s3.objects.bucket_exists(&record.name).await {
            s3.objects
                .delete_bucket(&record.name)
                .await
                .map_err(object_store_error)?;
        }
        if let Err(e) = s3.objects.create_bucket(&record.name).await {
            let _ = self.store().delete_bucket(&record.name).await;
            return Err(object_store_error(e));
        }
        s3.keys.insert(key.clone());
        let mut view = self.bucket_view(&record);
        view.secret_access_key = Some(key.secret_access_key);
        Ok(view)
    }

    /// `GET /v1/apps/{app}/buckets`.
    pub async fn list_buckets(&self, org_id: &str, app: &str) -> ApiResult<List<Bucket>> {
        let app = self.app_record(org_id, app).await?;
        let items = self
            .store()
            .list_buckets(&app.id)
            .await?
            .iter()
            .map(|r| self.bucket_view(r))
            .collect();
        Ok(List { items, next: None })
    }

    /// `GET /v1/buckets/{bucket}`.
    pub async fn get_bucket(&self, org_id: &str, name: &str) -> ApiResult<Bucket> {
        Ok(self.bucket_view(&self.bucket_record(org_id, name).await?))
    }

    /// `DELETE /v1/buckets/{bucket}`: keys stop working at once, then the row and the objects go.
    pub async fn delete_bucket(&self, org_id: &str, name: &str) -> ApiResult<()> {
        let record = self.bucket_record(org_id, name).await?;
        self.s3().keys.remove_bucket(&record.name);
        self.store()
            .delete_bucket(&record.name)
            .await
            .map_err(not_found_as("bucket", name))?;
        if self.s3().objects.bucket_exists(&record.name).await {
            self.s3()
                .objects
                .delete_bucket(&record.name)
                .await
                .map_err(object_store_error)?;
        }
        Ok(())
    }

    /// Deletes every bucket of an app (the app is being deleted).
    pub(crate) async fn delete_app_buckets(&self, org_id: &str, app_id: &str) -> ApiResult<()> {
        for record in self.store().list_buckets(app_id).await? {
            self.delete_bucket(org_id, &record.name).await?;
        }
        Ok(())
    }

    /// `POST /v1/buckets/{bucket}/presign`.
    pub async fn presign(
        &self,
        org_id: &str,
        name: &str,
        config: PresignConfig,
    ) -> ApiResult<PresignedUrl> {
        let method = match config.method.to_ascii_uppercase().as_str() {
            "GET" => PresignMethod::Get,
            "PUT" => PresignMethod::Put,
            _ => {
                return Err(invalid(
                    "method",
                    format!(
                        "method `{}` cannot be presigned: use GET or PUT",
                        config.method
                    ),
                ));
            }
        };
        let expires = Duration::from_secs(config.expires_s);
        if !(kiln_s3::MIN_EXPIRY..=kiln_s3::MAX_EXPIRY).contains(&expires) {
            return Err(invalid(
                "expires_s",
                format!(
                    "expires_s = {} is out of range: give 1 to 604800 seconds (7 days)",
                    config.expires_s
                ),
            ));
        }
        if config.key.is_empty() || config.key.len() > 1024 {
            return Err(invalid("key", "the object key must be 1 to 1024 bytes"));
        }
        let record = self.bucket_record(org_id, name).await?;
        let key = self.bucket_key(&record)?;
        let now = SystemTime::now();
        let url = kiln_s3::presign(
            self.s3().public_url(),
            kiln_s3::REGION,
            &key,
            &config.key,
            method,
            expires,
            now,
        )
        .map_err(|e| ApiError::internal("presigning", &e))?;
        Ok(PresignedUrl {
            url,
            method: config.method.to_ascii_uppercase(),
            expires_at: chrono::DateTime::<chrono::Utc>::from(now + expires),
        })
    }

    /// At start: every bucket row gets its directory and its key in the ring; directories
    /// without a row (an interrupted delete) are removed.
    pub async fn reconcile_buckets(&self) -> anyhow::Result<()> {
        let s3 = self.s3();
        let records = self.store().list_all_buckets().await?;
        for record in &records {
            if !s3.objects.bucket_exists(&record.name).await {
                s3.objects.create_bucket(&record.name).await?;
            }
            match self.bucket_key(record) {
                Ok(key) => s3.keys.insert(key),
                Err(e) => {
                    tracing::warn!(bucket = %record.name, error = %e.problem().detail, "bucket key cannot be opened; the bucket refuses every request")
                }
            }
        }
        for name in s3.objects.bucket_names().await? {
            if !records.iter().any(|r| r.name == name) {
                s3.objects.delete_bucket(&name).await?;
            }
        }
        Ok(())
    }

    /// Aborts multipart uploads that received nothing for [`UPLOAD_IDLE_LIMIT`] and removes
    /// the parts of multipart objects replaced over [`UPLOAD_SWEEP_EVERY`] ago, once now and
    /// then every [`UPLOAD_SWEEP_EVERY`], until `shutdown`.
    pub async fn sweep_idle_uploads(self, shutdown: CancellationToken) {
        loop {
            let objects = &self.s3().objects;
            match objects.abort_idle_uploads(UPLOAD_IDLE_LIMIT).await {
                Ok(0) => {}
                Ok(aborted) => tracing::info!(aborted, "aborted idle multipart uploads"),
                Err(e) => tracing::warn!(error = %e, "sweeping idle multipart uploads failed"),
            }
            if let Err(e) = objects.remove_retired_parts(UPLOAD_SWEEP_EVERY).await {
                tracing::warn!(error = %e, "removing the parts of replaced objects failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(UPLOAD_SWEEP_EVERY) => {}
            }
        }
    }

    /// Opens S3 on the gateway of every org that has buckets, so machines adopted after a
    /// restart reach it again.
    pub async fn open_bucket_gateways(&self) {
        let Ok(records) = self.store().list_all_buckets().await else {
            return;
        };
        let mut orgs: Vec<&str> = records.iter().map(|r| r.org_id.as_str()).collect();
        orgs.dedup();
        for org_id in orgs {
            if let Err(e) = self.bucket_gateway(org_id).await {
                tracing::warn!(org = %org_id, error = %e, "cannot open S3 on the org's gateway");
            }
        }
    }

    /// The S3 endpoint the org's machines use: the node's S3 port on the org's gateway,
    /// bound (once) and let through the org's firewall.
    async fn bucket_gateway(&self, org_id: &str) -> Result<String, String> {
        let s3 = self.s3();
        let mut gateways = s3.gateways.lock().await;
        if let Some(gateway) = gateways.get(org_id) {
            return Ok(format!("http://{gateway}:{}", s3.port));
        }
        let network = self
            .driver()
            .org_network(org_id)
            .await
            .map_err(|e| format!("the org's network: {e}"))?;
        if !s3.listens_everywhere {
            let addr = SocketAddr::from((network.gateway, s3.port));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("binding S3 on the org's gateway {addr}: {e}"))?;
            let endpoint = s3.endpoint.clone();
            let shutdown = s3.shutdown.clone();
            tokio::spawn(async move { endpoint.serve(listener, shutdown).await });
        }
        kiln_runtime::net::allow_org_service(&network, s3.port)
            .await
            .map_err(|e| format!("opening the org's firewall to S3: {e}"))?;
        gateways.insert(org_id.to_owned(), network.gateway);
        Ok(format!("http://{}:{}", network.gateway, s3.port))
    }

    /// Variables that hand the app's buckets to its machines. The oldest bucket fills the
    /// conventional `S3_BUCKET`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (what AWS SDKs
    /// read by themselves); every bucket also gets `S3_BUCKET_<NAME>` variables with its
    /// own keys, `<NAME>` being the bucket name in upper case with `-` as `_`.
    pub(crate) async fn bucket_env(
        &self,
        org_id: &str,
        app_id: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        let records = self
            .store()
            .list_buckets(app_id)
            .await
            .map_err(|e| format!("reading the app's buckets: {e}"))?;
        let mut env = BTreeMap::new();
        let Some(first) = records.first() else {
            return Ok(env);
        };
        let endpoint = self.bucket_gateway(org_id).await?;
        env.insert("S3_ENDPOINT".into(), endpoint.clone());
        env.insert("AWS_ENDPOINT_URL_S3".into(), endpoint);
        env.insert("AWS_REGION".into(), kiln_s3::REGION.into());
        for (i, record) in records.iter().enumerate() {
            let key = self
                .bucket_key(record)
                .map_err(|e| format!("bucket `{}`: {}", record.name, e.problem().detail))?;
            let suffix = record.name.to_ascii_uppercase().replace('-', "_");
            env.insert(format!("S3_BUCKET_{suffix}"), record.name.clone());
            env.insert(
                format!("S3_BUCKET_{suffix}_ACCESS_KEY_ID"),
                key.access_key_id.clone(),
            );
            env.insert(
                format!("S3_BUCKET_{suffix}_SECRET_ACCESS_KEY"),
                key.secret_access_key.clone(),
            );
            if i == 0 {
                env.insert("S3_BUCKET".into(), first.name.clone());
                env.insert("AWS_ACCESS_KEY_ID".into(), key.access_key_id);
                env.insert("AWS_SECRET_ACCESS_KEY".into(), key.secret_access_key);
            }
        }
        Ok(env)
    }

    async fn bucket_record(&self, org_id: &str, name: &str) -> ApiResult<BucketRecord> {
        self.store()
            .get_bucket(org_id, name)
            .await
            .map_err(not_found_as("bucket", name))
    }

    fn bucket_key(&self, record: &BucketRecord) -> ApiResult<BucketKey> {
        let secret = self
            .sealer()
            .open(&record.secret_sealed)
            .map_err(|e| ApiError::internal("opening a bucket secret", &e))?;
        Ok(BucketKey {
            bucket: record.name.clone(),
            access_key_id: record.access_key_id.clone(),
            secret_access_key: secret,
        })
    }

    fn bucket_view(&self, record: &BucketRecord) -> Bucket {
        Bucket {
            name: record.name.clone(),
            app: record.app_id.clone(),
            endpoint: self.s3().public_url().to_owned(),
            region: kiln_s3::REGION.into(),
            access_key_id: record.access_key_id.clone(),
            secret_access_key: None,
            created_at: record.created_at,
        }
    }
}
