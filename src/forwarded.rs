//! Who is calling: the client address of a request, which is the TCP peer unless the peer is
//! a trusted proxy (`server.trusted_proxies`), in which case it is the rightmost
//! `X-Forwarded-For` entry that is not itself a trusted proxy.
//!
//! Walking from the right is what makes the header safe to believe: every entry right of the
//! answer was appended by a proxy we trust, and anything a caller wrote itself sits further
//! left and is never reached. A pure leaf: no I/O, no allocation per request; the address
//! feeds the failed-auth throttle (`rate_limit`) and the access log (`proxy`). The header
//! itself is never forwarded upstream (`upstream` builds its requests from scratch).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed (empty: none, the header is ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses one CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address (`192.0.2.7`); host bits
    /// are cleared.
    pub fn parse_entry(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map(|n| n.trunc())
            .map_err(|_| {
                format!("invalid CIDR {s:?}: expected e.g. 10.0.0.0/8, fd00::/8 or 192.0.2.7")
            })
    }

    /// A list of networks.
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(nets)
    }

    /// The networks, as configured.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address) is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request from TCP peer `peer` carrying `headers`.
    ///
    /// The peer, unless it is trusted; then the `X-Forwarded-For` entries (all header lines,
    /// in order) are walked from the right past trusted ones. The first untrusted entry is the
    /// client. An entry that is not an address ends the walk at the last trusted hop (that hop
    /// vouched for nothing better); when every entry is trusted, the leftmost is the client.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.0.is_empty() || !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        let entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|b| *b == b','));
        for entry in entries {
            let Some(ip) = parse_ip(entry) else {
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }
}

/// An address as proxies write it in `X-Forwarded-For`: `192.0.2.1`, `2001:db8::1`, and the
/// forms with a port some add (`192.0.2.1:4711`, `[2001:db8::1]:4711`). Canonical (an
/// IPv4-mapped IPv6 address becomes IPv4).
fn parse_ip(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim();
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            list.iter()
                .map(|s| TrustedProxies::parse_entry(s).unwrap())
                .collect(),
        )
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_or_no_list_ignores_the_header() {
        let h = xff(&["203.0.113.9"]);
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(t.client_ip(ip("192.0.2.1"), &h), ip("192.0.2.1"));
    }

    #[test]
    fn rightmost_untrusted_entry_wins() {
        let t = trusted(&["10.0.0.0/8", "fd00::/8"]);
        // The caller wrote 1.2.3.4 itself; the trusted proxy appended the real peer.
        let h = xff(&["1.2.3.4, 203.0.113.9, 10.1.1.1"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Several header lines count as one list, in order.
        let h = xff(&["1.2.3.4", "203.0.113.9", "fd00::7"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Ports and brackets, as some proxies write them.
        let h = xff(&["[2001:db8::5]:443"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("2001:db8::5"));
        let h = xff(&["198.51.100.3:1234"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.3"));
    }

    #[test]
    fn all_trusted_gives_the_leftmost_and_garbage_stops_the_walk() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = xff(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.9.9.9"));
        let h = xff(&["203.0.113.9, unknown, 10.1.1.1"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.1.1.1"));
        let h = xff(&["not-an-ip"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn mapped_addresses_count_as_ipv4() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = xff(&["::ffff:203.0.113.9"]);
        assert_eq!(t.client_ip(ip("::ffff:10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn entries_parse_as_cidr_or_address() {
        assert_eq!(
            TrustedProxies::parse_entry("10.1.2.3/8")
                .unwrap()
                .to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            TrustedProxies::parse_entry("192.0.2.7")
                .unwrap()
                .to_string(),
            "192.0.2.7/32"
        );
        assert!(TrustedProxies::parse_entry("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse_entry("proxy.local").is_err());
    }
}
