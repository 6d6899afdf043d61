//! The object store driven by the real `aws-sdk-s3` client, in process on loopback: objects,
//! listings, ranges, multipart, presigned URLs, per-bucket keys, virtual-host addressing.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns};
use kiln_s3::{BucketKey, KeyRing, ObjectStore, PresignMethod, S3Endpoint, VirtualHosts, presign};
use md5::{Digest, Md5};
use tokio_util::sync::CancellationToken;

/// Every name is loopback, so `bucket.localhost` works without touching the system resolver.
#[derive(Debug, Clone)]
struct Loopback;

impl ResolveDns for Loopback {
    fn resolve_dns<'a>(&'a self, _name: &'a str) -> DnsFuture<'a> {
        DnsFuture::ready(Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]))
    }
}

struct Fixture {
    port: u16,
    store: ObjectStore,
    keys: KeyRing,
    photos: BucketKey,
    backups: BucketKey,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ObjectStore::open(dir.path().join("s3"))
            .await
            .expect("open store");
        let keys = KeyRing::default();
        let mut made = Vec::new();
        for bucket in ["photos", "backups"] {
            store.create_bucket(bucket).await.expect("create bucket");
            let key = BucketKey::generate(bucket);
            keys.insert(key.clone());
            made.push(key);
        }
        let endpoint = S3Endpoint::new(
            store.clone(),
            keys.clone(),
            VirtualHosts::new(["localhost".to_owned()]),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move { endpoint.serve(listener, stop).await });
        let backups = made.pop().expect("two keys");
        let photos = made.pop().expect("two keys");
        Fixture {
            port,
            store,
            keys,
            photos,
            backups,
            shutdown,
            dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn client(&self, key: &BucketKey) -> Client {
        client_for(&self.endpoint(), key, true)
    }
}

fn client_for(endpoint: &str, key: &BucketKey, path_style: bool) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_with_resolver(Loopback);
    let config = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            &key.access_key_id,
            &key.secret_access_key,
            None,
            None,
            "test",
        ))
        .force_path_style(path_style)
        .http_client(http)
        .build();
    Client::from_conf(config)
}

/// Puts a one-byte object into `photos`.
async fn put_tiny(s3: &Client, key: &str) {
    s3.put_object()
        .bucket("photos")
        .key(key)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect("put");
}

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The object keys and the rolled-up prefixes of one listing page.
fn keys_and_prefixes(
    page: &aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output,
) -> (Vec<&str>, Vec<&str>) {
    let keys = page.contents().iter().filter_map(|o| o.key()).collect();
    let prefixes = page
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    (keys, prefixes)
}

async fn get_bytes(client: &Client, bucket: &str, key: &str) -> Vec<u8> {
    client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("get object")
        .body
        .collect()
        .await
        .expect("read body")
        .to_vec()
}

#[tokio::test]
async fn put_get_head_delete_round_trip_with_type_and_metadata() {
    let fx = Fixture::start().await;
    let s3 = fx.client(&fx.photos);
    let body = b"hello, bucket".to_vec();
    let put = s3
        .put_object()
        .bucket("photos")
        .key("greetings/hello.txt")
        .content_type("text/plain")
        .metadata("owner", "ada")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put");
    assert_eq!(
        put.e_tag(),
        Some(format!("\"{}\"", md5_hex(&body)).as_str())
    );

    let got = s3
        .get_object()
        .bucket("photos")
        .key("greetings/hello.txt")
        .send()
        .await
        .expect("get");
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(
        got.metadata()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("ada")
    );
    assert_eq!(got.content_length(), Some(body.len() as i64));
    assert_eq!(got.body.collect().await.expect("body").to_vec(), body);

    let head = s3
        .head_object()
        .bucket("photos")
        .key("greetings/hello.txt")
        .send()
        .await
        .expect("head");
    assert_eq!(head.content_length(), Some(body.len() as i64));
    assert_eq!(head.e_tag(), put.e_tag());

    s3.delete_object()
        .bucket("photos")
        .key("greetings/hello.txt")
        .send()
        .await
        .expect("delete");
    let err = s3
        .get_object()
        .bucket("photos")
        .key("greetings/hello.txt")
        .send()
        .await
        .expect_err("deleted");
    assert!(err.into_service_error().is_no_such_key());
}

#[tokio::test]
async fn list_v2_with_prefix_delimiter_and_pagination() {
    let fx = Fixture::start().await;
    let s3 = fx.client(&fx.photos);
    let keys = [
        "a.txt",
        "docs/1.txt",
        "docs/2.txt",
        "docs/deep/3.txt",
        "img/x.png",
        "z.txt",
    ];
    for key in keys {
        put_tiny(&s3, key).await;
    }

    let top = s3
        .list_objects_v2()
        .bucket("photos")
        .delimiter("/")
        .send()
        .await
        .expect("list");
    let (files, dirs) = keys_and_prefixes(&top);
    assert_eq!(files, ["a.txt", "z.txt"]);
    assert_eq!(dirs, ["docs/", "img/"]);

    let docs = s3
        .list_objects_v2()
        .bucket("photos")
        .prefix("docs/")
        .delimiter("/")
        .send()
        .await
        .expect("list docs");
    let (files, dirs) = keys_and_prefixes(&docs);
    assert_eq!(files, ["docs/1.txt", "docs/2.txt"]);
    assert_eq!(dirs, ["docs/deep/"]);
    assert_eq!(docs.contents()[0].size(), Some(1));

    // Two at a time, following continuation tokens, yields every key once, in order.
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket("photos")
            .max_keys(2)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("page");
        pages += 1;
        assert!(page.key_count().unwrap_or(0) <= 2);
        seen.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        if page.is_truncated() != Some(true) {
            break;
        }
        token = page.next_continuation_token().map(str::to_owned);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, keys);

    // StartAfter is a key, not a rolled-up prefix: listing a "folder" after its own name
    // still shows what is in it.
    let folder = s3
        .list_objects_v2()
        .bucket("photos")
        .prefix("docs/")
        .start_after("docs/")
        .delimiter("/")
        .send()
        .await
        .expect("list after the folder name");
    let (files, dirs) = keys_and_prefixes(&folder);
    assert_eq!(files, ["docs/1.txt", "docs/2.txt"]);
    assert_eq!(dirs, ["docs/deep/"]);

    // A page that ends on a folder-marker object (a key ending in the delimiter) resumes after
    // that key, not after everything under it.
    s3.put_object()
        .bucket("photos")
        .key("docs/deep/")
        .body(ByteStream::from_static(b""))
        .send()
        .await
        .expect("folder marker");
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket("photos")
            .prefix("docs/deep/")
            .delimiter("/")
            .max_keys(1)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("page");
        seen.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        if page.is_truncated() != Some(true) {
            break;
        }
        token = page.next_continuation_token().map(str::to_owned);
    }
    assert_eq!(seen, ["docs/deep/", "docs/deep/3.txt"]);
}

#[tokio::test]
async fn ranged_gets_answer_the_requested_bytes() {
    let fx = Fixture::start().await;
    let s3 = fx.client(&fx.photos);
    let body = pattern(10_000, 7);
    s3.put_object()
        .bucket("photos")
        .key("blob")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put");
    for (range, want) in [
        ("bytes=0-9", &body[0..10]),
        ("bytes=9990-", &body[9990..]),
        ("bytes=-5", &body[9995..]),
        ("bytes=100-199", &body[100..200]),
    ] {
        let got = s3
            .get_object()
            .bucket("photos")
            .key("blob")
            .range(range)
            .send()
            .await
            .expect("ranged get");
        assert_eq!(got.content_length(), Some(want.len() as i64), "{range}");
        assert!(
            got.content_range().is_some_and(|r| r.ends_with("/10000")),
            "{range}"
        );
        assert_eq!(
            got.body.collect().await.expect("body").to_vec(),
            want,
            "{range}"
        );
    }
    let err = s3
        .get_object()
        .bucket("photos")
        .key("blob")
        .range("bytes=20000-")
        .send()
        .await
        .expect_err("beyond the end");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(416));
}

#[tokio::test]
async fn multipart_upload_joins_parts_with_an_md5_of_md5s_etag() {
    let fx = Fixture::start().await;
    let s3 = fx.client(&fx.photos);
    let part1 = pattern(5 * 1024 * 1024, 1);
    let part2 = pattern(1234, 2);
    let created = s3
        .create_multipart_upload()
        .bucket("photos")
        .key("big.bin")
        .content_type("application/x-test")
        .send()
        .await
        .expect("create upload");
    let upload_id = created.upload_id().expect("upload id").to_owned();
    let mut completed = Vec::new();
    for (n, part) in [(1, &part1), (2, &part2)] {
        let out = s3
            .upload_part()
            .bucket("photos")
            .key("big.bin")
            .upload_id(&upload_id)
            .part_number(n)
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .expect("upload part");
        assert_eq!(out.e_tag(), Some(format!("\"{}\"", md5_hex(part)).as_str()));
        completed.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().expect("etag"))
                .build(),
        );
    }
    let listed = s3
        .list_parts()
        .bucket("photos")
        .key("big.bin")
        .upload_id(&upload_id)
        .send()
        .await
        .expect("list parts");
    let sizes: Vec<_> = listed
        .parts()
        .iter()
        .map(|p| (p.part_number(), p.size()))
        .collect();
    assert_eq!(
        sizes,
        [(Some(1), Some(part1.len() as i64)), (Some(2), Some(1234))]
    );

    let done = s3
        .complete_multipart_upload()
        .bucket("photos")
        .key("big.bin")
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .expect("complete");
    let mut md5s = Vec::new();
    md5s.extend(Md5::digest(&part1));
    md5s.extend(Md5::digest(&part2));
    assert_eq!(
        done.e_tag(),
        Some(format!("\"{}-2\"", md5_hex(&md5s)).as_str())
    );

    let whole = get_bytes(&s3, "photos", "big.bin").await;
    assert_eq!(whole.len(), part1.len() + part2.len());
    assert!(whole[..part1.len()] == part1[..] && whole[part1.len()..] == part2[..]);
    let head = s3
        .head_object()
        .bucket("photos")
        .key("big.bin")
        .send()
        .await
        .expect("head");
    assert_eq!(head.content_type(), Some("application/x-test"));

    // The upload is gone once completed.
    let err = s3
        .list_parts()
        .bucket("photos")
        .key("big.bin")
        .upload_id(&upload_id)
        .send()
        .await
        .expect_err("completed upload");
    assert!(format!("{:?}", err.into_service_error()).contains("NoSuchUpload"));
}

#[tokio::test]
async fn multipart_abort_and_small_parts_follow_s3_rules() {
    let fx = Fixture::start().await;
    let s3 = fx.client(&fx.photos);
    let id = s3
        .create_multipart_upload()
        .bucket("photos")
        .key("small")
        .send()
        .await
        .expect("create")
        .upload_id()
        .expect("id")
        .to_owned();
    let mut parts = Vec::new();
    for n in 1..=2 {
        let out = s3
            .upload_part()
            .bucket("photos")
            .key("small")
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from_static(b"tiny"))
            .send()
            .await
            .expect("part");
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().expect("etag"))
                .build(),
        );
    }
    let err = s3
        .complete_multipart_upload()
        .bucket("photos")
        .key("small")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect_err("first part below 5 MiB");
    assert!(format!("{:?}", err.into_service_error()).contains("EntityTooSmall"));

    s3.abort_multipart_upload()
        .bucket("photos")
        .key("small")
        .upload_id(&id)
        .send()
        .await
        .expect("abort");
    let err = s3
        .upload_part()
        .bucket("photos")
        .key("small")
        .upload_id(&id)
        .part_number(3)
        .body(ByteStream::from_static(b"late"))
        .send()
        .await
        .expect_err("aborted upload");
    assert!(format!("{:?}", err.into_service_error()).contains("NoSuchUpload"));
    let listed = s3
        .list_objects_v2()
        .bucket("photos")
        .send()
        .await
        .expect("list");
    assert!(
        listed.contents().is_empty(),
        "an aborted upload leaves no object"
    );
}

#[tokio::test]
async fn a_key_of_one_bucket_is_refused_on_another() {
    let fx = Fixture::start().await;
    let photos = fx.client(&fx.photos);
    photos
        .put_object()
        .bucket("photos")
        .key("mine")
        .body(ByteStream::from_static(b"secret"))
        .send()
        .await
        .expect("own bucket");
    let backups_key_on_photos = fx.client(&fx.backups);
    for attempt in ["get", "put", "list"] {
        let err = match attempt {
            "get" => backups_key_on_photos
                .get_object()
                .bucket("photos")
                .key("mine")
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("{:?}", e.into_service_error())),
            "put" => backups_key_on_photos
                .put_object()
                .bucket("photos")
                .key("theirs")
                .body(ByteStream::from_static(b"x"))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("{:?}", e.into_service_error())),
            _ => backups_key_on_photos
                .list_objects_v2()
                .bucket("photos")
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("{:?}", e.into_service_error())),
        };
        let err = err.expect_err(attempt);
        assert!(err.contains("AccessDenied"), "{attempt}: {err}");
    }
    // ListBuckets shows a key its own bucket only.
    let own = backups_key_on_photos
        .list_buckets()
        .send()
        .await
        .expect("list buckets");
    let names: Vec<_> = own.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["backups"]);

    // A key removed from the ring (a deleted bucket) opens nothing.
    fx.keys.remove_bucket("photos");
    let err = photos
        .get_object()
        .bucket("photos")
        .key("mine")
        .send()
        .await
        .expect_err("revoked key");
    assert!(format!("{:?}", err.into_service_error()).contains("InvalidAccessKeyId"));
}

#[tokio::test]
async fn copies_keep_or_replace_metadata_and_stay_in_their_bucket() {
    let fx = Fixture::start().await;
    let s3 = fx.client(&fx.photos);
    let body = pattern(3 << 20, 7);
    s3.put_object()
        .bucket("photos")
        .key("originals/cat.jpg")
        .content_type("image/jpeg")
        .metadata("camera", "x100")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put");

    let copied = s3
        .copy_object()
        .bucket("photos")
        .key("thumbs/cat.jpg")
        .copy_source("photos/originals/cat.jpg")
        .send()
        .await
        .expect("copy");
    assert_eq!(
        copied.copy_object_result().and_then(|r| r.e_tag()),
        Some(format!("\"{}\"", md5_hex(&body)).as_str())
    );
    let head = s3
        .head_object()
        .bucket("photos")
        .key("thumbs/cat.jpg")
        .send()
        .await
        .expect("head copy");
    assert_eq!(head.content_type(), Some("image/jpeg"));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("camera"))
            .map(String::as_str),
        Some("x100")
    );
    assert_eq!(get_bytes(&s3, "photos", "thumbs/cat.jpg").await, body);

    // REPLACE takes the request's type and metadata, also onto the object itself.
    s3.copy_object()
        .bucket("photos")
        .key("originals/cat.jpg")
        .copy_source("photos/originals/cat.jpg")
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .content_type("image/webp")
        .metadata("owner", "ada")
        .send()
        .await
        .expect("copy onto itself with new metadata");
    let head = s3
        .head_object()
        .bucket("photos")
        .key("originals/cat.jpg")
        .send()
        .await
        .expect("head");
    assert_eq!(head.content_type(), Some("image/webp"));
    let metadata = head.metadata().cloned().unwrap_or_default();
    assert_eq!(metadata.get("owner").map(String::as_str), Some("ada"));
    assert!(!metadata.contains_key("camera"), "{metadata:?}");
    assert_eq!(get_bytes(&s3, "photos", "originals/cat.jpg").await, body);

    // Refusals: onto itself unchanged, a missing source, another bucket's object.
    let err = s3
        .copy_object()
        .bucket("photos")
        .key("thumbs/cat.jpg")
        .copy_source("photos/thumbs/cat.jpg")
        .send()
        .await
        .expect_err("copy onto itself unchanged");
    assert!(
        format!("{:?}", err.into_service_error()).contains("InvalidRequest"),
        "copy onto itself"
    );
    let err = s3
        .copy_object()
        .bucket("photos")
        .key("x")
        .copy_source("photos/missing")
        .send()
        .await
        .expect_err("missing source");
    assert!(format!("{:?}", err.into_service_error()).contains("NoSuchKey"));
    let backups = fx.client(&fx.backups);
    backups
        .put_object()
        .bucket("backups")
        .key("db.dump")
        .body(ByteStream::from_static(b"private"))
        .send()
        .await
        .expect("put backup");
    let err = s3
        .copy_object()
        .bucket("photos")
        .key("stolen")
        .copy_source("backups/db.dump")
        .send()
        .await
        .expect_err("another bucket's object");
    assert!(format!("{:?}", err.into_service_error()).contains("AccessDenied"));
    let err = s3
        .head_object()
        .bucket("photos")
        .key("stolen")
        .send()
        .await
        .expect_err("nothing was copied");
    assert!(err.into_service_error().is_not_found());
}

#[tokio::test]
async fn virtual_host_style_addressing_reaches_the_bucket() {
    let fx = Fixture::start().await;
    let s3 = client_for(&format!("http://localhost:{}", fx.port), &fx.photos, false);
    s3.put_object()
        .bucket("photos")
        .key("vh.txt")
        .body(ByteStream::from_static(b"virtual"))
        .send()
        .await
        .expect("virtual-host put");
    assert_eq!(get_bytes(&s3, "photos", "vh.txt").await, b"virtual");
    // The same object through path-style: one bucket, two addressing styles.
    assert_eq!(
        get_bytes(&fx.client(&fx.photos), "photos", "vh.txt").await,
        b"virtual"
    );
}

#[tokio::test]
async fn presigned_get_and_put_work_and_tampered_or_expired_urls_are_refused() {
    let fx = Fixture::start().await;
    let http = reqwest::Client::new();
    let sign = |method, key: &str, secs| {
        presign(
            &fx.endpoint(),
            kiln_s3::REGION,
            &fx.photos,
            key,
            method,
            Duration::from_secs(secs),
            SystemTime::now(),
        )
        .expect("presign")
    };

    let put_url = sign(PresignMethod::Put, "shared/report.txt", 300);
    let put = http
        .put(&put_url)
        .body("via presigned PUT")
        .send()
        .await
        .expect("put");
    assert_eq!(
        put.status(),
        200,
        "{}",
        put.text().await.unwrap_or_default()
    );

    let get_url = sign(PresignMethod::Get, "shared/report.txt", 300);
    let got = http.get(&get_url).send().await.expect("get");
    assert_eq!(got.status(), 200);
    assert_eq!(got.text().await.expect("text"), "via presigned PUT");

    // Tampering with the key, the expiry or the signature breaks the signature.
    let tampered = [
        get_url.replace("report.txt", "other.txt"),
        get_url.replace("X-Amz-Expires=300", "X-Amz-Expires=900"),
        {
            let (head, sig) = get_url.rsplit_once("X-Amz-Signature=").expect("signature");
            let flipped = if sig.starts_with('0') { "1" } else { "0" };
            format!("{head}X-Amz-Signature={flipped}{}", &sig[1..])
        },
    ];
    for url in tampered {
        let answer = http.get(&url).send().await.expect("tampered get");
        assert_eq!(answer.status(), 403, "{url}");
        let xml = answer.text().await.expect("text");
        assert!(xml.contains("<Code>SignatureDoesNotMatch</Code>"), "{xml}");
    }
    // A GET URL does not allow a PUT.
    let answer = http
        .put(&get_url)
        .body("overwrite")
        .send()
        .await
        .expect("put with get url");
    assert_eq!(answer.status(), 403);

    let short = sign(PresignMethod::Get, "shared/report.txt", 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer = http.get(&short).send().await.expect("expired get");
    assert_eq!(answer.status(), 403);
    let xml = answer.text().await.expect("text");
    assert!(
        xml.contains("<Code>AccessDenied</Code>") && xml.contains("expired"),
        "{xml}"
    );
}

#[tokio::test]
async fn deleting_a_bucket_deletes_its_objects() {
    let fx = Fixture::start().await;
    let s3 = fx.client(&fx.photos);
    put_tiny(&s3, "gone-soon").await;
    fx.store
        .delete_bucket("photos")
        .await
        .expect("delete bucket");
    let err = s3
        .get_object()
        .bucket("photos")
        .key("gone-soon")
        .send()
        .await
        .expect_err("no bucket");
    assert!(format!("{:?}", err.into_service_error()).contains("NoSuchBucket"));
    fx.store
        .create_bucket("photos")
        .await
        .expect("same name again");
    let listed = s3
        .list_objects_v2()
        .bucket("photos")
        .send()
        .await
        .expect("list");
    assert!(
        listed.contents().is_empty(),
        "a re-created bucket starts empty"
    );
}

#[tokio::test]
async fn a_client_hanging_up_mid_put_leaves_nothing_behind() {
    use tokio::io::AsyncWriteExt;
    let fx = Fixture::start().await;
    let url = presign(
        &fx.endpoint(),
        kiln_s3::REGION,
        &fx.photos,
        "half.bin",
        PresignMethod::Put,
        Duration::from_secs(60),
        SystemTime::now(),
    )
    .expect("presign");
    let path_and_query = url
        .split_once(&fx.endpoint())
        .expect("url under endpoint")
        .1;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", fx.port))
        .await
        .expect("connect");
    let head = format!(
        "PUT {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\r\n",
        fx.port,
        10 << 20
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    conn.write_all(&vec![7u8; 1 << 20])
        .await
        .expect("first MiB");
    let objects = fx.dir.path().join("s3/buckets/photos/objects");
    let temp_count = || {
        std::fs::read_dir(&objects)
            .expect("objects dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            })
            .count()
    };
    let mut waited = 0;
    while temp_count() == 0 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(temp_count(), 1, "the upload is being written");
    drop(conn);
    let mut waited = 0;
    while temp_count() > 0 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(temp_count(), 0, "the abandoned upload's file is gone");
    let err = fx
        .client(&fx.photos)
        .head_object()
        .bucket("photos")
        .key("half.bin")
        .send()
        .await
        .expect_err("no object");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));
}

#[tokio::test]
async fn a_batch_delete_reports_a_key_it_cannot_delete_and_deletes_the_rest() {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    let fx = Fixture::start().await;
    let s3 = fx.client(&fx.photos);
    for key in ["first", "stuck", "last"] {
        put_tiny(&s3, key).await;
    }
    // An immutable file cannot be unlinked, not even by root: a disk that refuses one key.
    let stuck = fx.dir.path().join("s3/buckets/photos/objects/stuck");
    // A test tool on a test file: nothing of the platform's environment to keep from it.
    #[allow(clippy::disallowed_methods)]
    let chattr = |flag: &str| {
        let status = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&stuck)
            .status()
            .expect("run chattr");
        assert!(status.success(), "chattr {flag} {}", stuck.display());
    };
    chattr("+i");
    let ids = ["first", "stuck", "last"].map(|key| {
        ObjectIdentifier::builder()
            .key(key)
            .build()
            .expect("object id")
    });
    let answer = s3
        .delete_objects()
        .bucket("photos")
        .delete(
            Delete::builder()
                .set_objects(Some(ids.to_vec()))
                .build()
                .expect("delete"),
        )
        .send()
        .await;
    chattr("-i");
    let answer = answer.expect("a batch delete answers even when a key fails");
    let deleted: Vec<_> = answer.deleted().iter().filter_map(|d| d.key()).collect();
    assert_eq!(deleted, ["first", "last"]);
    let failed: Vec<_> = answer
        .errors()
        .iter()
        .map(|e| (e.key().unwrap_or_default(), e.code().unwrap_or_default()))
        .collect();
    assert_eq!(failed, [("stuck", "InternalError")]);
    let listed = s3
        .list_objects_v2()
        .bucket("photos")
        .send()
        .await
        .expect("list");
    let left: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        left,
        ["stuck"],
        "the refused key stays, the others are gone"
    );
}

#[tokio::test]
async fn a_client_sending_its_whole_body_before_reading_gets_the_s3_refusal() -> std::io::Result<()>
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // As Python's http.client (boto3) does: the whole body goes before the answer is read.
    // This signature is refused before the body is read, which is 32 MiB: more than socket
    // buffers hold, so unless the endpoint reads on, the write meets a reset.
    let f = Fixture::start().await;
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", f.port)).await?;
    let body = vec![b'x'; 32 << 20];
    let head = format!(
        "PUT /photos/big.bin HTTP/1.1\r\nhost: 127.0.0.1\r\nx-amz-date: 20261205T000000Z\r\n\
         x-amz-content-sha256: UNSIGNED-PAYLOAD\r\nauthorization: AWS4-HMAC-SHA256 \
         Credential=NOBODY/20261205/us-east-1/s3/aws4_request, \
         SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=00\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(&body).await?;
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("<Code>"), "an S3 error document: {answer}");
    Ok(())
}
