//! Where requests for a registry go: the origin, and the mirrors tried before it
//! (`--mirror HOST=MIRROR`, `--trusted-mirror HOST=MIRROR`: how Dragonfly's dfdaemon or a
//! pull-through cache plugs in). A mirror is spoken to anonymously unless it is trusted; a
//! trusted one gets the origin's credentials as the origin would. Every mirror request names
//! the origin twice: `?ns=<registry>` (containerd's convention) and `X-Dragonfly-Registry:
//! <scheme>://<host>` (what dfdaemon picks its upstream from). Whatever a mirror serves, who may
//! read a model is decided at the origin (see `crate::tenancy`).

use super::error::RegistryError;

/// The header dfdaemon reads the upstream registry from.
pub const DRAGONFLY_REGISTRY_HEADER: &str = "X-Dragonfly-Registry";

/// One host to send distribution API requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` or `http`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// TLS certificate checks are skipped (`--insecure-registry`).
    pub insecure: bool,
    /// What a mirror stands in for; `None` for the origin itself.
    pub mirror: Option<MirrorOf>,
}

/// A mirror endpoint's origin, and whether the mirror may see the origin's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorOf {
    /// The registry as references name it (`docker.io`), sent as `?ns=`.
    pub registry: String,
    /// The origin's own endpoint: its scheme and API host go in `X-Dragonfly-Registry`, and a
    /// trusted mirror is sent the authorization this endpoint would get.
    pub origin: Box<Endpoint>,
    /// `--trusted-mirror`: the origin's credentials (Basic, or the origin's Bearer token) are sent.
    pub trusted: bool,
}

impl Endpoint {
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    /// `ns=<origin>` tells a containerd-style mirror which upstream the request is for.
    pub fn url(&self, path: &str) -> String {
        match &self.mirror {
            Some(mirror) => format!("{}{path}?ns={}", self.base_url(), mirror.registry),
            None => format!("{}{path}", self.base_url()),
        }
    }

    /// `X-Dragonfly-Registry`'s value for a mirror: the origin's `<scheme>://<host>`.
    pub fn dragonfly_registry(&self) -> Option<String> {
        self.mirror.as_ref().map(|m| m.origin.base_url())
    }

    /// A mirror that must not see credentials.
    pub fn is_untrusted_mirror(&self) -> bool {
        self.mirror.as_ref().is_some_and(|m| !m.trusted)
    }
}

/// One configured mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The registry whose requests it takes (`harbor.example.com`).
    pub registry: String,
    /// `host[:port]`, possibly with a scheme (`http://10.0.0.7:4001`).
    pub address: String,
    /// Declared with `--trusted-mirror`.
    pub trusted: bool,
}

/// Decides scheme, TLS checking and mirrors per host, from the command line.
#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    /// `--plain-http`: every registry is spoken to over http.
    pub plain_http: bool,
    /// `--insecure-registry HOST`: http allowed, TLS not verified.
    pub insecure_hosts: Vec<String>,
    /// Mirrors in the order they are tried.
    pub mirrors: Vec<Mirror>,
}

impl EndpointPolicy {
    /// Parses one `--mirror HOST=MIRROR` value (an untrusted mirror).
    pub fn parse_mirror(value: &str) -> Result<Mirror, RegistryError> {
        Self::parse(value, "--mirror", false)
    }

    /// Parses one `--trusted-mirror HOST=MIRROR` value.
    pub fn parse_trusted_mirror(value: &str) -> Result<Mirror, RegistryError> {
        Self::parse(value, "--trusted-mirror", true)
    }

    fn parse(value: &str, flag: &str, trusted: bool) -> Result<Mirror, RegistryError> {
        match value.trim().split_once('=') {
            Some((host, mirror))
                if !host.is_empty() && !mirror.is_empty() && !host.contains("://") =>
            {
                Ok(Mirror {
                    registry: host.to_string(),
                    address: mirror.trim_end_matches('/').to_string(),
                    trusted,
                })
            }
            _ => Err(RegistryError::Config(format!(
                "{flag} {value:?}: expected HOST=MIRROR, e.g. harbor.example.com=http://127.0.0.1:4001"
            ))),
        }
    }

    /// The endpoints to try for `registry`, mirrors first, the origin last.
    pub fn endpoints(&self, registry: &str, api_host: &str) -> Vec<Endpoint> {
        let origin = self.endpoint_for(api_host);
        let mut endpoints: Vec<Endpoint> = self
            .mirrors
            .iter()
            .filter(|m| m.registry == registry || m.registry == api_host)
            .map(|m| {
                let mut endpoint = self.endpoint_for(&m.address);
                endpoint.mirror = Some(MirrorOf {
                    registry: registry.to_string(),
                    origin: Box::new(origin.clone()),
                    trusted: m.trusted,
                });
                endpoint
            })
            .collect();
        endpoints.push(origin);
        endpoints
    }

    fn endpoint_for(&self, address: &str) -> Endpoint {
        let (explicit_scheme, host) = match address.split_once("://") {
            Some((scheme, host)) => (Some(scheme.to_string()), host.to_string()),
            None => (None, address.to_string()),
        };
        let insecure = self.insecure_hosts.iter().any(|h| h == &host);
        let scheme = explicit_scheme.unwrap_or_else(|| {
            if self.plain_http || insecure {
                "http".to_string()
            } else {
                "https".to_string()
            }
        });
        Endpoint {
            scheme,
            host,
            insecure,
            mirror: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first() {
        let policy = EndpointPolicy {
            mirrors: vec![EndpointPolicy::parse_mirror(
                "harbor.example.com=http://127.0.0.1:65001",
            )
            .unwrap()],
            ..Default::default()
        };
        let eps = policy.endpoints("harbor.example.com", "harbor.example.com");
        assert_eq!(eps.len(), 2);
        assert_eq!(
            eps[0].url("/v2/"),
            "http://127.0.0.1:65001/v2/?ns=harbor.example.com"
        );
        assert!(eps[0].is_untrusted_mirror());
        assert_eq!(eps[1].url("/v2/"), "https://harbor.example.com/v2/");
        assert!(!eps[1].is_untrusted_mirror());
        assert_eq!(eps[1].dragonfly_registry(), None);
        assert!(EndpointPolicy::parse_mirror("nohost").is_err());
    }

    #[test]
    fn mirror_options_parse() {
        let untrusted = EndpointPolicy::parse_mirror("harbor.example.com=10.0.0.7:4001/").unwrap();
        assert_eq!(
            untrusted,
            Mirror {
                registry: "harbor.example.com".into(),
                address: "10.0.0.7:4001".into(),
                trusted: false,
            }
        );
        let trusted =
            EndpointPolicy::parse_trusted_mirror("harbor.example.com=http://10.0.0.7:4001")
                .unwrap();
        assert!(trusted.trusted);
        assert_eq!(trusted.address, "http://10.0.0.7:4001");
        for bad in [
            "",
            "=",
            "harbor.example.com=",
            "=10.0.0.7:4001",
            "http://h=m",
        ] {
            let error = EndpointPolicy::parse_trusted_mirror(bad).unwrap_err();
            assert!(
                error.to_string().contains("--trusted-mirror"),
                "{bad:?}: {error}"
            );
        }
        assert!(EndpointPolicy::parse_mirror("h=m").is_ok());
    }

    #[test]
    fn mirrors_name_the_origin_with_its_scheme() {
        let mirrors = vec![
            EndpointPolicy::parse_trusted_mirror("docker.io=http://127.0.0.1:4001").unwrap(),
            EndpointPolicy::parse_mirror("reg:5000=127.0.0.1:4002").unwrap(),
        ];
        let policy = EndpointPolicy {
            mirrors: mirrors.clone(),
            ..Default::default()
        };
        let hub = policy.endpoints("docker.io", "registry-1.docker.io");
        assert_eq!(hub.len(), 2);
        assert_eq!(
            hub[0].dragonfly_registry().as_deref(),
            Some("https://registry-1.docker.io")
        );
        assert_eq!(
            hub[0].url("/v2/x/manifests/v1"),
            "http://127.0.0.1:4001/v2/x/manifests/v1?ns=docker.io"
        );
        assert!(!hub[0].is_untrusted_mirror());
        // A plain-http origin (--insecure-registry) is named as http; the mirror's own scheme
        // follows the same rules as any host's.
        let policy = EndpointPolicy {
            insecure_hosts: vec!["reg:5000".into()],
            mirrors,
            ..Default::default()
        };
        let eps = policy.endpoints("reg:5000", "reg:5000");
        assert_eq!(
            eps[0].dragonfly_registry().as_deref(),
            Some("http://reg:5000")
        );
        assert_eq!(eps[0].scheme, "https");
        assert!(eps[0].is_untrusted_mirror());
        let plain = EndpointPolicy {
            plain_http: true,
            ..policy
        };
        let eps = plain.endpoints("reg:5000", "reg:5000");
        assert_eq!(
            eps[0].dragonfly_registry().as_deref(),
            Some("http://reg:5000")
        );
        assert_eq!(eps[0].scheme, "http");
    }

    #[test]
    fn insecure_hosts_use_http() {
        let policy = EndpointPolicy {
            insecure_hosts: vec!["reg:5000".into()],
            ..Default::default()
        };
        let ep = &policy.endpoints("reg:5000", "reg:5000")[0];
        assert_eq!(ep.scheme, "http");
        assert!(ep.insecure);
    }
}
