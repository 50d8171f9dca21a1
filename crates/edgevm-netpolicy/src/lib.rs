//! The outgoing network policy: which destinations a program may reach (`sys_fetch` and
//! guest sockets). It knows nothing of HTTP or of VMs, so every layer that opens a
//! connection for a program asks the same [`NetPolicy`].
//!
//! Configuration (docs/CONFIG.md): `"allow_net"` and `"deny_net"`, lists of entries, in the
//! `"server"` section (every program) and in groups and programs (added to what the layers
//! above give). An entry is
//!
//! * an address: `"127.0.0.1"`, `"::1"`, `"[::1]"`;
//! * a network: `"10.1.0.0/16"`, `"fd00::/8"`;
//! * a host name: `"db.internal"`, or every name below a domain: `"*.example.com"`;
//!
//! each optionally with a port: `"127.0.0.1:7000"`, `"[::1]:8080"`, `"10.0.0.0/8:5432"`,
//! `"db.internal:5432"`.
//!
//! A connection to `addr` (asked for as `host`, when a name was used) is decided so:
//! 1. an entry of `deny_net` that matches refuses it;
//! 2. else an entry of `allow_net` that matches allows it;
//! 3. else the address decides: public addresses are allowed; loopback, private (RFC 1918,
//!    unique-local, carrier-grade NAT), link-local, cloud-metadata, unspecified, multicast,
//!    broadcast and reserved addresses are refused.
//!
//! A name entry matches the name the program asked for, and the check is made on every address
//! the name resolves to *at connect time*, after DNS: a name that resolves to 127.0.0.1 is
//! refused unless allowed, and a redirect is checked again hop by hop. IPv4-mapped IPv6
//! addresses (`::ffff:127.0.0.1`) are checked as the IPv4 address they carry.
//!
//! # Using it (for the guest-socket layer)
//!
//! ```
//! use edgevm_netpolicy::NetPolicy;
//! let server = NetPolicy::parse(&["127.0.0.1:7000".into()], &[]).unwrap();
//! let program = server.with(&["db.internal:5432".into()], &[]).unwrap();
//! // Before connect(2) to a resolved address (host = the name the guest resolved, if known):
//! let a: std::net::SocketAddr = "127.0.0.1:7000".parse().unwrap();
//! assert!(program.check(None, a).is_ok());
//! let b: std::net::SocketAddr = "127.0.0.1:22".parse().unwrap();
//! assert!(program.check(None, b).is_err()); // Refused: say why (Display) and log it.
//! ```
//!
//! A socket layer that sees only addresses (a guest `connect` after its own DNS) passes
//! `host: None`: name entries then do not match, address entries do.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What an entry names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A host name, lower case; `*.` in front matches every name below the domain.
    Host(String),
    /// A network: address and prefix length.
    Net(IpAddr, u8),
}

/// One `allow_net` / `deny_net` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetRule {
    target: Target,
    port: Option<u16>,
    text: String,
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl NetRule {
    /// Parse one entry (see the crate documentation for the forms).
    pub fn parse(entry: &str) -> Result<NetRule, String> {
        let text = entry.trim();
        let bad = |why: &str| {
            format!(
                "bad network entry {entry:?}: {why} (use an address, a network such as \
                 \"10.1.0.0/16\" or a host name, optionally with \":port\")"
            )
        };
        if text.is_empty() {
            return Err(bad("empty"));
        }
        // Bracketed IPv6, optionally with a port.
        if let Some(rest) = text.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            let port = match after {
                "" => None,
                p => Some(port(
                    p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?,
                )?),
            };
            let target = net(inner).map_err(|e| bad(&e))?;
            return Ok(NetRule {
                target,
                port,
                text: text.to_string(),
            });
        }
        // A bare IPv6 address or network (more than one colon): no port.
        if text.matches(':').count() > 1 {
            let target = net(text).map_err(|e| bad(&e))?;
            return Ok(NetRule {
                target,
                port: None,
                text: text.to_string(),
            });
        }
        let (what, port) = match text.rsplit_once(':') {
            Some((w, p)) => (w, Some(port(p).map_err(|e| bad(&e))?)),
            None => (text, None),
        };
        let first = what.chars().next().unwrap_or(' ');
        let target = if first.is_ascii_digit()
            && what
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '/')
        {
            net(what).map_err(|e| bad(&e))?
        } else {
            Target::Host(host(what).map_err(|e| bad(&e))?)
        };
        Ok(NetRule {
            target,
            port,
            text: text.to_string(),
        })
    }

    fn matches(&self, host: Option<&str>, addr: &SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        match &self.target {
            Target::Net(net, len) => in_net(canonical(addr.ip()), *net, *len),
            Target::Host(pattern) => host.is_some_and(|h| host_matches(pattern, h)),
        }
    }
}

fn port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("port {p:?} is not 1-65535")),
    }
}

fn net(s: &str) -> Result<Target, String> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = a
        .parse()
        .map_err(|_| format!("{a:?} is not an IP address"))?;
    let ip = canonical(ip);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("prefix length {l:?} is not 0-{max}")),
        },
    };
    Ok(Target::Net(ip, len))
}

fn host(s: &str) -> Result<String, String> {
    let (wild, name) = match s.strip_prefix("*.") {
        Some(n) => (true, n),
        None => (false, s),
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !ok {
        return Err(format!("{s:?} is not a host name"));
    }
    let name = name.to_ascii_lowercase();
    Ok(if wild { format!("*.{name}") } else { name })
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(domain) => {
            host.len() > domain.len() + 1
                && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
                && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries; everything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Why an address is refused unless `allow_net` lists it (None: a public address).
pub fn special_address(ip: IpAddr) -> Option<&'static str> {
    let v4 = |s: &str| -> Ipv4Addr { s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED) };
    let v6 = |s: &str| -> Ipv6Addr { s.parse().unwrap_or(Ipv6Addr::UNSPECIFIED) };
    match canonical(ip) {
        IpAddr::V4(a) => {
            let ip = IpAddr::V4(a);
            let within = |n: &str, l| in_net(ip, IpAddr::V4(v4(n)), l);
            if a.is_loopback() {
                Some("a loopback address")
            } else if a == v4("169.254.169.254") || a == v4("100.100.100.200") {
                Some("a cloud-metadata address")
            } else if a.is_link_local() {
                Some("a link-local address")
            } else if a.is_private() || within("100.64.0.0", 10) {
                Some("a private address")
            } else if within("0.0.0.0", 8) {
                Some("an unspecified (\"this network\") address")
            } else if a.is_multicast() || a.is_broadcast() || within("240.0.0.0", 4) {
                Some("a multicast, broadcast or reserved address")
            } else if within("192.0.0.0", 24) || within("198.18.0.0", 15) {
                Some("a reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let ip = IpAddr::V6(a);
            let within = |n: &str, l| in_net(ip, IpAddr::V6(v6(n)), l);
            if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_unspecified() {
                Some("an unspecified address")
            } else if a == v6("fd00:ec2::254") {
                Some("a cloud-metadata address")
            } else if within("fe80::", 10) {
                Some("a link-local address")
            } else if within("fc00::", 7) {
                Some("a private (unique-local) address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else if within("64:ff9b::", 96) || within("64:ff9b:1::", 48) || within("2002::", 16) {
                // NAT64 and 6to4 carry an IPv4 address: judge that one.
                let o = a.octets();
                let embedded = if within("2002::", 16) {
                    Ipv4Addr::new(o[2], o[3], o[4], o[5])
                } else {
                    Ipv4Addr::new(o[12], o[13], o[14], o[15])
                };
                special_address(IpAddr::V4(embedded))
            } else {
                None
            }
        }
    }
}

/// A refused connection: what was asked for and why. Its text is meant for the program's log
/// line and error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The address refused.
    pub addr: SocketAddr,
    /// The host name asked for, if any.
    pub host: Option<String>,
    /// Why, in words.
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(h) => write!(
                f,
                "network policy refuses {h} ({}): {}",
                self.addr, self.reason
            ),
            None => write!(f, "network policy refuses {}: {}", self.addr, self.reason),
        }
    }
}

impl std::error::Error for Refused {}

/// An outgoing network policy: the server-wide lists plus a group's and a program's
/// additions (see the crate documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetPolicy {
    allow: Vec<NetRule>,
    deny: Vec<NetRule>,
}

impl NetPolicy {
    /// The default policy: public addresses only.
    pub fn public_only() -> NetPolicy {
        NetPolicy::default()
    }

    /// A policy from `allow_net` and `deny_net` entries.
    pub fn parse(allow: &[String], deny: &[String]) -> Result<NetPolicy, String> {
        NetPolicy::default().with(allow, deny)
    }

    /// This policy with more entries (a group's or a program's additions).
    pub fn with(&self, allow: &[String], deny: &[String]) -> Result<NetPolicy, String> {
        let mut p = self.clone();
        for a in allow {
            p.allow.push(NetRule::parse(a)?);
        }
        for d in deny {
            p.deny.push(NetRule::parse(d)?);
        }
        Ok(p)
    }

    /// The `allow_net` entries.
    pub fn allowed(&self) -> &[NetRule] {
        &self.allow
    }

    /// The `deny_net` entries.
    pub fn denied(&self) -> &[NetRule] {
        &self.deny
    }

    /// May a program connect to `addr` (asked for by the name `host`, if any)?
    pub fn check(&self, host: Option<&str>, addr: SocketAddr) -> Result<(), Refused> {
        let refuse = |reason: String| Refused {
            addr,
            host: host.map(str::to_string),
            reason,
        };
        if let Some(r) = self.deny.iter().find(|r| r.matches(host, &addr)) {
            return Err(refuse(format!("listed in deny_net ({r})")));
        }
        if self.allow.iter().any(|r| r.matches(host, &addr)) {
            return Ok(());
        }
        match special_address(addr.ip()) {
            Some(what) => Err(refuse(format!("{what}, not listed in allow_net"))),
            None => Ok(()),
        }
    }

    /// Whether a name alone is refused by a `deny_net` name entry (any port), so a caller can
    /// refuse before resolving it.
    pub fn name_denied(&self, host: &str, port: u16) -> Option<&NetRule> {
        self.deny.iter().find(|r| {
            matches!(&r.target, Target::Host(p) if host_matches(p, host))
                && r.port.is_none_or(|p| p == port)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_refuse_internal_addresses() {
        let p = NetPolicy::public_only();
        for a in [
            "127.0.0.1:80",
            "127.9.9.9:80",
            "10.1.2.3:80",
            "172.16.0.1:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "169.254.1.1:80",
            "100.64.0.1:80",
            "100.100.100.200:80",
            "0.0.0.0:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "[::1]:80",
            "[::]:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "[fd00:ec2::254]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:169.254.169.254]:80",
            "[64:ff9b::a00:1]:80",
            "[2002:7f00:1::]:80",
        ] {
            assert!(p.check(None, sa(a)).is_err(), "{a} should be refused");
        }
        for a in ["93.184.216.34:443", "[2606:4700::1111]:443", "1.1.1.1:53"] {
            assert!(p.check(None, sa(a)).is_ok(), "{a} should be allowed");
        }
    }

    #[test]
    fn allow_and_deny_entries() {
        let p = NetPolicy::parse(
            &[
                "127.0.0.1:7000".into(),
                "10.1.0.0/16".into(),
                "db.internal:5432".into(),
            ],
            &["1.1.1.1".into(), "*.evil.example".into()],
        )
        .unwrap();
        assert!(p.check(None, sa("127.0.0.1:7000")).is_ok());
        assert!(p.check(None, sa("127.0.0.1:7001")).is_err());
        assert!(p.check(None, sa("[::ffff:127.0.0.1]:7000")).is_ok());
        assert!(p.check(None, sa("10.1.200.3:1")).is_ok());
        assert!(p.check(None, sa("10.2.0.1:1")).is_err());
        assert!(p.check(Some("db.internal"), sa("192.168.5.5:5432")).is_ok());
        assert!(p
            .check(Some("DB.Internal."), sa("192.168.5.5:5432"))
            .is_ok());
        assert!(p.check(Some("db.internal"), sa("192.168.5.5:22")).is_err());
        assert!(p.check(None, sa("192.168.5.5:5432")).is_err());
        assert!(p.check(None, sa("1.1.1.1:53")).is_err());
        assert!(p.check(Some("a.evil.example"), sa("8.8.8.8:80")).is_err());
        assert!(p.check(Some("evil.example"), sa("8.8.8.8:80")).is_ok());
        assert!(p.name_denied("x.evil.example", 80).is_some());
        let e = p.check(Some("localhost"), sa("127.0.0.1:22")).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        // deny beats allow, across layers.
        let q = p.with(&[], &["127.0.0.1".into()]).unwrap();
        assert!(q.check(None, sa("127.0.0.1:7000")).is_err());
    }

    #[test]
    fn entry_forms() {
        for ok in [
            "::1",
            "[::1]",
            "[::1]:8080",
            "fd00::/8",
            "[fd00::/8]:53",
            "10.0.0.0/8:5432",
            "example.com",
            "*.example.com:443",
            "host_1.local",
        ] {
            NetRule::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "300.1.1.1",
            "1.2.3.4:0",
            "1.2.3.4:70000",
            "[::1",
            "a..b",
            "http://x",
            "*.",
            "1.2.3.4/x",
        ] {
            assert!(NetRule::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
