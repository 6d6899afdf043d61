//! Benchmark harness: a tiny upstream (13-byte answer) and the edge in front of it, on loopback.
//!
//! Prints `upstream ADDR` and `edge ADDR`, one per line, then serves until interrupted, so a
//! script (`scripts/bench-edge.sh`) can drive it with `wrk` beside nginx and caddy. The
//! upstream and the edge run on separate threads, like separate processes would.
//!
//! Options: `--edge-threads N` (edge workers, default 2), `--pin` (pin each worker to a CPU),
//! `--upstream ADDR` (use a running upstream instead of starting one), `--host NAME` (the routed
//! host, default `bench.test`), `--churn N` (publish a brand-new route table N times per second
//! while serving, see [`churn`]; default 0, off), `--tls-cert FILE --tls-key FILE` (also serve
//! HTTPS with that certificate, printing `edge-tls ADDR` before `edge ADDR`).

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kiln_edge::{
    Backend, Brand, Certificate, Edge, EdgeConfig, Route, RouteKind, RouteTable, Routes, TlsConfig,
};

/// The same allocator as the `kiln` binary, so the figures are the edge's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Options {
    edge_threads: usize,
    pin: bool,
    upstream: Option<SocketAddr>,
    host: String,
    churn: u32,
    tls_cert: Option<std::path::PathBuf>,
    tls_key: Option<std::path::PathBuf>,
}

fn parse_options() -> Result<Options, Box<dyn Error>> {
    let mut options = Options {
        edge_threads: 2,
        pin: false,
        upstream: None,
        host: "bench.test".to_owned(),
        churn: 0,
        tls_cert: None,
        tls_key: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--edge-threads" => options.edge_threads = value()?.parse()?,
            "--pin" => options.pin = true,
            "--upstream" => options.upstream = Some(value()?.parse()?),
            "--host" => options.host = value()?,
            "--churn" => options.churn = value()?.parse()?,
            "--tls-cert" => options.tls_cert = Some(value()?.into()),
            "--tls-key" => options.tls_key = Some(value()?.into()),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    Ok(options)
}

fn main() -> Result<(), Box<dyn Error>> {
    let options = parse_options()?;

    let upstream = match options.upstream {
        Some(addr) => addr,
        None => start_upstream()?,
    };

    // The edge runs its workers on threads of their own; this runtime only waits for the end.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let brand = Arc::new(Brand {
        name: "Bench".to_owned(),
        ..Brand::default()
    });
    let bench_route = Route {
        host: options.host.clone(),
        kind: RouteKind::Production,
        org_id: "bench".to_owned(),
        brand,
        backend: Backend::Ready(vec![upstream]),
    };
    let routes = Routes::new(RouteTable::new([bench_route.clone()], [])?);
    let stop = Arc::new(AtomicBool::new(false));
    let churner = match options.churn {
        0 => None,
        rate => {
            // Fail here, not on the thread, if the churn table cannot be built at all.
            churn_table(&bench_route, 0)?;
            let (routes, stop) = (routes.clone(), Arc::clone(&stop));
            Some(
                std::thread::Builder::new()
                    .name("churn".to_owned())
                    .spawn(move || churn(&routes, &bench_route, rate, &stop))?,
            )
        }
    };
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            certificates: vec![Certificate::from_pem(
                &std::fs::read(cert)?,
                &std::fs::read(key)?,
            )?],
            local_issuer: None,
        }),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let edge_addr = listener.local_addr()?;
        let config = EdgeConfig {
            workers: options.edge_threads,
            pin_workers: options.pin,
            ..EdgeConfig::default()
        };
        let mut edge = Edge::new(config, routes);
        let mut out = std::io::stdout().lock();
        writeln!(out, "upstream {upstream}")?;
        if let Some(tls) = tls {
            let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            writeln!(out, "edge-tls {}", tls_listener.local_addr()?)?;
            edge = edge.with_tls(tls_listener, tls)?;
        }
        writeln!(out, "edge {edge_addr}")?;
        out.flush()?;
        drop(out);
        edge.serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok::<_, Box<dyn Error>>(())
    });
    stop.store(true, Ordering::Relaxed);
    if let Some(churner) = churner {
        let (published, elapsed) = churner.join().map_err(|_| "churn thread panicked")?;
        eprintln!(
            "churn: published {:.0} tables/s over the whole run ({published} tables in {:.1} s)",
            published as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
    served
}

/// Routes besides the bench route in every churn table.
const CHURN_ROUTES: u32 = 1_000;

/// If the churn thread falls this far behind its schedule (descheduled on a busy machine), it
/// restarts the schedule from now instead of publishing back to back to catch up.
const CHURN_MAX_LAG: Duration = Duration::from_millis(10);

/// Publishes a brand-new table through `routes` `rate` times per second, evenly paced, until
/// `stop` is set; prints the achieved rate to stderr once per second
/// (`churn: published X tables/s`) and returns the number published and the time taken.
///
/// Each table is built from scratch: the bench route (same host, same upstream, so requests
/// keep succeeding) plus [`CHURN_ROUTES`] others whose backends change with every
/// generation, so every publish is a full swap, as the control plane would make it.
fn churn(routes: &Routes, bench_route: &Route, rate: u32, stop: &AtomicBool) -> (u64, Duration) {
    let interval = Duration::from_secs(1) / rate;
    let start = Instant::now();
    let mut next = start;
    let mut published: u64 = 0;
    let (mut window_start, mut window_published) = (start, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > CHURN_MAX_LAG {
            next = now;
        }
        match churn_table(bench_route, published) {
            Ok(table) => routes.publish(table),
            Err(error) => {
                eprintln!("churn: could not build table {published}: {error}");
                break;
            }
        }
        published += 1;
        window_published += 1;
        next += interval;
        let elapsed = window_start.elapsed();
        if elapsed >= Duration::from_secs(1) {
            eprintln!(
                "churn: published {:.0} tables/s",
                window_published as f64 / elapsed.as_secs_f64()
            );
            (window_start, window_published) = (Instant::now(), 0);
        }
    }
    (published, start.elapsed())
}

/// Table number `generation` of the churn: the bench route plus [`CHURN_ROUTES`] routes
/// `churn-{i}.bench.test`, each on a backend address that differs from one generation to the
/// next.
fn churn_table(
    bench_route: &Route,
    generation: u64,
) -> Result<RouteTable, kiln_edge::RouteTableError> {
    let mut routes = Vec::with_capacity(CHURN_ROUTES as usize + 1);
    routes.push(bench_route.clone());
    // Truncation is fine: the addresses only need to change between consecutive generations.
    let base = (generation as u32).wrapping_mul(CHURN_ROUTES);
    for i in 0..CHURN_ROUTES {
        // 127.1.0.0/16: no request asks for these hosts, and if one did it would stay on
        // loopback instead of leaving the machine.
        let ip = Ipv4Addr::from(0x7F01_0000 | (base.wrapping_add(i) & 0xFFFF));
        let port = 20_000 + (generation % 1000) as u16;
        routes.push(Route {
            host: format!("churn-{i}.bench.test"),
            kind: RouteKind::Preview,
            org_id: format!("churn-{}", i % 10),
            brand: Arc::clone(&bench_route.brand),
            backend: Backend::Ready(vec![SocketAddr::from((ip, port))]),
        });
    }
    RouteTable::new(routes, [])
}

/// Starts the upstream on its own two-thread runtime (kept alive on a background thread) and
/// returns its address.
fn start_upstream() -> Result<SocketAddr, Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"Hello, world!",
                        ))))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    Ok(addr)
}
