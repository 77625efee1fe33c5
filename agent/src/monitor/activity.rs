//! What the store path tells the monitors: per calling AE title, when it
//! last stored an object and which addresses it called from.
//!
//! In memory, behind one mutex taken once per association and once per
//! stored object (a hash-map update; never held across I/O).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

/// One calling AE title, as seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The last object it stored (Unix ms); None: none since start.
    pub last_store_ms: Option<u64>,
    /// Whether `last_store_ms` changed since the monitor last saved it.
    pub unsaved: bool,
    /// Addresses it called from, with the last time each was seen (Unix ms).
    pub addresses: BTreeMap<IpAddr, u64>,
}

/// Activity of every calling AE title since start.
#[derive(Debug, Default)]
pub struct Activity {
    by_ae: Mutex<HashMap<String, Seen>>,
}

impl Activity {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Seen>) -> R) -> R {
        let mut g = self.by_ae.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// An association from `calling_ae` at `ip` was accepted.
    pub fn association(&self, calling_ae: &str, ip: IpAddr, now_ms: u64) {
        // ::ffff:a.b.c.d and a.b.c.d are one address.
        let ip = ip.to_canonical();
        self.with(|m| {
            m.entry(calling_ae.to_string())
                .or_default()
                .addresses
                .insert(ip, now_ms);
        });
    }

    /// `calling_ae` stored an object (answered Success).
    pub fn stored(&self, calling_ae: &str, now_ms: u64) {
        // On the C-STORE path: no allocation once the title is known.
        self.with(|m| {
            let s = match m.get_mut(calling_ae) {
                Some(s) => s,
                None => m.entry(calling_ae.to_string()).or_default(),
            };
            s.last_store_ms = Some(s.last_store_ms.map_or(now_ms, |t| t.max(now_ms)));
            s.unsaved = true;
        });
    }

    /// Seed last store times (from the index at start-up); a later store
    /// seen in memory wins.
    pub fn restore(&self, saved: BTreeMap<String, u64>) {
        self.with(|m| {
            for (ae, ms) in saved {
                let s = m.entry(ae).or_default();
                s.last_store_ms = Some(s.last_store_ms.map_or(ms, |t| t.max(ms)));
            }
        });
    }

    /// A copy of everything, forgetting addresses not seen since
    /// `forget_before_ms`; the unsaved last store times are returned as such
    /// once and then marked saved.
    pub fn snapshot(&self, forget_before_ms: u64) -> (BTreeMap<String, Seen>, Vec<(String, u64)>) {
        self.with(|m| {
            let mut unsaved = Vec::new();
            for (ae, s) in m.iter_mut() {
                s.addresses.retain(|_, t| *t >= forget_before_ms);
                if s.unsaved {
                    s.unsaved = false;
                    if let Some(t) = s.last_store_ms {
                        unsaved.push((ae.clone(), t));
                    }
                }
            }
            (
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                unsaved,
            )
        })
    }

    /// Put back last store times whose saving failed (they are retried at
    /// the next check).
    pub fn unsave(&self, failed: &[(String, u64)]) {
        self.with(|m| {
            for (ae, _) in failed {
                if let Some(s) = m.get_mut(ae) {
                    s.unsaved = true;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_addresses_and_saving() {
        let a = Activity::default();
        let ip1: IpAddr = "127.0.0.1".parse().unwrap();
        let ip2: IpAddr = "127.0.0.2".parse().unwrap();
        a.association("CT1", ip1, 10);
        a.association("CT1", ip2, 20);
        a.stored("CT1", 30);
        a.stored("CT1", 25); // late, out of order: the newest stays
        a.restore([("CT1".to_string(), 5), ("MR1".to_string(), 7)].into());
        let (seen, unsaved) = a.snapshot(15);
        assert_eq!(seen["CT1"].last_store_ms, Some(30));
        assert_eq!(seen["CT1"].addresses.keys().collect::<Vec<_>>(), [&ip2]);
        assert_eq!(seen["MR1"].last_store_ms, Some(7));
        assert_eq!(unsaved, [("CT1".to_string(), 30)]);
        // saved once: not again until the next store or a failed save
        assert!(a.snapshot(0).1.is_empty());
        a.unsave(&unsaved);
        assert_eq!(a.snapshot(0).1, [("CT1".to_string(), 30)]);
    }

    #[test]
    fn mapped_ipv4_is_the_ipv4_address() {
        let a = Activity::default();
        a.association("CT1", "::ffff:10.0.0.5".parse().unwrap(), 1);
        a.association("CT1", "10.0.0.5".parse().unwrap(), 2);
        assert_eq!(a.snapshot(0).0["CT1"].addresses.len(), 1);
    }
}
