//! The route table: which host goes to which backend, and whose brand answers for unknown hosts.
//!
//! A [`RouteTable`] is an immutable snapshot; [`Routes`] is the shared handle through which the
//! control plane publishes a new one. A request takes the snapshot current when it starts and
//! keeps it to the end, so a swap never changes an answer halfway and never drops a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// How an org presents itself on every answer the edge makes on its behalf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Brand {
    /// Display name, e.g. "Clinic Cloud". Empty for the neutral fallback brand.
    pub name: String,
    /// Accent colour as `#rgb` or `#rrggbb`; anything else falls back to a neutral colour.
    pub primary_color: Option<String>,
    /// Absolute `http(s)` URL of a logo image; other schemes are ignored.
    pub logo_url: Option<String>,
    /// Absolute `http(s)` or `mailto:` URL end users can turn to; other schemes are ignored.
    pub support_url: Option<String>,
}

/// What kind of address a route serves; informational for logs and future policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `{slug}.sandbox.{base}`: a sandbox's dev server.
    Preview,
    /// `{slug}.{base}`: the live deployment.
    Production,
    /// A verified custom domain pointing at the live deployment.
    CustomDomain,
}

/// Where requests for a route go right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Machines answering HTTP/1.1 at these addresses, used round-robin. An empty list is
    /// treated like [`Backend::Stopped`].
    Ready(Vec<SocketAddr>),
    /// The app is booting: answer with a branded loading page that retries by itself.
    Starting,
    /// The app is not running: answer with a branded "not running" page.
    Stopped,
}

/// One host and where it leads.
#[derive(Debug, Clone)]
pub struct Route {
    /// The host, lowercase, without port or trailing dot (normalised again on insertion).
    pub host: String,
    /// What kind of address this is.
    pub kind: RouteKind,
    /// The org that owns the route.
    pub org_id: String,
    /// The brand used for pages the edge makes for this host.
    pub brand: Arc<Brand>,
    /// Where requests go.
    pub backend: Backend,
}

/// An org's base domain, used only to brand 404s for unknown hosts beneath it.
#[derive(Debug, Clone)]
pub struct OrgSite {
    /// The org.
    pub org_id: String,
    /// The base domain, e.g. `apps.clinic.example`; it and every host under it belong to the org.
    pub base_domain: String,
    /// The org's brand.
    pub brand: Arc<Brand>,
}

/// Why a route table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouteTableError {
    /// Two routes claim the same host; which one wins would be arbitrary.
    #[error("host {0:?} has more than one route")]
    DuplicateHost(String),
    /// Two orgs claim the same base domain.
    #[error("base domain {0:?} belongs to more than one org")]
    DuplicateBaseDomain(String),
    /// A host or base domain is empty or has characters no host name can have.
    #[error("{0:?} is not a valid host name")]
    InvalidHost(String),
    /// An upstream is not `IP:PORT`.
    #[error("{0:?} is not an upstream address (IP:PORT)")]
    InvalidAddress(String),
    /// A route kind no edge knows.
    #[error("{0:?} is not a route kind")]
    InvalidKind(String),
}

/// A route plus its round-robin cursor; the cursor lives with the snapshot so a swap resets it.
#[derive(Debug)]
struct RouteEntry {
    route: Route,
    next: AtomicUsize,
}

/// An immutable snapshot of every route and every org base domain.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: HashMap<String, RouteEntry>,
    sites: HashMap<String, OrgSite>,
}

/// What a host resolves to in one snapshot.
#[derive(Debug)]
pub enum Resolution<'a> {
    /// The host has a route.
    Route(&'a Route),
    /// No route; the org whose base domain is the longest suffix of the host, if any.
    Unknown(Option<&'a OrgSite>),
}

impl RouteTable {
    /// Builds a snapshot, normalising every host and base domain. Hosts and base domains are
    /// checked like user input: the control plane generated them, but a bad one must fail
    /// here, loudly, rather than route wrongly.
    pub fn new(
        routes: impl IntoIterator<Item = Route>,
        sites: impl IntoIterator<Item = OrgSite>,
    ) -> Result<RouteTable, RouteTableError> {
        let mut table = RouteTable::default();
        for mut route in routes {
            let host = normalize_host(&route.host)
                .ok_or_else(|| RouteTableError::InvalidHost(route.host.clone()))?;
            if table.routes.contains_key(&host) {
                return Err(RouteTableError::DuplicateHost(host));
            }
            route.host.clone_from(&host);
            table.routes.insert(
                host,
                RouteEntry {
                    route,
                    next: AtomicUsize::new(0),
                },
            );
        }
        for mut site in sites {
            let base = normalize_host(&site.base_domain)
                .ok_or_else(|| RouteTableError::InvalidHost(site.base_domain.clone()))?;
            if table.sites.contains_key(&base) {
                return Err(RouteTableError::DuplicateBaseDomain(base));
            }
            site.base_domain.clone_from(&base);
            table.sites.insert(base, site);
        }
        Ok(table)
    }

    /// Number of routes in the snapshot.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the snapshot has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Resolves a host that is already normalised (see [`normalize_host`]).
    pub fn resolve(&self, host: &str) -> Resolution<'_> {
        match self.routes.get(host) {
            Some(entry) => Resolution::Route(&entry.route),
            None => Resolution::Unknown(self.site_for(host)),
        }
    }

    /// Whether the edge answers for `host` (normalised) itself: it has a route, or it lies
    /// under an org's base domain and gets that org's pages.
    pub(crate) fn serves(&self, host: &str) -> bool {
        self.routes.contains_key(host) || self.site_for(host).is_some()
    }

    /// The org site whose base domain is the longest suffix of `host` on a label boundary.
    pub fn site_for(&self, host: &str) -> Option<&OrgSite> {
        // Walking from the full host towards the root finds the longest match first, in as
        // many look-ups as the host has labels, however many orgs there are.
        let mut candidate = host;
        loop {
            if let Some(site) = self.sites.get(candidate) {
                return Some(site);
            }
            candidate = candidate.split_once('.')?.1;
        }
    }

    /// The host's route with the next address of its machines, round-robin, in one look-up.
    /// `None` when the host has no route or its backend is not ready.
    pub(crate) fn pick(&self, host: &str) -> Option<(&Route, SocketAddr)> {
        let entry = self.routes.get(host)?;
        match &entry.route.backend {
            Backend::Ready(addrs) if !addrs.is_empty() => {
                let i = entry.next.fetch_add(1, Ordering::Relaxed);
                Some((&entry.route, addrs[i % addrs.len()]))
            }
            _ => None,
        }
    }
}

/// The shared handle on the current route table.
///
/// Cloning is cheap; every clone sees the same table. The lock guards only the swap of one
/// `Arc`, never a request, so readers and the publisher hold it for nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    current: Arc<RwLock<Arc<RouteTable>>>,
}

impl Routes {
    /// A handle whose table is `table`.
    pub fn new(table: RouteTable) -> Routes {
        Routes {
            current: Arc::new(RwLock::new(Arc::new(table))),
        }
    }

    /// Replaces the table atomically. Requests already running keep the snapshot they took.
    pub fn publish(&self, table: RouteTable) {
        let table = Arc::new(table);
        // A poisoned lock only means a panic elsewhere while holding it; the guarded value is
        // a single `Arc`, which cannot be left half-written, so carrying on is safe.
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = table;
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<RouteTable> {
        let guard = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&guard)
    }
}

/// Normalises a `Host` header value or an `:authority`: strips the port, lowercases, strips one
/// trailing dot. `None` when nothing usable is left or the value has characters no host name
/// (or bracketed IPv6 literal) has, so junk is refused rather than looked up.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: "[::1]" or "[::1]:8080"; keep the brackets so it cannot collide with
        // a name.
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || is_port_suffix(after)) {
            return None;
        }
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        return Some(format!("[{}]", inside.to_ascii_lowercase()));
    } else {
        match raw.rsplit_once(':') {
            Some((name, _)) if is_port_suffix(&raw[name.len()..]) => name,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || host.len() > 253
        || host.starts_with('.')
        || host.contains("..")
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// Whether `s` is `:` followed by 1–5 digits.
fn is_port_suffix(s: &str) -> bool {
    s.strip_prefix(':').is_some_and(|digits| {
        !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_host_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("app.example", Some("app.example")),
            ("APP.Example", Some("app.example")),
            ("app.example:8080", Some("app.example")),
            ("app.example.", Some("app.example")),
            ("App.Example.:443", Some("app.example")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("[::1]:8080", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("", None),
            (":80", None),
            (".", None),
            ("a..b", None),
            ("app.example:", None),
            ("app.example:http", None),
            ("app example", None),
            ("user@app.example", None),
            ("app.example/path", None),
            ("[::1", None),
            ("[::1]x", None),
            ("a:b:c", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_host(input).as_deref(), *want, "input {input:?}");
        }
    }

    fn brand(name: &str) -> Arc<Brand> {
        Arc::new(Brand {
            name: name.into(),
            ..Brand::default()
        })
    }

    fn route(host: &str, org: &str, backend: Backend) -> Route {
        Route {
            host: host.into(),
            kind: RouteKind::Production,
            org_id: org.into(),
            brand: brand(org),
            backend,
        }
    }

    fn site(base: &str, org: &str) -> OrgSite {
        OrgSite {
            org_id: org.into(),
            base_domain: base.into(),
            brand: brand(org),
        }
    }

    #[test]
    fn longest_suffix_wins_and_only_on_label_boundaries() {
        let table = RouteTable::new(
            [route("App.A.example.", "a", Backend::Stopped)],
            [
                site("a.example", "a"),
                site("sandbox.a.example", "a-sandbox"),
                site("b.example", "b"),
            ],
        )
        .expect("valid table");
        assert!(matches!(table.resolve("app.a.example"), Resolution::Route(r) if r.org_id == "a"));
        let org = |host: &str| match table.resolve(host) {
            Resolution::Unknown(site) => site.map(|s| s.org_id.clone()),
            Resolution::Route(_) => panic!("{host} unexpectedly routed"),
        };
        assert_eq!(org("x.a.example").as_deref(), Some("a"));
        assert_eq!(org("a.example").as_deref(), Some("a"));
        assert_eq!(org("x.sandbox.a.example").as_deref(), Some("a-sandbox"));
        assert_eq!(org("x.b.example").as_deref(), Some("b"));
        // "evila.example" ends with "a.example" as a string but not as a domain.
        assert_eq!(org("evila.example"), None);
        assert_eq!(org("other.test"), None);
    }

    #[test]
    fn duplicates_and_junk_are_refused() {
        assert!(matches!(
            RouteTable::new(
                [
                    route("x.test", "a", Backend::Stopped),
                    route("X.test.", "b", Backend::Stopped)
                ],
                []
            ),
            Err(RouteTableError::DuplicateHost(_))
        ));
        assert!(matches!(
            RouteTable::new([], [site("a.test", "a"), site("A.test", "b")]),
            Err(RouteTableError::DuplicateBaseDomain(_))
        ));
        assert!(matches!(
            RouteTable::new([route("bad host", "a", Backend::Stopped)], []),
            Err(RouteTableError::InvalidHost(_))
        ));
    }

    #[test]
    fn round_robin_cycles_addresses() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let table = RouteTable::new(
            [
                route("rr.test", "o", Backend::Ready(vec![a, b])),
                route("empty.test", "o", Backend::Ready(vec![])),
            ],
            [],
        )
        .expect("valid table");
        let picks: Vec<_> = (0..4)
            .filter_map(|_| table.pick("rr.test").map(|(_, addr)| addr))
            .collect();
        assert_eq!(picks, vec![a, b, a, b]);
        assert!(table.pick("empty.test").is_none());
        assert!(table.pick("missing.test").is_none());
    }

    #[test]
    fn publish_swaps_but_held_snapshots_stay() {
        let routes = Routes::default();
        let before = routes.current();
        routes.publish(
            RouteTable::new([route("x.test", "a", Backend::Stopped)], []).expect("valid table"),
        );
        assert!(before.is_empty());
        assert_eq!(routes.clone().current().len(), 1);
    }
}
