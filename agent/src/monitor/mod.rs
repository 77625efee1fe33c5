//! Monitors: the conditions an on-call person must hear about before a
//! modality, a radiologist or a restore finds them.
//!
//! | kind | subject | holds while |
//! |---|---|---|
//! | `source_silent` | calling AE | a `[[alerts.silence]]` source stored nothing for longer than `after_secs` of its active hours |
//! | `queue_stuck` | target | the target's oldest undelivered object is older than `queue_stuck_after_secs` |
//! | `dead_letters` | target | the target refused objects for good |
//! | `circuit_open` | target | the target is unreachable (deliveries paused, probing) |
//! | `spool_low_space` | `spool` | less than `spool_headroom_min_bytes` is left before stores are refused with A700 |
//! | `duplicate_ae_title` | calling AE | one calling AE title called from two or more addresses within `duplicate_ae_window_secs` |
//! | `certificate_expiring` | `tls` | this device's DICOM TLS certificate expires within `certificate_expiry_warning_days` (or has expired) |
//!
//! | `monitor_error` | what could not be read | the index or the spool's filesystem cannot be read (the conditions that depend on it keep their last state) |
//!
//! Every `check_interval_secs` the monitor evaluates them all ([`evaluate`],
//! pure); a condition that starts to hold raises **one** alert (log event,
//! and webhook when configured); nothing is repeated while it holds; one
//! that has not held for [`CLEAR_AFTER_CHECKS`] checks in a row is logged
//! as cleared (so a condition that flaps around its threshold is not
//! raised again and again). The firing set is kept in the index: a restart
//! does not raise again what was already raised (a silence or a stuck queue
//! restored from before the restart is kept until it has had the time to
//! hold again, since both are measured from the agent's start). Each is also a Prometheus
//! metric ([`Monitor::metrics`]) and listed in `/status`. (Drill failures
//! are alerted by the verifier.)
//!
//! Silence is counted from the later of the source's last object and the
//! agent's start (the agent's own downtime is not the source's silence); a
//! queue is stuck when its oldest object is older than the threshold *and*
//! nothing was delivered to the target for as long (a large backlog that
//! moves is not stuck).

pub mod activity;
pub mod silence;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::TimeZone;
use pacs_mirror_config::{ActiveWindow, Config};
use serde::{Deserialize, Serialize};

pub use activity::{Activity, Seen};

use crate::alert::Alerter;
use crate::replicate::status::TargetStatus;

/// The thresholds, from `[alerts]` and `[spool]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often to look.
    pub check_interval: Duration,
    /// Oldest undelivered object older than this: stuck.
    pub queue_stuck_after_secs: u64,
    /// Alert below this much room before A700.
    pub spool_headroom_min_bytes: u64,
    /// Addresses seen within this window count.
    pub duplicate_ae_window_secs: u64,
    /// Silence rules: calling AE, threshold (s), window, and the window as
    /// written (for the alert text).
    pub silence: Vec<SilenceSetting>,
    /// `spool.min_free_bytes`.
    pub min_free_bytes: u64,
    /// `spool.max_bytes`.
    pub max_bytes: Option<u64>,
    /// Calling AE titles whose remote AE lists two or more single
    /// `source_addresses`: seen from those addresses only, it is the one
    /// device configured so (a multi-homed PACS), not a duplicate title.
    pub known_addresses: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Warn this long before the TLS certificate expires.
    pub certificate_warning_secs: u64,
}

/// A condition that has not held for this many checks in a row is cleared.
pub const CLEAR_AFTER_CHECKS: u32 = 3;

/// Kinds evaluated from a target's queue status.
const TARGET_KINDS: [&str; 3] = ["queue_stuck", "dead_letters", "circuit_open"];

/// One silence rule, parsed.
#[derive(Debug, Clone)]
pub struct SilenceSetting {
    /// The source's calling AE title.
    pub calling_ae: String,
    /// Active seconds of silence allowed.
    pub after_secs: u64,
    /// When it is expected to send.
    pub window: ActiveWindow,
    /// The window as configured, e.g. "07:00-19:00 mon,tue".
    pub described: String,
}

impl Settings {
    /// From a validated configuration (absent `[alerts]`: the defaults).
    pub fn from_config(config: &Config) -> Self {
        let a = config.alerts.clone().unwrap_or_default();
        Settings {
            check_interval: Duration::from_secs(a.check_interval_secs.max(1)),
            queue_stuck_after_secs: a.queue_stuck_after_secs,
            spool_headroom_min_bytes: a.spool_headroom_min_bytes,
            duplicate_ae_window_secs: a.duplicate_ae_window_secs,
            silence: a
                .silence
                .iter()
                .filter_map(|r| {
                    // `validate` reports a bad window; such a rule is skipped.
                    let window = r.window().ok()?;
                    let mut described = r.active_hours.clone().unwrap_or_else(|| "all day".into());
                    if let Some(days) = &r.days {
                        described.push(' ');
                        described.push_str(&days.join(","));
                    }
                    Some(SilenceSetting {
                        calling_ae: r.calling_ae.trim().to_string(),
                        after_secs: r.after_secs,
                        window,
                        described,
                    })
                })
                .collect(),
            min_free_bytes: config.spool.min_free_bytes,
            max_bytes: config.spool.max_bytes,
            certificate_warning_secs: a.certificate_expiry_warning_days.saturating_mul(86_400),
            known_addresses: config
                .remote_devices
                .iter()
                .flat_map(|d| &d.network_aes)
                .filter(|ae| {
                    ae.source_addresses.len() >= 2
                        && ae
                            .source_addresses
                            .iter()
                            .all(|n| n.prefix_len() == n.max_prefix_len())
                })
                .map(|ae| {
                    (
                        ae.ae_title.trim().to_string(),
                        ae.source_addresses.iter().map(|n| n.addr()).collect(),
                    )
                })
                .collect(),
        }
    }
}

/// Space of the spool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolRoom {
    /// Free bytes on the spool's filesystem.
    pub free_bytes: u64,
    /// Bytes the spool holds.
    pub used_bytes: u64,
}

impl SpoolRoom {
    /// Bytes that can still be stored before the spool refuses (A700).
    pub fn headroom(&self, s: &Settings) -> u64 {
        let disk = self.free_bytes.saturating_sub(s.min_free_bytes);
        match s.max_bytes {
            Some(max) => disk.min(max.saturating_sub(self.used_bytes)),
            None => disk,
        }
    }
}

/// What one check looks at.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// Now (Unix ms).
    pub now_ms: u64,
    /// When the agent started (a source never seen is silent since then).
    pub started_ms: u64,
    /// Every calling AE seen (and saved last stores).
    pub sources: &'a BTreeMap<String, Seen>,
    /// Every target's status.
    pub targets: &'a BTreeMap<String, TargetStatus>,
    /// The spool's room; None when the filesystem could not be asked.
    pub room: Option<SpoolRoom>,
    /// This device's TLS certificate: described, and its end of validity
    /// (Unix s); None without TLS.
    pub certificate: Option<(String, i64)>,
    /// Why the store refuses every object (a failed flush), if it does.
    pub unhealthy: Option<pacs_mirror_store::commit::Latched>,
}

/// A condition that holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Stable kind, for routing rules.
    pub kind: &'static str,
    /// What it is about.
    pub subject: String,
    /// One line for a person on call.
    pub text: String,
}

/// Per-source figures of one check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceGauges {
    /// The last stored object (Unix s).
    pub last_store_s: Option<u64>,
    /// Active seconds of silence (sources with a rule).
    pub silence_s: Option<u64>,
    /// Addresses seen within the window.
    pub addresses: u64,
}

/// The figures of one check, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// By calling AE title.
    pub sources: BTreeMap<String, SourceGauges>,
    /// Free bytes on the spool's filesystem.
    pub free_bytes: Option<u64>,
    /// Bytes before A700.
    pub headroom_bytes: Option<u64>,
    /// Seconds until the TLS certificate expires (negative: expired).
    pub certificate_expiry_s: Option<i64>,
}

/// Evaluate every condition. Pure: `tz` is the zone of the active hours.
pub fn evaluate<Tz: TimeZone>(s: &Settings, i: &Inputs<'_>, tz: &Tz) -> (Vec<Condition>, Gauges)
where
    Tz::Offset: std::fmt::Display,
{
    let mut out = Vec::new();
    let mut g = Gauges::default();
    for (ae, seen) in i.sources {
        let e = g.sources.entry(ae.clone()).or_default();
        e.last_store_s = seen.last_store_ms.map(|t| t / 1000);
        e.addresses = seen.addresses.len() as u64;
        let expected = s
            .known_addresses
            .get(ae)
            .is_some_and(|known| seen.addresses.keys().all(|ip| known.contains(ip)));
        if seen.addresses.len() >= 2 && !expected {
            let list: Vec<String> = seen
                .addresses
                .iter()
                .map(|(ip, at)| format!("{ip} (last {})", local_time(tz, *at)))
                .collect();
            out.push(Condition {
                kind: "duplicate_ae_title",
                subject: ae.clone(),
                text: format!(
                    "calling AE title {ae} is used from {} addresses: {} — two devices may share one AE title (C-MOVE would deliver to the wrong one); give each its own title",
                    list.len(),
                    list.join(" and ")
                ),
            });
        }
    }
    for rule in &s.silence {
        let last = i
            .sources
            .get(&rule.calling_ae)
            .and_then(|x| x.last_store_ms);
        let since = last.unwrap_or(i.started_ms).max(i.started_ms);
        let silent_ms = silence::active_ms(tz, &rule.window, since, i.now_ms);
        let e = g.sources.entry(rule.calling_ae.clone()).or_default();
        e.silence_s = Some(silent_ms / 1000);
        if silent_ms / 1000 > rule.after_secs {
            let last_text = match last {
                Some(t) => format!("last object {}", local_time(tz, t)),
                None => format!(
                    "nothing since the agent started {}",
                    local_time(tz, i.started_ms)
                ),
            };
            out.push(Condition {
                kind: "source_silent",
                subject: rule.calling_ae.clone(),
                text: format!(
                    "no images from {} for {} of its active hours ({}; threshold {}); {last_text} — check the sender and the link (pacs-mirror echo, its logs)",
                    rule.calling_ae,
                    duration_text(silent_ms / 1000),
                    rule.described,
                    duration_text(rule.after_secs),
                ),
            });
        }
    }
    for (name, t) in i.targets {
        let idle_secs = i
            .now_ms
            .saturating_sub(t.last_success_at_ms.unwrap_or(0).max(i.started_ms))
            / 1000;
        if let Some(age) = t.oldest_pending_age_secs
            && age > s.queue_stuck_after_secs
            && idle_secs > s.queue_stuck_after_secs
        {
            let why = t
                .last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            out.push(Condition {
                kind: "queue_stuck",
                subject: name.clone(),
                text: format!(
                    "target {name}: nothing delivered for {}, the oldest undelivered object is {} old (threshold {}); {} objects ({}) waiting{why}",
                    duration_text(idle_secs),
                    duration_text(age),
                    duration_text(s.queue_stuck_after_secs),
                    t.pending,
                    bytes_text(t.pending_bytes),
                ),
            });
        }
        if t.dead_letters > 0 {
            out.push(Condition {
                kind: "dead_letters",
                subject: name.clone(),
                text: format!(
                    "target {name} refused {} object(s) for good: see `pacs-mirror dead-letter list --target {name}`, fix the cause, then `pacs-mirror dead-letter retry --target {name}`",
                    t.dead_letters
                ),
            });
        }
        if let Some(c) = &t.commitment
            && c.most_requests >= crate::replicate::commit::ALERT_AFTER_REQUESTS
        {
            out.push(Condition {
                kind: "commitment_overdue",
                subject: name.clone(),
                text: format!(
                    "target {name} has not answered a storage commitment request asked {} times; {} object(s) it stored are not counted delivered (oldest waiting {}): check that the mirror knows this agent's AE and can open associations to it",
                    c.most_requests,
                    c.awaiting,
                    c.oldest_awaiting_age_secs.map_or("-".into(), duration_text),
                ),
            });
        }
        if t.circuit_open {
            out.push(Condition {
                kind: "circuit_open",
                subject: name.clone(),
                text: format!(
                    "target {name} is unreachable: {}; deliveries are paused and it is probed; objects waiting: {}",
                    t.last_error.as_deref().unwrap_or("no answer"),
                    t.pending
                ),
            });
        }
    }
    if let Some(l) = &i.unhealthy {
        out.push(Condition {
            kind: "storage_unhealthy",
            subject: "spool".into(),
            text: format!(
                "{l} (since {}): every store is answered A700; check the disk (dmesg, smartctl), then restart the agent: start-up recovery re-verifies the spool and the index (runbook: ops/runbooks/disk-full.md)",
                local_time(tz, l.at_ms)
            ),
        });
    }
    if let Some((described, not_after)) = &i.certificate {
        let left = not_after.saturating_sub((i.now_ms / 1000) as i64);
        g.certificate_expiry_s = Some(left);
        if left < s.certificate_warning_secs as i64 {
            let when = local_time(tz, (*not_after).max(0) as u64 * 1000);
            let text = if left <= 0 {
                format!(
                    "this device's DICOM TLS certificate EXPIRED {when} ({described}): TLS peers refuse it now; renew it and send SIGHUP (runbook: ops/runbooks/tls-certificate-renewal.md)"
                )
            } else {
                format!(
                    "this device's DICOM TLS certificate expires in {} ({when}; {described}): renew it and send SIGHUP (runbook: ops/runbooks/tls-certificate-renewal.md)",
                    duration_text(left as u64)
                )
            };
            out.push(Condition {
                kind: "certificate_expiring",
                subject: "tls".into(),
                text,
            });
        }
    }
    if let Some(room) = i.room {
        let headroom = room.headroom(s);
        g.free_bytes = Some(room.free_bytes);
        g.headroom_bytes = Some(headroom);
        if headroom < s.spool_headroom_min_bytes {
            let quota = s
                .max_bytes
                .map(|m| {
                    format!(
                        ", spool {} of its {} quota",
                        bytes_text(room.used_bytes),
                        bytes_text(m)
                    )
                })
                .unwrap_or_default();
            out.push(Condition {
                kind: "spool_low_space",
                subject: "spool".into(),
                text: format!(
                    "spool has {} left before stores are refused with A700 (threshold {}): disk free {}, reserve {}{quota} — free space or deliver the queue (retention removes delivered objects)",
                    bytes_text(headroom),
                    bytes_text(s.spool_headroom_min_bytes),
                    bytes_text(room.free_bytes),
                    bytes_text(s.min_free_bytes),
                ),
            });
        }
    }
    (out, g)
}

/// An alert condition that holds now (in `/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firing {
    /// Kind.
    pub kind: String,
    /// Subject.
    pub subject: String,
    /// The text as alerted.
    pub text: String,
    /// Since when (Unix ms).
    pub since_ms: u64,
}

type Key = (String, String);

#[derive(Default)]
struct State {
    firing: BTreeMap<Key, Firing>,
    /// Conditions other parts of the agent hold (the verifier's drill
    /// results): shown and exported like the rest, set and cleared by them.
    external: BTreeMap<Key, Firing>,
    /// Checks in a row a firing condition did not hold.
    misses: BTreeMap<Key, u32>,
    /// Restored at start-up and not seen to hold since.
    unconfirmed: BTreeSet<Key>,
    gauges: Gauges,
    raised: BTreeMap<&'static str, u64>,
    last_check_ms: Option<u64>,
}

/// The monitor of a running agent.
pub struct Monitor {
    settings: Settings,
    /// This device's TLS material, for the certificate's expiry.
    tls: Option<Arc<pacs_mirror_dicom::tls::Tls>>,
    /// Fed by the store path.
    pub activity: Arc<Activity>,
    started_ms: u64,
    state: Mutex<State>,
    /// The store's latch (a failed flush).
    storage: pacs_mirror_store::commit::StorageHealth,
}

impl Monitor {
    /// A monitor with nothing firing yet.
    pub fn new(settings: Settings, activity: Arc<Activity>, started_ms: u64) -> Self {
        Monitor {
            settings,
            tls: None,
            activity,
            started_ms,
            state: Mutex::default(),
            storage: Default::default(),
        }
    }

    /// Watch the store's latch (a failed flush refuses every store).
    pub fn with_storage(mut self, storage: pacs_mirror_store::commit::StorageHealth) -> Self {
        self.storage = storage;
        self
    }

    /// Watch this TLS material's certificate for expiry.
    pub fn with_tls(mut self, tls: Option<Arc<pacs_mirror_dicom::tls::Tls>>) -> Self {
        self.tls = tls;
        self
    }

    /// The thresholds.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take one check's result: raise what started to hold, clear what
    /// has not held for [`CLEAR_AFTER_CHECKS`] checks. Firing conditions
    /// for which `unknown(kind, subject)` is true (their input could not be
    /// read) keep their state. Returns whether the set of firing conditions
    /// changed.
    pub fn apply(
        &self,
        now_ms: u64,
        conditions: Vec<Condition>,
        gauges: Gauges,
        alerter: &Alerter,
        unknown: &dyn Fn(&str, &str) -> bool,
    ) -> bool {
        let mut st = self.state();
        let before: BTreeSet<Key> = st.firing.keys().cloned().collect();
        let mut next = BTreeMap::new();
        for c in conditions {
            let key = (c.kind.to_string(), c.subject.clone());
            st.misses.remove(&key);
            st.unconfirmed.remove(&key);
            let since = match st.firing.remove(&key) {
                Some(f) => f.since_ms,
                None => {
                    *st.raised.entry(c.kind).or_default() += 1;
                    alerter.raise(c.kind, &c.subject, c.text.clone());
                    now_ms
                }
            };
            next.insert(
                key,
                Firing {
                    kind: c.kind.into(),
                    subject: c.subject,
                    text: c.text,
                    since_ms: since,
                },
            );
        }
        for (key, f) in std::mem::take(&mut st.firing) {
            if unknown(&key.0, &key.1)
                || (st.unconfirmed.contains(&key)
                    && now_ms
                        < self
                            .started_ms
                            .saturating_add(self.grace_ms(&key.0, &key.1)))
            {
                next.insert(key, f);
                continue;
            }
            st.unconfirmed.remove(&key);
            let misses = st.misses.entry(key.clone()).or_default();
            *misses += 1;
            if *misses < CLEAR_AFTER_CHECKS {
                next.insert(key, f);
                continue;
            }
            st.misses.remove(&key);
            tracing::info!(
                alert = %key.0,
                subject = %key.1,
                firing_secs = now_ms.saturating_sub(f.since_ms) / 1000,
                "alert cleared"
            );
        }
        st.firing = next;
        st.gauges = gauges;
        st.last_check_ms = Some(now_ms);
        st.firing.keys().cloned().collect::<BTreeSet<Key>>() != before
    }

    /// How long after start a condition restored from before the restart
    /// may go unseen before it counts as cleared: those measured from the
    /// agent's start (silence, a stuck queue) cannot hold again sooner.
    fn grace_ms(&self, kind: &str, subject: &str) -> u64 {
        let secs = match kind {
            "queue_stuck" => self.settings.queue_stuck_after_secs,
            "source_silent" => self
                .settings
                .silence
                .iter()
                .find(|r| r.calling_ae == subject)
                .map_or(0, |r| r.after_secs),
            _ => 0,
        };
        secs.saturating_mul(1000)
            .saturating_add(2 * self.settings.check_interval.as_millis() as u64)
    }

    /// Conditions that were firing before a restart: they count as raised.
    pub fn restore_firing(&self, saved: Vec<(String, String, u64)>) {
        let mut st = self.state();
        for (kind, subject, since) in saved {
            st.unconfirmed.insert((kind.clone(), subject.clone()));
            st.firing.insert(
                (kind.clone(), subject.clone()),
                Firing {
                    kind,
                    subject,
                    text: "raised before the agent restarted; not seen since".into(),
                    since_ms: since,
                },
            );
        }
    }

    /// What holds now.
    pub fn firing(&self) -> Vec<Firing> {
        let st = self.state();
        st.firing
            .values()
            .chain(st.external.values())
            .cloned()
            .collect()
    }

    /// A condition held by another part of the agent (a failed drill):
    /// `Some(text)` holds it (since now, or since it started to hold),
    /// `None` clears it. Shown in `/status` and `/metrics` like the
    /// monitor's own; raising its alert is the caller's.
    pub fn set_external(&self, kind: &str, subject: &str, text: Option<String>) {
        let key = (kind.to_string(), subject.to_string());
        let mut st = self.state();
        match text {
            None => {
                st.external.remove(&key);
            }
            Some(text) => {
                let since_ms = st
                    .external
                    .get(&key)
                    .map_or_else(crate::unix_ms, |f| f.since_ms);
                st.external.insert(
                    key,
                    Firing {
                        kind: kind.to_string(),
                        subject: subject.to_string(),
                        text,
                        since_ms,
                    },
                );
            }
        }
    }

    /// One check now: read the activity, targets and spool, evaluate,
    /// apply; the last store times are saved to the index.
    pub fn check(
        &self,
        index: &pacs_mirror_store::index::Index,
        spool: &pacs_mirror_store::spool::Spool,
        targets: &[(String, Option<crate::replicate::Health>)],
        alerter: &Alerter,
    ) {
        let now = crate::unix_ms();
        let window_ms = self.settings.duplicate_ae_window_secs.saturating_mul(1000);
        let (sources, unsaved) = self.activity.snapshot(now.saturating_sub(window_ms));
        if let Err(e) = index.put_source_last_stores(&unsaved) {
            tracing::warn!(error = %e, "could not save the sources' last store times (retried)");
            self.activity.unsave(&unsaved);
        }
        // An input that cannot be read is a condition of its own, and the
        // conditions that depend on it keep their state.
        let mut broken = Vec::new();
        let mut statuses = BTreeMap::new();
        let mut unknown_targets = BTreeSet::new();
        for t in targets {
            match crate::replicate::status::targets_status(index, std::slice::from_ref(t), now) {
                Ok(s) => statuses.extend(s),
                Err(e) => {
                    unknown_targets.insert(t.0.clone());
                    broken.push(Condition {
                        kind: "monitor_error",
                        subject: format!("target {}", t.0),
                        text: format!(
                            "the monitors cannot read the queue of target {} from the index: {e}; its alerts are not evaluated",
                            t.0
                        ),
                    });
                }
            }
        }
        let room = match pacs_mirror_store::spool::free_bytes(spool.root()) {
            Ok(free) => Some(SpoolRoom {
                free_bytes: free,
                used_bytes: spool.used_bytes(),
            }),
            Err(e) => {
                broken.push(Condition {
                    kind: "monitor_error",
                    subject: "spool".into(),
                    text: format!(
                        "the monitors cannot read the spool's free space: {e}; the low-space alert is not evaluated"
                    ),
                });
                None
            }
        };
        let inputs = Inputs {
            now_ms: now,
            started_ms: self.started_ms,
            sources: &sources,
            targets: &statuses,
            room,
            certificate: self
                .tls
                .as_ref()
                .and_then(|t| t.certificate())
                .map(|c| (c.describe(), c.not_after)),
            unhealthy: self.storage.unhealthy(),
        };
        let (mut conditions, gauges) = evaluate(&self.settings, &inputs, &chrono::Local);
        let spool_unknown = room.is_none();
        conditions.extend(broken);
        let unknown = |kind: &str, subject: &str| {
            (TARGET_KINDS.contains(&kind) && unknown_targets.contains(subject))
                || (kind == "spool_low_space" && spool_unknown)
        };
        if self.apply(now, conditions, gauges, alerter, &unknown) {
            let firing: Vec<_> = self
                .firing()
                .into_iter()
                .map(|f| (f.kind, f.subject, f.since_ms))
                .collect();
            if let Err(e) = index.put_firing_alerts(&firing) {
                tracing::warn!(error = %e, "could not save the firing alerts (a restart may raise them again)");
            }
        }
    }

    /// Prometheus text of the last check.
    pub fn metrics(&self) -> String {
        let st = self.state();
        let mut m = Metrics::default();
        let g = &st.gauges;
        m.family(
            "pacs_mirror_source_last_store_timestamp_seconds",
            "Time of the last object stored from the calling AE.",
            "gauge",
            g.sources
                .iter()
                .filter_map(|(ae, s)| s.last_store_s.map(|v| (label("calling_ae", ae), v))),
        );
        m.family(
            "pacs_mirror_source_silence_seconds",
            "Seconds of its active hours since the source (with a silence rule) last stored an object.",
            "gauge",
            g.sources
                .iter()
                .filter_map(|(ae, s)| s.silence_s.map(|v| (label("calling_ae", ae), v))),
        );
        m.family(
            "pacs_mirror_source_addresses",
            "Addresses the calling AE title called from within the duplicate-AE window (more than 1: duplicate AE title).",
            "gauge",
            g.sources
                .iter()
                .map(|(ae, s)| (label("calling_ae", ae), s.addresses)),
        );
        m.family(
            "pacs_mirror_spool_free_bytes",
            "Free bytes on the spool's filesystem.",
            "gauge",
            g.free_bytes.map(|v| (String::new(), v)),
        );
        m.family(
            "pacs_mirror_spool_headroom_bytes",
            "Bytes that can still be stored before the spool refuses stores (A700).",
            "gauge",
            g.headroom_bytes.map(|v| (String::new(), v)),
        );
        m.family(
            "pacs_mirror_tls_certificate_expiry_seconds",
            "Seconds until this device's DICOM TLS certificate expires (0: expired).",
            "gauge",
            g.certificate_expiry_s
                .map(|v| (String::new(), v.max(0) as u64)),
        );
        m.family(
            "pacs_mirror_tls_handshake_failures_total",
            "Inbound DICOM TLS handshakes that failed since start, by reason.",
            "counter",
            crate::tls::handshake_failures()
                .snapshot()
                .into_iter()
                .map(|(reason, n)| (label("reason", &reason), n)),
        );
        m.family(
            "pacs_mirror_alert_firing",
            "1 for each alert condition that holds now.",
            "gauge",
            st.firing.values().chain(st.external.values()).map(|f| {
                (
                    format!(
                        "{{kind=\"{}\",subject=\"{}\"}}",
                        escape(&f.kind),
                        escape(&f.subject)
                    ),
                    1,
                )
            }),
        );
        m.family(
            "pacs_mirror_alerts_raised_total",
            "Alerts raised since start, by kind.",
            "counter",
            st.raised.iter().map(|(k, v)| (label("kind", k), *v)),
        );
        m.family(
            "pacs_mirror_monitor_last_check_timestamp_seconds",
            "Time of the monitors' last check.",
            "gauge",
            st.last_check_ms.map(|t| (String::new(), t / 1000)),
        );
        m.0
    }
}

/// The monitors as a background worker: every `check_interval`, one check
/// of every condition on a blocking thread; the first unit restores what
/// the index kept across a restart (the sources' last stores, the alerts
/// firing).
pub struct Checker {
    monitor: Arc<Monitor>,
    index: pacs_mirror_store::index::Index,
    spool: Arc<pacs_mirror_store::spool::Spool>,
    targets: Arc<Vec<(String, Option<crate::replicate::Health>)>>,
    alerter: Alerter,
    restored: bool,
}

impl Checker {
    /// The worker.
    pub fn new(
        monitor: Arc<Monitor>,
        index: pacs_mirror_store::index::Index,
        spool: Arc<pacs_mirror_store::spool::Spool>,
        targets: Vec<(String, Option<crate::replicate::Health>)>,
        alerter: Alerter,
    ) -> Self {
        Checker {
            monitor,
            index,
            spool,
            targets: Arc::new(targets),
            alerter,
            restored: false,
        }
    }
}

impl crate::worker::Worker for Checker {
    fn name(&self) -> String {
        "monitors".into()
    }

    async fn work(&mut self) -> crate::worker::Next {
        if !std::mem::replace(&mut self.restored, true) {
            match self.index.source_last_stores() {
                Ok(saved) => self.monitor.activity.restore(saved),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the sources' last store times")
                }
            }
            match self.index.firing_alerts() {
                Ok(saved) => self.monitor.restore_firing(saved),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the alerts firing before the restart")
                }
            }
        }
        let (m, i, s, t, a) = (
            self.monitor.clone(),
            self.index.clone(),
            self.spool.clone(),
            self.targets.clone(),
            self.alerter.clone(),
        );
        if let Err(e) = tokio::task::spawn_blocking(move || m.check(&i, &s, &t, &a)).await {
            tracing::error!(error = %e, "monitor check failed");
        }
        crate::worker::Next::idle_for(self.monitor.settings.check_interval)
    }
}

#[derive(Default)]
struct Metrics(String);

impl Metrics {
    fn family(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        samples: impl IntoIterator<Item = (String, u64)>,
    ) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            self.0.push_str(&format!("{name}{labels} {v}\n"));
        }
    }
}

fn label(name: &str, value: &str) -> String {
    format!("{{{name}=\"{}\"}}", escape(value))
}

/// Prometheus label value escaping.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn local_time<Tz: TimeZone>(tz: &Tz, ms: u64) -> String
where
    Tz::Offset: std::fmt::Display,
{
    i64::try_from(ms)
        .ok()
        .and_then(|ms| tz.timestamp_millis_opt(ms).single())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S %z").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// "3 h 05 min", "42 s".
pub fn duration_text(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {:02} s", s / 60, s % 60),
        s if s < 86_400 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {:02} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// "812.0 MiB".
pub fn bytes_text(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests;
