//! Benchmark harness: a tiny upstream (13-byte answer) and the edge in front of it, on loopback.
//!
//! Prints `upstream ADDR` and `edge ADDR`, one per line, then serves until interrupted, so a
//! script (`scripts/bench-edge.sh`) can drive it with `wrk` beside nginx and caddy. The
//! upstream and the edge run on separate threads, like separate processes would.
//!
//! Options: `--edge-threads N` (edge workers, default 2), `--upstream ADDR` (use a running upstream instead
//! of starting one), `--host NAME` (the routed host, default `bench.test`).

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kiln_edge::{Backend, Brand, Edge, EdgeConfig, Route, RouteKind, RouteTable, Routes};

struct Options {
    edge_threads: usize,
    upstream: Option<SocketAddr>,
    host: String,
}

fn parse_options() -> Result<Options, Box<dyn Error>> {
    let mut options = Options {
        edge_threads: 2,
        upstream: None,
        host: "bench.test".to_owned(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--edge-threads" => options.edge_threads = value()?.parse()?,
            "--upstream" => options.upstream = Some(value()?.parse()?),
            "--host" => options.host = value()?,
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

    let runtime = if std::env::var_os("EDGE_CT").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.edge_threads.max(1))
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let table = RouteTable::new(
            [Route {
                host: options.host.clone(),
                kind: RouteKind::Production,
                org_id: "bench".to_owned(),
                brand: Arc::new(Brand {
                    name: "Bench".to_owned(),
                    ..Brand::default()
                }),
                backend: Backend::Ready(vec![upstream]),
            }],
            [],
        )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let edge_addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "upstream {upstream}")?;
            writeln!(out, "edge {edge_addr}")?;
            out.flush()?;
        }
        let config = EdgeConfig {
            workers: options.edge_threads,
            ..EdgeConfig::default()
        };
        let edge = Edge::new(config, Routes::new(table));
        edge.serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok::<_, Box<dyn Error>>(())
    })
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
