//! Back-off after padding failures: the policy that makes guessing at content under a
//! stranger's session key slow.
//!
//! A correct client never sends content whose PKCS#7 padding is bad: it has the session
//! key. Someone who knows a client's name and id can make a key exchange (1027) and send
//! content anyway; it decrypts to garbage, and about one time in 255 the garbage ends in
//! valid padding and would be stored under the client's name. Without a MAC the server
//! cannot tell such a lucky guess from the client, so it makes guesses expensive: every
//! padding failure blocks key exchanges (1026 and 1027) for a delay that doubles with each
//! failure, both for the address it came from and for the client id.
//!
//! The client's own traffic must not be locked out by a stranger's failures: from the
//! client's usual address (the one that registered it or last confirmed a file), only the
//! failures that came from that address count against the id.
//!
//! Plain data driven by the caller's clock (`now` on every call), so tests need no sleeps.

use super::ratelimit::network_of;
use crate::protocol::ClientId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The block after the first failure; each further failure doubles it.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest block.
pub const MAX_DELAY: Duration = Duration::from_secs(60 * 60);
/// Each period this long without a failure, after a block ends, forgets one failure.
pub const QUIET: Duration = Duration::from_secs(10 * 60);
/// Most addresses and ids remembered; beyond it the entry whose block ends first goes,
/// so an attacker with many addresses cannot make the server's memory grow.
pub const MAX_ENTRIES: usize = 100_000;

/// What a failure counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// Everything from this address.
    Ip(IpAddr),
    /// The id, from any address but its usual one.
    Id(ClientId),
    /// The id, from its usual address.
    IdAt(ClientId, IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// Key exchanges are refused until then.
    until: Instant,
    /// Where the quiet time that forgets failures is counted from.
    quiet_since: Instant,
}

impl Entry {
    /// Forgets one failure per [`QUIET`] period since the block ended.
    fn decay(&mut self, now: Instant) {
        let Some(quiet) = now.checked_duration_since(self.quiet_since) else { return };
        let periods = quiet.as_secs() / QUIET.as_secs();
        let forgotten = u32::try_from(periods).unwrap_or(u32::MAX).min(self.failures);
        self.failures -= forgotten;
        self.quiet_since += QUIET * forgotten;
    }

    fn forgotten(&self, now: Instant) -> bool {
        self.failures == 0 && now >= self.until
    }
}

/// The block after `failures` failures: [`FIRST_DELAY`] doubled per further failure, at
/// most [`MAX_DELAY`].
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// The failures the server remembers.
#[derive(Debug)]
pub struct Backoff {
    entries: HashMap<Key, Entry>,
    capacity: usize,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::with_capacity(MAX_ENTRIES)
    }
}

/// The keys that apply to `id` at `ip`, given the client's usual address.
fn keys(id: ClientId, ip: IpAddr, usual: Option<IpAddr>) -> [Key; 2] {
    let net = network_of(ip);
    let for_id = if usual.map(network_of) == Some(net) { Key::IdAt(id, net) } else { Key::Id(id) };
    [Key::Ip(net), for_id]
}

/// The names of the keys that apply to `id` at `ip`, for records that several instances
/// share (the same keys as this module's own, as text): `ip:NET`, `id:HEX` or
/// `id:HEX@NET`.
pub fn key_names(id: ClientId, ip: IpAddr, usual: Option<IpAddr>) -> Vec<String> {
    keys(id, ip, usual)
        .iter()
        .map(|key| match key {
            Key::Ip(net) => format!("ip:{net}"),
            Key::Id(id) => format!("id:{}", id.to_hex()),
            Key::IdAt(id, net) => format!("id:{}@{net}", id.to_hex()),
        })
        .collect()
}

impl Backoff {
    /// Nothing remembered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing remembered, and at most `capacity` entries ever.
    pub fn with_capacity(capacity: usize) -> Self {
        Backoff { entries: HashMap::new(), capacity: capacity.max(2) }
    }

    /// Counts a padding failure of `id` from `ip`; returns the longest block it set.
    pub fn failure(
        &mut self,
        id: ClientId,
        ip: IpAddr,
        usual: Option<IpAddr>,
        now: Instant,
    ) -> Duration {
        let mut longest = Duration::ZERO;
        for key in keys(id, ip, usual) {
            self.make_room(now);
            let entry = self.entries.entry(key).or_insert(Entry {
                failures: 0,
                until: now,
                quiet_since: now,
            });
            entry.decay(now);
            entry.failures = entry.failures.saturating_add(1);
            let block = delay(entry.failures);
            entry.until = entry.until.max(now + block);
            entry.quiet_since = entry.until;
            longest = longest.max(entry.until - now);
        }
        longest
    }

    /// How much longer a key exchange of `id` from `ip` is refused, or `None` if it may go
    /// ahead.
    pub fn blocked_for(
        &mut self,
        id: ClientId,
        ip: IpAddr,
        usual: Option<IpAddr>,
        now: Instant,
    ) -> Option<Duration> {
        keys(id, ip, usual)
            .iter()
            .filter_map(|key| self.entries.get(key))
            .filter_map(|entry| entry.until.checked_duration_since(now))
            .filter(|wait| !wait.is_zero())
            .max()
    }

    /// Drops what has been forgotten. Returns how many entries are left.
    pub fn prune(&mut self, now: Instant) -> usize {
        self.entries.retain(|_, entry| {
            entry.decay(now);
            !entry.forgotten(now)
        });
        self.entries.len()
    }

    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.capacity {
            return;
        }
        if self.prune(now) < self.capacity {
            return;
        }
        let first = self.entries.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k);
        if let Some(key) = first {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const ID: ClientId = ClientId([7; 16]);
    const HOME: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
    const OTHER_STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_delay_doubles_per_failure_up_to_the_cap() {
        let delays: Vec<u64> = (1..=5).map(|n| delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16]);
        assert_eq!(delay(13), MAX_DELAY);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_failure_blocks_the_address_and_the_id_until_its_delay_passes() {
        let mut b = Backoff::new();
        let t0 = Instant::now();
        assert_eq!(b.blocked_for(ID, STRANGER, Some(HOME), t0), None);
        assert_eq!(b.failure(ID, STRANGER, Some(HOME), t0), secs(1));
        assert_eq!(b.blocked_for(ID, STRANGER, Some(HOME), t0), Some(secs(1)));
        // The id is blocked from any other stranger's address too...
        assert!(b.blocked_for(ID, OTHER_STRANGER, Some(HOME), t0).is_some());
        // ...and the address for any other id.
        assert!(b.blocked_for(ClientId([8; 16]), STRANGER, None, t0).is_some());
        assert_eq!(b.blocked_for(ID, STRANGER, Some(HOME), t0 + secs(1)), None);
    }

    #[test]
    fn repeated_failures_block_longer_and_longer() {
        let mut b = Backoff::new();
        let mut now = Instant::now();
        for expected in [1, 2, 4, 8, 16, 32] {
            assert_eq!(b.blocked_for(ID, STRANGER, Some(HOME), now), None);
            assert_eq!(b.failure(ID, STRANGER, Some(HOME), now), secs(expected));
            now += secs(expected);
        }
    }

    #[test]
    fn a_strangers_failures_never_block_the_usual_address() {
        let mut b = Backoff::new();
        let now = Instant::now();
        for _ in 0..20 {
            b.failure(ID, STRANGER, Some(HOME), now);
        }
        assert_eq!(b.blocked_for(ID, STRANGER, Some(HOME), now), Some(MAX_DELAY));
        assert_eq!(b.blocked_for(ID, HOME, Some(HOME), now), None);
    }

    #[test]
    fn failures_from_the_usual_address_count_against_it() {
        let mut b = Backoff::new();
        let now = Instant::now();
        b.failure(ID, HOME, Some(HOME), now);
        b.failure(ID, HOME, Some(HOME), now + secs(1));
        assert_eq!(b.blocked_for(ID, HOME, Some(HOME), now + secs(1)), Some(secs(2)));
        // They are not held against the id elsewhere (the address's own block aside).
        assert_eq!(b.blocked_for(ID, OTHER_STRANGER, Some(HOME), now + secs(1)), None);
    }

    #[test]
    fn an_ipv6_stranger_cannot_escape_by_moving_within_its_64() {
        let mut b = Backoff::new();
        let now = Instant::now();
        let at =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last));
        b.failure(ClientId([8; 16]), at(1), None, now);
        assert!(b.blocked_for(ID, at(2), Some(HOME), now).is_some());
    }

    #[test]
    fn a_client_without_a_usual_address_is_blocked_everywhere() {
        let mut b = Backoff::new();
        let now = Instant::now();
        b.failure(ID, STRANGER, None, now);
        assert!(b.blocked_for(ID, HOME, None, now).is_some());
    }

    #[test]
    fn quiet_periods_forget_failures_one_at_a_time() {
        let mut b = Backoff::new();
        let mut now = Instant::now();
        for _ in 0..4 {
            now += b.failure(ID, STRANGER, None, now); // 1, 2, 4, 8 s
        }
        // Two quiet periods after the block: two of the four failures are forgotten, so
        // the next failure blocks as the third did.
        now += QUIET * 2;
        assert_eq!(b.failure(ID, STRANGER, None, now), secs(4));
        now += secs(4) + QUIET * 10;
        assert_eq!(b.prune(now), 0, "everything forgotten after long enough");
        assert_eq!(b.failure(ID, STRANGER, None, now), secs(1));
    }

    #[test]
    fn memory_stays_bounded_whatever_the_number_of_addresses() {
        let mut b = Backoff::with_capacity(64);
        let now = Instant::now();
        for i in 0..1000 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            b.failure(ID, ip, None, now);
        }
        assert!(b.entries.len() <= 64);
        // The id's own entry has the latest block, so it is never the one evicted.
        assert_eq!(b.blocked_for(ID, HOME, None, now), Some(MAX_DELAY));
    }
}
