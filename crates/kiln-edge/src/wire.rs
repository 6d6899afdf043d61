//! Route tables from the control plane's published [`RouteSet`], the one format in which
//! edges receive routes, in process or over the API.

use std::net::SocketAddr;
use std::sync::Arc;

use kiln_api::edge::{BackendEntry, RouteSet};

use crate::routes::{Backend, Brand, OrgSite, Route, RouteKind, RouteTable, RouteTableError};

impl RouteTable {
    /// Builds a snapshot from a published route set, checking it like any other input.
    pub fn from_set(set: &RouteSet) -> Result<RouteTable, RouteTableError> {
        let mut routes = Vec::with_capacity(set.routes.len());
        for entry in &set.routes {
            let kind = match entry.kind.as_str() {
                "preview" => RouteKind::Preview,
                "production" => RouteKind::Production,
                "custom_domain" => RouteKind::CustomDomain,
                other => return Err(RouteTableError::InvalidKind(other.to_owned())),
            };
            let backend = match &entry.backend {
                BackendEntry::Ready { addrs } => Backend::Ready(
                    addrs
                        .iter()
                        .map(|a| {
                            a.parse::<SocketAddr>()
                                .map_err(|_| RouteTableError::InvalidAddress(a.clone()))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                BackendEntry::Starting => Backend::Starting,
                BackendEntry::Stopped => Backend::Stopped,
            };
            routes.push(Route {
                host: entry.host.clone(),
                kind,
                org_id: entry.org.clone(),
                brand: Arc::new(brand(&entry.brand)),
                backend,
            });
        }
        let sites = set.sites.iter().map(|site| OrgSite {
            org_id: site.org.clone(),
            base_domain: site.base_domain.clone(),
            brand: Arc::new(brand(&site.brand)),
        });
        RouteTable::new(routes, sites)
    }
}

fn brand(wire: &kiln_api::orgs::Brand) -> Brand {
    Brand {
        name: wire.name.clone(),
        primary_color: wire.primary_color.clone(),
        logo_url: wire.logo_url.clone(),
        support_url: wire.support_url.clone(),
    }
}

#[cfg(test)]
mod tests {
    use kiln_api::edge::{RouteEntry, SiteEntry};

    use super::*;
    use crate::Resolution;

    fn entry(host: &str, backend: BackendEntry) -> RouteEntry {
        RouteEntry {
            host: host.into(),
            kind: "preview".into(),
            org: "org_1".into(),
            brand: kiln_api::orgs::Brand {
                name: "Acme".into(),
                ..Default::default()
            },
            backend,
        }
    }

    #[test]
    fn sets_become_tables_and_bad_entries_are_refused() {
        let set = RouteSet {
            generation: 3,
            routes: vec![
                entry(
                    "a.sandbox.acme.test",
                    BackendEntry::Ready {
                        addrs: vec!["10.88.0.2:8000".into()],
                    },
                ),
                entry("b.sandbox.acme.test", BackendEntry::Starting),
            ],
            sites: vec![SiteEntry {
                org: "org_1".into(),
                base_domain: "acme.test".into(),
                brand: kiln_api::orgs::Brand {
                    name: "Acme".into(),
                    ..Default::default()
                },
            }],
        };
        let table = RouteTable::from_set(&set).expect("valid set");
        assert!(
            matches!(table.resolve("a.sandbox.acme.test"), Resolution::Route(r) if r.backend == Backend::Ready(vec!["10.88.0.2:8000".parse().expect("addr")]))
        );
        assert!(
            matches!(table.resolve("zzz.acme.test"), Resolution::Unknown(Some(site)) if site.brand.name == "Acme")
        );

        let mut bad = set.clone();
        bad.routes[0].backend = BackendEntry::Ready {
            addrs: vec!["not-an-address".into()],
        };
        assert!(matches!(
            RouteTable::from_set(&bad),
            Err(RouteTableError::InvalidAddress(_))
        ));
        let mut bad = set;
        bad.routes[0].kind = "sideways".into();
        assert!(matches!(
            RouteTable::from_set(&bad),
            Err(RouteTableError::InvalidKind(_))
        ));
    }
}
