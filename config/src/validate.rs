//! [`Config::validate`]: every check that parsing cannot do, collected into
//! one list of [`Finding`]s. Pure: no I/O, no DNS.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::ops::RangeInclusive;

use crate::device::{
    ARTIM_TIMEOUT_SECS_RANGE, IDLE_TIMEOUT_SECS_RANGE, MAX_ASSOCIATIONS_RANGE, MAX_PDU_BYTES_RANGE,
    NetworkAe, NetworkConnection,
};
use crate::dicom::{validate_ae_title, validate_uid};
use crate::drill::{DrillConfig, Retrieve};
use crate::error::Finding;
use crate::host::{check_hostname, is_loopback_host, is_wildcard_host, listener_display};
use crate::index::{IndexConfig, MIN_INDEX_CACHE_BYTES};
use crate::remote::RemoteAe;
use crate::spool::{MIN_MAX_OBJECT_BYTES, MIN_SPOOL_MAX_BYTES, SpoolConfig};
use crate::target::{Target, check_object_store_url};
use crate::{Config, RemoteDevice};

/// Collects findings in document order.
#[derive(Default)]
struct Report {
    findings: Vec<Finding>,
}

impl Report {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding::error(path, message));
    }

    fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding::warning(path, message));
    }

    fn range<T: PartialOrd + Display>(
        &mut self,
        path: String,
        value: T,
        range: &RangeInclusive<T>,
    ) {
        if !range.contains(&value) {
            self.error(
                path,
                format!(
                    "{value} is out of range; allowed: {} to {}",
                    range.start(),
                    range.end()
                ),
            );
        }
    }
}

/// Where a network AE is, for cross-references.
#[derive(Clone, Copy)]
enum AeRef {
    Local(usize),
    Remote(usize, usize),
}

impl AeRef {
    fn path(self) -> String {
        match self {
            AeRef::Local(i) => format!("device.network_ae[{i}]"),
            AeRef::Remote(d, a) => format!("remote_device[{d}].network_ae[{a}]"),
        }
    }
}

fn trim_ae(s: &str) -> &str {
    s.trim_matches(' ')
}

impl Config {
    /// Checks the configuration and returns every finding, errors and
    /// warnings, in document order. Pure: no file system access, no DNS.
    /// An empty list means the configuration is clean.
    pub fn validate(&self) -> Vec<Finding> {
        let mut r = Report::default();
        let index = AeIndex::new(self);
        self.check_device(&mut r, &index);
        check_spool(&self.spool, &mut r);
        check_index(&self.index, &mut r);
        check_admin(self.admin.as_ref(), &mut r);
        self.check_remote_devices(&mut r);
        check_unique_ae_titles(&index, &mut r);
        self.check_targets(&mut r, &index);
        self.check_drills(&mut r, &index);
        self.check_drill_receivers(&mut r);
        self.check_alerts(&mut r, &index);
        self.check_tls(&mut r);
        r.findings
    }

    fn check_device(&self, r: &mut Report, index: &AeIndex<'_>) {
        let device = &self.device;
        if device.name.trim().is_empty() {
            r.error("device.name", "the device name is empty");
        }
        if device.data_dir.as_os_str().is_empty() {
            r.error(
                "device.data_dir",
                "data_dir is empty; write a directory, e.g. \"/var/lib/pacs-mirror\"",
            );
        }
        check_connections("device", &device.network_connections, r);
        check_local_listeners(&device.network_connections, r);

        if device.network_aes.is_empty() {
            r.error(
                "device.network_ae",
                "no network AE: add a [[device.network_ae]] with association_acceptor = true",
            );
        }
        let mut referenced_senders = BTreeSet::new();
        for (i, ae) in device.network_aes.iter().enumerate() {
            self.check_local_ae(i, ae, r, index, &mut referenced_senders);
        }
        if !device.network_aes.is_empty() && self.acceptor_aes().next().is_none() {
            r.error(
                "device.network_ae",
                "no network AE accepts associations: at least one needs association_acceptor = true and an installed network connection",
            );
        }
        // Every remote AE allowed to call us needs source addresses.
        for (d, a) in referenced_senders {
            if let Some(ae) = self
                .remote_devices
                .get(d)
                .and_then(|device| device.network_aes.get(a))
            {
                if ae.source_addresses.is_empty() {
                    r.error(
                        format!("remote_device[{d}].network_ae[{a}].source_addresses"),
                        format!(
                            "{:?} is listed in allowed_calling_aes but has no source_addresses; list the addresses it connects from (write \"0.0.0.0/0\" to allow any address)",
                            trim_ae(&ae.ae_title)
                        ),
                    );
                }
            }
        }
    }

    fn check_local_ae(
        &self,
        i: usize,
        ae: &NetworkAe,
        r: &mut Report,
        index: &AeIndex<'_>,
        referenced_senders: &mut BTreeSet<(usize, usize)>,
    ) {
        let p = format!("device.network_ae[{i}]");
        if let Err(e) = validate_ae_title(&ae.ae_title) {
            r.error(format!("{p}.ae_title"), e.to_string());
        }
        if !ae.association_acceptor && !ae.association_initiator {
            r.warning(
                p.clone(),
                "neither association_acceptor nor association_initiator is true; this AE is never used",
            );
        }

        // Connection references; collect the installed listeners.
        let mut listeners: Vec<&NetworkConnection> = Vec::new();
        for (k, name) in ae.network_connections.iter().enumerate() {
            match self.connection(name) {
                Some(c) => {
                    if c.installed {
                        listeners.push(c);
                    }
                }
                None => r.error(
                    format!("{p}.network_connections[{k}]"),
                    format!(
                        "{name:?} is not the name of any device.network_connection{}",
                        known_names(&self.device.network_connections)
                    ),
                ),
            }
        }
        if ae.association_acceptor {
            if ae.network_connections.is_empty() {
                r.error(
                    format!("{p}.network_connections"),
                    "an association acceptor needs at least one network connection to listen on",
                );
            } else if listeners.is_empty()
                && ae
                    .network_connections
                    .iter()
                    .all(|name| self.connection(name).is_some())
            {
                r.warning(
                    format!("{p}.network_connections"),
                    "every connection of this acceptor has installed = false; it does not listen",
                );
            }
        }

        // Calling AE policy.
        if ae.accept_any_calling_ae && !ae.allowed_calling_aes.is_empty() {
            r.error(
                format!("{p}.allowed_calling_aes"),
                "accept_any_calling_ae = true contradicts a non-empty allowed_calling_aes; keep only one of them",
            );
        }
        if !ae.association_acceptor {
            if ae.accept_any_calling_ae || !ae.allowed_calling_aes.is_empty() {
                r.warning(
                    p.clone(),
                    "accept_any_calling_ae and allowed_calling_aes are ignored because association_acceptor = false",
                );
            }
        } else if ae.accept_any_calling_ae {
            if ae.allowed_calling_aes.is_empty() {
                for c in listeners.iter().filter(|c| !is_loopback_host(&c.hostname)) {
                    r.warning(
                        format!("{p}.accept_any_calling_ae"),
                        format!(
                            "listener on {} accepts any calling AE title: anyone who can reach it can store objects; list the senders in allowed_calling_aes instead",
                            listener_display(&c.hostname, c.port)
                        ),
                    );
                }
            }
        } else if ae.allowed_calling_aes.is_empty() {
            let exposed: Vec<&&NetworkConnection> = listeners
                .iter()
                .filter(|c| !is_loopback_host(&c.hostname))
                .collect();
            for c in &exposed {
                r.error(
                    format!("{p}.allowed_calling_aes"),
                    format!(
                        "listener on {} has no allow-list: list the senders in allowed_calling_aes, or write accept_any_calling_ae = true to accept any calling AE (not recommended)",
                        listener_display(&c.hostname, c.port)
                    ),
                );
            }
            if exposed.is_empty() {
                r.error(
                    format!("{p}.allowed_calling_aes"),
                    "allowed_calling_aes is empty and accept_any_calling_ae = false, so no calling AE could ever connect; list the senders in allowed_calling_aes, or write accept_any_calling_ae = true (acceptable on a loopback-only listener)",
                );
            }
        }
        for (k, title) in ae.allowed_calling_aes.iter().enumerate() {
            let path = format!("{p}.allowed_calling_aes[{k}]");
            match index.find(title) {
                Some(AeRef::Remote(d, a)) => {
                    let Some(remote) = self
                        .remote_devices
                        .get(d)
                        .and_then(|device| device.network_aes.get(a))
                    else {
                        continue;
                    };
                    referenced_senders.insert((d, a));
                    if !remote.association_initiator {
                        r.error(
                            path,
                            format!(
                                "remote AE {:?} (remote_device[{d}].network_ae[{a}]) does not have association_initiator = true, so it cannot call this AE; set it there",
                                trim_ae(title)
                            ),
                        );
                    }
                }
                Some(local @ AeRef::Local(_)) => r.error(
                    path,
                    format!(
                        "{:?} is a local AE ({}); allowed_calling_aes lists remote AEs (remote_device.network_ae)",
                        trim_ae(title),
                        local.path()
                    ),
                ),
                None => r.error(
                    path,
                    format!(
                        "{:?} is not the AE title of any remote_device.network_ae; add a [[remote_device]] for the sender",
                        trim_ae(title)
                    ),
                ),
            }
        }

        r.range(
            format!("{p}.max_associations"),
            ae.max_associations,
            &MAX_ASSOCIATIONS_RANGE,
        );
        if let Some(per) = ae.max_associations_per_address {
            r.range(
                format!("{p}.max_associations_per_address"),
                per,
                &(1..=ae.max_associations.max(1)),
            );
        }
        r.range(
            format!("{p}.max_pdu_bytes"),
            ae.max_pdu_bytes,
            &MAX_PDU_BYTES_RANGE,
        );
        r.range(
            format!("{p}.artim_timeout_secs"),
            ae.artim_timeout_secs,
            &ARTIM_TIMEOUT_SECS_RANGE,
        );
        r.range(
            format!("{p}.idle_timeout_secs"),
            ae.idle_timeout_secs,
            &IDLE_TIMEOUT_SECS_RANGE,
        );

        for (t, tc) in ae.transfer_capabilities.iter().enumerate() {
            let tp = format!("{p}.transfer_capability[{t}]");
            if let Err(e) = validate_uid(&tc.sop_class) {
                r.error(format!("{tp}.sop_class"), e.to_string());
            }
            for (s, ts) in tc.transfer_syntaxes.iter().enumerate() {
                if let Err(e) = validate_uid(ts) {
                    r.error(format!("{tp}.transfer_syntaxes[{s}]"), e.to_string());
                }
            }
        }
    }

    fn check_remote_devices(&self, r: &mut Report) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (d, device) in self.remote_devices.iter().enumerate() {
            let p = format!("remote_device[{d}]");
            let name = device.name.trim();
            if name.is_empty() {
                r.error(format!("{p}.name"), "the remote device name is empty");
            } else if let Some(first) = names.get(name) {
                r.error(
                    format!("{p}.name"),
                    format!("remote device name {name:?} is also used by remote_device[{first}]"),
                );
            } else {
                names.insert(name, d);
            }
            check_connections(&p, &device.network_connections, r);
            if device.network_aes.is_empty() {
                r.warning(
                    format!("{p}.network_ae"),
                    "this remote device has no network AE and is never used",
                );
            }
            for (a, ae) in device.network_aes.iter().enumerate() {
                let pa = format!("{p}.network_ae[{a}]");
                check_remote_ae(&pa, device, ae, r);
                for (k, t) in ae.commit_after_delivery_to.iter().enumerate() {
                    if !self.targets.iter().any(|x| x.name().trim() == t.trim()) {
                        r.error(
                            format!("{pa}.commit_after_delivery_to[{k}]"),
                            format!("{t:?} is not the name of a [[target]]"),
                        );
                    }
                }
                r.range(
                    format!("{pa}.commit_wait_secs"),
                    ae.commit_wait_secs,
                    &(1..=86_400),
                );
            }
        }
    }

    fn check_targets(&self, r: &mut Report, index: &AeIndex<'_>) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut warned_initiator = false;
        for (i, target) in self.targets.iter().enumerate() {
            let p = format!("target[{i}]");
            let name = target.name().trim();
            if name.is_empty() {
                r.error(format!("{p}.name"), "the target name is empty");
            } else if let Some(first) = names.get(name) {
                r.error(
                    format!("{p}.name"),
                    format!("target name {name:?} is also used by target[{first}]"),
                );
            } else {
                names.insert(name, i);
            }
            if !(1..=86_400).contains(&target.live_window_secs()) {
                r.error(
                    format!("{p}.live_window_secs"),
                    format!("{} is out of range 1 to 86400", target.live_window_secs()),
                );
            }
            for (j, w) in target.bandwidth().1.iter().enumerate() {
                for problem in w.problems() {
                    r.error(format!("{p}.bandwidth_schedule[{j}]"), problem);
                }
            }
            match target {
                Target::Dicom {
                    remote_ae,
                    calling_ae,
                    commitment_timeout_secs,
                    ..
                } => {
                    self.check_dicom_target(&p, remote_ae, r, index);
                    r.range(
                        format!("{p}.commitment_timeout_secs"),
                        *commitment_timeout_secs,
                        &(1..=86_400),
                    );
                    if let Some(ae) = calling_ae {
                        match index.find(ae) {
                            Some(AeRef::Local(_)) => {}
                            _ => r.error(
                                format!("{p}.calling_ae"),
                                format!("{ae:?} is not a local device.network_ae"),
                            ),
                        }
                    }
                    check_delivery(&p, &target.delivery(), 64, r);
                    if !warned_initiator
                        && !self
                            .device
                            .network_aes
                            .iter()
                            .any(|ae| ae.association_initiator)
                    {
                        warned_initiator = true;
                        r.warning(
                            p.clone(),
                            "DICOM targets are sent to from a local AE, but no device.network_ae has association_initiator = true",
                        );
                    }
                }
                Target::ObjectStore { url, options, .. } => {
                    if let Err(e) = check_object_store_url(url) {
                        r.error(format!("{p}.url"), e.to_string());
                    }
                    check_delivery(&p, &target.delivery(), 64, r);
                    if url.starts_with("file://") && !options.is_empty() {
                        r.error(format!("{p}.options"), "a file:// target takes no options");
                    }
                    for key in options.keys() {
                        let k = key.to_ascii_lowercase();
                        if k.contains("secret")
                            || k.contains("access_key")
                            || k.contains("token")
                            || k.contains("password")
                        {
                            r.warning(
                                format!("{p}.options.{key}"),
                                "a credential in the configuration file: prefer the environment (AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_ACCOUNT_KEY, GOOGLE_SERVICE_ACCOUNT…) so the file can be shared",
                            );
                        }
                    }
                }
            }
        }
    }

    fn check_drills(&self, r: &mut Report, index: &AeIndex<'_>) {
        for (i, d) in self.drills.iter().enumerate() {
            let p = format!("drill[{i}]");
            self.check_drill_retrieve(&p, d, r, index);
            if !self.targets.iter().any(|t| t.name() == d.target) {
                let names: Vec<&str> = self.targets.iter().map(Target::name).collect();
                r.error(
                    format!("{p}.target"),
                    format!("no target named {:?} (targets: {names:?})", d.target),
                );
            }
            if let Some(s) = &d.schedule
                && let Err(e) = crate::drill::check_cron(s)
            {
                r.error(format!("{p}.schedule"), e.to_string());
            }
            if d.random_studies == 0 && d.rotation.unwrap_or(0) == 0 && !d.newest_study {
                r.error(
                    p.clone(),
                    "the drill picks no study: set random_studies, rotation or newest_study",
                );
            }
            if !(1..=3600).contains(&d.timeout_secs) {
                r.error(
                    format!("{p}.timeout_secs"),
                    format!("{} is out of range 1 to 3600", d.timeout_secs),
                );
            }
        }
    }

    fn check_alerts(&self, r: &mut Report, index: &AeIndex<'_>) {
        let Some(a) = &self.alerts else {
            return;
        };
        if let Some(u) = &a.webhook_url {
            let u = u.trim();
            if !(u.starts_with("http://") || u.starts_with("https://"))
                || u.contains(char::is_whitespace)
            {
                r.error("alerts.webhook_url", format!("{u:?} is not an http(s) URL"));
            }
        }
        r.range("alerts.timeout_secs".into(), a.timeout_secs, &(1..=300));
        r.range("alerts.attempts".into(), a.attempts, &(1..=100));
        r.range(
            "alerts.check_interval_secs".into(),
            a.check_interval_secs,
            &(1..=3600),
        );
        r.range(
            "alerts.queue_stuck_after_secs".into(),
            a.queue_stuck_after_secs,
            &(1..=30 * 86_400),
        );
        r.range(
            "alerts.duplicate_ae_window_secs".into(),
            a.duplicate_ae_window_secs,
            &(60..=30 * 86_400),
        );
        if a.spool_headroom_min_bytes == 0 {
            r.warning(
                "alerts.spool_headroom_min_bytes",
                "0 turns the low-space alert off: the first sign of a full disk will be A700 refusals",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, rule) in a.silence.iter().enumerate() {
            let p = format!("alerts.silence[{i}]");
            let title = trim_ae(&rule.calling_ae);
            if let Err(e) = crate::dicom::validate_ae_title(&rule.calling_ae) {
                r.error(format!("{p}.calling_ae"), e.to_string());
            } else if !seen.insert(title) {
                r.error(
                    format!("{p}.calling_ae"),
                    format!("{title:?} has a silence rule already"),
                );
            } else if !matches!(index.by_title.get(title), Some(refs) if refs.iter().any(|r| matches!(r, AeRef::Remote(..))))
            {
                r.warning(
                    format!("{p}.calling_ae"),
                    format!("{title:?} is no remote_device network_ae: is the title right?"),
                );
            }
            r.range(
                format!("{p}.after_secs"),
                rule.after_secs,
                &(1..=30 * 86_400),
            );
            match rule.window() {
                Err(e) => r.error(p, e.to_string()),
                // Silence is counted over the last 4 weeks of active time.
                Ok(w) if rule.after_secs > 4 * w.active_secs_per_week() => r.error(
                    format!("{p}.after_secs"),
                    format!(
                        "{} s of silence never accrue: the window is open {} s a week, and silence is counted over the last 4 weeks",
                        rule.after_secs,
                        w.active_secs_per_week()
                    ),
                ),
                Ok(_) => {}
            }
        }
    }

    /// `retrieve` and `move_destination` of one `[[drill]]`.
    fn check_drill_retrieve(&self, p: &str, d: &DrillConfig, r: &mut Report, index: &AeIndex<'_>) {
        if d.retrieve == Retrieve::CGet {
            if d.move_destination.is_some() {
                r.error(
                    format!("{p}.move_destination"),
                    "move_destination is used only with retrieve = \"c-move\"; remove it, or write retrieve = \"c-move\"",
                );
            }
            return;
        }
        let target = self.targets.iter().find(|t| t.name() == d.target);
        let remote_ae = match target {
            Some(Target::Dicom { remote_ae, .. }) => Some(remote_ae.as_str()),
            Some(Target::ObjectStore { .. }) => {
                r.error(
                    format!("{p}.retrieve"),
                    format!(
                        "target {:?} is an object store; retrieve = \"c-move\" is for DICOM targets (remove it)",
                        d.target
                    ),
                );
                None
            }
            // The unknown target is reported on drill.target.
            None => None,
        };
        let Some(dest) = d.move_destination.as_deref() else {
            r.error(
                format!("{p}.move_destination"),
                "retrieve = \"c-move\" needs move_destination: the AE title of a local [[device.network_ae]] with drill_receiver = true, which the mirror PACS knows and may call",
            );
            return;
        };
        let path = format!("{p}.move_destination");
        if let Err(e) = validate_ae_title(dest) {
            r.error(path, e.to_string());
            return;
        }
        let title = trim_ae(dest);
        let k = match index.find(dest) {
            Some(AeRef::Local(k)) => k,
            Some(remote @ AeRef::Remote(..)) => {
                r.error(
                    path,
                    format!(
                        "{title:?} is a remote AE ({}); the move destination is a local network AE with drill_receiver = true, served by pacs-mirror during the drill",
                        remote.path()
                    ),
                );
                return;
            }
            None => {
                r.error(
                    path,
                    format!(
                        "{title:?} is not the AE title of any device.network_ae; add one with drill_receiver = true (the mirror PACS must know it: AE title, host, port)"
                    ),
                );
                return;
            }
        };
        let Some(ae) = self.device.network_aes.get(k) else {
            return;
        };
        let ae_path = format!("device.network_ae[{k}]");
        if !ae.drill_receiver {
            r.error(
                path.clone(),
                format!(
                    "local AE {title:?} ({ae_path}) is not a drill receiver: objects moved to it would be ingested into the spool; set drill_receiver = true there, or name another AE"
                ),
            );
        }
        // (association_acceptor = false is reported on the AE itself.)
        if ae.association_acceptor && !self.acceptor_aes().any(|a| trim_ae(&a.ae_title) == title) {
            r.error(
                path.clone(),
                format!(
                    "local AE {title:?} ({ae_path}) does not accept associations: it needs association_acceptor = true and an installed network connection for the mirror to send to"
                ),
            );
        }
        // The mirror sends from its own AE titles: one of them must be allowed.
        let Some((device, _)) = remote_ae.and_then(|t| self.remote_ae(t)) else {
            return;
        };
        if ae.accept_any_calling_ae {
            return;
        }
        let allowed = device.network_aes.iter().any(|m| {
            ae.allowed_calling_aes
                .iter()
                .any(|a| trim_ae(a) == trim_ae(&m.ae_title))
        });
        if !allowed {
            let titles: Vec<&str> = device
                .network_aes
                .iter()
                .map(|m| trim_ae(&m.ae_title))
                .collect();
            r.error(
                path,
                format!(
                    "the mirror (remote device {:?}, AE titles {titles:?}) may not call {title:?}: add the AE title it calls from to {ae_path}.allowed_calling_aes (with association_initiator = true and its source_addresses on that remote AE)",
                    device.name
                ),
            );
        }
    }

    /// Local AEs with `drill_receiver = true`.
    fn check_drill_receivers(&self, r: &mut Report) {
        let receivers: Vec<(usize, &NetworkAe)> = self
            .device
            .network_aes
            .iter()
            .enumerate()
            .filter(|(_, ae)| ae.drill_receiver)
            .collect();
        if receivers.is_empty() {
            return;
        }
        // AE titles of the remote devices that are DICOM targets (mirrors).
        let mirror_titles: BTreeSet<&str> = self
            .targets
            .iter()
            .filter_map(|t| match t {
                Target::Dicom { remote_ae, .. } => self.remote_ae(remote_ae),
                Target::ObjectStore { .. } => None,
            })
            .flat_map(|(device, _)| device.network_aes.iter().map(|a| trim_ae(&a.ae_title)))
            .collect();
        for (i, ae) in receivers {
            let p = format!("device.network_ae[{i}]");
            let title = trim_ae(&ae.ae_title);
            if !ae.association_acceptor {
                r.error(
                    format!("{p}.drill_receiver"),
                    "a drill receiver accepts the mirror's associations: it needs association_acceptor = true",
                );
            }
            let used = self.drills.iter().any(|d| {
                d.retrieve == Retrieve::CMove
                    && d.move_destination.as_deref().map(trim_ae) == Some(title)
            });
            if !used {
                r.warning(
                    format!("{p}.drill_receiver"),
                    format!(
                        "no [[drill]] with retrieve = \"c-move\" names {title:?} in move_destination: it refuses every C-STORE"
                    ),
                );
            }
            for (k, caller) in ae.allowed_calling_aes.iter().enumerate() {
                if !mirror_titles.contains(trim_ae(caller)) {
                    r.warning(
                        format!("{p}.allowed_calling_aes[{k}]"),
                        format!(
                            "{:?} is not an AE of a DICOM target's remote device: {title:?} is a drill receiver, which keeps nothing it receives; senders must call an AE without drill_receiver",
                            trim_ae(caller)
                        ),
                    );
                }
            }
        }
        if self.acceptor_aes().next().is_some() && self.acceptor_aes().all(|a| a.drill_receiver) {
            r.error(
                "device.network_ae",
                "every network AE that accepts associations is a drill receiver, so nothing can be stored here: add an acceptor AE without drill_receiver for the senders",
            );
        }
    }

    fn check_dicom_target(&self, p: &str, remote_ae: &str, r: &mut Report, index: &AeIndex<'_>) {
        let path = format!("{p}.remote_ae");
        let title = trim_ae(remote_ae);
        let (d, a) = match index.find(remote_ae) {
            Some(AeRef::Remote(d, a)) => (d, a),
            Some(local @ AeRef::Local(_)) => {
                r.error(
                    path,
                    format!(
                        "{title:?} is a local AE ({}); a DICOM target is a remote_device.network_ae",
                        local.path()
                    ),
                );
                return;
            }
            None => {
                r.error(
                    path,
                    format!(
                        "{title:?} is not the AE title of any remote_device.network_ae; add a [[remote_device]] for the target"
                    ),
                );
                return;
            }
        };
        let Some(device) = self.remote_devices.get(d) else {
            return;
        };
        let Some(ae) = device.network_aes.get(a) else {
            return;
        };
        let ae_path = format!("remote_device[{d}].network_ae[{a}]");
        if !ae.association_acceptor {
            r.error(
                path.clone(),
                format!(
                    "remote AE {title:?} ({ae_path}) does not have association_acceptor = true, so it cannot receive; set it there"
                ),
            );
        }
        let reachable = ae
            .network_connections
            .iter()
            .filter_map(|name| device.network_connections.iter().find(|c| &c.name == name))
            .any(|c| c.installed);
        if !reachable {
            r.error(
                path,
                format!(
                    "remote AE {title:?} ({ae_path}) has no installed network connection to send to; add a [[remote_device.network_connection]] and name it in its network_connections"
                ),
            );
        }
    }
}

fn check_remote_ae(p: &str, device: &RemoteDevice, ae: &RemoteAe, r: &mut Report) {
    if let Err(e) = validate_ae_title(&ae.ae_title) {
        r.error(format!("{p}.ae_title"), e.to_string());
    }
    if !ae.association_acceptor && !ae.association_initiator {
        r.warning(
            p.to_string(),
            "neither association_acceptor nor association_initiator is true; this AE is never used",
        );
    }
    for (k, name) in ae.network_connections.iter().enumerate() {
        if !device.network_connections.iter().any(|c| &c.name == name) {
            r.error(
                format!("{p}.network_connections[{k}]"),
                format!(
                    "{name:?} is not the name of any network_connection of this remote device{}",
                    known_names(&device.network_connections)
                ),
            );
        }
    }
    for (k, net) in ae.source_addresses.iter().enumerate() {
        if net.trunc() != *net {
            r.warning(
                format!("{p}.source_addresses[{k}]"),
                format!(
                    "{net} has host bits set; it means the network {}",
                    net.trunc()
                ),
            );
        }
    }
}

/// Names, hostnames and ports of one device's connections.
fn check_connections(prefix: &str, connections: &[NetworkConnection], r: &mut Report) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, c) in connections.iter().enumerate() {
        let p = format!("{prefix}.network_connection[{i}]");
        if c.name.trim().is_empty() {
            r.error(format!("{p}.name"), "the connection name is empty");
        } else if let Some(first) = names.get(c.name.as_str()) {
            r.error(
                format!("{p}.name"),
                format!(
                    "connection name {:?} is also used by {prefix}.network_connection[{first}]",
                    c.name
                ),
            );
        } else {
            names.insert(&c.name, i);
        }
        if let Err(e) = check_hostname(&c.hostname) {
            r.error(format!("{p}.hostname"), e.to_string());
        }
        if c.port == 0 {
            r.error(format!("{p}.port"), "port 0 is not allowed; use 1 to 65535");
        }
    }
}

/// Two installed local connections cannot listen on the same address.
fn check_local_listeners(connections: &[NetworkConnection], r: &mut Report) {
    let installed: Vec<(usize, &NetworkConnection)> = connections
        .iter()
        .enumerate()
        .filter(|(_, c)| c.installed && c.port != 0)
        .collect();
    for (n, &(i, c)) in installed.iter().enumerate() {
        let p = format!("device.network_connection[{i}]");
        for &(j, earlier) in &installed[..n] {
            if earlier.port != c.port {
                continue;
            }
            if earlier
                .hostname
                .trim()
                .eq_ignore_ascii_case(c.hostname.trim())
            {
                r.error(
                    p.clone(),
                    format!(
                        "listens on {} like device.network_connection[{j}]; two installed connections cannot share a hostname and port",
                        listener_display(&c.hostname, c.port)
                    ),
                );
            } else if is_wildcard_host(&c.hostname) || is_wildcard_host(&earlier.hostname) {
                r.warning(
                    p.clone(),
                    format!(
                        "{} overlaps device.network_connection[{j}] ({}) on a wildcard address; binding both may fail",
                        listener_display(&c.hostname, c.port),
                        listener_display(&earlier.hostname, earlier.port)
                    ),
                );
            }
        }
    }
}

/// Below this free-space watermark a full disk can keep the index from opening.
const LOW_MIN_FREE_BYTES: u64 = 64 << 20;

fn check_admin(admin: Option<&crate::AdminConfig>, r: &mut Report) {
    if let Some(a) = admin
        && !a.listen.ip().is_loopback()
    {
        r.error(
            "admin.listen",
            format!(
                "{} is not a loopback address: the admin endpoint has no authentication; use 127.0.0.1 or ::1 (reach it remotely through an SSH tunnel or a reverse proxy)",
                a.listen
            ),
        );
    }
}

fn check_spool(spool: &SpoolConfig, r: &mut Report) {
    if spool.min_free_bytes < LOW_MIN_FREE_BYTES {
        r.warning(
            "spool.min_free_bytes",
            format!(
                "{} leaves no room for the index: on a full disk the agent answers A700, but it may not be able to restart (the index needs space to open) until space is freed; keep at least {LOW_MIN_FREE_BYTES} (64 MiB)",
                spool.min_free_bytes
            ),
        );
    }
    if let Some(max) = spool.max_bytes {
        if max < MIN_SPOOL_MAX_BYTES {
            r.error(
                "spool.max_bytes",
                format!("{max} is too small; at least {MIN_SPOOL_MAX_BYTES} (1 MiB)"),
            );
        }
    }
    if let Some(max) = spool.max_object_bytes {
        if max < MIN_MAX_OBJECT_BYTES {
            r.error(
                "spool.max_object_bytes",
                format!("{max} is too small; at least {MIN_MAX_OBJECT_BYTES} (1 KiB)"),
            );
        }
        if let Some(quota) = spool.max_bytes {
            if max > quota {
                r.warning(
                    "spool.max_object_bytes",
                    format!("{max} is larger than spool.max_bytes ({quota}); objects that large are always refused"),
                );
            }
        }
    }
}

fn check_index(index: &IndexConfig, r: &mut Report) {
    if index.cache_bytes < MIN_INDEX_CACHE_BYTES {
        r.error(
            "index.cache_bytes",
            format!(
                "{} is too small; at least {MIN_INDEX_CACHE_BYTES} (1 MiB)",
                index.cache_bytes
            ),
        );
    }
}

/// AE titles (local and remote) by trimmed title, for cross-references and
/// the uniqueness check.
struct AeIndex<'a> {
    by_title: BTreeMap<&'a str, Vec<AeRef>>,
}

impl<'a> AeIndex<'a> {
    fn new(config: &'a Config) -> Self {
        let mut by_title: BTreeMap<&'a str, Vec<AeRef>> = BTreeMap::new();
        for (i, ae) in config.device.network_aes.iter().enumerate() {
            by_title
                .entry(trim_ae(&ae.ae_title))
                .or_default()
                .push(AeRef::Local(i));
        }
        for (d, device) in config.remote_devices.iter().enumerate() {
            for (a, ae) in device.network_aes.iter().enumerate() {
                by_title
                    .entry(trim_ae(&ae.ae_title))
                    .or_default()
                    .push(AeRef::Remote(d, a));
            }
        }
        AeIndex { by_title }
    }

    /// The AE with this title: a remote one if any (references name remote
    /// AEs), else a local one.
    fn find(&self, title: &str) -> Option<AeRef> {
        let refs = self.by_title.get(trim_ae(title))?;
        refs.iter()
            .copied()
            .find(|r| matches!(r, AeRef::Remote(..)))
            .or_else(|| refs.first().copied())
    }
}

fn check_unique_ae_titles(index: &AeIndex<'_>, r: &mut Report) {
    for (title, refs) in &index.by_title {
        if title.is_empty() || refs.len() < 2 {
            continue;
        }
        let all: Vec<String> = refs
            .iter()
            .map(|r| format!("{}.ae_title", r.path()))
            .collect();
        for path in all.iter().skip(1) {
            r.error(
                path.clone(),
                format!(
                    "AE title {title:?} is used by {} network AEs ({}); AE titles must be unique across all local and remote network AEs",
                    all.len(),
                    all.join(", ")
                ),
            );
        }
    }
}

fn known_names(connections: &[NetworkConnection]) -> String {
    if connections.is_empty() {
        " (there is none)".to_string()
    } else {
        let names: Vec<String> = connections
            .iter()
            .map(|c| format!("{:?}", c.name))
            .collect();
        format!(" (known: {})", names.join(", "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests;
mod tls;

/// Ranges of the delivery settings every target has.
fn check_delivery(p: &str, d: &crate::target::Delivery, max_concurrency: u64, r: &mut Report) {
    let mut range = |field: &str, v: u64, lo: u64, hi: u64| {
        if !(lo..=hi).contains(&v) {
            r.error(
                format!("{p}.{field}"),
                format!("{v} is out of range {lo} to {hi}"),
            );
        }
    };
    range("concurrency", u64::from(d.concurrency), 1, max_concurrency);
    range("timeout_secs", d.timeout_secs, 1, 3600);
    range("retry_initial_secs", d.retry_initial_secs, 1, 86_400);
    range("retry_max_secs", d.retry_max_secs, 1, 7 * 86_400);
    range("refused_attempts", u64::from(d.refused_attempts), 1, 100);
    if d.retry_max_secs < d.retry_initial_secs {
        r.error(
            format!("{p}.retry_max_secs"),
            format!(
                "{} is below retry_initial_secs ({})",
                d.retry_max_secs, d.retry_initial_secs
            ),
        );
    }
}
