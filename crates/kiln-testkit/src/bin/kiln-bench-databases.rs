//! Benchmark: managed database provision → healthy (the platform has logged in with the issued
//! URL) for PostgreSQL, MySQL (MariaDB) and Redis, through the real API. The first provision of
//! an engine on a node also builds its template; it is reported apart. Run by
//! `scripts/bench-platform.sh databases`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiln_api::apps::AppConfig;
use kiln_api::databases::{DatabaseConfig, DatabaseStatus};
use kiln_testkit::Kiln;

const ROUNDS: usize = 7;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: kiln-bench-databases PATH/TO/kiln")?;
    let kiln = Kiln::start(&binary, &[("KILN_LOG", "warn")], None).await?;
    let api = kiln.client();
    api.create_app(&AppConfig {
        name: "bench".into(),
        slug: None,
    })
    .await?;
    println!(
        "{:<10} {:>16} {:>9} {:>9} {:>9}   target",
        "engine", "first (template)", "p50 ms", "min ms", "max ms"
    );
    for (engine, target_ms) in [("postgres", 1500), ("mysql", 5000), ("redis", 300)] {
        let mut times = Vec::new();
        let mut first = Duration::ZERO;
        for round in 0..=ROUNDS {
            let started = Instant::now();
            let db = api
                .create_database(
                    "bench",
                    &DatabaseConfig {
                        engine: engine.into(),
                        name: format!("{engine}_{round}"),
                    },
                    60,
                )
                .await?;
            let took = started.elapsed();
            if db.status != DatabaseStatus::Healthy {
                bail!("{engine} did not become healthy: {:?}", db.error);
            }
            if round == 0 {
                first = took;
            } else {
                times.push(took);
            }
            api.delete_database(&db.id).await?;
        }
        times.sort();
        println!(
            "{:<10} {:>16.1} {:>9.1} {:>9.1} {:>9.1}   < {target_ms} ms",
            engine,
            ms(first),
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1])
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
