use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An endpoint URL: absolute http(s) with a host, at most 2048 characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointUrl(url::Url);

impl EndpointUrl {
    const MAX_LEN: usize = 2048;

    /// `allow_private` mirrors `HERALD_ALLOW_PRIVATE_TARGETS`: when false, a URL whose host
    /// is a literal non-public address is refused up front. Hostnames can only be judged
    /// by what they resolve to, which the delivery client checks at connect time.
    pub fn parse(s: &str, allow_private: bool) -> Result<Self, String> {
        if s.len() > Self::MAX_LEN {
            return Err(format!("url must be at most {} characters", Self::MAX_LEN));
        }
        let url = url::Url::parse(s).map_err(|e| format!("url is not a valid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("url must use http or https".to_owned());
        }
        if url.host().is_none() {
            return Err("url must have a host".to_owned());
        }
        // Credentials in the URL would be shown wherever the URL is (pages, lists, logs of
        // proxies): they belong in a custom header, which reads never show.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "url must not carry a user name or password (user:pass@); send credentials \
                 in a custom header instead, e.g. \"headers\": {\"Authorization\": \"Basic …\"}"
                    .to_owned(),
            );
        }
        // Names are checked when connecting, against the address actually used.
        if !allow_private && ip_literal(&url).is_some_and(|ip| !is_public_ip(ip)) {
            return Err(
                "url points to a private, loopback or link-local address, which this server does not allow"
                    .to_owned(),
            );
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// A stored URL as it may be shown: user name and password (only in rows older than the
/// rule that refuses them) replaced by `***`.
pub fn redact_userinfo(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_password(None);
            let _ = u.set_username("***");
            u.into()
        }
        Ok(u) => u.into(),
        // Every stored URL was parsed once; should one not be, show nothing of it.
        Err(_) => "(invalid URL)".to_owned(),
    }
}

/// A stored URL as titles and lists show it: without credentials, and without its query
/// and fragment (Slack- and Discord-style URLs carry a key there), marked `?…` if it had one.
pub fn short_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(&redact_userinfo(url)) else {
        return "(invalid URL)".to_owned();
    };
    let had_query = u.query().is_some() || u.fragment().is_some();
    u.set_query(None);
    u.set_fragment(None);
    if had_query {
        format!("{u}?…")
    } else {
        u.into()
    }
}

/// Whether an address is globally routable: not loopback, private, link-local, CGNAT,
/// unique-local, multicast, documentation, reserved, or an IPv4-mapped/-compatible/NAT64
/// IPv6 form (which would smuggle an IPv4 target past the IPv4 rules).
/// The address a URL names by its literal, if it does (such a URL skips DNS, so the
/// resolver's check never sees it).
pub fn ip_literal(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                    // "this network"
        || a == 10                              // private
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || a == 127                             // loopback
        || (a == 169 && b == 254)               // link-local
        || (a == 172 && (16..32).contains(&b))  // private
        || (a == 192 && b == 0 && c == 0)       // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)       // TEST-NET-1
        || (a == 192 && b == 168)               // private
        || (a == 198 && (b == 18 || b == 19))   // benchmarking
        || (a == 198 && b == 51 && c == 100)    // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)     // TEST-NET-3
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0) // v4-mapped/-compatible
        || (s[0] == 0x64 && s[1] == 0xff9b)   // NAT64
        || (s[0] & 0xfe00) == 0xfc00          // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80          // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0          // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00          // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments (Teredo, ORCHID…)
        || s[0] == 0x2002) // 6to4 embeds an IPv4 address
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public_ip(s.parse().unwrap())
    }

    #[test]
    fn classifies_addresses() {
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ] {
            assert!(!public(blocked), "{blocked} must be blocked");
        }
        for allowed in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            assert!(public(allowed), "{allowed} must be allowed");
        }
    }

    #[test]
    fn parses_urls() {
        assert!(EndpointUrl::parse("https://example.com/hook", false).is_ok());
        assert!(EndpointUrl::parse("ftp://example.com/hook", false).is_err());
        assert!(EndpointUrl::parse("not a url", false).is_err());
        assert!(EndpointUrl::parse("http://127.0.0.1:9/x", false).is_err());
        assert!(EndpointUrl::parse("http://[::ffff:10.0.0.1]/x", false).is_err());
        assert!(EndpointUrl::parse("http://127.0.0.1:9/x", true).is_ok());
        for with_credentials in [
            "https://user:pass@example.com/hook",
            "https://user@example.com/hook",
            "https://:pass@example.com/hook",
        ] {
            let e = EndpointUrl::parse(with_credentials, false).unwrap_err();
            assert!(e.contains("user name or password"), "{e}");
        }
    }

    #[test]
    fn shows_urls_without_credentials_and_lists_them_without_query() {
        let old = "https://user:hunter2@example.com/hook?token=k3y#frag";
        let shown = redact_userinfo(old);
        assert_eq!(shown, "https://***@example.com/hook?token=k3y#frag");
        assert_eq!(short_url(old), "https://***@example.com/hook?…");
        assert_eq!(
            short_url("https://hooks.example.com/services/T0/B0"),
            "https://hooks.example.com/services/T0/B0"
        );
        assert_eq!(redact_userinfo("not a url"), "(invalid URL)");
    }
}
