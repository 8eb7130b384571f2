//! Connection slots: who holds them, per address, and which one may be dropped to make
//! room.
//!
//! A peer can hold a slot without ever finishing a request (trickling a header a byte at
//! a time) or without ever sending one. The first is bounded by the request deadline and
//! the per-address cap; the second by the lifetime of a connection with no key exchange,
//! and, when the server is full, by [`Slots::evict_one`]: the oldest connection that made
//! no key exchange and is waiting for a request gives its slot to the newcomer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Notify;

/// Default most connections one address may hold at once. Above the hundred concurrent
/// clients of one address the test suite runs, and far below the connection limit.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 128;

#[derive(Debug)]
struct Entry {
    accepted: Instant,
    keyed: bool,
    idle: bool,
    evict: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Inner {
    by_ip: HashMap<IpAddr, usize>,
    conns: HashMap<u64, Entry>,
}

/// Every connection being served.
#[derive(Debug)]
pub struct Slots {
    per_address: usize,
    inner: Mutex<Inner>,
}

/// One connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    ip: IpAddr,
    /// Notified when the connection should give its slot up.
    pub evict: Arc<Notify>,
}

impl Slots {
    /// At most `per_address` connections per address (0: no cap).
    pub fn new(per_address: usize) -> Arc<Self> {
        Arc::new(Slots { per_address, inner: Mutex::default() })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for connection `id` from `ip`, or `None` when that address holds its cap.
    pub fn admit(self: &Arc<Self>, id: u64, ip: IpAddr) -> Option<Slot> {
        let mut inner = self.lock();
        let count = inner.by_ip.entry(ip).or_default();
        if self.per_address > 0 && *count >= self.per_address {
            return None;
        }
        *count += 1;
        let evict = Arc::new(Notify::new());
        let entry = Entry {
            accepted: Instant::now(),
            keyed: false,
            idle: false,
            evict: Arc::clone(&evict),
        };
        inner.conns.insert(id, entry);
        Some(Slot { slots: Arc::clone(self), id, ip, evict })
    }

    /// Asks the oldest connection that made no key exchange and waits for a request to
    /// close; false if there is none.
    pub fn evict_one(&self) -> bool {
        let mut inner = self.lock();
        let oldest = inner
            .conns
            .iter()
            .filter(|(_, e)| e.idle && !e.keyed)
            .min_by_key(|(_, e)| e.accepted)
            .map(|(id, _)| *id);
        let Some(id) = oldest else { return false };
        let entry = inner.conns.get_mut(&id).expect("just found");
        entry.idle = false; // asked once
        entry.evict.notify_one();
        true
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.lock().conns.get_mut(&id) {
            f(entry);
        }
    }
}

impl Slot {
    /// Whether the connection waits for a request with nothing of it read yet.
    pub fn set_idle(&self, idle: bool) {
        self.slots.update(self.id, |e| e.idle = idle);
    }

    /// The connection made a key exchange: it is never evicted.
    pub fn set_keyed(&self) {
        self.slots.update(self.id, |e| e.keyed = true);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        inner.conns.remove(&self.id);
        if let Some(count) = inner.by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                inner.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_without_a_key_exchange_is_evicted_and_caps_hold_per_address() {
        let slots = Slots::new(2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = slots.admit(1, a).unwrap();
        let second = slots.admit(2, a).unwrap();
        assert!(slots.admit(3, a).is_none(), "the address's cap");
        let other = slots.admit(4, b).unwrap();
        assert!(!slots.evict_one(), "nobody idle yet");
        first.set_idle(true);
        first.set_keyed();
        second.set_idle(true);
        other.set_idle(true);
        assert!(slots.evict_one());
        assert!(slots.lock().conns.get(&2).is_some_and(|e| !e.idle), "the oldest unkeyed: 2");
        drop(second);
        assert!(slots.admit(5, a).is_some(), "its slot was given back");
    }
}
