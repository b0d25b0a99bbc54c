//! Hosts the node never contacts on a request's behalf: names or addresses that resolve to
//! loopback, link-local (169.254.0.0/16, fe80::/10, where cloud metadata endpoints live), the
//! unspecified address, or one of this node's own interface addresses. Names are resolved
//! before any connection; every address a name resolves to must be acceptable.

use std::net::{IpAddr, ToSocketAddrs};

/// Why an address is refused, or `None`.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() {
        return Some("is a loopback address");
    }
    if ip.is_unspecified() {
        return Some("is the unspecified address");
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some("is a link-local address (cloud metadata endpoints live there)");
    }
    if node_addresses().contains(&ip) {
        return Some("is one of this node's own addresses");
    }
    None
}

/// This node's interface addresses (read each time: interfaces come and go).
pub fn node_addresses() -> Vec<IpAddr> {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addresses
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// `host[:port]` split for resolution (`[v6]:port` included).
fn split(host: &str) -> Result<(url::Host, u16), String> {
    let url = url::Url::parse(&format!("https://{host}/"))
        .map_err(|e| format!("is not a valid host ({e})"))?;
    let parsed = url
        .host()
        .ok_or_else(|| "has no host name".to_string())?
        .to_owned();
    Ok((parsed, url.port().unwrap_or(443)))
}

fn judge(addresses: impl IntoIterator<Item = IpAddr>) -> Result<(), String> {
    let mut any = false;
    for ip in addresses {
        any = true;
        if let Some(why) = forbidden(ip) {
            return Err(format!("resolves to {ip}, which {why}"));
        }
    }
    if any {
        Ok(())
    } else {
        Err("resolves to no address".to_string())
    }
}

/// Resolves `host[:port]` and refuses it if any address is forbidden.
pub async fn check(host: &str) -> Result<(), String> {
    match split(host)? {
        (url::Host::Ipv4(v4), _) => judge([IpAddr::V4(v4)]),
        (url::Host::Ipv6(v6), _) => judge([IpAddr::V6(v6)]),
        (url::Host::Domain(name), port) => {
            let resolved = tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|e| format!("cannot be resolved ({e})"))?;
            judge(resolved.map(|a| a.ip()))
        }
    }
}

/// The same check for a redirect target (called from the HTTP client's redirect policy,
/// which is synchronous).
pub fn check_url_blocking(url: &url::Url) -> Result<(), String> {
    let port = url.port_or_known_default().unwrap_or(443);
    match url.host() {
        None => Err("has no host".to_string()),
        Some(url::Host::Ipv4(v4)) => judge([IpAddr::V4(v4)]),
        Some(url::Host::Ipv6(v6)) => judge([IpAddr::V6(v6)]),
        Some(url::Host::Domain(name)) => {
            let resolved = (name, port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot be resolved ({e})"))?;
            judge(resolved.map(|a| a.ip()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_loopback_link_local_and_own_addresses() {
        for ip in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            assert!(forbidden(ip.parse().unwrap()).is_some(), "{ip}");
        }
        assert!(forbidden("192.0.2.7".parse().unwrap()).is_none());
        for own in node_addresses() {
            assert!(forbidden(own).is_some(), "{own}");
        }
    }

    #[tokio::test]
    async fn names_and_literals_are_resolved_before_judging() {
        assert!(check("127.0.0.1:5000").await.is_err());
        assert!(check("[::1]:5000").await.is_err());
        assert!(check("localhost:5000").await.is_err());
        assert!(check("169.254.169.254").await.is_err());
        assert!(check("192.0.2.7:443").await.is_ok());
    }
}
