//! Benchmark: promotion time (boot a machine from a release artifact, health check, route
//! switch) and rollback time (switch back to the warm previous machine), through the real
//! API. Run by `scripts/bench-platform.sh deploy`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use kiln_api::apps::AppConfig;
use kiln_api::releases::ReleaseConfig;
use kiln_api::sandboxes::SandboxConfig;
use kiln_testkit::Kiln;

const ROUNDS: usize = 5;
const APP: &str = "import http.server, os\n\
class H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        b = open('VERSION').read().encode()\n        self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)\n    def log_message(self, *a): pass\n\
http.server.ThreadingHTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: kiln-bench-deploy PATH/TO/kiln")?;
    let kiln = Kiln::start(&binary, &[("KILN_LOG", "warn")], None).await?;
    let api = kiln.client();
    api.create_app(&AppConfig {
        name: "bench".into(),
        slug: None,
    })
    .await?;
    let sandbox = api
        .create_sandbox("bench", &SandboxConfig::default(), 120)
        .await?;
    api.put_file(&sandbox.id, "app.py", APP).await?;
    let mut releases = Vec::new();
    for version in ["1", "2"] {
        api.put_file(&sandbox.id, "VERSION", version).await?;
        let started = Instant::now();
        let release = api
            .publish(
                "bench",
                &ReleaseConfig {
                    sandbox: Some(sandbox.id.clone()),
                    start_cmd: Some("python3 app.py".into()),
                    port: Some(8000),
                    ..ReleaseConfig::default()
                },
            )
            .await?;
        println!(
            "publish {}: {:.1} ms",
            release.version,
            ms(started.elapsed())
        );
        releases.push(release.id);
    }
    api.deploy("bench", &releases[0]).await?;
    let (mut promotions, mut rollbacks) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        api.deploy("bench", &releases[1]).await?;
        promotions.push(started.elapsed());
        let started = Instant::now();
        api.rollback("bench", None).await?;
        rollbacks.push(started.elapsed());
    }
    promotions.sort();
    rollbacks.sort();
    println!();
    println!("{:<44} {:>9} {:>9}", "", "p50 ms", "max ms");
    println!(
        "{:<44} {:>9.1} {:>9.1}",
        "promotion (boot from artifact → health → switch)",
        ms(promotions[ROUNDS / 2]),
        ms(promotions[ROUNDS - 1])
    );
    println!(
        "{:<44} {:>9.1} {:>9.1}",
        "rollback (to the warm previous machine)",
        ms(rollbacks[ROUNDS / 2]),
        ms(rollbacks[ROUNDS - 1])
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
