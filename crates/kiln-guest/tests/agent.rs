//! End-to-end tests: the real `kiln-guest` binary, driven through the real client.
//!
//! Each test starts its own agent as an ordinary process (not PID 1) listening on a unix socket
//! in a temporary directory. When the tests run as root the agent switches commands to uid/gid
//! 1000 as in a machine, so the workspace is handed to that user the way a driver would.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kiln_guest::{
    AgentClient, AgentError, Endpoint, EntryKind, ExecEvent, ExecRequest, ProcessSpec,
    ProcessStatus,
};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The uid/gid the agent runs commands as when it is root (its default `--run-as`).
const APP_ID: u32 = 1000;

/// How long anything in these tests may take before it counts as hung.
const PATIENCE: Duration = Duration::from_secs(15);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts `program` with a clean environment, logging to `log`; the one spawn function of
/// this test crate.
#[allow(clippy::disallowed_methods)]
fn spawn(program: &str, args: &[String], cwd: &Path, log: std::fs::File) -> Child {
    let mut command = std::process::Command::new(program);
    command
        .env_clear()
        .env("RUST_LOG", "kiln_guest=debug")
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    command.spawn().expect("start the agent")
}

struct TestAgent {
    dir: tempfile::TempDir,
    ws: PathBuf,
    child: Option<Child>,
    client: AgentClient,
}

impl TestAgent {
    async fn start() -> TestAgent {
        TestAgent::start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> TestAgent {
        TestAgent::launch(&[], extra, false).await
    }

    /// Starts `wrapper... kiln-guest --listen ... extra...`. With `inherit`, the test binds the
    /// socket itself and hands it over as `--listen fd:N`, as the `process` driver does.
    async fn launch(wrapper: &[&str], extra: &[&str], inherit: bool) -> TestAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        // The command user must be able to reach the workspace inside the temporary directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).expect("mkdir ws");
        if is_root() {
            std::os::unix::fs::chown(&ws, Some(APP_ID), Some(APP_ID)).expect("chown ws");
        }
        let socket = dir.path().join("agent.sock");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        let agent_binary = env!("CARGO_BIN_EXE_kiln-guest");
        let (program, mut args) = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut args: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
                args.push(agent_binary.to_owned());
                (*program, args)
            }
            None => (agent_binary, Vec::new()),
        };
        let inherited = inherit.then(|| {
            std::os::unix::net::UnixListener::bind(&socket).expect("bind the host-side socket")
        });
        let listen = match &inherited {
            Some(listener) => format!("fd:{}", listener.as_raw_fd()),
            None => format!("unix:{}", socket.display()),
        };
        args.extend([
            "--listen".to_owned(),
            listen,
            "--workspace".to_owned(),
            ws.display().to_string(),
            "--machine-id".to_owned(),
            "m-test".to_owned(),
            "--env".to_owned(),
            "KILN_BASE=from-flag".to_owned(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = match &inherited {
            Some(listener) => {
                // Inheritable only for the moment of this spawn (other tests spawn too).
                fcntl(listener, FcntlArg::F_SETFD(FdFlag::empty())).expect("clear CLOEXEC");
                let child = spawn(program, &args, dir.path(), log);
                fcntl(listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("set CLOEXEC");
                child
            }
            None => spawn(program, &args, dir.path(), log),
        };
        // The agent holds its own copy of an inherited socket now.
        drop(inherited);
        let client = AgentClient::new(Endpoint::Unix(socket));
        let mut agent = TestAgent {
            dir,
            ws,
            child: Some(child),
            client,
        };
        agent.wait_until_healthy().await;
        agent
    }

    async fn wait_until_healthy(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.client.health().await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                panic!(
                    "the agent exited with {status} before serving:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent never became healthy:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Waits for the agent process to exit on its own.
    async fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn exec(&self, cmd: &[&str]) -> kiln_guest::ExecOutput {
        self.client
            .exec_collect(ExecRequest::new(cmd.iter().copied()))
            .await
            .expect("exec")
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first, so that the agent stops its supervised processes.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + PATIENCE;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let log = self.log();
            assert!(
                !log.contains(" ERROR "),
                "the agent logged an error:\n{log}"
            );
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits until `check` returns `Some`, polling.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie has exited already; it only waits for its parent.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_identity_and_protocol() {
    let agent = TestAgent::start().await;
    let first = agent.client.health().await.expect("health");
    assert_eq!(first.machine_id.as_deref(), Some("m-test"));
    assert_eq!(first.protocol, kiln_guest::protocol::PROTOCOL_VERSION);
    assert_eq!(first.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(first.boot_id.len(), 32);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = agent.client.health().await.expect("health");
    assert_eq!(second.boot_id, first.boot_id);
    assert!(second.uptime_ms > first.uptime_ms);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_streams_output_in_order_and_reports_exit_codes() {
    let agent = TestAgent::start().await;
    let script = "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; exit 3";
    let mut stream = agent
        .client
        .exec(ExecRequest::new(["sh", "-c", script]))
        .await
        .expect("exec");
    assert!(stream.pid().is_some());
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.expect("event"));
    }
    let shown: Vec<String> = events
        .iter()
        .map(|event| match event {
            ExecEvent::Stdout(b) => format!("out:{}", text(b)),
            ExecEvent::Stderr(b) => format!("err:{}", text(b)),
            ExecEvent::Exit(exit) => format!("exit:{:?}", exit.code),
        })
        .collect();
    assert_eq!(
        shown,
        ["out:out1\n", "err:err1\n", "out:out2\n", "exit:Some(3)"]
    );

    let ok = agent.exec(&["true"]).await;
    assert!(ok.exit.success() && !ok.exit.timed_out && !ok.exit.not_found);

    // Output that is JSON arrives byte for byte.
    let json = agent
        .exec(&[
            "python3",
            "-c",
            "import json; print(json.dumps({'ok': True, 'n': [1, 2]}))",
        ])
        .await;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(value, serde_json::json!({"ok": true, "n": [1, 2]}));

    // Killed by a signal: no code, the signal.
    let killed = agent.exec(&["sh", "-c", "kill -TERM $$"]).await;
    assert_eq!((killed.exit.code, killed.exit.signal), (None, Some(15)));
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_environment_cwd_stdin_and_user() {
    let agent = TestAgent::start().await;
    let request = ExecRequest {
        env: BTreeMap::from([("GREETING".to_owned(), "hi there".to_owned())]),
        ..ExecRequest::new([
            "sh",
            "-c",
            "echo \"$GREETING|$KILN_BASE|$HOME|$LANG|$PATH\"; env | wc -l",
        ])
    };
    let out = agent.client.exec_collect(request).await.expect("exec");
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(
            "hi there|from-flag|/home/app|C.UTF-8|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        )
    );
    // Nothing of the agent's own environment (RUST_LOG here) leaks into commands: the four
    // base variables, --env, the request's, and what sh itself sets (PWD, SHLVL, _).
    let count: usize = lines.next().expect("count").trim().parse().expect("number");
    assert!(
        count <= 9,
        "unexpected environment size {count}:\n{}",
        text(&agent.exec(&["env"]).await.stdout)
    );
    assert!(!text(&agent.exec(&["env"]).await.stdout).contains("RUST_LOG"));

    std::fs::create_dir_all(agent.ws.join("sub/dir")).expect("mkdir");
    let out = agent
        .client
        .exec_collect(ExecRequest {
            cwd: Some("sub/./dir".into()),
            ..ExecRequest::new(["pwd"])
        })
        .await
        .expect("exec in sub");
    let ws = agent.ws.canonicalize().expect("canonical ws");
    assert_eq!(
        text(&out.stdout).trim_end(),
        ws.join("sub/dir").display().to_string()
    );

    let missing = agent
        .client
        .exec(ExecRequest {
            cwd: Some("nope".into()),
            ..ExecRequest::new(["pwd"])
        })
        .await
        .expect_err("missing cwd");
    assert!(
        matches!(missing, AgentError::NotFound(ref m) if m.contains("nope")),
        "{missing:?}"
    );
    let escaping = agent
        .client
        .exec(ExecRequest {
            cwd: Some("../".into()),
            ..ExecRequest::new(["pwd"])
        })
        .await
        .expect_err("escaping cwd");
    assert!(
        matches!(escaping, AgentError::InvalidPath(_)),
        "{escaping:?}"
    );
    let empty = agent
        .client
        .exec(ExecRequest::default())
        .await
        .expect_err("empty cmd");
    assert!(matches!(empty, AgentError::InvalidRequest(_)), "{empty:?}");

    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = agent
        .client
        .exec_collect(ExecRequest {
            stdin: Some(big.clone()),
            ..ExecRequest::new(["cat"])
        })
        .await
        .expect("cat");
    assert_eq!(out.stdout, big);

    // Commands start with no blocked signal and the default SIGPIPE action, whatever the
    // agent (a Rust program, which ignores SIGPIPE) or init had.
    let status = text(&agent.exec(&["cat", "/proc/self/status"]).await.stdout);
    let mask = |field: &str| {
        let line = status.lines().find(|l| l.starts_with(field)).expect(field);
        u64::from_str_radix(line.split_whitespace().nth(1).expect("mask"), 16).expect("hex")
    };
    assert_eq!(mask("SigBlk:"), 0, "{status}");
    assert_eq!(
        mask("SigIgn:") & (1 << (13 - 1)),
        0,
        "SIGPIPE is ignored:\n{status}"
    );

    if is_root() {
        let out = agent.exec(&["sh", "-c", "id -u; id -g; id -G"]).await;
        assert_eq!(
            text(&out.stdout),
            "1000\n1000\n1000\n",
            "commands drop to the app user and its group only"
        );
    } else {
        eprintln!("skipped the uid/gid check: the tests do not run as root");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_timeout_kills_the_whole_process_tree() {
    let agent = TestAgent::start().await;
    let started = Instant::now();
    let out = agent
        .client
        .exec_collect(ExecRequest {
            timeout_ms: Some(500),
            ..ExecRequest::new(["sh", "-c", "sleep 100 & echo $!; sleep 100; echo never"])
        })
        .await
        .expect("exec");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(out.exit.timed_out);
    assert_eq!(out.exit.signal, Some(9));
    assert!(!text(&out.stdout).contains("never"));
    let background: u32 = text(&out.stdout).trim().parse().expect("background pid");
    eventually("the background sleep to die", || async {
        (!process_alive(background)).then_some(())
    })
    .await;

    // Dropping the stream is a disconnect: the agent kills the command.
    let mut stream = agent
        .client
        .exec(ExecRequest::new(["sh", "-c", "echo $$; exec sleep 100"]))
        .await
        .expect("exec");
    let pid = match stream.next().await {
        Some(Ok(ExecEvent::Stdout(b))) => text(&b).trim().parse::<u32>().expect("pid"),
        other => panic!("expected the pid, got {other:?}"),
    };
    drop(stream);
    eventually("the abandoned command to die", || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_program_is_a_result_not_an_error() {
    let agent = TestAgent::start().await;
    let out = agent.exec(&["kiln-no-such-program", "--flag"]).await;
    assert!(out.exit.not_found);
    assert_eq!(out.exit.code, Some(127));
    assert_eq!(
        text(&out.stderr),
        "exec: kiln-no-such-program: command not found\n"
    );
    assert!(out.stdout.is_empty());

    let out = agent.exec(&["./not-here"]).await;
    assert_eq!((out.exit.code, out.exit.not_found), (Some(127), true));
    assert_eq!(
        text(&out.stderr),
        "exec: ./not-here: no such file or directory\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn files_round_trip_list_stat_and_delete() {
    let agent = TestAgent::start().await;
    let mut data = vec![0u8; 5 * 1024 * 1024 + 17];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    // Uneven chunks, some bigger than a frame, to exercise splitting.
    let sizes = [1, 4096, 1_500_000, 65_536, 3_000_000];
    let mut chunks = Vec::new();
    let mut rest = Bytes::from(data.clone());
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        chunks.push(Ok(rest.split_to((*size).min(rest.len()))));
    }
    let written = agent
        .client
        .put_file(
            "deep/er/blob.bin",
            Some(0o640),
            futures::stream::iter(chunks),
        )
        .await
        .expect("put");
    assert_eq!(written, data.len() as u64);

    let stream = agent
        .client
        .get_file("deep/er/blob.bin")
        .await
        .expect("get");
    assert_eq!(stream.size(), Some(data.len() as u64));
    let back = stream.collect_bytes().await.expect("read back");
    assert!(back == data, "downloaded bytes differ");

    let on_disk = std::fs::metadata(agent.ws.join("deep/er/blob.bin")).expect("on disk");
    assert_eq!(on_disk.mode() & 0o777, 0o640);
    if is_root() {
        assert_eq!((on_disk.uid(), on_disk.gid()), (APP_ID, APP_ID));
        let dir = std::fs::metadata(agent.ws.join("deep/er")).expect("dir");
        assert_eq!((dir.uid(), dir.gid()), (APP_ID, APP_ID));
    }

    agent
        .client
        .put_file(
            "deep/small.txt",
            None,
            futures::stream::iter([Ok(Bytes::from_static(b"hello"))]),
        )
        .await
        .expect("put small");
    let entries = agent.client.list_dir("deep").await.expect("list");
    let shown: Vec<(&str, EntryKind, u64)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind, e.size))
        .collect();
    assert_eq!(
        shown,
        [("er", EntryKind::Dir, 0), ("small.txt", EntryKind::File, 5)]
    );
    let root = agent.client.list_dir("").await.expect("list root");
    assert_eq!(root.len(), 1);

    let stat = agent.client.stat("deep/small.txt").await.expect("stat");
    assert_eq!(
        (stat.path.as_str(), stat.kind, stat.size, stat.mode),
        ("deep/small.txt", EntryKind::File, 5, 0o644)
    );
    assert!(stat.modified_ms > 1_600_000_000_000);

    // Errors surface before any byte is streamed.
    let err = agent
        .client
        .get_file("deep/nothing")
        .await
        .expect_err("missing");
    assert!(matches!(err, AgentError::NotFound(_)), "{err:?}");
    let err = agent.client.get_file("deep").await.expect_err("directory");
    assert!(matches!(err, AgentError::IsADirectory(_)), "{err:?}");
    let err = agent
        .client
        .list_dir("deep/small.txt")
        .await
        .expect_err("file");
    assert!(matches!(err, AgentError::NotADirectory(_)), "{err:?}");
    let err = agent
        .client
        .delete("deep", false)
        .await
        .expect_err("not empty");
    assert!(matches!(err, AgentError::Conflict(_)), "{err:?}");

    agent
        .client
        .delete("deep/small.txt", false)
        .await
        .expect("delete file");
    agent
        .client
        .delete("deep", true)
        .await
        .expect("delete tree");
    assert!(
        agent
            .client
            .list_dir("")
            .await
            .expect("list root")
            .is_empty()
    );
    let err = agent.client.stat("deep").await.expect_err("gone");
    assert!(matches!(err, AgentError::NotFound(_)), "{err:?}");
    let err = agent.client.delete("", true).await.expect_err("root");
    assert!(matches!(err, AgentError::InvalidPath(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_upload_leaves_nothing_behind() {
    let agent = TestAgent::start().await;
    agent
        .client
        .put_file(
            "keep.txt",
            None,
            futures::stream::iter([Ok(Bytes::from_static(b"old"))]),
        )
        .await
        .expect("put");
    let body = futures::stream::iter([
        Ok(Bytes::from(vec![b'x'; 200_000])),
        Err(std::io::Error::other("the source failed")),
    ]);
    let err = agent
        .client
        .put_file("keep.txt", None, body)
        .await
        .expect_err("body failed");
    assert!(matches!(err, AgentError::Body(_)), "{err:?}");
    // The agent notices the disconnect and removes its temporary file.
    eventually("the temporary file to go", || async {
        let names: Vec<_> = std::fs::read_dir(&agent.ws)
            .expect("read ws")
            .map(|e| e.expect("entry").file_name())
            .collect();
        (names == ["keep.txt"]).then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read(agent.ws.join("keep.txt")).expect("read"),
        b"old"
    );

    let err = agent
        .client
        .put_file(
            "x",
            Some(0o4755),
            futures::stream::iter([Ok(Bytes::from_static(b"x"))]),
        )
        .await
        .expect_err("setuid");
    assert!(matches!(err, AgentError::InvalidRequest(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn path_attacks_are_refused_and_nothing_is_written_outside() {
    let agent = TestAgent::start().await;
    // An escape hatch planted from inside the machine, and a secret beside the workspace.
    std::os::unix::fs::symlink("/etc", agent.ws.join("link")).expect("symlink");
    std::os::unix::fs::symlink("../outside", agent.ws.join("rel")).expect("symlink");
    let outside = agent.dir.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir outside");
    std::fs::write(outside.join("secret"), "s3cret").expect("secret");
    let marker = "kiln-guest-test-must-not-exist";

    let body = || futures::stream::iter([Ok(Bytes::from_static(b"pwned"))]);
    let writes = [
        "../x".to_owned(),
        "../outside/secret".to_owned(),
        "/etc/passwd".to_owned(),
        format!("/tmp/{marker}"),
        "link/passwd".to_owned(),
        format!("link/{marker}"),
        format!("link/{marker}/deeper"),
        "rel/secret".to_owned(),
        "a/../../x".to_owned(),
    ];
    for path in &writes {
        let err = agent
            .client
            .put_file(path, None, body())
            .await
            .expect_err(path);
        assert!(matches!(err, AgentError::InvalidPath(_)), "{path}: {err:?}");
    }
    for path in [
        "../outside/secret",
        "/etc/passwd",
        "link/passwd",
        "rel/secret",
    ] {
        let err = agent.client.get_file(path).await.expect_err(path);
        assert!(matches!(err, AgentError::InvalidPath(_)), "{path}: {err:?}");
        let err = agent.client.delete(path, true).await.expect_err(path);
        assert!(matches!(err, AgentError::InvalidPath(_)), "{path}: {err:?}");
        let err = agent.client.stat(path).await.expect_err(path);
        assert!(matches!(err, AgentError::InvalidPath(_)), "{path}: {err:?}");
    }
    for path in ["link", "rel", "..", "/"] {
        let err = agent.client.list_dir(path).await.expect_err(path);
        assert!(matches!(err, AgentError::InvalidPath(_)), "{path}: {err:?}");
        let err = agent
            .client
            .exec(ExecRequest {
                cwd: Some(path.to_owned()),
                ..ExecRequest::new(["pwd"])
            })
            .await
            .expect_err(path);
        assert!(matches!(err, AgentError::InvalidPath(_)), "{path}: {err:?}");
    }
    // The messages say which rule was broken.
    let absolute = agent.client.get_file("/etc/passwd").await.expect_err("abs");
    assert!(absolute.to_string().contains("absolute"), "{absolute}");
    let escape = agent.client.get_file("../x").await.expect_err("dotdot");
    assert!(escape.to_string().contains("escapes"), "{escape}");
    let link = agent
        .client
        .get_file("link/passwd")
        .await
        .expect_err("link");
    assert!(link.to_string().contains("symbolic link"), "{link}");

    // The link itself is inside and may be inspected or removed; its target is untouched.
    assert_eq!(
        agent.client.stat("link").await.expect("stat link").kind,
        EntryKind::Symlink
    );
    agent
        .client
        .delete("link", false)
        .await
        .expect("delete the link");
    assert!(Path::new("/etc/passwd").exists());
    assert!(!Path::new("/etc").join(marker).exists());
    assert!(!Path::new("/tmp").join(marker).exists());
    assert!(!agent.dir.path().join("x").exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).expect("secret"),
        "s3cret"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_process_is_restarted_with_backoff_and_keeps_its_logs() {
    let agent = TestAgent::start().await;
    let script = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; \
                  echo \"run $n\"; echo \"oops $n\" >&2; exit 3";
    let started = Instant::now();
    let info = agent
        .client
        .process_start(ProcessSpec {
            name: "crasher".into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            port: Some(3000),
            ..ProcessSpec::default()
        })
        .await
        .expect("start");
    assert_eq!(info.name, "crasher");
    assert_eq!(info.port, Some(3000));

    let info = eventually("two restarts", || async {
        let list = agent.client.process_list().await.expect("list");
        list.into_iter().find(|p| p.restarts >= 2)
    })
    .await;
    // 250 ms, then 500 ms, of back-off before the third run.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(info.last_exit_code, Some(3));
    assert!(matches!(
        info.status,
        ProcessStatus::Backoff | ProcessStatus::Running
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarts = agent.client.process_list().await.expect("list")[0].restarts;
    assert!(
        restarts <= 4,
        "restarted {restarts} times in ~1.5 s: no back-off"
    );

    let logs = text(
        &agent
            .client
            .process_logs("crasher", false)
            .await
            .expect("logs")
            .collect_bytes()
            .await
            .expect("read"),
    );
    for line in [
        "run 1\n",
        "oops 1\n",
        "run 2\n",
        "oops 2\n",
        "[supervisor] exited with code 3\n",
    ] {
        assert!(logs.contains(line), "missing {line:?} in:\n{logs}");
    }
    // One pipe for both streams keeps their order.
    assert!(logs.find("run 1").expect("run 1") < logs.find("oops 1").expect("oops 1"));

    agent.client.process_stop("crasher").await.expect("stop");
    assert!(agent.client.process_list().await.expect("list").is_empty());
    let err = agent
        .client
        .process_logs("crasher", false)
        .await
        .expect_err("forgotten");
    assert!(matches!(err, AgentError::NotFound(_)), "{err:?}");
    let err = agent
        .client
        .process_stop("crasher")
        .await
        .expect_err("already stopped");
    assert!(matches!(err, AgentError::NotFound(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn following_logs_streams_new_output() {
    let agent = TestAgent::start().await;
    agent
        .client
        .process_start(ProcessSpec {
            name: "ticker".into(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done".into(),
            ],
            ..ProcessSpec::default()
        })
        .await
        .expect("start");
    let mut follow = agent
        .client
        .process_logs("ticker", true)
        .await
        .expect("follow");
    let mut seen = String::new();
    let deadline = Instant::now() + PATIENCE;
    while !seen.contains("tick 8\n") {
        assert!(
            Instant::now() < deadline,
            "no new output followed: {seen:?}"
        );
        let chunk = tokio::time::timeout(PATIENCE, follow.next())
            .await
            .expect("a chunk in time")
            .expect("stream open")
            .expect("chunk");
        seen.push_str(&text(&chunk));
    }
    assert!(seen.starts_with("tick 1\n"), "{seen:?}");

    // Stopping the process ends the follow stream cleanly.
    let stopper = agent.client.clone();
    let stop = tokio::spawn(async move { stopper.process_stop("ticker").await });
    let rest = tokio::time::timeout(PATIENCE, follow.collect_bytes())
        .await
        .expect("the stream ends")
        .expect("cleanly");
    assert!(
        text(&rest).ends_with("[supervisor] stopped\n"),
        "{:?}",
        text(&rest)
    );
    stop.await.expect("join").expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_a_process_stops_the_old_one() {
    let agent = TestAgent::start().await;
    let spec = |cmd: &str| ProcessSpec {
        name: "web".into(),
        cmd: vec!["sh".into(), "-c".into(), cmd.into()],
        ..ProcessSpec::default()
    };
    // The old one is a shell with a child: its whole group is stopped.
    let first = agent
        .client
        .process_start(spec("sleep 1000"))
        .await
        .expect("start");
    let old_pid = first.pid_in_machine.expect("running");
    assert_eq!(first.status, ProcessStatus::Running);
    let second = agent
        .client
        .process_start(spec("exec sleep 1001"))
        .await
        .expect("replace");
    assert_ne!(second.pid_in_machine, Some(old_pid));
    assert!(!process_alive(old_pid));
    let list = agent.client.process_list().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].cmd[2], "exec sleep 1001");

    let err = agent
        .client
        .process_start(ProcessSpec {
            name: "../evil".into(),
            ..spec("true")
        })
        .await
        .expect_err("bad name");
    assert!(matches!(err, AgentError::InvalidRequest(_)), "{err:?}");
    let err = agent
        .client
        .process_start(ProcessSpec {
            name: "other".into(),
            cwd: Some("missing-dir".into()),
            ..spec("true")
        })
        .await
        .expect_err("bad cwd");
    assert!(matches!(err, AgentError::NotFound(_)), "{err:?}");

    // A program that does not exist is retried, and says why.
    let info = agent
        .client
        .process_start(ProcessSpec {
            name: "ghost".into(),
            cmd: vec!["kiln-no-such-server".into()],
            ..ProcessSpec::default()
        })
        .await
        .expect("start ghost");
    assert_eq!(info.status, ProcessStatus::Backoff);
    assert_eq!(
        info.last_error.as_deref(),
        Some("exec: kiln-no-such-server: command not found")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn port_check_sees_a_dev_server_bound_to_loopback() {
    let agent = TestAgent::start().await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").port()
    };
    let before = agent.client.port_check(port).await.expect("check");
    assert!(!before.answering && !before.loopback_only && before.addresses.is_empty());

    agent
        .client
        .process_start(ProcessSpec {
            name: "http".into(),
            cmd: [
                "python3",
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ]
            .map(String::from)
            .to_vec(),
            port: Some(port),
            ..ProcessSpec::default()
        })
        .await
        .expect("start http.server");
    let status = eventually("the dev server to answer", || async {
        let status = agent.client.port_check(port).await.expect("check");
        status.answering.then_some(status)
    })
    .await;
    assert!(status.loopback_only, "{status:?}");
    assert_eq!(status.addresses, [std::net::IpAddr::from([127, 0, 0, 1])]);

    let err = agent.client.port_check(0).await.expect_err("port 0");
    assert!(matches!(err, AgentError::InvalidRequest(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_stops_processes_and_exits() {
    let mut agent = TestAgent::start().await;
    let info = agent
        .client
        .process_start(ProcessSpec {
            name: "long".into(),
            cmd: ["sleep", "1000"].map(String::from).to_vec(),
            ..ProcessSpec::default()
        })
        .await
        .expect("start");
    let pid = info.pid_in_machine.expect("pid");
    agent.client.shutdown().await.expect("shutdown");
    let status = agent.wait_for_exit().await;
    assert!(status.success(), "{status}");
    assert!(!process_alive(pid));
    let err = agent.client.health().await.expect_err("gone");
    assert!(matches!(err, AgentError::Unreachable(_)), "{err:?}");
    assert!(
        !agent.dir.path().join("agent.sock").exists(),
        "the socket file is removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn init_mode_reaps_orphans_and_forwards_sigterm() {
    let mut agent = TestAgent::start_with(&["--init"]).await;
    let init_pid = agent.pid();
    // An orphan that leaves the exec's process group, so only init can reap it.
    let out = agent
        .exec(&[
            "sh",
            "-c",
            "setsid sleep 0.5 </dev/null >/dev/null 2>&1 & sleep 0.1; echo $!",
        ])
        .await;
    let orphan: u32 = text(&out.stdout).trim().parse().expect("orphan pid");
    let parent = std::fs::read_to_string(format!("/proc/{orphan}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(") ")?.1.to_owned();
            rest.split(' ').nth(1)?.parse::<i32>().ok()
        });
    if let Some(parent) = parent {
        assert_eq!(parent, init_pid.as_raw(), "orphans are re-parented to init");
    }
    // Gone entirely (not a zombie): init reaped it.
    eventually("init to reap the orphan", || async {
        (!Path::new(&format!("/proc/{orphan}")).exists()).then_some(())
    })
    .await;

    kill(init_pid, Signal::SIGTERM).expect("SIGTERM");
    let status = agent.wait_for_exit().await;
    assert!(
        status.success(),
        "init exits with the serving agent's status: {status}"
    );
    assert!(
        agent.log().contains("forwarding to the serving agent"),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pid1_in_a_pid_namespace() {
    let unshare = Path::new("/usr/bin/unshare");
    if !is_root() || !unshare.exists() {
        eprintln!("skipped: needs root and /usr/bin/unshare to create a PID namespace");
        return;
    }
    let mut agent = TestAgent::launch(
        &["/usr/bin/unshare", "--pid", "--fork", "--kill-child"],
        &[],
        false,
    )
    .await;
    // The agent is PID 1 and its serving child PID 2, so commands get small pids.
    let out = agent.exec(&["sh", "-c", "echo $$"]).await;
    let pid: u32 = text(&out.stdout).trim().parse().expect("pid");
    assert!(pid > 2 && pid < 100, "pid in the machine: {pid}");
    let log = agent.log();
    assert!(log.contains("init started the serving agent"), "{log}");

    agent.client.shutdown().await.expect("shutdown");
    let status = agent.wait_for_exit().await;
    assert!(status.success(), "{status}");
    let log = agent.log();
    assert!(log.contains("serving agent ended"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inherited_socket_is_served_and_never_leaks_into_commands() {
    for extra in [&[][..], &["--init"][..]] {
        let agent = TestAgent::launch(&[], extra, true).await;
        let fds = agent.exec(&["ls", "-l", "/proc/self/fd/"]).await;
        let listing = text(&fds.stdout);
        assert!(fds.exit.success(), "{listing}");
        assert!(
            !listing.contains("socket:"),
            "a command inherited a socket:\n{listing}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_are_served_in_parallel() {
    let agent = TestAgent::start().await;
    let started = Instant::now();
    let runs = (0..16).map(|i| {
        let client = agent.client.clone();
        async move {
            let script = format!("sleep 0.5; echo {i}");
            let out = client
                .exec_collect(ExecRequest::new(["sh", "-c", script.as_str()]))
                .await
                .expect("exec");
            assert_eq!(text(&out.stdout), format!("{i}\n"));
        }
    });
    futures::future::join_all(runs).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "16 half-second commands took {:?}",
        started.elapsed()
    );
}

/// An agent given a token over `--config` serves only connections that present it first, over
/// TCP as in a VM; a wrong or missing token is refused with `unauthorized`.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_the_config_file_guards_every_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod tempdir");
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).expect("mkdir ws");
    if is_root() {
        std::os::unix::fs::chown(&ws, Some(APP_ID), Some(APP_ID)).expect("chown ws");
    }
    // A free port: bind, note it, release it for the agent.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = dir.path().join("agent.json");
    let body = serde_json::json!({
        "listen": format!("tcp:127.0.0.1:{port}"),
        "machine_id": "m-vm",
        "token": "correct-horse",
        "workspace": ws,
        "env": {"FROM_CONFIG": "yes"},
    });
    std::fs::write(&config, body.to_string()).expect("write config");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
    let mut child = spawn(
        env!("CARGO_BIN_EXE_kiln-guest"),
        &["--config".to_owned(), config.display().to_string()],
        dir.path(),
        log,
    );
    let endpoint = Endpoint::Tcp(([127, 0, 0, 1], port).into());
    let good = AgentClient::new(endpoint.clone())
        .with_token(kiln_guest::protocol::AgentToken::new("correct-horse"));
    let health = eventually("the agent answers with its token", || {
        let good = good.clone();
        async move { good.health().await.ok() }
    })
    .await;
    assert_eq!(health.machine_id.as_deref(), Some("m-vm"));

    let out = good
        .exec_collect(ExecRequest::new(["sh", "-c", "echo $FROM_CONFIG"]))
        .await
        .expect("exec with the token");
    assert_eq!(text(&out.stdout), "yes\n");

    let none = AgentClient::new(endpoint.clone());
    let wrong = AgentClient::new(endpoint.clone())
        .with_token(kiln_guest::protocol::AgentToken::new("correct-horsf"));
    let short =
        AgentClient::new(endpoint).with_token(kiln_guest::protocol::AgentToken::new("correct"));
    for (what, client) in [
        ("no token", none),
        ("wrong token", wrong),
        ("prefix", short),
    ] {
        match client.health().await {
            Err(AgentError::Unauthorized(message)) => {
                assert!(message.contains("token"), "{what}: {message}")
            }
            other => panic!("{what}: expected unauthorized, got {other:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
