//! Benchmark: S3 PUT and GET throughput of 1 MiB and 64 MiB objects through the real `kiln
//! up` (presigned URLs, HTTP on loopback), beside raw disk writes and reads of the same bytes
//! in the same data dir, done the way the store does them (write, fsync, rename, fsync the
//! directory). GETs are measured twice: with the object in the page cache (both sides read
//! memory; uploads bypass the cache, so one untimed GET comes first) and cold, its pages
//! dropped first with `posix_fadvise(DONTNEED)` on both sides (both read the disk). Every PUT
//! hashes its body with MD5 (the ETag S3 clients expect), so the MD5 speed of the same bytes
//! is printed too: it bounds what a PUT can reach. The 64 MiB object is also uploaded the way
//! S3 clients upload large files, as a multipart upload of 8 MiB parts sent four at a time
//! (the AWS CLI's part size), whose parts are hashed side by side. Last, 4 KiB objects (a web
//! page's assets), whose GETs are bound by the work of each request rather than by bytes: their
//! rate in requests a second.
//! Run by `scripts/bench-platform.sh s3`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use kiln_api::apps::AppConfig;
use kiln_api::buckets::{BucketConfig, PresignConfig};
use kiln_testkit::Kiln;

const MIB: usize = 1 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: kiln-bench-s3 PATH/TO/kiln")?;
    let kiln = Kiln::start(&binary, &[("KILN_LOG", "warn")], None).await?;
    let api = kiln.client();
    api.create_app(&AppConfig {
        name: "bench".into(),
        slug: None,
    })
    .await?;
    let bucket = api
        .create_bucket(
            "bench",
            &BucketConfig {
                name: "bench".into(),
            },
        )
        .await?;
    let s3 = s3_client(&bucket)?;
    let http = reqwest::Client::new();
    let raw_dir = kiln.data_dir().join("raw-baseline");
    std::fs::create_dir_all(&raw_dir)?;
    let objects = kiln.data_dir().join("objects/buckets/bench/objects");
    println!("size     op          kiln MiB/s   raw MiB/s   kiln/raw");
    for (size, rounds) in [(MIB, 40), (64 * MIB, 10)] {
        let body = bytes::Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let key = format!("obj-{}", size / MIB);
        let put_url = presign(&api, "PUT", &key).await?;
        let get_url = presign(&api, "GET", &key).await?;
        let (mut puts, mut gets, mut raw_writes, mut raw_reads) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut cold_gets, mut cold_raw_reads) = (Vec::new(), Vec::new());
        let (mut hashes, mut multipart_puts) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let started = Instant::now();
            let answer = http.put(&put_url).body(body.clone()).send().await?;
            if !answer.status().is_success() {
                bail!("PUT answered {}: {}", answer.status(), answer.text().await?);
            }
            puts.push(started.elapsed());
            settle(&objects).await?;

            // Uploads bypass the page cache, so one untimed GET brings the object into it.
            get(&http, &get_url, size).await?;
            gets.push(get(&http, &get_url, size).await?);
            drop_cache(&objects.join(&key))?;
            cold_gets.push(get(&http, &get_url, size).await?);

            let started = Instant::now();
            std::hint::black_box(kiln_s3::md5::digest(&body)?);
            hashes.push(started.elapsed());

            let started = Instant::now();
            raw_write(&raw_dir, &body)?;
            raw_writes.push(started.elapsed());
            let raw = raw_dir.join("object");
            let started = Instant::now();
            raw_read(&raw, size)?;
            raw_reads.push(started.elapsed());
            drop_cache(&raw)?;
            let started = Instant::now();
            raw_read(&raw, size)?;
            cold_raw_reads.push(started.elapsed());

            if size >= 64 * MIB {
                multipart_puts.push(multipart_put(&s3, &body).await?);
            }
        }
        if !multipart_puts.is_empty() {
            let stored = s3
                .head_object()
                .bucket("bench")
                .key("multipart")
                .send()
                .await?;
            if stored.content_length() != Some(size as i64) {
                bail!(
                    "the multipart object holds {:?} bytes",
                    stored.content_length()
                );
            }
        }
        let label = format!("{} MiB", size / MIB);
        let md5_speed = throughput(size, median(&mut hashes));
        println!("{label:<8} MD5 alone   {md5_speed:>10.0}");
        let raw_write_time = median(&mut raw_writes);
        let mut rows = vec![("PUT (fsync)", median(&mut puts), raw_write_time)];
        if !multipart_puts.is_empty() {
            rows.push(("PUT 8 MiB×4", median(&mut multipart_puts), raw_write_time));
        }
        rows.push(("GET cached", median(&mut gets), median(&mut raw_reads)));
        rows.push((
            "GET cold",
            median(&mut cold_gets),
            median(&mut cold_raw_reads),
        ));
        for (op, kiln_t, raw_t) in rows {
            let (k, r) = (throughput(size, kiln_t), throughput(size, raw_t));
            println!(
                "{label:<8} {op:<11} {k:>10.0}   {r:>9.0}   {:>7.0}%",
                100.0 * k / r
            );
        }
    }
    small_gets(&api, &http).await
}

/// GETs of one 4 KiB object from the page cache, 16 in flight on kept-alive connections:
/// prints the median rate of three passes of 20,000.
async fn small_gets(api: &kiln_api::Client, http: &reqwest::Client) -> anyhow::Result<()> {
    const SIZE: usize = 4 << 10;
    const REQUESTS: usize = 20_000;
    const IN_FLIGHT: usize = 16;
    let body: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let answer = http
        .put(presign(api, "PUT", "small").await?)
        .body(body)
        .send()
        .await?;
    if !answer.status().is_success() {
        bail!("PUT answered {}: {}", answer.status(), answer.text().await?);
    }
    let url = presign(api, "GET", "small").await?;
    get(http, &url, SIZE).await?;
    let mut rates = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        futures::stream::iter(0..REQUESTS)
            .map(|_| get(http, &url, SIZE))
            .buffer_unordered(IN_FLIGHT)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        rates.push(REQUESTS as f64 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!();
    println!(
        "4 KiB    GET cached  {:>10.0} requests/s ({IN_FLIGHT} in flight, median of 3 passes of {REQUESTS})",
        rates[1]
    );
    Ok(())
}

/// A client for the bench bucket, sending bodies unsigned (as over TLS) and without the
/// optional CRC, so the figures measure the store rather than client-side hashing.
fn s3_client(bucket: &kiln_api::buckets::Bucket) -> anyhow::Result<aws_sdk_s3::Client> {
    let secret = bucket
        .secret_access_key
        .clone()
        .context("the new bucket came without its secret")?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_s3::config::Region::new(bucket.region.clone()))
        .endpoint_url(&bucket.endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            &bucket.access_key_id,
            secret,
            None,
            None,
            "bench",
        ))
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .force_path_style(true)
        .http_client(http)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// Uploads `body` as one multipart upload of 8 MiB parts, four in flight, and completes it.
async fn multipart_put(s3: &aws_sdk_s3::Client, body: &bytes::Bytes) -> anyhow::Result<Duration> {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    const PART: usize = 8 * MIB;
    let started = Instant::now();
    let upload = s3
        .create_multipart_upload()
        .bucket("bench")
        .key("multipart")
        .send()
        .await?;
    let id = upload.upload_id().context("no upload id")?;
    let parts: Vec<CompletedPart> = futures::stream::iter(0..body.len().div_ceil(PART))
        .map(|i| async move {
            let number = i32::try_from(i + 1)?;
            let part = body.slice(i * PART..((i + 1) * PART).min(body.len()));
            let answer = s3
                .upload_part()
                .bucket("bench")
                .key("multipart")
                .upload_id(id)
                .part_number(number)
                .body(part.into())
                .customize()
                .disable_payload_signing()
                .send()
                .await?;
            anyhow::Ok(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(answer.e_tag().map(str::to_owned))
                    .build(),
            )
        })
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    s3.complete_multipart_upload()
        .bucket("bench")
        .key("multipart")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await?;
    Ok(started.elapsed())
}

/// One GET, its body counted as it streams in.
async fn get(http: &reqwest::Client, url: &str, size: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let answer = http.get(url).send().await?;
    let mut stream = answer.bytes_stream();
    let mut got = 0;
    while let Some(chunk) = stream.next().await {
        got += chunk?.len();
    }
    if got != size {
        bail!("GET returned {got} bytes, expected {size}");
    }
    Ok(started.elapsed())
}

/// Waits until the store has disposed of the objects its PUTs replaced (it does so after
/// answering), and commits the filesystem, so the reads and the baseline that follow do not
/// share the disk with freeing their blocks (this disk is mounted with `discard`).
async fn settle(objects: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(objects)?
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
    {
        if Instant::now() > deadline {
            bail!("replaced objects were not disposed of within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    nix::unistd::syncfs(std::fs::File::open(objects)?)?;
    Ok(())
}

/// Drops a (clean, fsynced) file's pages from the page cache, so the next read hits the disk.
fn drop_cache(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .with_context(|| format!("drop the page cache of {}", path.display()))?;
    Ok(())
}

async fn presign(api: &kiln_api::Client, method: &str, key: &str) -> anyhow::Result<String> {
    Ok(api
        .presign(
            "bench",
            &PresignConfig {
                method: method.into(),
                key: key.into(),
                expires_s: 3600,
            },
        )
        .await?
        .url)
}

/// What the store does to publish an object: a temporary file, fsync, rename, fsync the dir.
fn raw_write(dir: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(".tmp-object");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(body)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join("object"))?;
    std::fs::File::open(dir)?.sync_all()
}

fn raw_read(path: &Path, size: usize) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got != size {
        return Err(std::io::Error::other(format!("read {got} of {size} bytes")));
    }
    Ok(())
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn throughput(size: usize, took: Duration) -> f64 {
    size as f64 / MIB as f64 / took.as_secs_f64()
}
