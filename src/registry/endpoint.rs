//! Where requests for a registry go: the origin, and the mirrors tried before it
//! (`--mirror HOST=MIRROR`, how Dragonfly's dfdaemon or a pull-through cache plugs in).

use super::error::RegistryError;

/// One host to send distribution API requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` or `http`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// TLS certificate checks are skipped (`--insecure-registry`).
    pub insecure: bool,
    /// The origin registry a mirror stands in for; `None` for the origin itself.
    pub mirror_of: Option<String>,
}

impl Endpoint {
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    /// `ns=<origin>` tells a containerd-style mirror which upstream the request is for.
    pub fn url(&self, path: &str) -> String {
        match &self.mirror_of {
            Some(origin) => format!("{}{path}?ns={origin}", self.base_url()),
            None => format!("{}{path}", self.base_url()),
        }
    }
}

/// Decides scheme, TLS checking and mirrors per host, from the command line.
#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    /// `--plain-http`: every registry is spoken to over http.
    pub plain_http: bool,
    /// `--insecure-registry HOST`: http allowed, TLS not verified.
    pub insecure_hosts: Vec<String>,
    /// `(registry host, mirror)` pairs; a mirror may carry a scheme.
    pub mirrors: Vec<(String, String)>,
}

impl EndpointPolicy {
    /// Parses one `--mirror HOST=MIRROR` value.
    pub fn parse_mirror(value: &str) -> Result<(String, String), RegistryError> {
        match value.split_once('=') {
            Some((host, mirror)) if !host.is_empty() && !mirror.is_empty() => {
                Ok((host.to_string(), mirror.trim_end_matches('/').to_string()))
            }
            _ => Err(RegistryError::Config(format!(
                "--mirror {value:?}: expected HOST=MIRROR, e.g. harbor.example.com=127.0.0.1:65001"
            ))),
        }
    }

    /// The endpoints to try for `registry_host`, mirrors first, the origin last.
    pub fn endpoints(&self, registry: &str, api_host: &str) -> Vec<Endpoint> {
        let mut endpoints: Vec<Endpoint> = self
            .mirrors
            .iter()
            .filter(|(host, _)| host == registry || host == api_host)
            .map(|(_, mirror)| {
                let mut endpoint = self.endpoint_for(mirror);
                endpoint.mirror_of = Some(registry.to_string());
                endpoint
            })
            .collect();
        endpoints.push(self.endpoint_for(api_host));
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
            mirror_of: None,
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
        assert_eq!(eps[1].url("/v2/"), "https://harbor.example.com/v2/");
        assert!(EndpointPolicy::parse_mirror("nohost").is_err());
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
