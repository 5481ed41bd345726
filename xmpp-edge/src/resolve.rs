//! Finding a remote domain's s2s server (RFC 6120 §3.2): static overrides
//! first, then `_xmpp-server._tcp` SRV records (by priority, then weight),
//! then the domain's own A/AAAA records on port 5269.

pub use crate::error::ResolveError;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use std::collections::HashMap;
use std::net::SocketAddr;

/// The default s2s port.
pub const DEFAULT_PORT: u16 = 5269;

/// Resolves remote domains to socket addresses.
pub struct Resolver {
    overrides: HashMap<String, (String, u16)>,
    dns: Option<TokioResolver>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("overrides", &self.overrides)
            .finish()
    }
}

impl Resolver {
    /// A resolver using `nameserver` (or the system's configuration when
    /// `None`), with per-domain `host:port` overrides.
    pub fn new(
        nameserver: Option<SocketAddr>,
        overrides: HashMap<String, (String, u16)>,
    ) -> Result<Self, ResolveError> {
        let dns = match nameserver {
            Some(ns) => {
                let mut cfg = NameServerConfig::udp_and_tcp(ns.ip());
                for c in cfg.connections.iter_mut() {
                    c.port = ns.port();
                }
                let mut b = TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], vec![cfg]),
                    TokioRuntimeProvider::default(),
                );
                // A configured nameserver is near (tests, private networks):
                // fail fast rather than after the default 5 s × 2 attempts.
                b.options_mut().timeout = std::time::Duration::from_secs(2);
                b.options_mut().attempts = 2;
                Some(b.build().map_err(|e| ResolveError::Setup {
                    nameserver: ns,
                    why: e.to_string(),
                })?)
            }
            None => TokioResolver::builder_tokio()
                .ok()
                .and_then(|b| b.build().ok()),
        };
        Ok(Resolver { overrides, dns })
    }

    /// Candidate addresses for `domain`'s s2s service, best first.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some((host, port)) = self.overrides.get(domain) {
            return self.host_addrs(host, *port).await;
        }
        let Some(dns) = &self.dns else {
            return Err(ResolveError::NoResolver);
        };
        let srv_name = format!("_xmpp-server._tcp.{domain}.");
        let mut targets: Vec<(u16, u16, String, u16)> = Vec::new();
        if let Ok(lookup) = dns.srv_lookup(srv_name.as_str()).await {
            for rec in lookup.answers() {
                if let RData::SRV(srv) = &rec.data {
                    let target = srv.target.to_utf8();
                    let target = target.trim_end_matches('.').to_string();
                    if target.is_empty() {
                        // "." means the service is decidedly not available.
                        return Err(ResolveError::NoService(domain.to_string()));
                    }
                    targets.push((srv.priority, u16::MAX - srv.weight, target, srv.port));
                }
            }
        }
        targets.sort();
        let mut out = Vec::new();
        for (_, _, host, port) in &targets {
            if let Ok(mut a) = self.host_addrs(host, *port).await {
                out.append(&mut a);
            }
        }
        if targets.is_empty() {
            out = self.host_addrs(domain, DEFAULT_PORT).await?;
        }
        if out.is_empty() {
            return Err(ResolveError::NoAddress(domain.to_string()));
        }
        Ok(out)
    }

    async fn host_addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let Some(dns) = &self.dns else {
            return Err(ResolveError::NoResolver);
        };
        let ips = dns
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| ResolveError::Lookup {
                host: host.to_string(),
                why: e.to_string(),
            })?;
        Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }
}

/// Parses `DOMAIN=HOST:PORT` (the `--s2s-host` flag).
pub fn parse_override(s: &str) -> Result<(String, (String, u16)), ResolveError> {
    let (domain, hostport) = s
        .split_once('=')
        .ok_or_else(|| ResolveError::BadOverride(s.to_string()))?;
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| ResolveError::BadOverride(s.to_string()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| ResolveError::BadOverride(s.to_string()))?;
    if domain.is_empty() || host.is_empty() {
        return Err(ResolveError::BadOverride(s.to_string()));
    }
    Ok((
        domain.to_ascii_lowercase(),
        (host.trim_matches(['[', ']']).to_string(), port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_parsing() {
        assert_eq!(
            parse_override("a.test=127.0.0.2:5269").unwrap(),
            ("a.test".into(), ("127.0.0.2".into(), 5269))
        );
        assert_eq!(
            parse_override("A.test=[::1]:1").unwrap(),
            ("a.test".into(), ("::1".into(), 1))
        );
        for bad in ["a.test", "a.test=host", "=h:1", "a=h:x", "a=:5"] {
            assert!(parse_override(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn overrides_win_and_ip_literals_need_no_dns() {
        let mut o = HashMap::new();
        o.insert("a.test".to_string(), ("127.0.0.2".to_string(), 15269));
        let r = Resolver::new(Some("127.0.0.1:9".parse().unwrap()), o).unwrap();
        assert_eq!(
            r.resolve("a.test").await.unwrap(),
            vec!["127.0.0.2:15269".parse().unwrap()]
        );
    }
}
