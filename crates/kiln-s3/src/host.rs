//! Virtual-host-style addressing: `bucket.<domain>` names the bucket in the host. Hosts that
//! are IP addresses or not under a configured domain are path-style.

use s3s::S3Result;
use s3s::host::{S3Host, VirtualHost};

/// The domains whose subdomains are buckets.
#[derive(Clone, Debug)]
pub struct VirtualHosts {
    domains: Vec<String>,
}

impl VirtualHosts {
    /// Buckets are addressed as `bucket.<d>` for each domain `d` (lowercase, no port).
    pub fn new(domains: impl IntoIterator<Item = String>) -> VirtualHosts {
        let mut domains: Vec<String> = domains.into_iter().map(|d| d.to_lowercase()).collect();
        // The longest domain wins: `b.s3.localhost` is bucket `b` under `s3.localhost`.
        domains.sort_by_key(|d| std::cmp::Reverse(d.len()));
        VirtualHosts { domains }
    }

    /// The bucket a `Host` header names, if it is virtual-host-style.
    pub fn bucket_of<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = strip_port(host);
        self.domains.iter().find_map(|domain| {
            let bucket = name.strip_suffix(domain.as_str())?.strip_suffix('.')?;
            (!bucket.is_empty() && !bucket.contains('.')).then_some(bucket)
        })
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

impl S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        Ok(match self.bucket_of(host) {
            Some(bucket) => VirtualHost::new(strip_port(host)).with_bucket(bucket),
            None => VirtualHost::new(host),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_read_from_subdomains_of_configured_domains() {
        let hosts = VirtualHosts::new(["localhost".to_owned(), "s3.example.test".to_owned()]);
        let cases = [
            ("photos.localhost:7090", Some("photos")),
            ("photos.localhost", Some("photos")),
            ("localhost:7090", None),
            ("photos.s3.example.test", Some("photos")),
            ("s3.example.test", None),
            ("a.b.localhost", None),
            ("photos.elsewhere.test", None),
            ("127.0.0.1:7090", None),
        ];
        for (host, bucket) in cases {
            assert_eq!(hosts.bucket_of(host), bucket, "{host}");
        }
    }
}
