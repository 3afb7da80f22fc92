//! Throttling of failed authentication, per client address: a bearer token or a login
//! that does not match counts against the TCP peer it came from; past the limit in one
//! window, every request from there that presents a token (right or wrong) is answered
//! 429 until the window ends. Refusing the right token too is what makes the limit bind:
//! otherwise a guesser would learn the token the moment it found it, at any rate.
//!
//! The same counter, keyed by application, bounds the writes of each application's customer
//! portal ([`PortalWrites`]).
//!
//! The counts live in this process's memory only (no migration, nothing to clean up):
//! behind a load balancer each process counts on its own, so the limit an attacker meets is
//! the configured one times the number of processes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::Extensions;
use axum::http::request::Parts;

/// Addresses followed at once. A flood from more addresses than this forgets the oldest
/// windows first (the one closest to ending anyway), so memory stays bounded whatever
/// arrives; beyond this many addresses the limit per address is not the real bound anyway.
const MAX_TRACKED: usize = 4096;

/// Where a request came from, as far as throttling is concerned: the TCP peer, with an
/// IPv6 address reduced to its /64 (one host usually holds a whole /64, so counting single
/// addresses would give it 2^64 budgets). `None` when the server was started without
/// connection info: then every client shares one budget, which errs on the side of
/// refusing guesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    pub fn of(extensions: &Extensions) -> Self {
        Self(
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| key(addr.ip())),
        )
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(IpAddr::V6(ip)) => write!(f, "{ip}/64"),
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("unknown"),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::of(&parts.extensions))
    }
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

struct Failures {
    since: Instant,
    count: u32,
}

/// Events counted per key in fixed windows: failed tokens per address, portal writes per
/// application.
pub struct Throttle<K> {
    /// Events allowed per window; 0 turns throttling off.
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<K, Failures>>,
}

/// Failed authentication per client address.
pub type AuthThrottle = Throttle<ClientAddr>;

/// Changes made through each application's customer portal (its forms): a customer, or a
/// leaked link, cannot make one application's portal a load on everyone's database and
/// workers.
pub type PortalWrites = Throttle<crate::domain::AppId>;

/// The address is over its limit: try again after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked(pub Duration);

impl Blocked {
    /// For `Retry-After`: whole seconds, rounded up and at least 1, so that a client that
    /// waits that long is let in again.
    pub fn retry_after_secs(self) -> u64 {
        (self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)).max(1)
    }
}

impl<K: Copy + Eq + Hash> Throttle<K> {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `addr` is within its limit (for the auth throttle: whether a request that
    /// presents a token may have it checked).
    pub fn check(&self, addr: K) -> Result<(), Blocked> {
        self.check_at(addr, Instant::now())
    }

    /// Counts one event of `addr` (a token that did not match); `Err` when this one used up
    /// the budget.
    pub fn failed(&self, addr: K) -> Result<(), Blocked> {
        self.failed_at(addr, Instant::now())
    }

    /// Counts one event of `key` if its window has room for it: `limit` a window pass, the
    /// next is refused until the window ends.
    pub fn spend(&self, key: K) -> Result<(), Blocked> {
        self.spend_at(key, Instant::now())
    }

    fn spend_at(&self, key: K, now: Instant) -> Result<(), Blocked> {
        self.check_at(key, now)?;
        // The event that uses up the budget still passes.
        let _ = self.failed_at(key, now);
        Ok(())
    }

    fn check_at(&self, addr: K, now: Instant) -> Result<(), Blocked> {
        if self.limit == 0 {
            return Ok(());
        }
        let failures = self.failures.lock().expect("throttle lock");
        match failures.get(&addr) {
            Some(f) if f.count >= self.limit => {
                let ends = f.since + self.window;
                if ends > now {
                    Err(Blocked(ends - now))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn failed_at(&self, addr: K, now: Instant) -> Result<(), Blocked> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut failures = self.failures.lock().expect("throttle lock");
        if !failures.contains_key(&addr) && failures.len() >= MAX_TRACKED {
            let window = self.window;
            failures.retain(|_, f| now.duration_since(f.since) < window);
            if failures.len() >= MAX_TRACKED {
                // An eighth at a time, so that a flood pays for this scan once per
                // MAX_TRACKED / 8 new addresses, not on every one.
                let mut by_age: Vec<(Instant, K)> =
                    failures.iter().map(|(addr, f)| (f.since, *addr)).collect();
                let evict = MAX_TRACKED / 8;
                by_age.select_nth_unstable_by_key(evict, |(since, _)| *since);
                for (_, addr) in &by_age[..evict] {
                    failures.remove(addr);
                }
            }
        }
        let entry = failures.entry(addr).or_insert(Failures {
            since: now,
            count: 0,
        });
        if now.duration_since(entry.since) >= self.window {
            *entry = Failures {
                since: now,
                count: 0,
            };
        }
        entry.count = entry.count.saturating_add(1);
        if entry.count >= self.limit {
            Err(Blocked(self.window.saturating_sub(now - entry.since)))
        } else {
            Ok(())
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.failures.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> ClientAddr {
        ClientAddr(Some(key(IpAddr::from([192, 0, 2, last]))))
    }

    #[test]
    fn spending_passes_the_limit_a_window_and_refuses_the_next_until_it_ends() {
        let t: Throttle<u8> = Throttle::new(2, Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(t.spend_at(1, start), Ok(()));
        assert_eq!(t.spend_at(1, start), Ok(()));
        let later = start + Duration::from_secs(15);
        assert_eq!(t.spend_at(1, later), Err(Blocked(Duration::from_secs(45))));
        assert_eq!(t.spend_at(2, later), Ok(()), "another key has its own");
        assert_eq!(t.spend_at(1, start + Duration::from_secs(60)), Ok(()));
        let off: Throttle<u8> = Throttle::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            assert_eq!(off.spend_at(1, start), Ok(()));
        }
    }

    #[test]
    fn the_limit_blocks_its_address_until_the_window_ends() {
        let t = AuthThrottle::new(3, Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(t.failed_at(v4(1), start), Ok(()));
        assert_eq!(t.failed_at(v4(1), start), Ok(()));
        assert_eq!(t.check_at(v4(1), start), Ok(()));
        let later = start + Duration::from_secs(10);
        assert_eq!(
            t.failed_at(v4(1), later),
            Err(Blocked(Duration::from_secs(50)))
        );
        assert_eq!(
            t.check_at(v4(1), later),
            Err(Blocked(Duration::from_secs(50)))
        );
        assert_eq!(t.check_at(v4(2), later), Ok(()), "another address");
        assert_eq!(t.check_at(v4(1), start + Duration::from_secs(60)), Ok(()));
        // A new window starts from nothing.
        assert_eq!(t.failed_at(v4(1), start + Duration::from_secs(61)), Ok(()));
    }

    #[test]
    fn zero_turns_it_off() {
        let t = AuthThrottle::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            assert_eq!(t.failed(v4(1)), Ok(()));
        }
        assert_eq!(t.check(v4(1)), Ok(()));
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn a_flood_of_addresses_stays_bounded() {
        let t = AuthThrottle::new(5, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(3 * MAX_TRACKED as u32) {
            let addr = ClientAddr(Some(IpAddr::from(
                (0x2001_0db8_u128 << 96 | u128::from(i) << 64).to_be_bytes(),
            )));
            let _ = t.failed_at(addr, now + Duration::from_millis(u64::from(i)));
        }
        assert!(t.tracked() <= MAX_TRACKED, "{}", t.tracked());
        // The newest are the ones remembered.
        let newest = ClientAddr(Some(IpAddr::from(
            (0x2001_0db8_u128 << 96 | u128::from(3 * MAX_TRACKED as u32 - 1) << 64).to_be_bytes(),
        )));
        assert!(t.failures.lock().unwrap().contains_key(&newest));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(ClientAddr(Some(key(a))).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(Blocked(Duration::from_millis(1500)).retry_after_secs(), 2);
        assert_eq!(Blocked(Duration::from_secs(3)).retry_after_secs(), 3);
        assert_eq!(Blocked(Duration::ZERO).retry_after_secs(), 1);
    }
}
