//! The monitors' memory across restarts: when each source (calling AE
//! title) last stored an object, and which alert conditions were firing
//! (so that a restart does not raise them again).
//!
//! # Keys
//! ```text
//! a/<calling AE title>       -> u64 BE, Unix ms of the last stored object
//! f/<kind>\0<subject>         -> u64 BE, Unix ms since when it fires
//! ```
//! Written by the monitor once per check (last stores: only those that
//! changed; firing: the whole set, when it changed), never by the store
//! path. A crash loses at most one check's worth: a source then looks as if
//! it last sent up to one check interval earlier than it did, and an alert
//! raised just before the crash may be raised once more.

use std::collections::BTreeMap;

use super::{Index, IndexError, Op, key};

const SOURCES: &[u8] = b"a/";
const FIRING: &[u8] = b"f/";

impl Index {
    /// Record the last store time of each of `sources`.
    pub fn put_source_last_stores(&self, sources: &[(String, u64)]) -> Result<(), IndexError> {
        if sources.is_empty() {
            return Ok(());
        }
        let ops = sources
            .iter()
            .map(|(ae, ms)| Op::Put(key(&[SOURCES, ae.as_bytes()]), ms.to_be_bytes().to_vec()))
            .collect();
        self.apply(ops)?;
        Ok(())
    }

    /// Every source's last store time (Unix ms), by calling AE title.
    pub fn source_last_stores(&self) -> Result<BTreeMap<String, u64>, IndexError> {
        let mut out = BTreeMap::new();
        for (k, v) in self.kv.scan_prefix(SOURCES)? {
            let ae = String::from_utf8_lossy(&k[SOURCES.len()..]).into_owned();
            if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                out.insert(ae, u64::from_be_bytes(b));
            }
        }
        Ok(out)
    }
}

impl Index {
    /// Replace the set of firing alerts: (kind, subject, since ms).
    pub fn put_firing_alerts(&self, firing: &[(String, String, u64)]) -> Result<(), IndexError> {
        let mut ops: Vec<Op> = self
            .kv
            .scan_prefix(FIRING)?
            .into_iter()
            .map(|(k, _)| Op::Delete(k))
            .collect();
        for (kind, subject, since) in firing {
            let mut k = key(&[FIRING, kind.as_bytes()]);
            k.push(0);
            k.extend_from_slice(subject.as_bytes());
            ops.push(Op::Put(k, since.to_be_bytes().to_vec()));
        }
        self.apply(ops)?;
        Ok(())
    }

    /// The firing alerts saved last: (kind, subject, since ms).
    pub fn firing_alerts(&self) -> Result<Vec<(String, String, u64)>, IndexError> {
        let mut out = Vec::new();
        for (k, v) in self.kv.scan_prefix(FIRING)? {
            let rest = &k[FIRING.len()..];
            let Some(nul) = rest.iter().position(|b| *b == 0) else {
                continue;
            };
            let (Ok(since), kind, subject) = (
                <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes),
                String::from_utf8_lossy(&rest[..nul]).into_owned(),
                String::from_utf8_lossy(&rest[nul + 1..]).into_owned(),
            ) else {
                continue;
            };
            out.push((kind, subject, since));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::MemKv;
    use std::sync::Arc;

    #[test]
    fn last_stores_round_trip_and_update() {
        let idx = Index::new(Arc::new(MemKv::default()));
        assert!(idx.source_last_stores().unwrap().is_empty());
        idx.put_source_last_stores(&[("CT1".into(), 5), ("MR 2".into(), 7)])
            .unwrap();
        idx.put_source_last_stores(&[("CT1".into(), 9)]).unwrap();
        let got = idx.source_last_stores().unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [("CT1".to_string(), 9), ("MR 2".to_string(), 7)]
        );
    }

    #[test]
    fn firing_alerts_are_replaced_as_a_set() {
        let idx = Index::new(Arc::new(MemKv::default()));
        idx.put_firing_alerts(&[
            ("queue_stuck".into(), "mirror".into(), 5),
            ("source_silent".into(), "CT 1".into(), 7),
        ])
        .unwrap();
        idx.put_firing_alerts(&[("source_silent".into(), "CT 1".into(), 7)])
            .unwrap();
        assert_eq!(
            idx.firing_alerts().unwrap(),
            [("source_silent".to_string(), "CT 1".to_string(), 7)]
        );
        idx.put_firing_alerts(&[]).unwrap();
        assert!(idx.firing_alerts().unwrap().is_empty());
        // The last-store rows are another table.
        idx.put_source_last_stores(&[("CT1".into(), 1)]).unwrap();
        assert!(idx.firing_alerts().unwrap().is_empty());
    }
}
