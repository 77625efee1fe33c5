//! Reading the index by study, and the drill history kept beside it.
//!
//! # Keys
//! ```text
//! r/<target>\0<started ms:u64 BE>  -> a drill result (the verifier's record, versioned JSON)
//! m/<name>                         -> u64 BE counter
//! ```
//! Drill results are written once and never changed; a crash loses at most
//! the results written since the last flush (the drill is then simply not in
//! the history).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::outbox::DeliveryRecord;
use super::records::{self, InstanceRecord};
use super::{HIER, INST, Index, IndexError, ObjectId, Op, decode_at, key};

const DRILLS: &[u8] = b"r/";
const COUNTERS: &[u8] = b"m/";

/// One study the index holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StudySummary {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Instance versions held.
    pub versions: u64,
}

impl Index {
    /// Every study, ascending by UID, with its number of instance versions.
    /// Instances with no Study Instance UID belong to none
    /// ([`Index::without_study`] counts them).
    pub fn studies(&self) -> Result<Vec<StudySummary>, IndexError> {
        let mut out: Vec<StudySummary> = Vec::new();
        self.kv.for_each_prefix(HIER, &mut |k, _| {
            let rest = &k[HIER.len()..];
            let study = rest.split(|b| *b == 0).next().unwrap_or_default();
            if study.is_empty() {
                return true;
            }
            match out.last_mut() {
                Some(last) if last.study_instance_uid.as_bytes() == study => last.versions += 1,
                _ => out.push(StudySummary {
                    study_instance_uid: String::from_utf8_lossy(study).into_owned(),
                    versions: 1,
                }),
            }
            true
        })?;
        Ok(out)
    }

    /// Whether the index holds an instance of the study (one key read).
    pub fn has_study(&self, study_instance_uid: &str) -> Result<bool, IndexError> {
        let mut prefix = key(&[HIER, study_instance_uid.as_bytes()]);
        prefix.push(0);
        let mut found = false;
        self.kv.for_each_prefix(&prefix, &mut |_, _| {
            found = true;
            false
        })?;
        Ok(found)
    }

    /// Every instance version of a study.
    pub fn study_instances(
        &self,
        study_instance_uid: &str,
    ) -> Result<Vec<InstanceRecord>, IndexError> {
        let mut prefix = key(&[HIER, study_instance_uid.as_bytes()]);
        prefix.push(0);
        let mut wanted: Vec<(Vec<u8>, ObjectId)> = Vec::new();
        self.kv.for_each_prefix(&prefix, &mut |k, _| {
            let rest = &k[prefix.len()..];
            // <series>\0<sop>\0<hash:32>
            if rest.len() > 33 {
                let (head, hash) = rest.split_at(rest.len() - 32);
                let sop = head[..head.len() - 1]
                    .rsplit(|b| *b == 0)
                    .next()
                    .unwrap_or_default()
                    .to_vec();
                if let Ok(h) = <ObjectId>::try_from(hash) {
                    wanted.push((sop, h));
                }
            }
            true
        })?;
        let mut out = Vec::with_capacity(wanted.len());
        for (sop, hash) in wanted {
            let k = key(&[INST, &sop, &hash]);
            if let Some(v) = self.kv.get(&k)? {
                out.push(decode_at(&k, &v)?);
            }
        }
        Ok(out)
    }

    /// The delivery row of `hash` for `target`, if delivered.
    pub fn delivery(
        &self,
        target: &str,
        hash: &ObjectId,
    ) -> Result<Option<DeliveryRecord>, IndexError> {
        let mut k = key(&[b"d/", target.as_bytes()]);
        k.push(0);
        k.extend_from_slice(hash);
        self.kv.get(&k)?.map(|v| decode_at(&k, &v)).transpose()
    }

    /// Keep a drill result.
    pub fn put_drill<T: Serialize + std::any::Any>(
        &self,
        target: &str,
        started_ms: u64,
        result: &T,
    ) -> Result<(), IndexError> {
        let mut k = key(&[DRILLS, target.as_bytes()]);
        k.push(0);
        k.extend_from_slice(&started_ms.to_be_bytes());
        self.apply(vec![Op::Put(k, records::encode(result))])?;
        Ok(())
    }

    /// Drill results, newest first: of `target`, or of every target.
    pub fn drills<T: DeserializeOwned + std::any::Any>(
        &self,
        target: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(u64, T)>, IndexError> {
        let prefix = match target {
            Some(t) => {
                let mut p = key(&[DRILLS, t.as_bytes()]);
                p.push(0);
                p
            }
            None => DRILLS.to_vec(),
        };
        let mut all = Vec::new();
        for (k, v) in self.kv.scan_prefix(&prefix)? {
            let started = k
                .len()
                .checked_sub(8)
                .and_then(|i| k.get(i..))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            all.push((started, decode_at::<T>(&k, &v)?));
        }
        all.sort_by_key(|e| std::cmp::Reverse(e.0));
        all.truncate(limit);
        Ok(all)
    }

    /// Increment a named counter and return its new value (1 the first
    /// time).
    pub fn next_count(&self, name: &str) -> Result<u64, IndexError> {
        let k = key(&[COUNTERS, name.as_bytes()]);
        let now = self
            .kv
            .get(&k)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes)
            + 1;
        self.apply(vec![Op::Put(k, now.to_be_bytes().to_vec())])?;
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::MemKv;
    use crate::index::ObjectId;
    use std::sync::Arc;

    fn rec(study: &str, series: &str, sop: &str, hash: &ObjectId) -> InstanceRecord {
        InstanceRecord {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            blake3: crate::index::hash_hex(hash),
            dataset_bytes: 1,
            file_bytes: 2,
            patient_id: "P".into(),
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            calling_ae: "A".into(),
            source_ip: "127.0.0.1".into(),
            received_at_ms: 1,
            study_date: String::new(),
            modality: String::new(),
            findings: Vec::new(),
        }
    }

    #[test]
    fn studies_and_their_instances() {
        let idx = Index::new(Arc::new(MemKv::default()));
        let t = ["t".to_string()];
        idx.commit_instance(
            &rec("1.2.3", "1.1", "1.2.3.1", &ObjectId([1; 32])),
            &ObjectId([1; 32]),
            &t,
            1,
        )
        .unwrap();
        idx.commit_instance(
            &rec("1.2.3", "1.2", "1.2.3.2", &ObjectId([2; 32])),
            &ObjectId([2; 32]),
            &t,
            1,
        )
        .unwrap();
        idx.commit_instance(
            &rec("1.2.3", "1.2", "1.2.3.2", &ObjectId([3; 32])),
            &ObjectId([3; 32]),
            &t,
            1,
        )
        .unwrap();
        idx.commit_instance(
            &rec("1.2.30", "1.1", "1.2.30.1", &ObjectId([4; 32])),
            &ObjectId([4; 32]),
            &t,
            1,
        )
        .unwrap();
        let s = idx.studies().unwrap();
        assert_eq!(
            s,
            vec![
                StudySummary {
                    study_instance_uid: "1.2.3".into(),
                    versions: 3
                },
                StudySummary {
                    study_instance_uid: "1.2.30".into(),
                    versions: 1
                },
            ]
        );
        let mut inst = idx.study_instances("1.2.3").unwrap();
        inst.sort_by(|a, b| a.blake3.cmp(&b.blake3));
        assert_eq!(inst.len(), 3, "a prefix study is not mixed in");
        assert_eq!(inst[2].sop_instance_uid, "1.2.3.2");
        assert!(idx.delivery("t", &ObjectId([1; 32])).unwrap().is_none());
    }

    #[test]
    fn drill_history_newest_first_and_counters() {
        let idx = Index::new(Arc::new(MemKv::default()));
        idx.put_drill("a", 5, &"five").unwrap();
        idx.put_drill("a", 7, &"seven").unwrap();
        idx.put_drill("b", 6, &"six").unwrap();
        let a: Vec<(u64, String)> = idx.drills(Some("a"), 10).unwrap();
        assert_eq!(a, vec![(7, "seven".into()), (5, "five".into())]);
        let all: Vec<(u64, String)> = idx.drills(None, 2).unwrap();
        assert_eq!(all, vec![(7, "seven".into()), (6, "six".into())]);
        assert_eq!(idx.next_count("x").unwrap(), 1);
        assert_eq!(idx.next_count("x").unwrap(), 2);
    }
}
