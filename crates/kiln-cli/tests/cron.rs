//! Cron end to end through the real `kiln` binary and CLI: a job runs from the app's live
//! release with its variables, every run is recorded with its exit code and log tail, a slot
//! whose previous run still goes is skipped and the skip recorded, the run sees the app's
//! managed database, a failing command is recorded as failed, and after downtime only the
//! latest missed slot runs.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kiln_api::apps::AppConfig;
use kiln_api::cron::{CronJobConfig, CronRun};
use kiln_api::releases::ReleaseConfig;
use kiln_api::sandboxes::SandboxConfig;
use kiln_testkit::{Kiln, cli_json, problem};
use sha2::{Digest, Sha256};

const APP: &str = include_str!("fixtures/app.py");

/// Prints what the run sees (the database URL only as a digest: it holds a password), then
/// outlives its 2-second slot so the next slot overlaps.
const JOB: &str = "echo \"greeting=$GREETING\"; echo \"version=$(cat VERSION)\"; \
    echo \"db=$(printf %s \"$DATABASE_URL\" | sha256sum | cut -c1-64)\"; sleep 3\n";

async fn runs(kiln: &Kiln, job: &str) -> Vec<CronRun> {
    kiln.client().cron_runs(job).await.expect("runs").items
}

/// Waits until `done` holds for the job's runs.
async fn wait_runs(
    kiln: &Kiln,
    job: &str,
    what: &str,
    done: impl Fn(&[CronRun]) -> bool,
) -> Vec<CronRun> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = runs(kiln, job).await;
        if done(&runs) {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {runs:#?}\n{}",
            kiln.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_runs_from_the_live_release() {
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: machines need root (namespaces, bridges, cgroups)");
        return;
    }
    let mut kiln = Kiln::start(std::path::Path::new(env!("CARGO_BIN_EXE_kiln")), &[], None)
        .await
        .expect("kiln up starts");
    let api = kiln.client();
    api.create_app(&AppConfig {
        name: "Shop".into(),
        slug: None,
    })
    .await
    .expect("app");

    // --- bad input ------------------------------------------------------------------------
    let bad = |schedule: &str, timezone: Option<&str>| CronJobConfig {
        name: "bad".into(),
        schedule: schedule.into(),
        cmd: vec!["true".into()],
        timezone: timezone.map(str::to_owned),
        allow_overlap: None,
        timeout_s: None,
    };
    let p = problem(
        api.create_cron_job("shop", &bad("*/5 25 * * *", None))
            .await,
    );
    assert_eq!(
        (p.status, p.field.as_deref()),
        (422, Some("schedule")),
        "{p:?}"
    );
    assert!(p.detail.contains("hour field `25`"), "{p:?}");
    let p = problem(api.create_cron_job("shop", &bad("* * * *", None)).await);
    assert!(p.status == 422 && p.detail.contains("5 fields"), "{p:?}");
    let p = problem(
        api.create_cron_job("shop", &bad("@daily", Some("Mars/Base")))
            .await,
    );
    assert_eq!(
        (p.status, p.field.as_deref()),
        (422, Some("timezone")),
        "{p:?}"
    );
    let p = problem(api.cron_runs("cron_nope").await);
    assert_eq!(p.status, 404, "{p:?}");
    let out = kiln.cli(&[
        "cron",
        "add",
        "shop",
        "--schedule",
        "61 * * * *",
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("minute field `61`"),
        "the CLI prints the problem's detail: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --- a job before any deployment fails with the reason ----------------------------------
    let early = cli_json(&kiln.cli(&[
        "--json",
        "cron",
        "add",
        "shop",
        "--schedule",
        "* * * * * *",
        "--name",
        "early",
        "--",
        "true",
    ]));
    let early_id = early["id"].as_str().expect("job id").to_owned();
    let early_runs = wait_runs(&kiln, &early_id, "a failed run without a release", |r| {
        r.iter().any(|r| r.status == "failed")
    })
    .await;
    let failed = early_runs
        .iter()
        .find(|r| r.status == "failed")
        .expect("failed run");
    assert!(
        failed
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("no live release")),
        "{failed:?}"
    );
    kiln.cli(&["cron", "delete", &early_id]);

    // --- a live release with a variable and a managed database -------------------------------
    cli_json(&kiln.cli(&["--json", "env", "set", "shop", "GREETING=hello-from-config"]));
    let db = cli_json(&kiln.cli(&["--json", "db", "create", "shop", "--engine", "postgres"]));
    let db_url = db["url"].as_str().expect("the URL is shown on create");
    let db_digest = hex::encode(Sha256::digest(db_url.as_bytes()));
    let sandbox = api
        .create_sandbox("shop", &SandboxConfig::default(), 120)
        .await
        .expect("sandbox");
    api.put_file(&sandbox.id, "app.py", APP)
        .await
        .expect("app.py");
    api.put_file(&sandbox.id, "VERSION", "1")
        .await
        .expect("VERSION");
    api.put_file(&sandbox.id, "job.sh", JOB)
        .await
        .expect("job.sh");
    let release = api
        .publish(
            "shop",
            &ReleaseConfig {
                sandbox: Some(sandbox.id.clone()),
                start_cmd: Some("python3 app.py".into()),
                port: Some(8000),
                ..Default::default()
            },
        )
        .await
        .expect("publish");
    api.deploy("shop", &release.id).await.expect("deploy");
    // The sandbox changes after publishing; runs must still see the release's files.
    api.put_file(&sandbox.id, "VERSION", "sandbox-edit")
        .await
        .expect("edit");

    // --- runs, skips and failures are recorded ----------------------------------------------
    let job = cli_json(&kiln.cli(&[
        "--json",
        "cron",
        "add",
        "shop",
        "--schedule",
        "*/2 * * * * *",
        "--name",
        "report",
        "--timezone",
        "Europe/Berlin",
        "--",
        "sh",
        "job.sh",
    ]));
    let job_id = job["id"].as_str().expect("job id").to_owned();
    assert_eq!(job["timezone"], "Europe/Berlin");
    assert!(job["next_run_at"].is_string(), "{job}");
    let failing = api
        .create_cron_job(
            "shop",
            &CronJobConfig {
                name: "failing".into(),
                schedule: "*/3 * * * * *".into(),
                cmd: vec!["sh".into(), "-c".into(), "echo oops >&2; exit 3".into()],
                timezone: None,
                allow_overlap: None,
                timeout_s: None,
            },
        )
        .await
        .expect("failing job");

    let seen = wait_runs(&kiln, &job_id, "a finished run and a skipped slot", |r| {
        r.iter().any(|r| r.status == "succeeded") && r.iter().any(|r| r.status == "skipped")
    })
    .await;
    let ok = seen.iter().find(|r| r.status == "succeeded").expect("run");
    let tail = ok.log_tail.as_deref().unwrap_or_default();
    assert!(tail.contains("greeting=hello-from-config"), "{tail}");
    assert!(
        tail.contains("version=1"),
        "runs from the live release: {tail}"
    );
    assert!(
        tail.contains(&format!("db={db_digest}")),
        "the run gets the app's DATABASE_URL: {tail}"
    );
    assert_eq!(ok.exit_code, Some(0));
    assert!(ok.started_at.is_some() && ok.finished_at.is_some());
    let skipped = seen.iter().find(|r| r.status == "skipped").expect("skip");
    assert!(
        skipped
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("still going")),
        "{skipped:?}"
    );
    assert_eq!(skipped.started_at, None);
    let listed = kiln.cli(&["cron", "runs", &job_id, "--logs"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("succeeded exit=0") && listed.contains("skipped"),
        "{listed}"
    );

    let failed = wait_runs(&kiln, &failing.id, "a failed run", |r| {
        r.iter().any(|r| r.status == "failed")
    })
    .await;
    let failed = failed
        .iter()
        .find(|r| r.status == "failed")
        .expect("failed");
    assert_eq!(failed.exit_code, Some(3), "{failed:?}");
    assert!(
        failed
            .log_tail
            .as_deref()
            .unwrap_or_default()
            .contains("oops"),
        "{failed:?}"
    );
    api.delete_cron_job(&failing.id).await.expect("delete");

    // --- downtime: one run for the missed slots, not a burst -------------------------------
    kiln.stop().expect("stop");
    let down_from: DateTime<Utc> = Utc::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let back_at: DateTime<Utc> = Utc::now();
    kiln.restart().await.expect("restart");
    let after = wait_runs(&kiln, &job_id, "a run after the restart", |r| {
        r.iter()
            .any(|r| r.scheduled_at > down_from && r.status != "running")
    })
    .await;
    let missed: Vec<&CronRun> = after
        .iter()
        .filter(|r| r.scheduled_at > down_from && r.scheduled_at <= back_at)
        .collect();
    assert_eq!(
        missed.len(),
        1,
        "three slots were missed, one runs: {missed:#?}"
    );
    let cut_off = after
        .iter()
        .filter(|r| r.scheduled_at <= down_from)
        .find(|r| r.status == "running");
    assert!(
        cut_off.is_none(),
        "a run cut off by the stop is settled, not left running: {cut_off:#?}"
    );

    // --- delete: no new runs, no machines left ---------------------------------------------
    kiln.cli(&["cron", "delete", &job_id]);
    assert_eq!(problem(api.cron_job(&job_id).await).status, 404);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leftover: Vec<String> = std::fs::read_dir(kiln.data_dir().join("machines"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("run_"))
                    .collect()
            })
            .unwrap_or_default();
        if leftover.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cron machines are removed after their run: {leftover:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let jobs = api.cron_jobs("shop").await.expect("list");
    assert!(jobs.items.is_empty(), "{jobs:?}");
}
