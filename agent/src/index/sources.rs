//! When each source (calling AE title) last stored an object, kept so that
//! silence alerts survive a restart of the agent.
//!
//! # Keys
//! ```text
//! a/<calling AE title>  -> u64 BE, Unix ms of the last stored object
//! ```
//! Written by the monitor once per check for the sources that stored since
//! the last one, never by the store path (no write per object). A crash
//! loses at most one check's worth: a source then looks as if it last sent
//! up to one check interval earlier than it did.

use std::collections::BTreeMap;

use super::{Index, IndexError, Op, key};

const SOURCES: &[u8] = b"a/";

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
        self.kv.apply(ops)?;
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
}
