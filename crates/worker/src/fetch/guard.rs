//! SSRF guard: image URLs come from producers, so a URL must not make the worker reach into its
//! own network. Refused by default: loopback, private (RFC 1918, IPv6 ULA), link-local (which
//! holds the cloud metadata address 169.254.169.254), CGNAT, unspecified, multicast, broadcast
//! and documentation ranges, IPv4-mapped IPv6 forms of these, and any scheme but http/https.
//!
//! The check runs on the URL (literal IPs), after DNS resolution (a custom resolver, so a
//! hostname that resolves to a private address is refused before any connection), and on every
//! redirect hop. An explicit allow-list of networks (e.g. `127.0.0.0/8` for tests and a local
//! stack) overrides the refusal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use url::Url;

/// Why a URL or address was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("scheme {0:?} is not allowed (only http and https)")]
    Scheme(String),
    #[error("URL has no host")]
    NoHost,
    #[error("address {0} is {1} and not in the allow-list (--fetch-allow)")]
    Address(IpAddr, &'static str),
    #[error("host {0} resolves only to refused addresses: {1}")]
    Resolved(String, String),
}

/// The policy: which addresses may be fetched.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Arc<Vec<IpNet>>,
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata lives here)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("broadcast/multicast")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("shared address space (CGNAT)")
    } else if ip.is_documentation() || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) || o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("private (unique local, incl. fd00:ec2::254 metadata)")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("reserved")
    } else {
        None
    }
}

impl Guard {
    /// A guard that also allows the given networks.
    pub fn new(allow: Vec<IpNet>) -> Guard {
        Guard {
            allow: Arc::new(allow),
        }
    }

    /// Checks one address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        let class = match ip {
            IpAddr::V4(v4) => classify_v4(v4),
            IpAddr::V6(v6) => classify_v6(v6),
        };
        match class {
            Some(c) => Err(Refusal::Address(ip, c)),
            None => Ok(()),
        }
    }

    /// Checks a URL's scheme and, when the host is a literal address, the address.
    pub fn check_url(&self, url: &Url) -> Result<(), Refusal> {
        match url.scheme() {
            "http" | "https" => {}
            s => return Err(Refusal::Scheme(s.to_owned())),
        }
        match url.host() {
            None => Err(Refusal::NoHost),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }

    /// Keeps only allowed addresses; refuses when none is left.
    pub fn filter_resolved(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let (ok, bad): (Vec<_>, Vec<_>) = addrs
            .into_iter()
            .partition(|a| self.check_ip(a.ip()).is_ok());
        if ok.is_empty() {
            let list = bad
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Refusal::Resolved(host.to_owned(), list));
        }
        Ok(ok)
    }
}

/// A DNS resolver that applies the guard to every answer.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub guard: Guard,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ok = guard
                .filter_resolved(&host, addrs)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(g: &Guard, s: &str) -> bool {
        g.check_url(&Url::parse(s).unwrap()).is_err()
    }

    #[test]
    fn refuses_internal_addresses_by_default() {
        let g = Guard::default();
        for u in [
            "http://127.0.0.1/a.png",
            "http://10.1.2.3/a.png",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[::ffff:10.0.0.1]/",
            "ftp://example.com/a.png",
            "file:///etc/passwd",
        ] {
            assert!(refused(&g, u), "{u} should be refused");
        }
        assert!(!refused(&g, "https://93.184.216.34/a.png"));
        assert!(!refused(&g, "https://example.com/a.png"));
    }

    #[test]
    fn allow_list_reopens_loopback_only() {
        let g = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(!refused(&g, "http://127.0.0.1:8080/a.png"));
        assert!(refused(&g, "http://10.0.0.1/a.png"));
    }

    #[test]
    fn resolved_addresses_are_filtered() {
        let g = Guard::default();
        let a: SocketAddr = "10.0.0.1:0".parse().unwrap();
        let b: SocketAddr = "93.184.216.34:0".parse().unwrap();
        assert_eq!(g.filter_resolved("h", vec![a, b]).unwrap(), vec![b]);
        assert!(matches!(
            g.filter_resolved("h", vec![a]),
            Err(Refusal::Resolved(..))
        ));
    }
}
