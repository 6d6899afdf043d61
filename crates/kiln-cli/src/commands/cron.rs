//! `kiln cron add|list|runs|delete`.

use std::process::ExitCode;

use kiln_api::Client;
use kiln_api::cron::{CronJob, CronJobConfig};

use super::Output;
use crate::cli::CronCommand;

/// Longest job name derived from a command.
const DERIVED_NAME_LEN: usize = 40;

/// Runs one `kiln cron` verb.
pub async fn run(client: &Client, out: &Output, cmd: CronCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CronCommand::Add {
            app,
            schedule,
            name,
            timezone,
            allow_overlap,
            timeout,
            cmd,
        } => {
            let config = CronJobConfig {
                name: name.unwrap_or_else(|| name_from_command(&cmd)),
                schedule,
                cmd,
                timezone,
                allow_overlap: Some(allow_overlap),
                timeout_s: timeout,
            };
            let job = client.create_cron_job(&app, &config).await?;
            out.print(&job, || job_line(&job));
        }
        CronCommand::List { app } => {
            let jobs = client.cron_jobs(&app).await?;
            out.print(&jobs, || {
                jobs.items
                    .iter()
                    .map(job_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        CronCommand::Runs { job, logs } => {
            let runs = client.cron_runs(&job).await?;
            out.print(&runs, || {
                let mut lines = Vec::new();
                for run in &runs.items {
                    let code = run
                        .exit_code
                        .map(|c| format!(" exit={c}"))
                        .unwrap_or_default();
                    let reason = run
                        .reason
                        .as_deref()
                        .map(|r| format!("  ({r})"))
                        .unwrap_or_default();
                    lines.push(format!(
                        "{}  {}  {}{code}{reason}",
                        run.id,
                        run.scheduled_at.to_rfc3339(),
                        run.status
                    ));
                    if logs && let Some(tail) = run.log_tail.as_deref() {
                        lines.extend(tail.lines().map(|l| format!("    {l}")));
                    }
                }
                lines.join("\n")
            });
        }
        CronCommand::Delete { job } => {
            client.delete_cron_job(&job).await?;
            out.message(&format!("deleted cron job {job}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn job_line(job: &CronJob) -> String {
    let next = job
        .next_run_at
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "never".to_owned());
    format!(
        "{}  {}  \"{}\" ({})  next {next}  {}",
        job.id,
        job.name,
        job.schedule,
        job.timezone,
        job.cmd.join(" ")
    )
}

/// A DNS-label name from the command line: `python3 jobs/report.py` → `python3-jobs-report-py`.
fn name_from_command(cmd: &[String]) -> String {
    let mut name = String::new();
    for c in cmd.join(" ").chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') && !name.is_empty() {
            name.push('-');
        }
        if name.len() >= DERIVED_NAME_LEN {
            break;
        }
    }
    let name = name.trim_matches('-');
    if name.is_empty() {
        "job".to_owned()
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_commands() {
        let cmd = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            name_from_command(&cmd("python3 jobs/report.py")),
            "python3-jobs-report-py"
        );
        assert_eq!(name_from_command(&cmd("/bin/true")), "bin-true");
        assert_eq!(name_from_command(&cmd("--")), "job");
        assert!(name_from_command(&cmd(&"x".repeat(100))).len() <= DERIVED_NAME_LEN);
    }
}
