//! "Is port P answering": TCP connect probes on loopback and on the machine's own addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use nix::net::if_::InterfaceFlags;

use crate::protocol::PortStatus;

/// How long one probe may take. Local connects are answered (or refused) in microseconds; the
/// bound only matters for an address that drops packets.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Probes `port` on loopback (IPv4 and IPv6) and on every non-loopback IPv4 address of the
/// machine's interfaces that are up, all at once.
pub async fn check(port: u16) -> PortStatus {
    let loopback = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let external = external_ipv4_addresses();
    let probes = loopback
        .iter()
        .chain(&external)
        .map(|ip| probe(SocketAddr::new(*ip, port)));
    let answers = futures::future::join_all(probes).await;
    let addresses: Vec<IpAddr> = loopback
        .iter()
        .chain(&external)
        .zip(answers)
        .filter_map(|(ip, answered)| answered.then_some(*ip))
        .collect();
    let on_loopback = addresses.iter().any(IpAddr::is_loopback);
    let elsewhere = addresses.iter().any(|ip| !ip.is_loopback());
    PortStatus {
        answering: on_loopback || elsewhere,
        loopback_only: on_loopback && !elsewhere,
        addresses,
    }
}

async fn probe(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The machine's IPv4 addresses other than loopback, on interfaces that are up.
fn external_ipv4_addresses() -> Vec<IpAddr> {
    let interfaces = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces,
        Err(errno) => {
            tracing::warn!(%errno, "cannot list network interfaces; probing loopback only");
            return Vec::new();
        }
    };
    let mut addresses: Vec<IpAddr> = interfaces
        .filter(|interface| interface.flags.contains(InterfaceFlags::IFF_UP))
        .filter_map(|interface| interface.address?.as_sockaddr_in().map(|sin| sin.ip()))
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(IpAddr::V4)
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loopback_listener_is_loopback_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let status = check(port).await;
        assert!(status.answering);
        assert!(status.loopback_only);
        assert_eq!(status.addresses, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);

        drop(listener);
        let status = check(port).await;
        assert!(!status.answering && !status.loopback_only);
    }

    #[tokio::test]
    async fn a_wildcard_listener_answers_everywhere() {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let status = check(port).await;
        assert!(status.answering);
        // A machine without a network has nothing but loopback to answer on.
        assert_eq!(status.loopback_only, external_ipv4_addresses().is_empty());
    }
}
