//! Client addresses: the socket peer, or the `X-Forwarded-For` hop a trusted proxy added
//! (DESIGN.md 6.5). A client can put anything in that header; only what our own proxies append
//! to it is believed.

use std::net::IpAddr;
use std::str::FromStr;

/// An address block (`10.0.0.0/8`, `::1/128`, or one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (address, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| ())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| ())?,
            None => max,
        };
        if prefix > max {
            return Err(());
        }
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.network), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer itself unless it is a trusted proxy; then the nearest
/// `X-Forwarded-For` hop (from the right) that is not one of ours. Unparsable hops stop the walk
/// at the last trusted address.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = forwarded_for.unwrap_or_default().split(',').rev();
    for hop in hops {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = canonical(ip);
        if !is_trusted(client) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.1.2.3")) && !net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.0.0.1")));
        let one: Cidr = "192.168.1.7".parse().unwrap();
        assert!(one.contains(ip("192.168.1.7")) && !one.contains(ip("192.168.1.8")));
        assert!("::1/128".parse::<Cidr>().unwrap().contains(ip("::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    /// DESIGN.md section 9, item 11 (in part): the limiter trusted `X-Forwarded-For`.
    #[test]
    fn regression_11_forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        // A direct client cannot choose its key.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("1.2.3.4"), &proxies),
            ip("203.0.113.9")
        );
        // Through our proxy: the hop it appended, not what the client prepended.
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("1.2.3.4, 198.51.100.7"), &proxies),
            ip("198.51.100.7")
        );
        // Through two of ours.
        assert_eq!(
            client_address(
                ip("10.0.0.2"),
                Some("6.6.6.6, 198.51.100.7, 10.0.0.3"),
                &proxies
            ),
            ip("198.51.100.7")
        );
        // No proxies configured: never believed.
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("1.2.3.4"), &[]),
            ip("10.0.0.2")
        );
        // Garbage in the header: the proxy itself.
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("not-an-ip"), &proxies),
            ip("10.0.0.2")
        );
    }
}
