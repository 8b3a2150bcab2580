//! The client's address: the peer, or `X-Forwarded-For` when the peer is a trusted proxy.

use std::net::IpAddr;

use ipnet::IpNet;

/// The address the visitor is identified by.
///
/// `X-Forwarded-For` is only believed when the direct peer is a trusted proxy; then the
/// right-most listed address that is not itself a trusted proxy is the client (entries
/// to its left could have been written by the client). Unparsable entries stop the walk.
pub(crate) fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for entry in header.rsplit(',') {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    canonical(client)
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(peer: &str, xff: Option<&str>, trusted: &[&str], expect: &str) {
        let trusted: Vec<IpNet> = trusted.iter().map(|t| t.parse().expect("cidr")).collect();
        let got = client_ip(peer.parse().expect("ip"), xff, &trusted);
        assert_eq!(got.to_string(), expect);
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        check("203.0.113.5", Some("198.51.100.1"), &[], "203.0.113.5");
        check("203.0.113.5", Some("198.51.100.1"), &["10.0.0.0/8"], "203.0.113.5");
        check("10.0.0.2", Some("198.51.100.1"), &["10.0.0.0/8"], "198.51.100.1");
        check("10.0.0.2", Some("6.6.6.6, 198.51.100.1, 10.0.0.9"), &["10.0.0.0/8"], "198.51.100.1");
        check("10.0.0.2", Some("garbage, 198.51.100.1"), &["10.0.0.0/8"], "198.51.100.1");
        check("10.0.0.2", Some("10.0.0.7"), &["10.0.0.0/8"], "10.0.0.7");
        check("10.0.0.2", None, &["10.0.0.0/8"], "10.0.0.2");
        check("::ffff:10.0.0.2", Some("2001:db8::1"), &["10.0.0.0/8"], "2001:db8::1");
    }
}
