//! The Storage SCP: TCP listeners, association admission, and the per-
//! association tasks.
//!
//! Skeleton after mini-redis: the listener owns a semaphore of
//! `max_associations` permits; each accepted connection gets TCP_NODELAY and
//! its own task. A-ASSOCIATE-RQ must arrive within the ARTIM timeout (on a
//! TLS listener, the handshake too: each connection gets its own rustls
//! server configuration, whose verifier records the client certificate for
//! the access check; a failed handshake is logged with its reason and
//! counted). Over the limit, the request is read and answered with
//! A-ASSOCIATE-RJ (transient, local limit exceeded); a TLS listener closes
//! the connection before any handshake work. On shutdown the listener stops accepting and every
//! association finishes the store it is receiving, then is aborted.
//!
//! With `max_associations_per_address`, one source address holds at most
//! that many of the permits; its further requests are rejected like those
//! over the limit, so one sender cannot take every slot from the others.
//!
//! Connections from addresses that no AE of the listener allows (strangers:
//! their requests will be refused whatever they say) never take one of those
//! permits: they share [`STRANGER_SLOTS`] of their own, where their request
//! is read and refused with the reason as usual, and past that they are
//! closed at once. So scanners or a slowloris from outside the allow-lists
//! cannot lock the primary out; a listener that accepts any caller has no
//! strangers.
//!
//! Every refused association is logged (WARN, "association refused") with
//! the fields `calling_ae` and `peer` (address:port): by the access check
//! ([`access`]), by the busy path, or here when dicom-ul refused by itself
//! (then `calling_ae` is empty if the check never saw the request).
//!
//! Values that come off the wire (AE titles, UIDs, refusal reasons quoting
//! them) are logged with control characters escaped (`str::escape_debug`):
//! a peer must not be able to forge a log line of the text format with a
//! newline in its calling AE title or in a SOP Instance UID.

pub mod access;
pub mod association;
pub mod commitment;
pub mod inbox;
pub mod receive;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dicom_ul::association::AsyncServerAssociation;
use dicom_ul::association::server::DefaultNegotiation;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource,
};
use dicom_ul::{Pdu, ServerAssociationOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use access::{AePolicy, PeerAccess};
use association::AssociationContext;
use inbox::DrillInbox;
use store::Ingest;

/// One local AE served by a listener.
#[derive(Debug, Clone)]
pub struct AeSettings {
    /// Access policy (AE title, allow-list).
    pub policy: AePolicy,
    /// SOP classes accepted; None = every standard storage SOP class.
    pub sop_classes: Option<HashSet<String>>,
    /// Transfer syntaxes accepted; None = every one the registry knows.
    pub transfer_syntaxes: Option<Vec<String>>,
    /// A drill receiver: its C-STOREs go to the [`DrillInbox`], never to
    /// the spool.
    pub drill_receiver: bool,
}

/// Where a listener's C-STOREs go: the ingest path (the spool) for ordinary
/// AEs, the drill inbox for drill receivers. A listener without `ingest`
/// (the `drill` command's own) refuses C-STOREs to any other AE.
#[derive(Clone, Default)]
pub struct Services {
    /// The durable store path.
    pub ingest: Option<Arc<Ingest>>,
    /// The drill receivers' inbox.
    pub drill_inbox: Option<Arc<DrillInbox>>,
    /// Storage commitment (SCP role); None: requests are refused.
    pub commitment: Option<Arc<commitment::CommitmentScp>>,
    /// Reports of the mirrors asked for commitment (SCU role); None: an
    /// N-EVENT-REPORT is refused.
    pub reports: Option<Arc<dyn commitment::ReportSink>>,
}

/// One listening socket and the AEs on it.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Where to listen.
    pub bind: SocketAddr,
    /// The AEs (told apart by the called AE title).
    pub aes: Vec<AeSettings>,
    /// Concurrent associations.
    pub max_associations: usize,
    /// Concurrent associations from one source address (`None`: no limit
    /// but `max_associations`).
    pub max_associations_per_address: Option<usize>,
    /// Largest PDU we receive.
    pub max_pdu_bytes: u32,
    /// Time allowed for the A-ASSOCIATE-RQ.
    pub artim_timeout: Duration,
    /// Association closed after this long without a PDU.
    pub idle_timeout: Duration,
    /// DICOM TLS on this listener (None: plaintext).
    pub tls: Option<ListenerTls>,
}

/// A TLS listener's settings.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// This device's certificate, key and trusted CAs.
    pub tls: Arc<pacs_mirror_dicom::tls::Tls>,
    /// The cipher suites (and so the TLS versions) offered.
    pub suites: pacs_mirror_dicom::tls::Suites,
    /// Mutual TLS: a client certificate from a trusted CA is required.
    pub require_client_certificate: bool,
}

/// Bind a listening socket.
pub async fn listen(addr: SocketAddr) -> Result<TcpListener, ScpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ScpError::Bind { addr, source })
}

/// Connections at once from addresses no AE of a listener allows (each
/// held at most for the ARTIM timeout, then refused); more are closed
/// unread.
pub const STRANGER_SLOTS: usize = 8;
/// Shortest time between two warnings about strangers closed unread.
const STRANGER_WARN_EVERY: Duration = Duration::from_secs(10);

/// SCP errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScpError {
    /// The socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

type Options = ServerAssociationOptions<'static, PeerAccess, DefaultNegotiation>;

/// A bound listener, ready to serve.
pub struct Scp {
    listener: TcpListener,
    settings: ListenerSettings,
    options: Options,
    context: Arc<AssociationContext>,
    policies: access::Policies,
}

impl Scp {
    /// Bind the socket and prepare the association options.
    pub async fn bind(settings: ListenerSettings, services: Services) -> Result<Self, ScpError> {
        let listener = listen(settings.bind).await?;
        Ok(Self::on(listener, settings, services))
    }

    /// Serve on a socket already bound ([`listen`]): the agent binds every
    /// socket before it creates or opens anything on disk, so a port in use
    /// leaves no data directory behind.
    pub fn on(listener: TcpListener, settings: ListenerSettings, services: Services) -> Self {
        let policies: access::Policies =
            Arc::new(settings.aes.iter().map(|a| a.policy.clone()).collect());
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(PeerAccess::new(
                policies.clone(),
                SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
            ))
            .ae_title(
                settings
                    .aes
                    .first()
                    .map(|a| a.policy.ae_title.clone())
                    .unwrap_or_default(),
            )
            .max_pdu_length(settings.max_pdu_bytes)
            .strict(true)
            .with_abstract_syntax(pacs_mirror_dicom::dimse::VERIFICATION_SOP_CLASS);
        if services.commitment.is_some() || services.reports.is_some() {
            options = options.with_abstract_syntax(pacs_mirror_dicom::commitment::SOP_CLASS);
        }
        let mut classes: Vec<String> = Vec::new();
        let mut any_ts = false;
        let mut tss: Vec<String> = Vec::new();
        for ae in &settings.aes {
            match &ae.sop_classes {
                None => classes.extend(
                    pacs_mirror_dicom::sop_classes::STORAGE_SOP_CLASSES
                        .iter()
                        .map(|(u, _)| u.to_string()),
                ),
                Some(set) => classes.extend(set.iter().cloned()),
            }
            match &ae.transfer_syntaxes {
                None => any_ts = true,
                Some(list) => tss.extend(list.iter().cloned()),
            }
        }
        classes.sort();
        classes.dedup();
        for c in classes {
            options = options.with_abstract_syntax(c);
        }
        if !any_ts {
            tss.sort();
            tss.dedup();
            for ts in tss {
                options = options.with_transfer_syntax(ts);
            }
        }
        let context = Arc::new(AssociationContext {
            ingest: services.ingest,
            drill_inbox: services.drill_inbox,
            drill_aes: settings
                .aes
                .iter()
                .filter(|a| a.drill_receiver)
                .map(|a| a.policy.ae_title.clone())
                .collect(),
            accepted_classes: settings
                .aes
                .iter()
                .map(|a| (a.policy.ae_title.clone(), a.sop_classes.clone()))
                .collect::<HashMap<_, _>>(),
            idle_timeout: settings.idle_timeout,
            commitment: services.commitment,
            reports: services.reports,
        });
        Scp {
            listener,
            settings,
            options,
            context,
            policies,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accept associations until `shutdown`; association tasks go to `tracker`.
    pub async fn run(self, shutdown: CancellationToken, tracker: TaskTracker) {
        let permits = Arc::new(Semaphore::new(self.settings.max_associations));
        let strangers = Arc::new(Semaphore::new(STRANGER_SLOTS));
        let per_address = PerAddress::default();
        let mut closed_unread: u64 = 0;
        let mut warned_at: Option<std::time::Instant> = None;
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => r,
            };
            let (sock, peer) = match accepted {
                Ok(x) => {
                    backoff = Duration::from_millis(10);
                    x
                }
                Err(e) => {
                    // EMFILE and friends: wait, do not spin.
                    tracing::error!(error = %e, "accept failed; retrying in {:?}", backoff);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            if let Err(e) = sock.set_nodelay(true) {
                tracing::warn!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let artim = self.settings.artim_timeout;
            let stranger = !access::may_be_admitted(&self.policies, peer.ip());
            let pool = if stranger { &strangers } else { &permits };
            let address_slot = match self.settings.max_associations_per_address {
                Some(cap) if !stranger => match per_address.take(peer.ip(), cap) {
                    Some(slot) => Some(slot),
                    None => {
                        self.refuse_busy(sock, peer, Over::PerAddress(cap), &tracker);
                        continue;
                    }
                },
                _ => None,
            };
            match pool.clone().try_acquire_owned() {
                Ok(permit) => {
                    let mut access = PeerAccess::new(self.policies.clone(), peer);
                    let mut options = self.options.clone();
                    let mut tls = false;
                    if let Some(t) = &self.settings.tls {
                        match t.tls.server(&t.suites, t.require_client_certificate) {
                            Ok((config, slot)) => {
                                access.client_certificate = Some(slot);
                                options = options.tls_config(config);
                                tls = true;
                            }
                            Err(e) => {
                                tracing::error!(%peer, error = %e, "cannot set up TLS for this connection: closed");
                                continue;
                            }
                        }
                    }
                    let seen = access.seen.clone();
                    let options = options.ae_access_control(access);
                    let context = self.context.clone();
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move {
                        admit(sock, peer, tls, options, seen, context, artim, shutdown).await;
                        drop((permit, address_slot));
                    });
                }
                Err(_) if stranger => {
                    closed_unread += 1;
                    if warned_at.is_none_or(|t| t.elapsed() >= STRANGER_WARN_EVERY) {
                        tracing::warn!(
                            %peer,
                            closed = closed_unread,
                            slots = STRANGER_SLOTS,
                            "connections from addresses no AE allows closed unread: all their slots are taken"
                        );
                        warned_at = Some(std::time::Instant::now());
                        closed_unread = 0;
                    }
                    drop(sock);
                }
                Err(_) => {
                    self.refuse_busy(
                        sock,
                        peer,
                        Over::Listener(self.settings.max_associations),
                        &tracker,
                    );
                }
            }
        }
        tracing::info!(addr = %self.settings.bind, "listener closed");
    }

    /// Over a limit: a plaintext request is read and answered with
    /// A-ASSOCIATE-RJ (transient); on a TLS listener the connection is
    /// closed at once, before any handshake work.
    fn refuse_busy(&self, sock: TcpStream, peer: SocketAddr, over: Over, tracker: &TaskTracker) {
        if self.settings.tls.is_some() {
            tracing::warn!(%peer, limit = over.limit(), "{}: TLS connection closed before its handshake", over.describe());
            drop(sock);
            return;
        }
        let artim = self.settings.artim_timeout;
        let max_pdu = self.settings.max_pdu_bytes;
        tracker.spawn(reject_busy(sock, peer, artim, max_pdu, over));
    }
}

#[allow(clippy::too_many_arguments)]
async fn admit(
    sock: TcpStream,
    peer: SocketAddr,
    tls: bool,
    options: Options,
    seen: Arc<OnceLock<access::Seen>>,
    context: Arc<AssociationContext>,
    artim: Duration,
    shutdown: CancellationToken,
) {
    if tls {
        let established = tokio::time::timeout(artim, options.establish_tls_async(sock)).await;
        if let Some(a) = established_or_log(established, peer, tls, &seen, artim) {
            serve(a, context, peer, shutdown).await;
        }
    } else {
        let established = tokio::time::timeout(artim, options.establish_async(sock)).await;
        if let Some(a) = established_or_log(established, peer, tls, &seen, artim) {
            serve(a, context, peer, shutdown).await;
        }
    }
}

async fn serve<S>(
    established: AsyncServerAssociation<S>,
    context: Arc<AssociationContext>,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    S: association::Stream,
{
    let span = tracing::info_span!("association", %peer, calling_ae = %dicom_ul::association::Association::peer_ae_title(&established).trim().escape_debug());
    association::serve(established, context, peer, shutdown)
        .instrument(span)
        .await;
}

/// The association, or why there is none, logged: no request within ARTIM,
/// a refusal (logged by the access check, or here when dicom-ul refused by
/// itself), a failed TLS handshake (with its reason, counted), TLS on the
/// plaintext port.
fn established_or_log<S>(
    r: Result<
        Result<AsyncServerAssociation<S>, dicom_ul::association::Error>,
        tokio::time::error::Elapsed,
    >,
    peer: SocketAddr,
    tls: bool,
    seen: &OnceLock<access::Seen>,
    artim: Duration,
) -> Option<AsyncServerAssociation<S>> {
    use dicom_ul::association::Error as E;
    match r {
        Err(_) => {
            if tls && seen.get().is_none() {
                crate::tls::handshake_failures().count("timeout");
                tracing::warn!(%peer, "no TLS handshake and A-ASSOCIATE-RQ within {} s (ARTIM): connection closed", artim.as_secs());
            } else {
                tracing::warn!(%peer, "no A-ASSOCIATE-RQ within {} s (ARTIM): connection closed", artim.as_secs());
            }
            None
        }
        Ok(Err(E::Rejected { association_rj, .. })) => {
            match seen.get() {
                // Refused by the access check, which logged it (WARN).
                Some(s) if s.refusal.is_some() => tracing::debug!(
                    calling_ae = %s.calling_ae.escape_debug(),
                    %peer,
                    rj = ?association_rj.source,
                    "A-ASSOCIATE-RJ sent"
                ),
                // Refused by dicom-ul itself (protocol version, application
                // context name), before or after the access check.
                other => tracing::warn!(
                    calling_ae = other.map_or("", |s| s.calling_ae.as_str()),
                    called_ae = other.map_or("", |s| s.called_ae.as_str()),
                    %peer,
                    rj = ?association_rj.source,
                    "association refused"
                ),
            }
            None
        }
        Ok(Err(E::TlsNotSupported)) => {
            crate::tls::handshake_failures().count("tls_on_plaintext_port");
            tracing::warn!(
                %peer,
                reason = "tls_on_plaintext_port",
                "TLS handshake refused: the peer speaks TLS to this plaintext DICOM port (configure it for the TLS port, or this connection for TLS): connection closed"
            );
            None
        }
        Ok(Err(e @ (E::TlsHandshake { .. } | E::TlsConnection { .. }))) => {
            let f = pacs_mirror_dicom::tls::HandshakeFailure::of(&e, true);
            crate::tls::handshake_failures().count(f.code);
            tracing::warn!(%peer, reason = f.code, "TLS handshake failed: {}: connection closed", f.message);
            None
        }
        Ok(Err(e)) => {
            let s = seen.get();
            tracing::warn!(
                calling_ae = s.map_or("", |s| s.calling_ae.as_str()),
                %peer,
                error = %e,
                "association could not be established"
            );
            None
        }
        Ok(Ok(a)) => Some(a),
    }
}

/// Over the association limit: read the request (within ARTIM), answer
/// A-ASSOCIATE-RJ transient "local limit exceeded", close.
/// Which limit a rejected association is over.
#[derive(Debug, Clone, Copy)]
enum Over {
    /// `max_associations`.
    Listener(usize),
    /// `max_associations_per_address`.
    PerAddress(usize),
}

impl Over {
    fn describe(self) -> &'static str {
        match self {
            Over::Listener(_) => "too many associations",
            Over::PerAddress(_) => "too many associations from this address",
        }
    }

    fn limit(self) -> usize {
        match self {
            Over::Listener(n) | Over::PerAddress(n) => n,
        }
    }
}

/// Associations held per source address, for
/// `max_associations_per_address`.
#[derive(Clone, Default)]
struct PerAddress(Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>);

/// One association's share of its address's count, given back on drop.
struct AddressSlot {
    counts: PerAddress,
    ip: std::net::IpAddr,
}

impl PerAddress {
    /// A slot for `ip` if it holds fewer than `cap`.
    fn take(&self, ip: std::net::IpAddr, cap: usize) -> Option<AddressSlot> {
        let ip = access::canonical(ip);
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

async fn reject_busy(
    mut sock: TcpStream,
    peer: SocketAddr,
    artim: Duration,
    max_pdu: u32,
    over: Over,
) {
    let limit = over.limit();
    let why = over.describe();
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let read = tokio::time::timeout(
        artim,
        dicom_ul::association::read_pdu_from_wire_async(&mut sock, &mut buf, max_pdu, true),
    )
    .await;
    let Ok(Ok(Pdu::AssociationRQ(rq))) = read else {
        tracing::warn!(%peer, limit, "{why}, and no A-ASSOCIATE-RQ: connection closed");
        return;
    };
    tracing::warn!(
        calling_ae = %rq.calling_ae_title.trim().escape_debug(),
        called_ae = %rq.called_ae_title.trim().escape_debug(),
        %peer,
        limit,
        "association refused: {why} (transient)"
    );
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut out = Vec::new();
    if dicom_ul::write_pdu(&mut out, &rj).is_ok() {
        let _ = sock.write_all(&out).await;
        let _ = sock.shutdown().await;
    }
}
