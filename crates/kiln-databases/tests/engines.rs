//! The engines for real: provision PostgreSQL, MariaDB and Redis on loopback, log in, refuse a
//! wrong password, rotate, survive a crash and a restart, refuse a taken port, clean up.
//! Needs root and the engines' packages (scripts/setup.sh); skipped, saying so, otherwise.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use kiln_databases::{
    Databases, DbError, Engine, Instance, Login, layout, login_user, new_password,
};

fn ready() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !root {
        eprintln!("skipped: the engine tests need root (servers run as their own users)");
    }
    root
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port is free")
}

fn instance(engine: Engine) -> Instance {
    Instance {
        id: kiln_store_like_id(engine),
        engine,
        database: "main".into(),
        host: Ipv4Addr::LOCALHOST,
        port: free_port(),
    }
}

fn kiln_store_like_id(engine: Engine) -> String {
    format!("db_test_{}_{}", engine, std::process::id())
}

/// Kills whatever server an instance still runs when a test ends, passing or failing, so a
/// failed assertion leaves no process behind.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn login(generation: u32) -> Login {
    Login {
        user: login_user(generation),
        password: new_password(),
    }
}

fn server_pid(dbs: &Databases, inst: &Instance) -> i32 {
    let path = layout::pid_file(dbs.root(), &inst.id);
    std::fs::read_to_string(path)
        .expect("a running server has a pid file")
        .trim()
        .parse()
        .expect("the pid file holds a number")
}

async fn until_login(dbs: &Databases, inst: &Instance, login: &Login) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = dbs.check(inst, login).await {
        assert!(Instant::now() < deadline, "no login after the crash: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn lifecycle(engine: Engine) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dbs = Databases::open(tmp.path().join("databases")).expect("open");
    let inst = instance(engine);
    let admin = new_password();
    let first = login(1);
    let _cleanup = KillOnDrop(layout::pid_file(dbs.root(), &inst.id));

    let started = Instant::now();
    dbs.provision(&inst, &admin, &first)
        .await
        .expect("provision");
    eprintln!(
        "{engine}: provisioned and logged in in {} ms",
        started.elapsed().as_millis()
    );
    dbs.check(&inst, &first)
        .await
        .expect("the issued login works");

    // A wrong password is refused by the server.
    let wrong = Login {
        user: first.user.clone(),
        password: new_password(),
    };
    assert!(matches!(
        dbs.check(&inst, &wrong).await,
        Err(DbError::Login { .. })
    ));

    // Data dir owned by the engine's user, private; the server runs as that user with a
    // cleared environment.
    let data = dbs.data_dir(&inst.id);
    let meta = std::fs::metadata(&data).expect("data dir");
    let user = nix::unistd::User::from_name(engine.system_user())
        .expect("lookup")
        .expect("user exists");
    assert_eq!(meta.uid(), user.uid.as_raw(), "{engine} data dir owner");
    assert_eq!(meta.mode() & 0o077, 0, "{engine} data dir is private");
    let pid = server_pid(&dbs, &inst);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        status.lines().any(|l| l.starts_with("Uid:")
            && l.split_whitespace().nth(1) == Some(&user.uid.as_raw().to_string())),
        "{engine} runs as its user"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            String::from_utf8_lossy(v)
                .split('=')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    // Only PATH is given (Redis overwrites its environment block with its title, leaving none).
    assert!(
        names.iter().all(|n| n == "PATH"),
        "{engine} server environment: {names:?}"
    );

    // Rotation: the new login works before the old one is revoked, then the old one stops.
    let second = login(2);
    dbs.add_login(&inst, &admin, &second)
        .await
        .expect("add the new login");
    dbs.check(&inst, &first)
        .await
        .expect("old login still works before revoke");
    dbs.remove_login(&inst, &admin, &first.user)
        .await
        .expect("revoke the old login");
    assert!(
        dbs.check(&inst, &first).await.is_err(),
        "{engine}: revoked login refused"
    );
    dbs.check(&inst, &second).await.expect("new login works");
    dbs.remove_login(&inst, &admin, &first.user)
        .await
        .expect("revoking twice is fine");

    // A crash is healed by the supervisor.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    tokio::time::sleep(Duration::from_millis(100)).await;
    until_login(&dbs, &inst, &second).await;
    assert_ne!(server_pid(&dbs, &inst), pid, "{engine}: a new server runs");

    // A node restart: stopped, started again with the same data and credentials.
    dbs.stop(&inst.id).await;
    assert!(
        dbs.check(&inst, &second).await.is_err(),
        "stopped server refuses"
    );
    dbs.start(&inst, &admin).await.expect("start again");
    dbs.check(&inst, &second)
        .await
        .expect("same credentials after restart");

    // Delete: no process, no directory.
    let pid = server_pid(&dbs, &inst);
    dbs.destroy(&inst).await.expect("destroy");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "{engine} server gone"
    );
    assert!(
        !layout::instance_dir(dbs.root(), &inst.id).exists(),
        "{engine} directory gone"
    );
    dbs.destroy(&inst).await.expect("destroying twice is fine");
}

#[tokio::test]
async fn postgres_lifecycle() {
    if ready() {
        lifecycle(Engine::Postgres).await;
    }
}

#[tokio::test]
async fn mysql_lifecycle() {
    if ready() {
        lifecycle(Engine::Mysql).await;
    }
}

#[tokio::test]
async fn redis_lifecycle() {
    if ready() {
        lifecycle(Engine::Redis).await;
    }
}

#[tokio::test]
async fn postgres_objects_survive_rotation() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dbs = Databases::open(tmp.path().join("databases")).expect("open");
    let inst = instance(Engine::Postgres);
    let admin = new_password();
    let (first, second) = (login(1), login(2));
    let _cleanup = KillOnDrop(layout::pid_file(dbs.root(), &inst.id));
    dbs.provision(&inst, &admin, &first)
        .await
        .expect("provision");
    let connect = |l: &Login| {
        let url = inst.url(l);
        async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            client
        }
    };
    let c1 = connect(&first).await;
    c1.batch_execute("CREATE TABLE notes (id serial primary key, body text); INSERT INTO notes (body) VALUES ('kept')")
        .await
        .expect("the first login creates a table");
    dbs.add_login(&inst, &admin, &second).await.expect("rotate");
    dbs.remove_login(&inst, &admin, &first.user)
        .await
        .expect("revoke");
    assert!(
        c1.simple_query("SELECT 1").await.is_err(),
        "the revoked login's session is ended"
    );
    let c2 = connect(&second).await;
    c2.batch_execute(
        "INSERT INTO notes (body) VALUES ('new'); ALTER TABLE notes ADD COLUMN at int",
    )
    .await
    .expect("the next login owns the same objects");
    let rows = c2
        .query("SELECT count(*) FROM notes", &[])
        .await
        .expect("query");
    assert_eq!(rows[0].get::<_, i64>(0), 2);
    dbs.destroy(&inst).await.expect("destroy");
}

#[tokio::test]
async fn a_taken_port_is_named_and_leaves_nothing() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dbs = Databases::open(tmp.path().join("databases")).expect("open");
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut inst = instance(Engine::Redis);
    inst.id = format!("db_taken_{}", std::process::id());
    inst.port = holder.local_addr().expect("addr").port();
    let err = dbs
        .provision(&inst, &new_password(), &login(1))
        .await
        .expect_err("port is taken");
    assert!(matches!(err, DbError::PortTaken { .. }), "{err}");
    assert!(err.to_string().contains(&inst.port.to_string()));
    assert!(
        !layout::instance_dir(dbs.root(), &inst.id).exists(),
        "nothing half-provisioned"
    );
}

#[tokio::test]
async fn a_server_that_dies_at_start_reports_its_log() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dbs = Databases::open(tmp.path().join("databases")).expect("open");
    let mut inst = instance(Engine::Postgres);
    inst.id = format!("db_badaddr_{}", std::process::id());
    // An address this host does not have: the server cannot bind and exits.
    inst.host = Ipv4Addr::new(192, 0, 2, 254);
    let err = dbs
        .provision(&inst, &new_password(), &login(1))
        .await
        .expect_err("cannot bind");
    let text = err.to_string();
    assert!(
        matches!(err, DbError::NotReady { .. } | DbError::Io { .. }),
        "{text}"
    );
    assert!(
        !layout::instance_dir(dbs.root(), &inst.id).exists(),
        "nothing half-provisioned"
    );
}
