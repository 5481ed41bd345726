//! Connections per source address: one host must not be able to take every
//! inbound slot of an edge (the global connection limit) and shut the
//! federation out, nor make it spend its CPU on a stream of new
//! connections (each one costs a TLS handshake). Two bounds per source:
//! connections open at once, and new connections per second (a token
//! bucket). IPv4 addresses count one by one; IPv6 addresses by their /64,
//! which is what one host usually controls.
//!
//! The table of sources is itself bounded: sources with nothing open and a
//! full bucket are forgotten, and when the table is full of active sources
//! new ones are refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Sources tracked at once.
const MAX_SOURCES: usize = 65_536;

/// The key a source address counts under.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The limits of one source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceLimits {
    /// Connections open at once.
    pub max_open: usize,
    /// New connections per second, sustained.
    pub rate: f64,
    /// New connections at once after a quiet while.
    pub burst: f64,
}

#[derive(Debug)]
struct Source {
    open: usize,
    tokens: f64,
    at: Instant,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The source holds its maximum of open connections.
    Open,
    /// The source connects faster than its rate.
    Rate,
}

/// Counts connections per source.
#[derive(Debug)]
pub struct IpLimiter {
    limits: SourceLimits,
    sources: Mutex<HashMap<IpAddr, Source>>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct IpPermit {
    limiter: Arc<IpLimiter>,
    key: IpAddr,
}

impl IpLimiter {
    /// A limiter with `limits` for every source.
    pub fn new(limits: SourceLimits) -> Arc<IpLimiter> {
        Arc::new(IpLimiter {
            limits,
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for a connection from `ip` at `now`, or why not.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<IpPermit, Refused> {
        let key = bucket(ip);
        let l = self.limits;
        let Ok(mut sources) = self.sources.lock() else {
            return Err(Refused::Open);
        };
        if !sources.contains_key(&key) && sources.len() >= MAX_SOURCES {
            // Forget the sources that have nothing open and a full bucket.
            sources.retain(|_, s| {
                s.open > 0 || s.tokens + now.duration_since(s.at).as_secs_f64() * l.rate < l.burst
            });
            if sources.len() >= MAX_SOURCES {
                return Err(Refused::Rate);
            }
        }
        let s = sources.entry(key).or_insert(Source {
            open: 0,
            tokens: l.burst,
            at: now,
        });
        s.tokens =
            (s.tokens + now.saturating_duration_since(s.at).as_secs_f64() * l.rate).min(l.burst);
        s.at = now;
        if s.open >= l.max_open {
            return Err(Refused::Open);
        }
        if s.tokens < 1.0 {
            return Err(Refused::Rate);
        }
        s.tokens -= 1.0;
        s.open += 1;
        Ok(IpPermit {
            limiter: self.clone(),
            key,
        })
    }

    /// Connections open from `ip`'s source.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.sources
            .lock()
            .map(|s| s.get(&bucket(ip)).map_or(0, |s| s.open))
            .unwrap_or(0)
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        if let Ok(mut sources) = self.limiter.sources.lock()
            && let Some(s) = sources.get_mut(&self.key)
        {
            s.open = s.open.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(max_open: usize, rate: f64, burst: f64) -> Arc<IpLimiter> {
        IpLimiter::new(SourceLimits {
            max_open,
            rate,
            burst,
        })
    }

    #[test]
    fn counts_open_connections_per_source_and_releases_on_drop() {
        let l = limiter(2, 1000.0, 1000.0);
        let t = Instant::now();
        let a: IpAddr = "127.0.0.3".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.acquire(a, t).unwrap();
        let _p2 = l.acquire(a, t).unwrap();
        assert_eq!(l.acquire(a, t).unwrap_err(), Refused::Open);
        assert!(l.acquire(b, t).is_ok(), "another source is not affected");
        drop(p1);
        assert_eq!(l.open_from(a), 1);
        assert!(l.acquire(a, t).is_ok(), "a slot came free");
    }

    #[test]
    fn new_connections_are_rate_limited_per_source() {
        let l = limiter(1000, 10.0, 5.0);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        // A burst of 5, then nothing until tokens come back (10 per s).
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(l.acquire(a, t).unwrap());
        }
        assert_eq!(l.acquire(a, t).unwrap_err(), Refused::Rate);
        // Closing does not refill the bucket: connect-and-close churn is
        // limited too.
        held.clear();
        assert_eq!(l.acquire(a, t).unwrap_err(), Refused::Rate);
        assert!(l.acquire(a, t + Duration::from_millis(100)).is_ok());
        assert_eq!(
            l.acquire(a, t + Duration::from_millis(100)).unwrap_err(),
            Refused::Rate
        );
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.acquire(other, t).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = limiter(1, 1000.0, 1000.0);
        let t = Instant::now();
        let _p = l.acquire("2001:db8::1".parse().unwrap(), t).unwrap();
        assert!(l.acquire("2001:db8::2".parse().unwrap(), t).is_err());
        assert!(l.acquire("2001:db8:0:1::1".parse().unwrap(), t).is_ok());
        let _q = l.acquire("10.0.0.1".parse().unwrap(), t).unwrap();
        assert!(l.acquire("::ffff:10.0.0.1".parse().unwrap(), t).is_err());
    }
}
