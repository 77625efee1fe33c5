//! Study-level census of a remote AE by C-FIND, and the comparison of what a
//! peer holds with what it should hold. Used by `failover check` (the index
//! against the mirror) and by `failback` (the mirror against the primary).
//!
//! # How a peer is counted
//! 1. One C-FIND at STUDY level, universal or `StudyDate >= since`, returning
//!    Study Instance UID and Number of Study Related Instances
//!    ([`Session::studies`]).
//! 2. Studies expected but absent from that answer are asked for again by
//!    their UIDs ([`Session::lookup`], list matching in batches): a study
//!    without a Study Date, or an answer the peer cut short, is then not
//!    mistaken for a missing one. A batch answer that is cut short, names
//!    studies not asked for, or is empty for several UIDs (a peer without
//!    list matching) is asked again one UID per C-FIND ([`batch_verdict`]).
//! 3. Where the counts differ (or the peer gave none), one C-FIND at IMAGE
//!    level of that study names its instances ([`Session::instances`]), so
//!    the missing SOP Instance UIDs are exact.
//!
//! Equal counts are taken as complete (a study with one instance missing and
//! one foreign instance added would pass; listing every instance of every
//! study would cost one query per study).

use std::collections::{BTreeMap, BTreeSet};

use crate::qr::{
    DateRange, InformationModel, InstanceMatch, InstanceQuery, QrAssociation, QrError, QrOptions,
    Service, StudyMatch, StudyQuery,
};
use pacs_mirror_dicom::scu::Peer;

/// Study Instance UIDs per C-FIND when asking for studies by UID.
pub const LOOKUP_BATCH: usize = 64;

/// What one C-FIND at STUDY level found, by Study Instance UID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// The studies.
    pub studies: BTreeMap<String, StudyMatch>,
    /// The peer had more matches than we keep ([`QrOptions::max_matches`]).
    pub truncated: bool,
}

/// A C-FIND association to one peer, for several queries.
pub struct Session {
    association: QrAssociation,
    options: QrOptions,
    peer: Peer,
}

impl Session {
    /// Associate for Study Root C-FIND.
    pub async fn open(peer: &Peer) -> Result<Session, QrError> {
        let association =
            QrAssociation::connect(peer, &[Service::Find(InformationModel::StudyRoot)]).await?;
        Ok(Session {
            association,
            options: QrOptions::default(),
            peer: peer.clone(),
        })
    }

    /// The peer as `AE@host:port`.
    pub fn describe(&self) -> String {
        describe(&self.peer)
    }

    /// Every study (dated `since` or later, `YYYYMMDD`, when given).
    pub async fn studies(&mut self, since: Option<&str>) -> Result<Census, QrError> {
        let query = StudyQuery {
            study_date: since
                .map(DateRange::since)
                .transpose()
                .map_err(QrError::InvalidQuery)?,
            ..StudyQuery::default()
        };
        let outcome = self
            .association
            .find(InformationModel::StudyRoot, &query, &self.options)
            .await?;
        Ok(Census {
            truncated: outcome.truncated,
            studies: outcome
                .matches
                .into_iter()
                .map(|m| (m.study_instance_uid.clone(), m))
                .collect(),
        })
    }

    /// These studies, asked for by UID ([`LOOKUP_BATCH`] per C-FIND, list
    /// matching); the ones the peer does not hold are absent from the
    /// answer.
    ///
    /// A peer that does not support list matching may answer a batch with
    /// everything it holds (perhaps cut short) or with nothing. A batch
    /// answer is trusted only when it is not truncated, names no study not
    /// asked for, and (for a batch of more than one) is not empty; else the
    /// batch is asked again one C-FIND per UID ([`batch_verdict`]).
    pub async fn lookup(
        &mut self,
        study_instance_uids: &[String],
    ) -> Result<BTreeMap<String, StudyMatch>, QrError> {
        let mut out = BTreeMap::new();
        for batch in study_instance_uids.chunks(LOOKUP_BATCH) {
            let outcome = self.find_uids(batch).await?;
            match batch_verdict(batch, &outcome.matches, outcome.truncated) {
                BatchVerdict::Trusted => {
                    out.extend(
                        outcome
                            .matches
                            .into_iter()
                            .map(|m| (m.study_instance_uid.clone(), m)),
                    );
                }
                BatchVerdict::OneByOne => {
                    tracing::debug!(
                        peer = %self.describe(),
                        batch = batch.len(),
                        matches = outcome.matches.len(),
                        truncated = outcome.truncated,
                        "study lookup by UID list not trusted: asking one UID per C-FIND"
                    );
                    for uid in batch {
                        let one = std::slice::from_ref(uid);
                        let outcome = self.find_uids(one).await?;
                        let found = outcome
                            .matches
                            .into_iter()
                            .find(|m| &m.study_instance_uid == uid);
                        match found {
                            Some(m) => {
                                out.insert(uid.clone(), m);
                            }
                            // Everything the peer holds, cut short, without
                            // ours: whether it holds ours is unknown.
                            None if outcome.truncated => {
                                return Err(QrError::Unacceptable {
                                    addr: self.describe(),
                                    what: "C-FIND answer",
                                    reason: format!(
                                        "asked for study {uid} by its UID, it answered more than {} other studies (it seems to ignore Study Instance UID matching)",
                                        self.options.max_matches
                                    ),
                                });
                            }
                            None => {}
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn find_uids(
        &mut self,
        uids: &[String],
    ) -> Result<crate::qr::FindOutcome<StudyMatch>, QrError> {
        let query = StudyQuery {
            study_instance_uids: uids.to_vec(),
            ..StudyQuery::default()
        };
        self.association
            .find(InformationModel::StudyRoot, &query, &self.options)
            .await
    }

    /// The census since `since`, completed by a lookup of the `expected`
    /// studies it does not list.
    pub async fn census_of(
        &mut self,
        since: Option<&str>,
        expected: &[String],
    ) -> Result<Census, QrError> {
        let mut census = self.studies(since).await?;
        let unlisted: Vec<String> = expected
            .iter()
            .filter(|s| !census.studies.contains_key(*s))
            .cloned()
            .collect();
        if !unlisted.is_empty() {
            census.studies.extend(self.lookup(&unlisted).await?);
        }
        Ok(census)
    }

    /// Every instance of a study, by SOP Instance UID.
    pub async fn instances(
        &mut self,
        study_instance_uid: &str,
    ) -> Result<BTreeMap<String, InstanceMatch>, QrError> {
        let query = InstanceQuery {
            study_instance_uid: Some(study_instance_uid.to_string()),
            ..InstanceQuery::default()
        };
        let outcome = self
            .association
            .find(InformationModel::StudyRoot, &query, &self.options)
            .await?;
        if outcome.truncated {
            return Err(QrError::Unacceptable {
                addr: self.describe(),
                what: "C-FIND answer",
                reason: format!(
                    "study {study_instance_uid} has more than {} instances",
                    self.options.max_matches
                ),
            });
        }
        Ok(outcome
            .matches
            .into_iter()
            // A peer that ignores the study key answers more: keep ours.
            .filter(|m| {
                m.study_instance_uid.is_empty() || m.study_instance_uid == study_instance_uid
            })
            .map(|m| (m.sop_instance_uid.clone(), m))
            .collect())
    }

    /// Release the association.
    pub async fn close(self) {
        self.association.release().await;
    }
}

/// Whether a C-FIND answer to a batch of Study Instance UIDs (list
/// matching) can be taken as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchVerdict {
    /// Every match was asked for, the answer is whole, and an empty answer
    /// is for one UID only.
    Trusted,
    /// Ask again one UID per C-FIND: the answer was cut short, names studies
    /// not asked for (list matching ignored), or is empty for several UIDs
    /// (a peer that took the list as one UID matches nothing).
    OneByOne,
}

/// Judge a batch answer ([`Session::lookup`]).
pub fn batch_verdict(batch: &[String], matches: &[StudyMatch], truncated: bool) -> BatchVerdict {
    let foreign = matches
        .iter()
        .any(|m| !batch.contains(&m.study_instance_uid));
    if truncated || foreign || (matches.is_empty() && batch.len() > 1) {
        BatchVerdict::OneByOne
    } else {
        BatchVerdict::Trusted
    }
}

/// A peer as `AE@host:port`.
pub fn describe(peer: &Peer) -> String {
    format!("{}@{}:{}", peer.called_ae, peer.host, peer.port)
}

/// How a study's count on a peer compares with the count expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// The peer does not hold the study.
    Absent,
    /// Fewer instances than expected.
    Short {
        /// Instances on the peer.
        found: u32,
    },
    /// As many as expected.
    Equal,
    /// More than expected (not a gap: someone else stored there too).
    More {
        /// Instances on the peer.
        found: u32,
    },
    /// The peer holds the study but did not say how many instances.
    Uncounted,
}

impl Tally {
    /// Whether the instances must be listed to know what is missing.
    pub fn needs_listing(self) -> bool {
        matches!(
            self,
            Tally::Short { .. } | Tally::More { .. } | Tally::Uncounted
        )
    }

    /// The count the peer gave (0 when absent).
    pub fn found(self, expected: usize) -> Option<u32> {
        match self {
            Tally::Absent => Some(0),
            Tally::Short { found } | Tally::More { found } => Some(found),
            Tally::Equal => Some(u32::try_from(expected).unwrap_or(u32::MAX)),
            Tally::Uncounted => None,
        }
    }
}

/// Compare `expected` distinct instances with a peer's answer for the study.
pub fn tally(expected: usize, on_peer: Option<&StudyMatch>) -> Tally {
    let Some(m) = on_peer else {
        return Tally::Absent;
    };
    match m.number_of_study_related_instances {
        None => Tally::Uncounted,
        Some(found) if (found as usize) < expected => Tally::Short { found },
        Some(found) if (found as usize) > expected => Tally::More { found },
        Some(_) => Tally::Equal,
    }
}

/// The SOP Instance UIDs of `expected` the peer's listing lacks, sorted,
/// each once.
pub fn missing<'a, T>(
    expected: impl IntoIterator<Item = &'a str>,
    on_peer: &BTreeMap<String, T>,
) -> Vec<String> {
    let set: BTreeSet<&str> = expected
        .into_iter()
        .filter(|s| !on_peer.contains_key(*s))
        .collect();
    set.into_iter().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(uid: &str, n: Option<u32>) -> StudyMatch {
        StudyMatch {
            study_instance_uid: uid.into(),
            number_of_study_related_instances: n,
            ..StudyMatch::default()
        }
    }

    #[test]
    fn tallies() {
        assert_eq!(tally(3, None), Tally::Absent);
        assert_eq!(
            tally(3, Some(&study("1", Some(2)))),
            Tally::Short { found: 2 }
        );
        assert_eq!(tally(3, Some(&study("1", Some(3)))), Tally::Equal);
        assert_eq!(
            tally(3, Some(&study("1", Some(5)))),
            Tally::More { found: 5 }
        );
        assert_eq!(tally(3, Some(&study("1", None))), Tally::Uncounted);
        assert!(!Tally::Equal.needs_listing());
        assert!(!Tally::Absent.needs_listing());
        assert!(Tally::Short { found: 1 }.needs_listing());
        assert!(Tally::Uncounted.needs_listing());
        assert_eq!(Tally::Absent.found(4), Some(0));
        assert_eq!(Tally::Equal.found(4), Some(4));
        assert_eq!(Tally::Uncounted.found(4), None);
    }

    #[test]
    fn batch_answers_not_trusted_fall_back_to_one_uid_per_find() {
        let batch: Vec<String> = ["1.1", "1.2", "1.3"].map(String::from).to_vec();
        // Some of the batch, whole: trusted (the others are absent).
        assert_eq!(
            batch_verdict(&batch, &[study("1.2", Some(1))], false),
            BatchVerdict::Trusted
        );
        // Cut short: one by one.
        assert_eq!(
            batch_verdict(&batch, &[study("1.2", Some(1))], true),
            BatchVerdict::OneByOne
        );
        // A study not asked for: list matching ignored.
        assert_eq!(
            batch_verdict(
                &batch,
                &[study("1.2", Some(1)), study("9.9", Some(1))],
                false
            ),
            BatchVerdict::OneByOne
        );
        // Nothing for several UIDs: maybe the list was taken as one UID.
        assert_eq!(batch_verdict(&batch, &[], false), BatchVerdict::OneByOne);
        // Nothing for one UID: the peer does not hold it.
        assert_eq!(
            batch_verdict(&batch[..1], &[], false),
            BatchVerdict::Trusted
        );
    }

    #[test]
    fn missing_lists_each_lacking_uid_once_sorted() {
        let on_peer: BTreeMap<String, ()> = [("1.2.1".to_string(), ()), ("1.2.9".to_string(), ())]
            .into_iter()
            .collect();
        let expected = ["1.2.3", "1.2.1", "1.2.2", "1.2.3"];
        assert_eq!(missing(expected, &on_peer), ["1.2.2", "1.2.3"]);
        assert!(
            missing(["1.2.1"], &on_peer).is_empty(),
            "extra on the peer is no gap"
        );
    }
}
