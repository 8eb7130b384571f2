//! How often one address may register (1025): a token bucket per address.
//!
//! A registration takes a row in the database and a name for good, and the protocol asks
//! nothing of whoever sends one, so without a limit one host could fill the database or
//! squat on every name. Clients register once in their life; a bucket of
//! [`DEFAULT_REGISTRATION_BURST`] refilled at [`DEFAULT_REGISTRATIONS_PER_MINUTE`] leaves
//! room for a classroom behind one NAT address and none for a flood. IPv6 addresses count
//! per /64, the block one host usually has.
//!
//! Plain data driven by the caller's clock (`now` on every call).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Registrations one address gets per minute, on average.
pub const DEFAULT_REGISTRATIONS_PER_MINUTE: u32 = 10;
/// Registrations one address may make at once after a quiet time: twice the rate.
pub const DEFAULT_REGISTRATION_BURST: u32 = 2 * DEFAULT_REGISTRATIONS_PER_MINUTE;
/// Most addresses remembered; beyond it the fullest bucket (the least used) goes.
pub const MAX_ADDRESSES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per address.
#[derive(Debug)]
pub struct RateLimit {
    /// Tokens added per second; zero means no limit.
    per_second: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    capacity: usize,
}

/// The address limits are kept for: IPv4 as it is, IPv6 by its /64 (one host usually has
/// a whole /64 to pick addresses from).
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

impl RateLimit {
    /// `per_minute` on average and `burst` at once, per address; `per_minute == 0` turns
    /// the limit off.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        RateLimit {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            capacity: MAX_ADDRESSES,
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// Takes a token for `ip` if it has one.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let key = network_of(ip);
        if !self.buckets.contains_key(&key) {
            self.make_room(now);
        }
        let full = Bucket { tokens: self.burst, at: now };
        let bucket = self.buckets.get(&key).copied().unwrap_or(full);
        let tokens = self.refilled(bucket, now);
        let allowed = tokens >= 1.0;
        let tokens = if allowed { tokens - 1.0 } else { tokens };
        self.buckets.insert(key, Bucket { tokens, at: now });
        allowed
    }

    /// How long until `ip` has a token again (zero if it has one).
    pub fn wait(&self, ip: IpAddr, now: Instant) -> Duration {
        let Some(&bucket) = self.buckets.get(&network_of(ip)) else { return Duration::ZERO };
        let missing = 1.0 - self.refilled(bucket, now);
        if missing <= 0.0 || self.per_second == 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(missing / self.per_second)
    }

    /// Forgets the addresses whose buckets are full again. Returns how many are left.
    pub fn prune(&mut self, now: Instant) -> usize {
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * per_second < burst
        });
        self.buckets.len()
    }

    fn make_room(&mut self, now: Instant) {
        if self.buckets.len() < self.capacity || self.prune(now) < self.capacity {
            return;
        }
        let fullest = self
            .buckets
            .iter()
            .max_by(|a, b| self.refilled(*a.1, now).total_cmp(&self.refilled(*b.1, now)))
            .map(|(k, _)| *k);
        if let Some(key) = fullest {
            self.buckets.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn allowed(limit: &mut RateLimit, ip: IpAddr, now: Instant, tries: u32) -> u32 {
        (0..tries).filter(|_| limit.allow(ip, now)).count() as u32
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate() {
        let mut limit = RateLimit::new(10, 20);
        let now = Instant::now();
        assert_eq!(allowed(&mut limit, A, now, 50), 20);
        assert!((limit.wait(A, now).as_secs_f64() - 6.0).abs() < 1e-6);
        // Ten a minute: one every six seconds.
        assert_eq!(allowed(&mut limit, A, now + Duration::from_secs(5), 5), 0);
        assert_eq!(allowed(&mut limit, A, now + Duration::from_secs(7), 5), 1);
        assert_eq!(allowed(&mut limit, A, now + Duration::from_secs(68), 50), 10);
    }

    #[test]
    fn addresses_have_buckets_of_their_own() {
        let mut limit = RateLimit::new(10, 20);
        let now = Instant::now();
        assert_eq!(allowed(&mut limit, A, now, 30), 20);
        assert_eq!(allowed(&mut limit, B, now, 30), 20);
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_64() {
        let mut limit = RateLimit::new(10, 20);
        let now = Instant::now();
        let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last));
        assert_eq!((0..30).filter(|i| limit.allow(host(*i), now)).count(), 20);
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1));
        assert!(limit.allow(other, now));
    }

    #[test]
    fn a_zero_rate_means_no_limit() {
        let mut limit = RateLimit::new(0, 0);
        assert_eq!(allowed(&mut limit, A, Instant::now(), 1000), 1000);
    }

    #[test]
    fn full_buckets_are_forgotten_and_memory_stays_bounded() {
        let mut limit = RateLimit::new(10, 20);
        limit.capacity = 64;
        let now = Instant::now();
        for i in 0..1000u32 {
            limit.allow(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), now);
        }
        assert!(limit.buckets.len() <= 64);
        assert_eq!(limit.prune(now + Duration::from_secs(7)), 0);
    }
}
