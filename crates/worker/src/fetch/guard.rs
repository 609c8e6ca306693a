//! SSRF guard: image URLs come from producers, so a URL must not make the worker reach into its
//! own network (loopback services, the pod network, the cloud metadata endpoint).
//!
//! # What is refused
//!
//! Every block of the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890) whose
//! "Globally Reachable" column is False, N/A or blank, except the more specific entries IANA marks
//! globally reachable inside them (the most specific entry decides, as the registry says). On top
//! of the registries: multicast, deprecated IPv6 site-local and IPv4-compatible addresses, IPv6
//! outside global unicast `2000::/3`, and cloud metadata addresses that IANA does not cover
//! (Azure's `168.63.129.16`). The tables are constants below, each entry citing its RFC.
//!
//! The tables are written out here rather than taken from a crate: std's `is_global` is unstable,
//! and the small crates we looked at (`ip_rfc`, `iprfc`, `ipext`) give a yes/no without the
//! registry entry's name, which the refusal carries so that an operator can see why a URL was
//! refused, and do not judge NAT64 addresses by the IPv4 address inside. `ipnet` (already used
//! for `--fetch-allow`) does the containment.
//!
//! # Addresses that embed an IPv4 address
//!
//! An IPv4-mapped address (`::ffff:a.b.c.d`) reaches `a.b.c.d` through a dual-stack socket, and
//! a NAT64 address (`64:ff9b::a.b.c.d`) reaches it through the translator of an IPv6-only
//! cluster with DNS64. Both are judged by the IPv4 address inside: the NAT64 form of a public
//! address is a legitimate image host, that of a private one is an SSRF hole. The other forms
//! that embed or tunnel to an IPv4 address (IPv4-compatible `::a.b.c.d`, NAT64 local-use, 6to4,
//! Teredo) are refused outright, as the registry marks them not globally reachable or N/A.
//!
//! A cluster whose DNS64 uses a network-specific prefix (RFC 6052 §2.2: /32, /40, /48, /56, /64
//! or /96, often inside the operator's own unique-local space) names it with
//! `--fetch-nat64-prefix`; addresses under it are judged by the IPv4 address embedded at the
//! position that prefix length gives, like the well-known prefix's.
//!
//! # Where the check runs
//!
//! On the URL (literal addresses in any form the URL parser accepts: `127.1`, `2130706433`,
//! `0x7f.1` all parse to `127.0.0.1`), after DNS resolution (a custom resolver, so a hostname
//! that resolves to a refused address is refused before any connection), and on every redirect
//! hop. An explicit allow-list of networks (`--fetch-allow`, e.g. `127.0.0.0/8` for tests and a
//! local stack) overrides the refusal; it is matched against the address as seen, before any
//! classification.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use url::Url;

/// A special-purpose block: its network, its name in the registry and the document defining it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialBlock {
    pub net: IpNet,
    pub name: &'static str,
    pub reference: &'static str,
}

impl fmt::Display for SpecialBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.name, self.net, self.reference)
    }
}

const fn v4(a: [u8; 4], len: u8, name: &'static str, reference: &'static str) -> SpecialBlock {
    let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    SpecialBlock {
        net: IpNet::V4(Ipv4Net::new_assert(ip, len)),
        name,
        reference,
    }
}

const fn v6(s: [u16; 8], len: u8, name: &'static str, reference: &'static str) -> SpecialBlock {
    let ip = Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
    SpecialBlock {
        net: IpNet::V6(Ipv6Net::new_assert(ip, len)),
        name,
        reference,
    }
}

// The tables below are laid out one entry a line, as in the registries, so rustfmt leaves them.

/// IANA IPv4 Special-Purpose Address Registry (iana-ipv4-special-registry, as of 2025): every
/// entry whose "Globally Reachable" is False, or blank (192.88.99.0/24, terminated 2015-03).
/// The entries marked True that lie outside these blocks (192.31.196.0/24 AS112-v4,
/// 192.52.193.0/24 AMT, 192.175.48.0/24 AS112 direct delegation) need no exception.
#[rustfmt::skip]
pub const REFUSED_V4: &[SpecialBlock] = &[
    v4([0, 0, 0, 0], 8, "\"This network\"", "RFC 791 §3.2"),
    v4([0, 0, 0, 0], 32, "\"This host on this network\"", "RFC 1122 §3.2.1.3"),
    v4([10, 0, 0, 0], 8, "Private-Use", "RFC 1918"),
    // Also carrier-grade NAT inside clouds: Alibaba Cloud's metadata is 100.100.100.200.
    v4([100, 64, 0, 0], 10, "Shared Address Space", "RFC 6598"),
    v4([127, 0, 0, 0], 8, "Loopback", "RFC 1122 §3.2.1.3"),
    // Holds 169.254.169.254, the metadata endpoint of AWS, GCP, Azure and OCI.
    v4([169, 254, 0, 0], 16, "Link Local", "RFC 3927"),
    v4([172, 16, 0, 0], 12, "Private-Use", "RFC 1918"),
    v4([192, 0, 0, 0], 24, "IETF Protocol Assignments", "RFC 6890 §2.1"),
    v4([192, 0, 0, 0], 29, "IPv4 Service Continuity Prefix", "RFC 7335"),
    v4([192, 0, 0, 8], 32, "IPv4 dummy address", "RFC 7600"),
    v4([192, 0, 0, 170], 32, "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 §2.2"),
    v4([192, 0, 0, 171], 32, "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 §2.2"),
    v4([192, 0, 2, 0], 24, "Documentation (TEST-NET-1)", "RFC 5737"),
    v4([192, 88, 99, 0], 24, "Deprecated (6to4 Relay Anycast)", "RFC 7526"),
    v4([192, 88, 99, 2], 32, "6a44-relay anycast address", "RFC 6751"),
    v4([192, 168, 0, 0], 16, "Private-Use", "RFC 1918"),
    v4([198, 18, 0, 0], 15, "Benchmarking", "RFC 2544"),
    v4([198, 51, 100, 0], 24, "Documentation (TEST-NET-2)", "RFC 5737"),
    v4([203, 0, 113, 0], 24, "Documentation (TEST-NET-3)", "RFC 5737"),
    v4([240, 0, 0, 0], 4, "Reserved", "RFC 1112 §4"),
    v4([255, 255, 255, 255], 32, "Limited Broadcast", "RFC 8190, RFC 919 §7"),
];

/// IPv4 blocks refused although the special-purpose registry does not list them.
#[rustfmt::skip]
pub const EXTRA_REFUSED_V4: &[SpecialBlock] = &[
    // IANA IPv4 Multicast Address Space Registry; an image is never served from a group.
    v4([224, 0, 0, 0], 4, "Multicast", "RFC 5771"),
    // Publicly routed, but from an Azure VM it reaches the host's WireServer (VM agent
    // configuration, DNS, health probes).
    v4([168, 63, 129, 16], 32, "Azure platform address (WireServer)", "Azure documentation"),
];

/// Entries marked globally reachable inside the refused IPv4 blocks.
#[rustfmt::skip]
pub const GLOBAL_V4: &[SpecialBlock] = &[
    v4([192, 0, 0, 9], 32, "Port Control Protocol Anycast", "RFC 7723"),
    v4([192, 0, 0, 10], 32, "Traversal Using Relays around NAT Anycast", "RFC 8155"),
];

/// IANA IPv6 Special-Purpose Address Registry (iana-ipv6-special-registry, as of 2025): every
/// entry whose "Globally Reachable" is False, N/A (Teredo, 6to4: the address stands for another
/// host) or blank (2001:10::/28, terminated 2014-03). Not here: `::ffff:0:0/96` (False) and
/// `64:ff9b::/96` (True), which [`EMBEDS_V4`] judges by the IPv4 address inside, and
/// 2620:4f:8000::/48 (True, outside every refused block).
#[rustfmt::skip]
pub const REFUSED_V6: &[SpecialBlock] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "Loopback Address", "RFC 4291"),
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "Unspecified Address", "RFC 4291"),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "NAT64 local-use (IPv4-IPv6 Translat.)", "RFC 8215"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "Discard-Only Address Block", "RFC 6666"),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "Dummy IPv6 Prefix", "RFC 9780"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "IETF Protocol Assignments", "RFC 2928"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "TEREDO", "RFC 4380, RFC 8190"),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "Benchmarking", "RFC 5180, RFC Errata 1752"),
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, "Deprecated (previously ORCHID)", "RFC 4843"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "Documentation", "RFC 3849"),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4", "RFC 3056"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "Documentation", "RFC 9637"),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "Segment Routing (SRv6) SIDs", "RFC 9602"),
    // Holds AWS's IPv6 metadata endpoint fd00:ec2::254.
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "Unique-Local", "RFC 4193, RFC 8190"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "Link-Local Unicast", "RFC 4291"),
];

/// IPv6 blocks refused although the special-purpose registry does not list them (all lie
/// outside `2000::/3` and would be refused anyway; they are named for a clearer refusal).
#[rustfmt::skip]
pub const EXTRA_REFUSED_V6: &[SpecialBlock] = &[
    // ::a.b.c.d, deprecated; `::127.0.0.1` reaches loopback on some stacks.
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible (deprecated)", "RFC 4291 §2.5.5.1"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "Site-Local (deprecated)", "RFC 3879"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "Multicast", "RFC 4291 §2.7"),
];

/// Entries marked globally reachable inside the refused IPv6 blocks (all in 2001::/23).
#[rustfmt::skip]
pub const GLOBAL_V6: &[SpecialBlock] = &[
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128, "Port Control Protocol Anycast", "RFC 7723"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, "Traversal Using Relays around NAT Anycast", "RFC 8155"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128, "DNS-SD Service Registration Protocol Anycast", "RFC 9665"),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, "AMT", "RFC 7450"),
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, "AS112-v6", "RFC 7535"),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, "ORCHIDv2", "RFC 7343"),
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374"),
];

/// IPv6 prefixes whose last 32 bits are an IPv4 address that decides for the whole address.
#[rustfmt::skip]
pub const EMBEDS_V4: &[SpecialBlock] = &[
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped", "RFC 4291"),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "NAT64", "RFC 6052"),
];

/// IPv6 global unicast (IANA IPv6 Address Space registry); everything outside is reserved,
/// local or multicast.
const GLOBAL_UNICAST: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// Why an address is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The address lies in this block.
    Block(&'static SpecialBlock),
    /// The address embeds (`via`) an IPv4 address that lies in a refused block.
    Embedded {
        via: &'static SpecialBlock,
        v4: Ipv4Addr,
        block: &'static SpecialBlock,
    },
    /// An IPv6 address outside global unicast `2000::/3` and every named block.
    NotGlobalUnicast,
    /// The address lies under an operator's NAT64 prefix (`--fetch-nat64-prefix`) and embeds an
    /// IPv4 address that lies in a refused block.
    OperatorNat64 {
        prefix: Ipv6Net,
        v4: Ipv4Addr,
        block: &'static SpecialBlock,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Block(b) => b.fmt(f),
            Reason::Embedded { via, v4, block } => {
                write!(f, "{} ({}) of {v4}: {block}", via.name, via.net)
            }
            Reason::NotGlobalUnicast => {
                f.write_str("outside IPv6 global unicast (2000::/3, RFC 4291 §2.4)")
            }
            Reason::OperatorNat64 { prefix, v4, block } => {
                write!(f, "NAT64 ({prefix}, --fetch-nat64-prefix) of {v4}: {block}")
            }
        }
    }
}

/// The most specific block of `tables` that holds `ip`.
fn most_specific(tables: &[&'static [SpecialBlock]], ip: IpAddr) -> Option<&'static SpecialBlock> {
    tables
        .iter()
        .flat_map(|t| t.iter())
        .filter(|b| b.net.contains(&ip))
        .max_by_key(|b| b.net.prefix_len())
}

/// The refused block that decides for `ip`, unless a more specific globally reachable entry
/// reopens it (as 192.0.0.9/32 does inside 192.0.0.0/24).
fn refused_block(
    refused: &[&'static [SpecialBlock]],
    global: &'static [SpecialBlock],
    ip: IpAddr,
) -> Option<&'static SpecialBlock> {
    let bad = most_specific(refused, ip)?;
    match most_specific(&[global], ip) {
        Some(good) if good.net.prefix_len() > bad.net.prefix_len() => None,
        _ => Some(bad),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static SpecialBlock> {
    refused_block(&[REFUSED_V4, EXTRA_REFUSED_V4], GLOBAL_V4, IpAddr::V4(ip))
}

fn classify_v6(ip: Ipv6Addr) -> Option<Reason> {
    let addr = IpAddr::V6(ip);
    if let Some(via) = EMBEDS_V4.iter().find(|b| b.net.contains(&addr)) {
        let v4 = Ipv4Addr::from_bits(ip.to_bits() as u32);
        return classify_v4(v4).map(|block| Reason::Embedded { via, v4, block });
    }
    if let Some(b) = refused_block(&[REFUSED_V6, EXTRA_REFUSED_V6], GLOBAL_V6, addr) {
        return Some(Reason::Block(b));
    }
    if !GLOBAL_UNICAST.contains(&ip) {
        return Some(Reason::NotGlobalUnicast);
    }
    None
}

/// Why `ip` may not be fetched, or `None` when it is globally reachable. Ignores the allow-list.
pub fn classify(ip: IpAddr) -> Option<Reason> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(Reason::Block),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Why a URL or address was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("scheme {0:?} is not allowed (only http and https)")]
    Scheme(String),
    #[error("URL has no host")]
    NoHost,
    #[error("address {0} is not globally reachable: {1}; refused unless --fetch-allow holds it")]
    Address(IpAddr, Reason),
    #[error("host {0} resolves only to refused addresses: {1}")]
    Resolved(String, String),
}

/// The IPv4 address that a NAT64 address under a network-specific prefix of `len` bits embeds
/// (RFC 6052 §2.2: the 32 bits follow the prefix, skipping bits 64..72), or `None` for a
/// prefix length the RFC does not define.
pub fn nat64_embedded(ip: Ipv6Addr, len: u8) -> Option<Ipv4Addr> {
    let b = ip.octets();
    let v4 = match len {
        32 => [b[4], b[5], b[6], b[7]],
        40 => [b[5], b[6], b[7], b[9]],
        48 => [b[6], b[7], b[9], b[10]],
        56 => [b[7], b[9], b[10], b[11]],
        64 => [b[9], b[10], b[11], b[12]],
        96 => [b[12], b[13], b[14], b[15]],
        _ => return None,
    };
    Some(Ipv4Addr::from(v4))
}

/// Checks `--fetch-nat64-prefix` values: RFC 6052 defines only these lengths.
pub fn check_nat64_prefix(p: &Ipv6Net) -> Result<(), String> {
    if nat64_embedded(Ipv6Addr::UNSPECIFIED, p.prefix_len()).is_none() {
        return Err(format!(
            "NAT64 prefix {p} has length /{}; RFC 6052 allows /32, /40, /48, /56, /64 or /96",
            p.prefix_len()
        ));
    }
    Ok(())
}

/// The policy: which addresses may be fetched.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Arc<Vec<IpNet>>,
    nat64: Arc<Vec<Ipv6Net>>,
}

impl Guard {
    /// A guard that also allows the given networks.
    pub fn new(allow: Vec<IpNet>) -> Guard {
        Guard {
            allow: Arc::new(allow),
            nat64: Arc::default(),
        }
    }

    /// Also judges addresses under these NAT64 prefixes by the IPv4 address they embed
    /// (checked with [`check_nat64_prefix`]).
    pub fn with_nat64(mut self, prefixes: Vec<Ipv6Net>) -> Guard {
        self.nat64 = Arc::new(prefixes);
        self
    }

    /// Why `ip` may not be fetched (the operator's NAT64 prefixes, then [`classify`]).
    pub fn classify(&self, ip: IpAddr) -> Option<Reason> {
        if let IpAddr::V6(v6) = ip {
            if let Some(prefix) = self.nat64.iter().find(|p| p.contains(&v6)) {
                let v4 = nat64_embedded(v6, prefix.prefix_len())?;
                return classify_v4(v4).map(|block| Reason::OperatorNat64 {
                    prefix: *prefix,
                    v4,
                    block,
                });
            }
        }
        classify(ip)
    }

    /// Checks one address: the allow-list first (on the address as seen, so allowing
    /// `10.0.0.0/8` does not allow `64:ff9b::a00:1`), then the special-purpose tables.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match self.classify(ip) {
            Some(reason) => Err(Refusal::Address(ip, reason)),
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
                .map(|a| match self.classify(a.ip()) {
                    Some(r) => format!("{} ({r})", a.ip()),
                    None => a.ip().to_string(),
                })
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

    fn reason(s: &str) -> Option<String> {
        classify(s.parse().unwrap()).map(|r| r.to_string())
    }

    #[test]
    fn refuses_internal_addresses_by_default() {
        let g = Guard::default();
        for u in [
            "http://127.0.0.1/a.png",
            "http://127.1/a.png",
            "http://2130706433/a.png",
            "http://0x7f.1/a.png",
            "http://10.1.2.3/a.png",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://100.100.100.200/latest/meta-data/",
            "http://168.63.129.16/machine",
            "http://0.0.0.0/",
            "http://255.255.255.255/",
            "http://224.0.0.1/",
            "http://192.0.0.8/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[fec0::1]/",
            "http://[ff02::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::127.0.0.1]/",
            "http://[::8.8.8.8]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[64:ff9b:1::808:808]/",
            "http://[2002:7f00:1::]/",
            "http://[2001:0:4136:e378::1]/",
            "http://[2001:db8::1]/",
            "http://[3fff::1]/",
            "http://[5f00::1]/",
            "http://[4000::1]/",
            "ftp://example.com/a.png",
            "file:///etc/passwd",
        ] {
            assert!(refused(&g, u), "{u} should be refused");
        }
        for u in [
            "https://93.184.216.34/a.png",
            "https://example.com/a.png",
            "http://[2606:2800:220:1:248:1893:25c8:1946]/",
            // NAT64 and IPv4-mapped forms of a public address.
            "http://[64:ff9b::5db8:d822]/",
            "http://[::ffff:93.184.216.34]/",
            // Globally reachable entries inside refused blocks.
            "http://192.0.0.9/",
            "http://[2001:1::3]/",
            "http://[2001:20::1]/",
        ] {
            assert!(!refused(&g, u), "{u} should be allowed");
        }
    }

    /// Every block of the tables is refused at both ends, and every globally reachable entry
    /// inside them is allowed at both ends.
    #[test]
    fn tables_decide_at_block_edges() {
        let edges = |n: IpNet| [n.network(), n.broadcast()];
        for b in [REFUSED_V4, EXTRA_REFUSED_V4, REFUSED_V6, EXTRA_REFUSED_V6]
            .iter()
            .flat_map(|t| t.iter())
        {
            for ip in edges(b.net) {
                assert!(classify(ip).is_some(), "{ip} ({b}) should be refused");
            }
        }
        for b in GLOBAL_V4.iter().chain(GLOBAL_V6) {
            for ip in edges(b.net) {
                assert_eq!(classify(ip), None, "{ip} ({b}) should be allowed");
            }
        }
    }

    #[test]
    fn reasons_name_the_registry_entry() {
        assert_eq!(
            reason("64:ff9b::a00:1").as_deref(),
            Some("NAT64 (64:ff9b::/96) of 10.0.0.1: Private-Use (10.0.0.0/8, RFC 1918)")
        );
        assert_eq!(
            reason("::ffff:169.254.169.254").as_deref(),
            Some("IPv4-mapped (::ffff:0.0.0.0/96) of 169.254.169.254: Link Local (169.254.0.0/16, RFC 3927)")
        );
        // The most specific entry names the refusal.
        assert_eq!(
            reason("192.0.0.170").as_deref(),
            Some("NAT64/DNS64 Discovery (192.0.0.170/32, RFC 8880, RFC 7050 §2.2)")
        );
        assert_eq!(
            reason("2001::1").as_deref(),
            Some("TEREDO (2001::/32, RFC 4380, RFC 8190)")
        );
        assert_eq!(
            reason("::1").as_deref(),
            Some("Loopback Address (::1/128, RFC 4291)")
        );
        assert_eq!(
            reason("::7f00:1").as_deref(),
            Some("IPv4-compatible (deprecated) (::/96, RFC 4291 §2.5.5.1)")
        );
        let r = Guard::default()
            .check_ip("64:ff9b::a00:1".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(r.contains("--fetch-allow"), "{r}");
    }

    #[test]
    fn allow_list_reopens_only_what_it_names() {
        let g = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(!refused(&g, "http://127.0.0.1:8080/a.png"));
        assert!(refused(&g, "http://10.0.0.1/a.png"));
        // Matched on the address as seen: the NAT64 form needs its own entry.
        assert!(refused(&g, "http://[64:ff9b::7f00:1]/"));
        let g = Guard::new(vec!["64:ff9b::/96".parse().unwrap()]);
        assert!(!refused(&g, "http://[64:ff9b::7f00:1]/"));
    }

    #[test]
    fn resolved_addresses_are_filtered() {
        let g = Guard::default();
        let a: SocketAddr = "10.0.0.1:0".parse().unwrap();
        let b: SocketAddr = "93.184.216.34:0".parse().unwrap();
        let c: SocketAddr = "[64:ff9b::a00:1]:0".parse().unwrap();
        assert_eq!(g.filter_resolved("h", vec![a, b]).unwrap(), vec![b]);
        match g.filter_resolved("h", vec![a, c]) {
            Err(Refusal::Resolved(h, list)) => {
                assert_eq!(h, "h");
                assert!(list.contains("10.0.0.1 (Private-Use"), "{list}");
                assert!(list.contains("64:ff9b::a00:1 (NAT64"), "{list}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// A network-specific NAT64 prefix (RFC 6052) is judged by the IPv4 address embedded at the
    /// position its length gives; outside `--fetch-nat64-prefix` the same addresses are refused
    /// as unique-local.
    #[test]
    fn operator_nat64_prefixes_are_judged_by_the_embedded_address() {
        // RFC 6052 §2.4's examples of 192.0.2.33 under 2001:db8::/32 .. /96.
        for (len, addr) in [
            (32, "2001:db8:c000:221::"),
            (40, "2001:db8:1c0:2:21::"),
            (48, "2001:db8:122:c000:2:2100::"),
            (56, "2001:db8:122:3c0:0:221::"),
            (64, "2001:db8:122:344:c0:2:2100:0"),
            (96, "2001:db8:122:344::192.0.2.33"),
        ] {
            let ip: Ipv6Addr = addr.parse().unwrap();
            assert_eq!(
                nat64_embedded(ip, len),
                Some(Ipv4Addr::new(192, 0, 2, 33)),
                "/{len}"
            );
        }
        assert!(check_nat64_prefix(&"fd00:64::/72".parse().unwrap()).is_err());
        let prefix: Ipv6Net = "fd00:64::/96".parse().unwrap();
        check_nat64_prefix(&prefix).unwrap();
        let plain = Guard::new(Vec::new());
        let g = Guard::new(Vec::new()).with_nat64(vec![prefix]);
        let public: IpAddr = "fd00:64::5db8:d822".parse().unwrap(); // 93.184.216.34
        let private: IpAddr = "fd00:64::a00:1".parse().unwrap(); // 10.0.0.1
        assert!(
            plain.check_ip(public).is_err(),
            "unique-local without the prefix"
        );
        assert!(
            g.check_ip(public).is_ok(),
            "a public IPv4 behind the translator"
        );
        let e = g.check_ip(private).unwrap_err().to_string();
        assert!(
            e.contains("--fetch-nat64-prefix")
                && e.contains("10.0.0.1")
                && e.contains("Private-Use"),
            "{e}"
        );
    }
}
