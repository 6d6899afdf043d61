//! Firecracker's HTTP API over its unix socket: the request bodies the driver sends and a small
//! client that sends them.
//!
//! Field names and values follow Firecracker's published API specification
//! (`src/firecracker/swagger/firecracker.yaml`): every successful pre-boot `PUT` answers
//! `204 No Content`; a refusal answers 4xx/5xx with `{"fault_message": "..."}`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::error::FirecrackerError;

/// How long one API call may take; Firecracker answers pre-boot calls in microseconds, so
/// anything slower means the process is wedged.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// `PUT /machine-config` (swagger `MachineConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineConfiguration {
    /// Virtual CPUs: 1, or an even number up to 32.
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
}

/// `PUT /boot-source` (swagger `BootSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSource {
    /// The guest kernel (`vmlinux`, or `bzImage` on x86_64).
    pub kernel_image_path: PathBuf,
    /// The initramfs, if the kernel needs one to find its disks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// The kernel command line.
    pub boot_args: String,
}

/// `PUT /drives/{drive_id}` (swagger `Drive`, virtio-block form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    /// Must equal the `{drive_id}` of the path.
    pub drive_id: String,
    /// The backing file on the host.
    pub path_on_host: PathBuf,
    /// Whether the guest boots from this drive (`root=/dev/vda`).
    pub is_root_device: bool,
    /// Whether the guest may only read it.
    pub is_read_only: bool,
}

/// `PUT /network-interfaces/{iface_id}` (swagger `NetworkInterface`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInterface {
    /// Must equal the `{iface_id}` of the path.
    pub iface_id: String,
    /// The tap device on the host.
    pub host_dev_name: String,
    /// The guest's MAC address, `02:…` (locally administered).
    pub guest_mac: String,
}

/// `PUT /vsock` (swagger `Vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vsock {
    /// The guest's context id (at least 3).
    pub guest_cid: u32,
    /// The host unix socket Firecracker creates for host-initiated connections.
    pub uds_path: PathBuf,
}

/// `PUT /logger` (swagger `Logger`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logger {
    /// The file Firecracker appends its own log to.
    pub log_path: PathBuf,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off`.
    pub level: &'static str,
    /// Whether lines carry their level.
    pub show_level: bool,
}

/// `PUT /metrics` (swagger `Metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metrics {
    /// The file Firecracker flushes JSON metrics to.
    pub metrics_path: PathBuf,
}

/// `PUT /actions` (swagger `InstanceActionInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InstanceActionInfo {
    /// What to do.
    pub action_type: ActionType,
}

/// The `action_type` values the driver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActionType {
    /// Boot the configured machine.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's i8042 keyboard: a graceful shutdown request.
    SendCtrlAltDel,
}

/// One API call: a method, a path and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    /// The HTTP method (Firecracker's configuration calls are all `PUT`).
    pub method: http::Method,
    /// The path, e.g. `/drives/rootfs`.
    pub path: String,
    /// The JSON body.
    pub body: serde_json::Value,
}

impl ApiRequest {
    /// A `PUT` of `body` to `path`.
    pub fn put(path: impl Into<String>, body: &impl Serialize) -> Self {
        Self {
            method: http::Method::PUT,
            path: path.into(),
            // The bodies are plain structs of strings, numbers and booleans.
            body: serde_json::to_value(body).expect("API bodies serialise to JSON"),
        }
    }
}

/// A client for one Firecracker process's API socket. Every call uses a fresh connection, so a
/// call cancelled half-way cannot confuse the next one.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    /// A client for the API socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `request`; a non-2xx answer becomes [`FirecrackerError::Api`] carrying
    /// Firecracker's `fault_message`.
    pub async fn send(&self, request: &ApiRequest) -> Result<(), FirecrackerError> {
        tokio::time::timeout(API_TIMEOUT, self.send_inner(request))
            .await
            .map_err(|_| FirecrackerError::ApiTransport {
                method: request.method.to_string(),
                path: request.path.clone(),
                detail: format!("no answer within {API_TIMEOUT:?}"),
            })?
    }

    async fn send_inner(&self, request: &ApiRequest) -> Result<(), FirecrackerError> {
        let transport = |detail: String| FirecrackerError::ApiTransport {
            method: request.method.to_string(),
            path: request.path.clone(),
            detail,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| FirecrackerError::ApiConnect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let connection = tokio::spawn(connection);
        let body = serde_json::to_vec(&request.body).expect("JSON values serialise");
        let http_request = http::Request::builder()
            .method(request.method.clone())
            .uri(&request.path)
            .header(http::header::HOST, "localhost")
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(format!("invalid request: {e}")))?;
        let response = sender
            .send_request(http_request)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(format!("reading the answer: {e}")))?
            .to_bytes();
        connection.abort();
        if status.is_success() {
            return Ok(());
        }
        Err(FirecrackerError::Api {
            method: request.method.to_string(),
            path: request.path.clone(),
            status: status.to_string(),
            fault_message: fault_message(&bytes),
        })
    }
}

/// The `fault_message` of an error body, or the body itself when it is not the documented
/// `Error` object.
fn fault_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        fault_message: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.fault_message,
        Err(_) if body.is_empty() => "(empty answer)".to_owned(),
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_use_the_swagger_field_names() {
        let cases = [
            (
                ApiRequest::put(
                    "/machine-config",
                    &MachineConfiguration {
                        vcpu_count: 2,
                        mem_size_mib: 512,
                    },
                ),
                serde_json::json!({"vcpu_count": 2, "mem_size_mib": 512}),
            ),
            (
                ApiRequest::put(
                    "/boot-source",
                    &BootSource {
                        kernel_image_path: "/k".into(),
                        initrd_path: None,
                        boot_args: "console=ttyS0".into(),
                    },
                ),
                serde_json::json!({"kernel_image_path": "/k", "boot_args": "console=ttyS0"}),
            ),
            (
                ApiRequest::put(
                    "/actions",
                    &InstanceActionInfo {
                        action_type: ActionType::SendCtrlAltDel,
                    },
                ),
                serde_json::json!({"action_type": "SendCtrlAltDel"}),
            ),
        ];
        for (request, want) in cases {
            assert_eq!(request.method, http::Method::PUT);
            assert_eq!(request.body, want, "{}", request.path);
        }
    }

    #[test]
    fn fault_messages_are_extracted() {
        assert_eq!(
            fault_message(br#"{"fault_message":"Invalid kernel path"}"#),
            "Invalid kernel path"
        );
        assert_eq!(fault_message(b"not json\n"), "not json");
        assert_eq!(fault_message(b""), "(empty answer)");
    }
}
