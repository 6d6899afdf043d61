//! The typed client of the API: what the CLI and the tests use. It has no back door:
//! everything goes through the same HTTP endpoints as any other caller.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apps::{App, AppConfig, Preview, PreviewConfig};
use crate::databases::{Database, DatabaseConfig, DatabaseDeleted, Rotated};
use crate::orgs::{Node, Org, OrgConfig, OrgUpdate, TokenConfig, TokenCreated};
use crate::problem::Problem;
use crate::sandboxes::{
    DirEntry, ExecConfig, ExecEvent, ExecResult, FileWritten, Process, ProcessConfig, Sandbox,
    SandboxConfig,
};
use crate::{Health, List};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a problem.
    #[error("{0}")]
    Problem(Box<Problem>),
    /// The server could not be reached or the answer was not understood.
    #[error("cannot reach the API at {url}: {source}")]
    Transport {
        /// Server base URL.
        url: String,
        /// Underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered something that is neither the expected body nor a problem.
    #[error("unexpected answer {status} from the API: {body}")]
    Unexpected {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
}

/// A client of one Kiln API server, acting with one token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:7070`).
    pub fn new(base: impl Into<String>, token: Option<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::builder()
                .build()
                .expect("a default reqwest client always builds"),
        }
    }

    /// The server base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn send(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let resp = req.send().await.map_err(|source| self.transport(source))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|source| self.transport(source))?;
        match serde_json::from_slice::<Problem>(&body) {
            Ok(problem) => Err(ClientError::Problem(Box::new(problem))),
            Err(_) => Err(ClientError::Unexpected {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            }),
        }
    }

    fn transport(&self, source: reqwest::Error) -> ClientError {
        ClientError::Transport {
            url: self.base.clone(),
            source,
        }
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ClientError> {
        let resp = self.send(req).await?;
        resp.json().await.map_err(|source| self.transport(source))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(self.request(Method::GET, path)).await
    }

    pub(crate) async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    pub(crate) async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, path)).await?;
        Ok(())
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health").await
    }

    /// `POST /v1/orgs`.
    pub async fn create_org(&self, config: &OrgConfig) -> Result<Org, ClientError> {
        self.post("/v1/orgs", config).await
    }

    /// `GET /v1/orgs/{org}`.
    pub async fn org(&self, org: &str) -> Result<Org, ClientError> {
        self.get(&format!("/v1/orgs/{org}")).await
    }

    /// `PATCH /v1/orgs/{org}`.
    pub async fn update_org(&self, org: &str, update: &OrgUpdate) -> Result<Org, ClientError> {
        self.json(
            self.request(Method::PATCH, &format!("/v1/orgs/{org}"))
                .json(update),
        )
        .await
    }

    /// `POST /v1/orgs/{org}/tokens`.
    pub async fn create_token(&self, org: &str, name: &str) -> Result<TokenCreated, ClientError> {
        let body = TokenConfig {
            name: name.to_owned(),
        };
        self.post(&format!("/v1/orgs/{org}/tokens"), &body).await
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<List<Node>, ClientError> {
        self.get("/v1/nodes").await
    }

    /// `POST /v1/apps`.
    pub async fn create_app(&self, config: &AppConfig) -> Result<App, ClientError> {
        self.post("/v1/apps", config).await
    }

    /// `GET /v1/apps`.
    pub async fn apps(&self) -> Result<List<App>, ClientError> {
        self.get("/v1/apps").await
    }

    /// `GET /v1/apps/{app}` by id or slug.
    pub async fn app(&self, app: &str) -> Result<App, ClientError> {
        self.get(&format!("/v1/apps/{app}")).await
    }

    /// `DELETE /v1/apps/{app}`.
    pub async fn delete_app(&self, app: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/apps/{app}")).await
    }

    /// `POST /v1/apps/{app}/buckets`: the answer carries the secret key (shown this once).
    pub async fn create_bucket(
        &self,
        app: &str,
        config: &crate::buckets::BucketConfig,
    ) -> Result<crate::buckets::Bucket, ClientError> {
        self.post(&format!("/v1/apps/{app}/buckets"), config).await
    }

    /// `GET /v1/apps/{app}/buckets`.
    pub async fn buckets(&self, app: &str) -> Result<List<crate::buckets::Bucket>, ClientError> {
        self.get(&format!("/v1/apps/{app}/buckets")).await
    }

    /// `GET /v1/buckets/{bucket}`.
    pub async fn bucket(&self, bucket: &str) -> Result<crate::buckets::Bucket, ClientError> {
        self.get(&format!("/v1/buckets/{bucket}")).await
    }

    /// `DELETE /v1/buckets/{bucket}`: the bucket, its objects and its keys.
    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/buckets/{bucket}")).await
    }

    /// `POST /v1/buckets/{bucket}/presign`.
    pub async fn presign(
        &self,
        bucket: &str,
        config: &crate::buckets::PresignConfig,
    ) -> Result<crate::buckets::PresignedUrl, ClientError> {
        self.post(&format!("/v1/buckets/{bucket}/presign"), config)
            .await
    }

    /// `GET /v1/edge/routes?after=G&wait=S`: the route set once its generation passes `after`
    /// (or as it is when `wait_s` runs out).
    pub async fn edge_routes(
        &self,
        after: u64,
        wait_s: u64,
    ) -> Result<crate::edge::RouteSet, ClientError> {
        self.get(&format!("/v1/edge/routes?after={after}&wait={wait_s}"))
            .await
    }

    /// `POST /v1/apps/{app}/releases`.
    pub async fn publish(
        &self,
        app: &str,
        config: &crate::releases::ReleaseConfig,
    ) -> Result<crate::releases::Release, ClientError> {
        self.post(&format!("/v1/apps/{app}/releases"), config).await
    }

    /// `GET /v1/apps/{app}/releases`.
    pub async fn releases(&self, app: &str) -> Result<List<crate::releases::Release>, ClientError> {
        self.get(&format!("/v1/apps/{app}/releases")).await
    }

    /// `GET /v1/releases/{rel}/verify`.
    pub async fn verify_release(
        &self,
        rel: &str,
    ) -> Result<crate::releases::Verification, ClientError> {
        self.get(&format!("/v1/releases/{rel}/verify")).await
    }

    /// `POST /v1/apps/{app}/deployments`.
    pub async fn deploy(
        &self,
        app: &str,
        release: &str,
    ) -> Result<crate::releases::Deployment, ClientError> {
        let body = crate::releases::DeployConfig {
            release: release.to_owned(),
        };
        self.post(&format!("/v1/apps/{app}/deployments"), &body)
            .await
    }

    /// `GET /v1/apps/{app}/deployments`.
    pub async fn deployments(
        &self,
        app: &str,
    ) -> Result<List<crate::releases::Deployment>, ClientError> {
        self.get(&format!("/v1/apps/{app}/deployments")).await
    }

    /// `POST /v1/apps/{app}/rollback`.
    pub async fn rollback(
        &self,
        app: &str,
        release: Option<&str>,
    ) -> Result<crate::releases::Deployment, ClientError> {
        let body = crate::releases::RollbackConfig {
            release: release.map(str::to_owned),
        };
        self.post(&format!("/v1/apps/{app}/rollback"), &body).await
    }

    /// `POST /v1/artifacts/uploads`.
    pub async fn create_upload(
        &self,
        size: u64,
        digest: &str,
    ) -> Result<crate::releases::Upload, ClientError> {
        let body = crate::releases::UploadConfig {
            size,
            digest: digest.to_owned(),
        };
        self.post("/v1/artifacts/uploads", &body).await
    }

    /// `GET /v1/artifacts/uploads/{id}`: which parts arrived.
    pub async fn upload_status(&self, id: &str) -> Result<crate::releases::Upload, ClientError> {
        self.get(&format!("/v1/artifacts/uploads/{id}")).await
    }

    /// `PUT /v1/artifacts/uploads/{id}/parts/{n}`.
    pub async fn put_part(
        &self,
        id: &str,
        n: u32,
        bytes: Vec<u8>,
    ) -> Result<crate::releases::Upload, ClientError> {
        self.json(
            self.request(
                Method::PUT,
                &format!("/v1/artifacts/uploads/{id}/parts/{n}"),
            )
            .body(bytes),
        )
        .await
    }

    /// `POST /v1/artifacts/uploads/{id}/complete`.
    pub async fn complete_upload(
        &self,
        id: &str,
    ) -> Result<crate::releases::UploadCompleted, ClientError> {
        self.post(
            &format!("/v1/artifacts/uploads/{id}/complete"),
            &serde_json::json!({}),
        )
        .await
    }

    /// `PUT /v1/apps/{app}/env/{name}`.
    pub async fn set_env(
        &self,
        app: &str,
        name: &str,
        value: &str,
        secret: bool,
    ) -> Result<crate::releases::EnvVar, ClientError> {
        let body = crate::releases::EnvVarConfig {
            value: value.to_owned(),
            secret,
        };
        self.json(
            self.request(Method::PUT, &format!("/v1/apps/{app}/env/{name}"))
                .json(&body),
        )
        .await
    }

    /// `DELETE /v1/apps/{app}/env/{name}`.
    pub async fn unset_env(&self, app: &str, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/apps/{app}/env/{name}")).await
    }

    /// `GET /v1/apps/{app}/env`.
    pub async fn env(&self, app: &str) -> Result<List<crate::releases::EnvVar>, ClientError> {
        self.get(&format!("/v1/apps/{app}/env")).await
    }

    /// `POST /v1/apps/{app}/preview`: answers once `port` answers through the edge, waiting
    /// up to `wait_s`.
    pub async fn preview(&self, app: &str, port: u16, wait_s: u64) -> Result<Preview, ClientError> {
        self.post(
            &format!("/v1/apps/{app}/preview?wait={wait_s}"),
            &PreviewConfig { port },
        )
        .await
    }

    /// `POST /v1/apps/{app}/sandboxes`, waiting up to `wait_s` for it to run.
    pub async fn create_sandbox(
        &self,
        app: &str,
        config: &SandboxConfig,
        wait_s: u64,
    ) -> Result<Sandbox, ClientError> {
        self.post(&format!("/v1/apps/{app}/sandboxes?wait={wait_s}"), config)
            .await
    }

    /// `POST /v1/apps/{app}/databases`, waiting up to `wait_s` for a final status.
    pub async fn create_database(
        &self,
        app: &str,
        config: &DatabaseConfig,
        wait_s: u64,
    ) -> Result<Database, ClientError> {
        self.post(&format!("/v1/apps/{app}/databases?wait={wait_s}"), config)
            .await
    }

    /// `GET /v1/apps/{app}/databases`.
    pub async fn databases(&self, app: &str) -> Result<List<Database>, ClientError> {
        self.get(&format!("/v1/apps/{app}/databases")).await
    }

    /// `GET /v1/databases/{db}`, waiting up to `wait_s` for a final status.
    pub async fn database(&self, db: &str, wait_s: u64) -> Result<Database, ClientError> {
        self.get(&format!("/v1/databases/{db}?wait={wait_s}")).await
    }

    /// `DELETE /v1/databases/{db}`: answers which apps lose it.
    pub async fn delete_database(&self, db: &str) -> Result<DatabaseDeleted, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/v1/databases/{db}")))
            .await
    }

    /// `POST /v1/databases/{db}/credentials/rotate`.
    pub async fn rotate_database(&self, db: &str) -> Result<Rotated, ClientError> {
        self.post(
            &format!("/v1/databases/{db}/credentials/rotate"),
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /v1/apps/{app}/sandboxes`.
    pub async fn sandboxes(&self, app: &str) -> Result<List<Sandbox>, ClientError> {
        self.get(&format!("/v1/apps/{app}/sandboxes")).await
    }

    /// `GET /v1/sandboxes/{sbx}`, waiting up to `wait_s` for a final status.
    pub async fn sandbox(&self, sbx: &str, wait_s: u64) -> Result<Sandbox, ClientError> {
        self.get(&format!("/v1/sandboxes/{sbx}?wait={wait_s}"))
            .await
    }

    /// `DELETE /v1/sandboxes/{sbx}`.
    pub async fn delete_sandbox(&self, sbx: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/sandboxes/{sbx}")).await
    }

    /// `POST /v1/sandboxes/{sbx}/exec` answering one JSON result.
    pub async fn exec(&self, sbx: &str, config: &ExecConfig) -> Result<ExecResult, ClientError> {
        self.post(&format!("/v1/sandboxes/{sbx}/exec"), config)
            .await
    }

    /// `POST /v1/sandboxes/{sbx}/exec` as an NDJSON stream of events.
    pub async fn exec_stream(
        &self,
        sbx: &str,
        config: &ExecConfig,
    ) -> Result<impl Stream<Item = Result<ExecEvent, ClientError>> + use<>, ClientError> {
        let req = self
            .request(Method::POST, &format!("/v1/sandboxes/{sbx}/exec"))
            .header(reqwest::header::ACCEPT, "application/x-ndjson")
            .json(config);
        let resp = self.send(req).await?;
        let base = self.base.clone();
        let lines =
            ndjson_lines(
                resp.bytes_stream()
                    .map_err(move |source| ClientError::Transport {
                        url: base.clone(),
                        source,
                    }),
            );
        Ok(lines.map(|line| {
            let line = line?;
            serde_json::from_slice(&line).map_err(|e| ClientError::Unexpected {
                status: 200,
                body: format!("{e}: {}", String::from_utf8_lossy(&line)),
            })
        }))
    }

    /// `PUT /v1/sandboxes/{sbx}/files/{path}`.
    pub async fn put_file(
        &self,
        sbx: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<FileWritten, ClientError> {
        self.json(
            self.request(Method::PUT, &format!("/v1/sandboxes/{sbx}/files/{path}"))
                .body(body),
        )
        .await
    }

    /// `GET /v1/sandboxes/{sbx}/files/{path}`: the whole file.
    pub async fn get_file(&self, sbx: &str, path: &str) -> Result<Bytes, ClientError> {
        let resp = self
            .send(self.request(Method::GET, &format!("/v1/sandboxes/{sbx}/files/{path}")))
            .await?;
        resp.bytes().await.map_err(|source| self.transport(source))
    }

    /// `GET /v1/sandboxes/{sbx}/files/{dir}/?list`.
    pub async fn list_files(&self, sbx: &str, dir: &str) -> Result<List<DirEntry>, ClientError> {
        let dir = dir.trim_matches('/');
        let path = if dir.is_empty() {
            format!("/v1/sandboxes/{sbx}/files/?list")
        } else {
            format!("/v1/sandboxes/{sbx}/files/{dir}/?list")
        };
        self.get(&path).await
    }

    /// `DELETE /v1/sandboxes/{sbx}/files/{path}`.
    pub async fn delete_file(&self, sbx: &str, path: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/sandboxes/{sbx}/files/{path}"))
            .await
    }

    /// `POST /v1/sandboxes/{sbx}/processes`.
    pub async fn start_process(
        &self,
        sbx: &str,
        config: &ProcessConfig,
    ) -> Result<Process, ClientError> {
        self.post(&format!("/v1/sandboxes/{sbx}/processes"), config)
            .await
    }

    /// `GET /v1/sandboxes/{sbx}/processes`.
    pub async fn processes(&self, sbx: &str) -> Result<List<Process>, ClientError> {
        self.get(&format!("/v1/sandboxes/{sbx}/processes")).await
    }

    /// `GET /v1/sandboxes/{sbx}/processes/{name}/logs`: the log so far.
    pub async fn process_logs(&self, sbx: &str, name: &str) -> Result<String, ClientError> {
        let resp = self
            .send(self.request(
                Method::GET,
                &format!("/v1/sandboxes/{sbx}/processes/{name}/logs"),
            ))
            .await?;
        resp.text().await.map_err(|source| self.transport(source))
    }

    /// `GET /v1/sandboxes/{sbx}/processes/{name}/logs?follow=1`: the log as it grows.
    pub async fn follow_process_logs(
        &self,
        sbx: &str,
        name: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, ClientError>> + use<>, ClientError> {
        let resp = self
            .send(self.request(
                Method::GET,
                &format!("/v1/sandboxes/{sbx}/processes/{name}/logs?follow=1"),
            ))
            .await?;
        let base = self.base.clone();
        Ok(resp
            .bytes_stream()
            .map_err(move |source| ClientError::Transport {
                url: base.clone(),
                source,
            }))
    }

    /// Any request with raw bytes in and out, for callers that need the HTTP details.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &BTreeMap<String, String>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut req = self.request(method, path);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|source| self.transport(source))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|source| self.transport(source))?;
        Ok((status, body))
    }
}

/// Splits a byte stream into newline-terminated lines (without the newline).
fn ndjson_lines<S>(stream: S) -> impl Stream<Item = Result<Vec<u8>, ClientError>>
where
    S: Stream<Item = Result<Bytes, ClientError>> + Unpin,
{
    futures::stream::unfold(
        (stream, Vec::<u8>::new(), false),
        |(mut stream, mut buf, mut done)| async move {
            loop {
                if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).take(pos).collect();
                    if line.is_empty() {
                        continue;
                    }
                    return Some((Ok(line), (stream, buf, done)));
                }
                if done {
                    if buf.is_empty() {
                        return None;
                    }
                    let line = std::mem::take(&mut buf);
                    return Some((Ok(line), (stream, buf, done)));
                }
                match stream.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (stream, buf, true))),
                    None => done = true,
                }
            }
        },
    )
}
