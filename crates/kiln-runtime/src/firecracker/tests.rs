//! The driver's API calls against a recording unix-socket HTTP server standing in for
//! Firecracker: every request's method, path, exact JSON body and order, and how refusals
//! surface.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
};

use super::{boot::check_boot_files, *};

/// One request as the fake Firecracker saw it.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Value,
}

/// A fake Firecracker API: records every request and answers `204 No Content`, or `400` with a
/// `fault_message` for the path given in `refuse`.
struct Recorder {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    fn start(dir: &Path, refuse: Option<(&'static str, &'static str)>) -> Recorder {
        let socket = dir.join("api.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake API socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    // Requests on one connection, until the client closes it.
                    while let Some(request) = read_request(&mut conn).await {
                        let answer = match refuse {
                            Some((path, message)) if request.path == path => format!(
                                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                                json!({"fault_message": message}).to_string().len(),
                                json!({"fault_message": message})
                            ),
                            _ => "HTTP/1.1 204 No Content\r\n\r\n".to_owned(),
                        };
                        log.lock().expect("log").push(request);
                        if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Recorder { socket, seen }
    }

    fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().expect("log").clone()
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body.
async fn read_request(conn: &mut BufReader<tokio::net::UnixStream>) -> Option<Recorded> {
    let mut line = String::new();
    conn.read_line(&mut line).await.ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut length = 0usize;
    let mut content_type = None;
    loop {
        let mut header = String::new();
        conn.read_line(&mut header).await.ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => content_type = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await.ok()?;
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).ok()?
    };
    Some(Recorded {
        method,
        path,
        content_type,
        body,
    })
}

fn plan() -> BootPlan {
    BootPlan {
        kernel: "/var/lib/kiln/guest/vmlinux".into(),
        initrd: Some("/var/lib/kiln/guest/initrd.img".into()),
        boot_args: "console=ttyS0 reboot=k panic=1 pci=off".into(),
        rootfs: "/var/lib/kiln/guest/rootfs.ext4".into(),
        workspace: "/var/lib/kiln/fc/sbx_1/workspace.ext4".into(),
        tap: "kf0123456789ab".into(),
        mac: "02:4b:0a:5c:00:02".into(),
        vcpus: 2,
        memory_mib: 512,
        vsock_cid: 3,
        vsock_uds: "/var/lib/kiln/fc/sbx_1/vsock.sock".into(),
        log: "/var/lib/kiln/fc/sbx_1/firecracker.log".into(),
        metrics: "/var/lib/kiln/fc/sbx_1/metrics.json".into(),
    }
}

#[tokio::test]
async fn a_boot_sends_every_call_in_order_with_exact_bodies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Recorder::start(dir.path(), None);
    let api = ApiClient::new(&fake.socket);
    for request in plan().requests() {
        api.send(&request)
            .await
            .expect("the fake accepts everything");
    }
    let want = [
        (
            "/logger",
            json!({"log_path": "/var/lib/kiln/fc/sbx_1/firecracker.log", "level": "Warning", "show_level": true}),
        ),
        (
            "/metrics",
            json!({"metrics_path": "/var/lib/kiln/fc/sbx_1/metrics.json"}),
        ),
        (
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 512}),
        ),
        (
            "/boot-source",
            json!({
                "kernel_image_path": "/var/lib/kiln/guest/vmlinux",
                "initrd_path": "/var/lib/kiln/guest/initrd.img",
                "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"
            }),
        ),
        (
            "/drives/rootfs",
            json!({
                "drive_id": "rootfs",
                "path_on_host": "/var/lib/kiln/guest/rootfs.ext4",
                "is_root_device": true,
                "is_read_only": true
            }),
        ),
        (
            "/drives/workspace",
            json!({
                "drive_id": "workspace",
                "path_on_host": "/var/lib/kiln/fc/sbx_1/workspace.ext4",
                "is_root_device": false,
                "is_read_only": false
            }),
        ),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "kf0123456789ab", "guest_mac": "02:4b:0a:5c:00:02"}),
        ),
        (
            "/vsock",
            json!({"guest_cid": 3, "uds_path": "/var/lib/kiln/fc/sbx_1/vsock.sock"}),
        ),
        ("/actions", json!({"action_type": "InstanceStart"})),
    ];
    let seen = fake.seen();
    assert_eq!(seen.len(), want.len(), "{seen:#?}");
    for (got, (path, body)) in seen.iter().zip(want) {
        assert_eq!(got.method, "PUT", "{path}");
        assert_eq!(got.path, path);
        assert_eq!(got.body, body, "{path}");
        assert_eq!(
            got.content_type.as_deref(),
            Some("application/json"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_boot_without_initrd_omits_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Recorder::start(dir.path(), None);
    let plan = BootPlan {
        initrd: None,
        ..plan()
    };
    let boot_source = plan
        .requests()
        .into_iter()
        .find(|r| r.path == "/boot-source")
        .expect("boot source call");
    ApiClient::new(&fake.socket)
        .send(&boot_source)
        .await
        .expect("accepted");
    let body = &fake.seen()[0].body;
    assert!(body.get("initrd_path").is_none(), "{body}");
    assert_eq!(body["kernel_image_path"], "/var/lib/kiln/guest/vmlinux");
}

#[tokio::test]
async fn a_refusal_carries_the_fault_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Recorder::start(
        dir.path(),
        Some((
            "/boot-source",
            "Invalid kernel path: No such file or directory (os error 2)",
        )),
    );
    let api = ApiClient::new(&fake.socket);
    let mut failure = None;
    for request in plan().requests() {
        if let Err(e) = api.send(&request).await {
            failure = Some(e);
            break;
        }
    }
    let err = failure.expect("the boot source is refused");
    assert!(
        matches!(&err, FirecrackerError::Api { status, .. } if status.starts_with("400")),
        "{err:?}"
    );
    let text = RuntimeError::from(err).to_string();
    assert_eq!(
        text,
        "Firecracker refused PUT /boot-source (400 Bad Request): Invalid kernel path: No such file or directory (os error 2)"
    );
    // Nothing after the refused call was sent.
    let paths: Vec<String> = fake.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/logger", "/metrics", "/machine-config", "/boot-source"]
    );
}

#[tokio::test]
async fn ctrl_alt_del_is_an_action() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Recorder::start(dir.path(), None);
    ApiClient::new(&fake.socket)
        .send(&action_request(ActionType::SendCtrlAltDel))
        .await
        .expect("accepted");
    let seen = fake.seen();
    assert_eq!(seen[0].path, "/actions");
    assert_eq!(seen[0].body, json!({"action_type": "SendCtrlAltDel"}));
}

#[tokio::test]
async fn a_missing_api_socket_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("gone.sock");
    let err = ApiClient::new(&socket)
        .send(&action_request(ActionType::InstanceStart))
        .await
        .expect_err("no socket");
    assert!(
        matches!(err, FirecrackerError::ApiConnect { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&*socket.to_string_lossy()),
        "{err}"
    );
}

#[test]
fn kvm_and_boot_file_errors_say_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = check_kvm(&dir.path().join("kvm")).expect_err("no such device");
    let text = err.to_string();
    assert!(
        text.contains("kvm") && text.contains("KILN_RUNTIME=qemu"),
        "{text}"
    );

    let kernel = dir.path().join("vmlinux");
    let rootfs = dir.path().join("rootfs.ext4");
    let workspace = dir.path().join("workspace.ext4");
    std::fs::write(&rootfs, b"").expect("write");
    std::fs::write(&workspace, b"").expect("write");
    let boot = GuestBoot {
        kernel: kernel.clone(),
        initrd: None,
        boot_args: String::new(),
        rootfs,
        workspace,
    };
    let text = check_boot_files(&boot).expect_err("no kernel").to_string();
    assert!(
        text.starts_with("the guest kernel ") && text.contains("kiln image build"),
        "{text}"
    );
    std::fs::write(&kernel, b"").expect("write");
    check_boot_files(&boot).expect("complete");
}

#[test]
fn environment_configures_binaries_and_jailer() {
    let guest: Arc<dyn GuestImage> = Arc::new(FixedGuestImage {
        kernel: "/k".into(),
        initrd: None,
        rootfs: "/r".into(),
        extra_boot_args: String::new(),
        workspace_mib: 64,
    });
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let plain = FirecrackerConfig::new("/var/lib/kiln/fc", guest.clone())
        .with_env(env(&[("KILN_FIRECRACKER_BIN", "/opt/fc/firecracker")]))
        .expect("valid");
    assert_eq!(
        plain.firecracker_bin.as_deref(),
        Some(Path::new("/opt/fc/firecracker"))
    );
    assert!(plain.jailer.is_none());
    assert!(!plain.enable_pci);
    let pci = FirecrackerConfig::new("/var/lib/kiln/fc", guest.clone())
        .with_env(env(&[("KILN_FIRECRACKER_PCI", "1")]))
        .expect("valid");
    assert!(pci.enable_pci);
    assert!(
        FirecrackerConfig::new("/var/lib/kiln/fc", guest.clone())
            .with_env(env(&[("KILN_FIRECRACKER_PCI", "yes please")]))
            .is_err()
    );

    let jailed = FirecrackerConfig::new("/var/lib/kiln/fc", guest.clone())
        .with_env(env(&[
            ("KILN_FIRECRACKER_JAILER", "/opt/fc/jailer"),
            ("KILN_FIRECRACKER_UID", "1234"),
        ]))
        .expect("valid");
    assert_eq!(
        jailed.jailer,
        Some(JailerConfig {
            bin: "/opt/fc/jailer".into(),
            uid: 1234,
            gid: 65534,
            chroot_base: DEFAULT_CHROOT_BASE.into(),
        })
    );

    let err = FirecrackerConfig::new("/var/lib/kiln/fc", guest)
        .with_env(env(&[
            ("KILN_FIRECRACKER_JAILER", "/opt/fc/jailer"),
            ("KILN_FIRECRACKER_GID", "staff"),
        ]))
        .expect_err("gid must be numeric");
    assert!(err.to_string().contains("KILN_FIRECRACKER_GID"), "{err}");
}
