//! Previews: the stable URL of an app's sandbox port, handed out only once that port
//! answers through the edge itself.

use std::time::Duration;

use kiln_api::apps::Preview;

use super::Service;
use crate::error::{ApiError, ApiResult};
use crate::routing::primary_sandboxes;

/// Wait used when the caller gives none.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Longest wait honoured.
const MAX_WAIT: Duration = Duration::from_secs(300);

impl Service {
    /// `POST /v1/apps/{app}/preview`.
    pub async fn preview(
        &self,
        org_id: &str,
        app: &str,
        port: u16,
        wait: Option<u64>,
    ) -> ApiResult<Preview> {
        if port == 0 {
            return Err(ApiError::invalid_field(
                "port",
                "give the port the dev server listens on (1–65535)",
            ));
        }
        let app = self.app_record(org_id, app).await?;
        let org = self.store().get_org(org_id).await?;
        let sandboxes = self
            .store()
            .list_sandboxes(org_id, Some(&app.id), None, kiln_store::MAX_PAGE)
            .await?;
        let Some(sandbox) = primary_sandboxes(sandboxes).remove(&app.id) else {
            return Err(ApiError::conflict(format!(
                "app `{}` has no sandbox: create one with `POST /v1/apps/{}/sandboxes`, start the dev server, then ask again",
                app.slug, app.slug
            )));
        };
        self.store()
            .set_app_preview_port(org_id, &app.id, Some(port))
            .await?;
        self.refresh_routes()
            .await
            .map_err(|e| ApiError::internal("publishing the preview route", &e))?;
        self.notify_change();

        let host = format!("{}.sandbox.{}", app.slug, org.base_domain);
        let url = self.config().app_url(&host);
        let wait = wait.map_or(DEFAULT_WAIT, Duration::from_secs).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.answers_through_edge(&host).await {
                return Ok(Preview {
                    url,
                    status: "ready".into(),
                    port,
                    sandbox: sandbox.id,
                });
            }
            if let Some(machine) = self.machines().get(&sandbox.id)
                && let Ok(status) = machine.agent.port_check(port).await
                && status.answering
                && status.loopback_only
            {
                return Err(ApiError::unprocessable(format!(
                    "the dev server on port {port} listens only on 127.0.0.1 inside the sandbox, so the \
                     edge cannot reach it: bind it to 0.0.0.0 (e.g. `vite --host 0.0.0.0`, \
                     `next dev -H 0.0.0.0`, `python3 -m http.server --bind 0.0.0.0`)"
                ))
                .with_field("port"));
            }
            if tokio::time::Instant::now() >= deadline {
                let tail = self.log_tail_for_port(&sandbox.id, port).await;
                let mut err = ApiError::unavailable(format!(
                    "nothing answered on port {port} of sandbox `{}` within {} s: start the dev server \
                     (`POST /v1/sandboxes/{}/processes`) listening on 0.0.0.0:{port}, then ask again",
                    sandbox.id,
                    wait.as_secs(),
                    sandbox.id
                ));
                if let Some(tail) = tail {
                    err = err.with_log_tail(tail);
                }
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether a request for `host` through the edge got an answer from the app rather than
    /// one of the edge's own pages (starting 503, not running 502, timeout 504).
    async fn answers_through_edge(&self, host: &str) -> bool {
        matches!(kiln_edge::probe(self.edge_addr(), host, "/").await, Ok(status) if !matches!(status, 502..=504))
    }

    /// The tail of the log of the process serving `port` (or of the newest process).
    async fn log_tail_for_port(&self, sandbox_id: &str, port: u16) -> Option<String> {
        let machine = self.machines().get(sandbox_id)?;
        let processes = machine.agent.process_list().await.ok()?;
        let process = processes
            .iter()
            .find(|p| p.port == Some(port))
            .or_else(|| processes.last())?;
        super::log_tail(&machine.agent, &process.name).await
    }
}
