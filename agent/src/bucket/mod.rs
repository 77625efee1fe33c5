//! Object-storage targets (S3, GCS, Azure, a local folder) through the crate
//! `object_store`: the bucket layout, create-only uploads, study manifests,
//! and the reads that `restore` and `reindex --from` need.
//!
//! # Layout (under the target URL's prefix)
//! ```text
//! pacs-mirror-bucket.json                  what this bucket is (format, layout in words)
//! objects/<hh>/<blake3>.dcm                a Part-10 file exactly as received
//! studies/<blake3(study UID)>/manifest.json  every instance of one study held here
//! unfiled/<blake3(SOP UID)>/manifest.json    an instance with no Study Instance UID
//! staging/<blake3>-<random>.dcm            a large upload in progress
//! ```
//! - `<blake3>` is the blake3 (hex) of the object's **data set bytes**, the
//!   spool's own content address; `<hh>` its first two hex digits. Two agents
//!   that receive the same instance (with their own file meta: source AE,
//!   receipt) address it with the same key, so the bucket holds it once.
//! - The study key is the blake3 of the Study Instance UID: keys are paths on
//!   a local-folder target, and a path is never built from a UID. An
//!   instance kept without a (usable) Study Instance UID has no study to be
//!   listed under: its own manifest (study UID "") is keyed by the blake3 of
//!   its SOP Instance UID under `unfiled/`, so `restore` and `reindex
//!   --from` find it like any other.
//! - A manifest ([`manifest::StudyManifest`], JSON) lists each instance with
//!   the agent's whole index record (SOP/series/study/patient, transfer
//!   syntax, sizes, data set hash, sender, receive time), its key and the
//!   blake3 of the file under that key. With the Part-10 files themselves,
//!   the bucket alone is enough to know what it holds and to rebuild an index
//!   (`pacs-mirror reindex --from`) or a PACS (`pacs-mirror restore`).
//! - A location is a pacs-mirror bucket by its descriptor or, failing that
//!   (buckets written before descriptors), by a study manifest or an object
//!   of this layout ([`Bucket::layout`]); readers open a folder with
//!   [`Bucket::open_existing`], which never creates it.
//!
//! # Invariants
//! - **Objects are written create-only** (`PutMode::Create`; large ones are
//!   uploaded to `staging/` and published with `copy_if_not_exists`). An
//!   object that already exists counts as delivered only after its bytes
//!   were read back and its data set hashed to its key; different bytes are
//!   a conflict, reported and never overwritten.
//! - Before upload the spool file is hashed as it is read: a spool copy that
//!   no longer matches its address is never uploaded.
//! - An object is delivered when its blob **and** its manifest entry are
//!   written. Manifests are rewritten by read–merge–write: with a
//!   conditional put (`PutMode::Update` on the ETag) where the store has one,
//!   so concurrent agents never lose each other's entries; on a local folder
//!   (no conditional update) writers of one agent are serialized by a
//!   per-study lock.
//!
//! # Crash behaviour
//! A crash between the blob and the manifest leaves a blob no manifest lists;
//! the queue row is still pending, so the agent re-sends it after restart:
//! the create fails with "already exists", the blob is verified, and the
//! manifest is completed. `restore` also lists `objects/` and restores blobs
//! no manifest names. A crash during a multipart upload leaves a file under
//! `staging/` (or an unfinished multipart upload that the bucket's lifecycle
//! rule should expire); it is never read as an object.

pub mod manifest;

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};
use tokio::io::AsyncReadExt;

use manifest::{Descriptor, StudyManifest};
use pacs_mirror_dicom::part10::{StreamHasher, StreamHashes};
use pacs_mirror_store::index::{ObjectId, hash_hex, parse_hash};

/// Objects up to this size are sent in one PUT (held in memory while sent);
/// larger ones by multipart upload in [`PART_BYTES`] parts.
pub const SINGLE_PUT_MAX_BYTES: u64 = 8 << 20;
/// Part size of multipart uploads (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 8 << 20;
/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Read size when streaming a file.
const READ_BYTES: usize = 1 << 20;
/// The descriptor's key.
pub const DESCRIPTOR_KEY: &str = "pacs-mirror-bucket.json";
/// Attempts of a manifest read–merge–write before giving up for now.
const MANIFEST_ATTEMPTS: usize = 8;

/// Errors of an object-storage target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BucketError {
    /// The URL or options do not make a store.
    #[error("object store {url}: {message}")]
    Config {
        /// The target URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed (network, server, permissions).
    #[error("{0}")]
    Store(#[from] object_store::Error),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The spool file no longer hashes to its address: not uploaded.
    #[error(
        "the spool file of {hash} does not hash to its address (found {found}): not uploaded; run `pacs-mirror verify spool`"
    )]
    SpoolCorrupt {
        /// The address.
        hash: String,
        /// What it hashes to.
        found: String,
    },
    /// The bucket holds other bytes under an object's key.
    #[error(
        "the bucket holds different bytes under {key} (its data set hashes to {found}); not overwritten"
    )]
    Conflict {
        /// The key.
        key: String,
        /// What the stored data set hashes to.
        found: String,
    },
    /// A stored document or object is not what the layout says.
    #[error("{key}: {message}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The folder of a `file://` URL opened to read is not there (reading
    /// never creates it).
    #[error("{url}: {message}")]
    NoSuchFolder {
        /// The target URL.
        url: String,
        /// "no such folder", or what is there instead.
        message: String,
    },
    /// Nothing at all under the URL.
    #[error("{url}: holds nothing (no pacs-mirror bucket there: check the URL)")]
    Empty {
        /// The target URL.
        url: String,
    },
    /// Things are there, but none of the layout's: no descriptor, no
    /// manifest, no object.
    #[error(
        "{url}: not a pacs-mirror bucket ({descriptor}, no study manifests, no objects/): it holds {}",
        listing(.found)
    )]
    NotABucket {
        /// The target URL.
        url: String,
        /// What of the descriptor: "no descriptor pacs-mirror-bucket.json",
        /// or why the one there is not one.
        descriptor: String,
        /// What is at its root (folders with a trailing `/`).
        found: Vec<String>,
    },
}

/// At most a few names, then how many more.
fn listing(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// What makes a location a pacs-mirror bucket ([`Bucket::layout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Its descriptor says so.
    Described(Descriptor),
    /// No (valid) descriptor, but study manifests or objects of the layout:
    /// a bucket written by a version from before descriptors.
    Undescribed,
}

impl BucketError {
    /// Whether the key does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            BucketError::Store(object_store::Error::NotFound { .. })
        )
    }

    /// Whether the failure is the store's or the network's (retry, open the
    /// circuit) rather than a refusal of this one object.
    pub fn is_transient(&self) -> bool {
        match self {
            BucketError::Store(_) | BucketError::Io { .. } => true,
            BucketError::Config { .. }
            | BucketError::SpoolCorrupt { .. }
            | BucketError::Conflict { .. }
            | BucketError::Invalid { .. }
            | BucketError::NoSuchFolder { .. }
            | BucketError::Empty { .. }
            | BucketError::NotABucket { .. } => false,
        }
    }

    /// Whether the location is not a pacs-mirror bucket at all (missing,
    /// empty, or holding other things): a mistake in the URL, not a
    /// failure; the message says which location and why.
    pub fn is_not_a_bucket(&self) -> bool {
        matches!(
            self,
            BucketError::NoSuchFolder { .. }
                | BucketError::Empty { .. }
                | BucketError::NotABucket { .. }
        )
    }
}

fn io_err(path: &FsPath) -> impl FnOnce(std::io::Error) -> BucketError + '_ {
    move |source| BucketError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Who sent the copy a bucket holds, from its own file meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// (0002,0016): the calling AE that sent it to its agent.
    pub calling_ae: String,
    /// From the receipt (0002,0102).
    pub source_ip: String,
    /// From the receipt.
    pub received_at_ms: u64,
    /// Size of the stored file.
    pub file_bytes: u64,
}

/// Bytes kept of an existing object to read its file meta.
const HEAD_BYTES: usize = 256 << 10;

/// Where [`Bucket::read_object`] puts the bytes it hashes.
enum Sink<'a> {
    /// Nowhere: only the hashes are wanted.
    Nothing,
    /// A file, created or truncated.
    File(&'a FsPath),
    /// The first [`HEAD_BYTES`] bytes (enough for the file meta group).
    Head(&'a mut Vec<u8>),
    /// Every byte; more than the limit is an error.
    Memory(&'a mut Vec<u8>, usize),
}

/// How an upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uploaded {
    /// We wrote it.
    Created {
        /// blake3 of the file uploaded.
        file_blake3: [u8; 32],
    },
    /// It was there already with the same data set (another agent, or a
    /// re-send after a crash); verified by reading it back.
    AlreadyThere {
        /// blake3 of the file the bucket holds.
        file_blake3: [u8; 32],
        /// Whose copy it is (None: its meta could not be read).
        provenance: Option<Provenance>,
    },
}

impl Uploaded {
    /// blake3 of the file the bucket holds under the key.
    pub fn file_blake3(&self) -> [u8; 32] {
        match self {
            Uploaded::Created { file_blake3 } | Uploaded::AlreadyThere { file_blake3, .. } => {
                *file_blake3
            }
        }
    }
}

/// The key of an object.
pub fn object_key(hash: &ObjectId) -> String {
    let hex = hash_hex(hash);
    format!("objects/{}/{hex}.dcm", &hex[..2])
}

/// The object address in a key written by [`object_key`] (only such a key:
/// a listed key that parses is the one a download of its address reads).
pub fn parse_object_key(key: &str) -> Option<ObjectId> {
    let name = key.strip_prefix("objects/")?;
    let (_, file) = name.split_once('/')?;
    let hash = parse_hash(file.strip_suffix(".dcm")?).ok()?;
    (object_key(&hash) == key).then_some(hash)
}

/// The key of a study's manifest.
pub fn manifest_key(study_instance_uid: &str) -> String {
    format!(
        "studies/{}/manifest.json",
        blake3::hash(study_instance_uid.as_bytes()).to_hex()
    )
}

/// The key of the manifest of an instance with no Study Instance UID.
pub fn unfiled_manifest_key(sop_instance_uid: &str) -> String {
    format!(
        "unfiled/{}/manifest.json",
        blake3::hash(sop_instance_uid.as_bytes()).to_hex()
    )
}

/// A bucket (or folder) holding a target's copies.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// Per-study locks for manifest rewrites by this process.
    manifest_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Cleared when the store answers that it has no conditional update.
    conditional_update: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("url", &self.url).finish()
    }
}

/// Settings of [`Bucket::open`].
#[derive(Debug, Clone)]
pub struct BucketSettings {
    /// The target URL (`s3://bucket/prefix`, `file:///dir`…).
    pub url: String,
    /// Client options by their `object_store` names.
    pub options: Vec<(String, String)>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Bucket {
    /// Build the store for `settings` (no network access yet). The prefix
    /// of the URL becomes the root of every key. A `file://` folder is
    /// created if it is not there (the agent writes to it).
    pub fn open(settings: &BucketSettings) -> Result<Self, BucketError> {
        Self::open_with(settings, true)
    }

    /// [`Bucket::open`] for reading only: a `file://` folder that is not
    /// there is [`BucketError::NoSuchFolder`], never created.
    pub fn open_existing(settings: &BucketSettings) -> Result<Self, BucketError> {
        Self::open_with(settings, false)
    }

    fn open_with(settings: &BucketSettings, create: bool) -> Result<Self, BucketError> {
        let url = settings.url.clone();
        let bad = |message: String| BucketError::Config {
            url: url.clone(),
            message,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("not a URL".into()))?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match scheme {
            "file" => {
                if !settings.options.is_empty() {
                    return Err(bad("a file target takes no options".into()));
                }
                if create {
                    std::fs::create_dir_all(rest)
                        .map_err(|e| bad(format!("cannot create the directory {rest}: {e}")))?;
                } else {
                    let message = match std::fs::metadata(rest) {
                        Ok(m) if m.is_dir() => None,
                        Ok(_) => Some("not a folder (a file)".to_string()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            Some("no such folder".to_string())
                        }
                        Err(e) => Some(format!("cannot read the folder: {e}")),
                    };
                    if let Some(message) = message {
                        return Err(BucketError::NoSuchFolder {
                            url: url.clone(),
                            message,
                        });
                    }
                }
                let store = object_store::local::LocalFileSystem::new_with_prefix(rest)
                    .map_err(|e| bad(e.to_string()))?
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                (Arc::new(store), String::new())
            }
            "s3" | "gs" | "az" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let root = format!("{scheme}://{bucket}");
                let store = cloud_store(scheme, &root, settings).map_err(|e| bad(e.to_string()))?;
                (store, prefix.trim_matches('/').to_string())
            }
            other => return Err(bad(format!("unsupported scheme {other:?}"))),
        };
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            store
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                store,
                Path::parse(&prefix).map_err(|e| bad(e.to_string()))?,
            ))
        };
        Ok(Bucket {
            store,
            url,
            manifest_locks: Mutex::default(),
            conditional_update: true.into(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying store (tests and benchmarks).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Write the descriptor if the bucket has none; also a reachability
    /// check (it needs write access).
    pub async fn ensure_descriptor(&self, device: &str) -> Result<(), BucketError> {
        let d = Descriptor::new(device, crate::unix_ms());
        let body = serde_json::to_vec_pretty(&d).unwrap_or_default();
        match self
            .store
            .put_opts(
                &Path::from(DESCRIPTOR_KEY),
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Is the store answering? (A HEAD of the descriptor; "not found" is an
    /// answer.)
    pub async fn probe(&self) -> Result<(), BucketError> {
        match self.store.head(&Path::from(DESCRIPTOR_KEY)).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Upload the spool file `file` of object `hash`, create-only.
    pub async fn upload(&self, file: &FsPath, hash: &ObjectId) -> Result<Uploaded, BucketError> {
        let key = Path::from(object_key(hash));
        let created = if let Some((bytes, hashes)) = read_small(file, hash).await? {
            match self
                .store
                .put_opts(
                    &key,
                    PutPayload::from(Bytes::from(bytes)),
                    PutOptions::from(PutMode::Create),
                )
                .await
            {
                Ok(_) => Some(hashes.file),
                Err(object_store::Error::AlreadyExists { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            self.upload_multipart(file, hash, &key).await?
        };
        match created {
            Some(file_blake3) => Ok(Uploaded::Created { file_blake3 }),
            None => {
                let mut head = Vec::new();
                let found = self.read_object(&key, Sink::Head(&mut head)).await?;
                if found.dataset != hash.0 {
                    return Err(BucketError::Conflict {
                        key: key.to_string(),
                        found: hash_hex(&found.dataset),
                    });
                }
                let offset = usize::try_from(found.dataset_offset).unwrap_or(usize::MAX);
                let provenance = head
                    .get(..offset)
                    .and_then(|meta| pacs_mirror_dicom::part10::read_origin(meta).ok())
                    .map(|(calling_ae, receipt)| Provenance {
                        calling_ae,
                        source_ip: receipt
                            .as_ref()
                            .map(|r| r.source_ip.clone())
                            .unwrap_or_default(),
                        received_at_ms: receipt.map_or(0, |r| r.received_at_ms),
                        file_bytes: found.file_bytes,
                    });
                Ok(Uploaded::AlreadyThere {
                    file_blake3: found.file,
                    provenance,
                })
            }
        }
    }

    /// Multipart upload to `staging/`, then publish with
    /// `copy_if_not_exists`. `None`: the key existed already.
    async fn upload_multipart(
        &self,
        file: &FsPath,
        hash: &ObjectId,
        key: &Path,
    ) -> Result<Option<[u8; 32]>, BucketError> {
        let staging = Path::from(format!(
            "staging/{}-{:016x}.dcm",
            hash_hex(hash),
            rand::random::<u64>()
        ));
        let upload = self.store.put_multipart(&staging).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut hasher = StreamHasher::default();
        let mut f = tokio::fs::File::open(file).await.map_err(io_err(file))?;
        let mut buf = vec![0u8; READ_BYTES];
        let streamed: Result<StreamHashes, BucketError> = async {
            loop {
                let n = f.read(&mut buf).await.map_err(io_err(file))?;
                if n == 0 {
                    break;
                }
                let piece = &buf[..n];
                hasher.update(piece).map_err(|e| BucketError::Invalid {
                    key: file.display().to_string(),
                    message: e.to_string(),
                })?;
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(piece);
            }
            hasher.finish().map_err(|e| BucketError::Invalid {
                key: file.display().to_string(),
                message: e.to_string(),
            })
        }
        .await;
        let hashes = match streamed {
            Ok(h) if h.dataset == hash.0 => h,
            Ok(h) => {
                let _ = writer.abort().await;
                return Err(BucketError::SpoolCorrupt {
                    hash: hash_hex(hash),
                    found: hash_hex(&h.dataset),
                });
            }
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        writer.finish().await?;
        let published = self.store.copy_if_not_exists(&staging, key).await;
        if let Err(e) = self.store.delete(&staging).await {
            tracing::warn!(key = %staging, error = %e, "could not remove a staging upload");
        }
        match published {
            Ok(()) => Ok(Some(hashes.file)),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stream an object and hash it (file and data set), keeping nothing.
    pub async fn read_hashes(&self, key: &Path) -> Result<StreamHashes, BucketError> {
        self.read_object(key, Sink::Nothing).await
    }

    /// Download object `hash` into `dest` (created or truncated), hashing as
    /// it arrives. The caller checks the data set hash against `hash`.
    pub async fn download(
        &self,
        hash: &ObjectId,
        dest: &FsPath,
    ) -> Result<StreamHashes, BucketError> {
        self.read_object(&Path::from(object_key(hash)), Sink::File(dest))
            .await
    }

    /// Download object `hash` into memory, hashing as it arrives. `size`
    /// is its size in the bucket: the memory allocated once, and the most
    /// that is read (a longer body is an error). The caller bounds `size`
    /// and checks the data set hash against `hash`.
    pub async fn fetch(
        &self,
        hash: &ObjectId,
        size: u64,
    ) -> Result<(bytes::Bytes, StreamHashes), BucketError> {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let mut body = Vec::with_capacity(size);
        let hashes = self
            .read_object(&Path::from(object_key(hash)), Sink::Memory(&mut body, size))
            .await?;
        Ok((body.into(), hashes))
    }

    async fn read_object(&self, key: &Path, sink: Sink<'_>) -> Result<StreamHashes, BucketError> {
        use tokio::io::AsyncWriteExt;
        // Buffered: the body arrives in pieces of a few KiB, and each write
        // to a tokio file is a hop to the blocking pool; one per MiB instead.
        let (mut file, mut kept, limit) = match sink {
            Sink::Nothing => (None, None, 0),
            Sink::File(p) => (
                Some((
                    p,
                    tokio::io::BufWriter::with_capacity(
                        READ_BYTES,
                        tokio::fs::File::create(p).await.map_err(io_err(p))?,
                    ),
                )),
                None,
                0,
            ),
            Sink::Head(h) => (None, Some((h, false)), HEAD_BYTES),
            Sink::Memory(m, limit) => (None, Some((m, true)), limit),
        };
        let mut stream = self.store.get(key).await?.into_stream();
        let mut hasher = StreamHasher::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk).map_err(|e| BucketError::Invalid {
                key: key.to_string(),
                message: e.to_string(),
            })?;
            if let Some((p, f)) = file.as_mut() {
                f.write_all(&chunk).await.map_err(io_err(p))?;
            }
            if let Some((h, whole)) = kept.as_mut() {
                let room = limit.saturating_sub(h.len()).min(chunk.len());
                if *whole && room < chunk.len() {
                    return Err(BucketError::Invalid {
                        key: key.to_string(),
                        message: format!("longer than its listed size of {limit} bytes"),
                    });
                }
                h.extend_from_slice(&chunk[..room]);
            }
        }
        if let Some((p, mut f)) = file {
            f.flush().await.map_err(io_err(p))?;
        }
        hasher.finish().map_err(|e| BucketError::Invalid {
            key: key.to_string(),
            message: e.to_string(),
        })
    }

    /// Read a study manifest (`None`: the study has none yet) with the
    /// version to update it conditionally.
    async fn read_manifest(
        &self,
        key: &Path,
    ) -> Result<Option<(StudyManifest, UpdateVersion)>, BucketError> {
        let got = match self.store.get(key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let body = got.bytes().await?;
        let manifest = serde_json::from_slice(&body).map_err(|e| BucketError::Invalid {
            key: key.to_string(),
            message: format!("not a study manifest: {e}"),
        })?;
        Ok(Some((manifest, version)))
    }

    /// The manifest of one study (`None`: the bucket has none).
    pub async fn study_manifest(
        &self,
        study_instance_uid: &str,
    ) -> Result<Option<StudyManifest>, BucketError> {
        let key = Path::from(manifest_key(study_instance_uid));
        Ok(self.read_manifest(&key).await?.map(|(m, _)| m))
    }

    /// Add `entries` (all of one study) to its manifest; entries of no
    /// study (`""`) each to its own manifest under `unfiled/`.
    pub async fn add_to_manifest(
        &self,
        study_instance_uid: &str,
        entries: &[manifest::ManifestEntry],
    ) -> Result<(), BucketError> {
        if !study_instance_uid.is_empty() {
            return self
                .add_to_manifest_at(
                    manifest_key(study_instance_uid),
                    study_instance_uid,
                    entries,
                )
                .await;
        }
        let mut by_sop: std::collections::BTreeMap<&str, Vec<manifest::ManifestEntry>> =
            std::collections::BTreeMap::new();
        for e in entries {
            by_sop
                .entry(e.record.sop_instance_uid.as_str())
                .or_default()
                .push(e.clone());
        }
        for (sop, list) in by_sop {
            self.add_to_manifest_at(unfiled_manifest_key(sop), "", &list)
                .await?;
        }
        Ok(())
    }

    async fn add_to_manifest_at(
        &self,
        key_str: String,
        study_instance_uid: &str,
        entries: &[manifest::ManifestEntry],
    ) -> Result<(), BucketError> {
        let key = Path::from(key_str.clone());
        let lock = {
            let mut locks = self
                .manifest_locks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            locks.entry(key_str.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        let mut last = None;
        for _ in 0..MANIFEST_ATTEMPTS {
            let (mut manifest, version) = match self.read_manifest(&key).await? {
                Some((m, v)) => (m, Some(v)),
                None => (StudyManifest::new(study_instance_uid), None),
            };
            if manifest.study_instance_uid != study_instance_uid {
                return Err(BucketError::Invalid {
                    key: key_str,
                    message: format!(
                        "the manifest is of study {} (key collision?)",
                        manifest.study_instance_uid
                    ),
                });
            }
            if manifest.merge(entries) == 0 {
                return Ok(());
            }
            manifest.updated_at_ms = crate::unix_ms();
            let body = serde_json::to_vec(&manifest).unwrap_or_default();
            let conditional = self
                .conditional_update
                .load(std::sync::atomic::Ordering::Relaxed);
            let mode = match version {
                None => PutMode::Create,
                Some(v) if conditional => PutMode::Update(v),
                Some(_) => PutMode::Overwrite,
            };
            let updating = matches!(mode, PutMode::Update(_));
            match self
                .store
                .put_opts(&key, PutPayload::from(body), PutOptions::from(mode))
                .await
            {
                Ok(_) => return Ok(()),
                // Someone else wrote it meanwhile: read again and merge.
                Err(
                    e @ (object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }),
                ) => last = Some(e),
                Err(object_store::Error::NotImplemented { .. }) if updating => {
                    tracing::debug!(url = %self.url, "no conditional update: manifests are rewritten under a per-study lock");
                    self.conditional_update
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map_or_else(
            || BucketError::Invalid {
                key: key_str,
                message: "manifest update did not settle".into(),
            },
            BucketError::Store,
        ))
    }

    /// Whether this is a pacs-mirror bucket, decided by what the layout
    /// offers: its descriptor; failing that (buckets written before
    /// descriptors), a study manifest or an object of the layout. Otherwise
    /// [`BucketError::Empty`] when nothing at all is there, or
    /// [`BucketError::NotABucket`] with what is. Reads the descriptor and
    /// at most the first keys of a few listings.
    pub async fn layout(&self) -> Result<Layout, BucketError> {
        let descriptor = match self.store.get(&Path::from(DESCRIPTOR_KEY)).await {
            Ok(got) => {
                let body = got.bytes().await?;
                match serde_json::from_slice::<Descriptor>(&body) {
                    Ok(d) if d.format.starts_with(manifest::DESCRIPTOR_FORMAT_FAMILY) => {
                        return Ok(Layout::Described(d));
                    }
                    Ok(d) => format!("its {DESCRIPTOR_KEY} is of format {:?}", d.format),
                    Err(e) => format!("its {DESCRIPTOR_KEY} is not a bucket descriptor: {e}"),
                }
            }
            Err(object_store::Error::NotFound { .. }) => format!("no descriptor {DESCRIPTOR_KEY}"),
            Err(e) => return Err(e.into()),
        };
        for prefix in ["studies", "unfiled"] {
            let mut list = self.store.list(Some(&Path::from(prefix)));
            while let Some(meta) = list.next().await {
                if meta?.location.filename() == Some("manifest.json") {
                    return Ok(Layout::Undescribed);
                }
            }
        }
        let mut list = self.store.list(Some(&Path::from("objects")));
        while let Some(meta) = list.next().await {
            if parse_object_key(meta?.location.as_ref()).is_some() {
                return Ok(Layout::Undescribed);
            }
        }
        let root = self.store.list_with_delimiter(None).await?;
        let mut found: Vec<String> = root
            .common_prefixes
            .iter()
            .map(|p| format!("{p}/"))
            .chain(root.objects.iter().map(|o| o.location.to_string()))
            .collect();
        found.sort();
        let url = self.url.clone();
        if found.is_empty() {
            return Err(BucketError::Empty { url });
        }
        Err(BucketError::NotABucket {
            url,
            descriptor,
            found,
        })
    }

    /// Every manifest in the bucket: each study's, and those of instances
    /// with no study (`unfiled/`).
    pub async fn manifests(&self) -> Result<Vec<StudyManifest>, BucketError> {
        let mut keys = Vec::new();
        for prefix in ["studies", "unfiled"] {
            let mut list = self.store.list(Some(&Path::from(prefix)));
            while let Some(meta) = list.next().await {
                let meta = meta?;
                if meta.location.filename() == Some("manifest.json") {
                    keys.push(meta.location);
                }
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut reads = futures::stream::iter(keys)
            .map(|k| async move { (self.read_manifest(&k).await, k) })
            .buffer_unordered(16);
        while let Some((m, k)) = reads.next().await {
            match m? {
                Some((m, _)) => out.push(m),
                None => tracing::warn!(key = %k, "manifest removed while listing"),
            }
        }
        out.sort_by(|a, b| a.study_instance_uid.cmp(&b.study_instance_uid));
        Ok(out)
    }

    /// The size of one object, asked by its key (`None`: not held).
    pub async fn object_size(&self, hash: &ObjectId) -> Result<Option<u64>, BucketError> {
        match self.store.head(&Path::from(object_key(hash))).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The addresses of every object in the bucket, with their sizes.
    pub async fn objects(&self) -> Result<Vec<(ObjectId, u64)>, BucketError> {
        let mut out = Vec::new();
        let mut list = self.store.list(Some(&Path::from("objects")));
        while let Some(meta) = list.next().await {
            let meta = meta?;
            match parse_object_key(meta.location.as_ref()) {
                Some(h) => out.push((h, meta.size)),
                None => {
                    tracing::warn!(key = %meta.location, "not an object key of this layout: ignored");
                }
            }
        }
        Ok(out)
    }
}

/// Read a spool file of at most [`SINGLE_PUT_MAX_BYTES`] and check that it
/// hashes to its address, in one hop to a blocking thread (`None`: larger,
/// to be streamed).
async fn read_small(
    file: &FsPath,
    hash: &ObjectId,
) -> Result<Option<(Vec<u8>, StreamHashes)>, BucketError> {
    let (path, hash) = (file.to_path_buf(), *hash);
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path).map_err(io_err(&path))?;
        let size = f.metadata().map_err(io_err(&path))?.len();
        if size > SINGLE_PUT_MAX_BYTES {
            return Ok(None);
        }
        // The file may have grown since: never read more than a single put.
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        (&mut f)
            .take(SINGLE_PUT_MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        if bytes.len() as u64 > SINGLE_PUT_MAX_BYTES {
            return Ok(None);
        }
        let hashes = hash_whole(&bytes, &hash)?;
        Ok(Some((bytes, hashes)))
    });
    read.await.map_err(|e| BucketError::Io {
        path: file.display().to_string(),
        source: std::io::Error::other(e),
    })?
}

/// Hash a whole file held in memory and check its data set address.
fn hash_whole(bytes: &[u8], hash: &ObjectId) -> Result<StreamHashes, BucketError> {
    let mut h = StreamHasher::default();
    let checked = h.update(bytes).and_then(|()| h.finish());
    let hashes = checked.map_err(|e| BucketError::SpoolCorrupt {
        hash: hash_hex(hash),
        found: e.to_string(),
    })?;
    if hashes.dataset != hash.0 {
        return Err(BucketError::SpoolCorrupt {
            hash: hash_hex(hash),
            found: hash_hex(&hashes.dataset),
        });
    }
    Ok(hashes)
}

/// Why an S3/GCS/Azure store cannot be built.
#[derive(Debug, thiserror::Error)]
enum CloudConfigError {
    /// An option the store does not know, or a bad value.
    #[error("option {key:?}: {source}")]
    Option {
        key: String,
        #[source]
        source: object_store::Error,
    },
    /// The builder refused the URL or the options together.
    #[error(transparent)]
    Build(#[from] object_store::Error),
}

/// Build an S3/GCS/Azure store for `root` (scheme://bucket) from the
/// environment plus `settings.options`.
fn cloud_store(
    scheme: &str,
    root: &str,
    settings: &BucketSettings,
) -> Result<Arc<dyn ObjectStore>, CloudConfigError> {
    let retry = object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        // Short faults only: the persistent queue handles outages.
        max_retries: 3,
        retry_timeout: settings.timeout,
    };
    let timeout = format!("{}s", settings.timeout.as_secs().max(1));
    let unknown = |k: &str, source: object_store::Error| CloudConfigError::Option {
        key: k.to_string(),
        source,
    };
    match scheme {
        "s3" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            let mut b = AmazonS3Builder::from_env()
                .with_url(root)
                .with_retry(retry)
                .with_config(
                    AmazonS3ConfigKey::Client(object_store::ClientConfigKey::Timeout),
                    timeout,
                )
                // Publishing large uploads create-only needs this; it is the
                // AWS-native way (UploadPartCopy + conditional complete).
                .with_config(AmazonS3ConfigKey::CopyIfNotExists, "multipart");
            for (k, v) in &settings.options {
                let key: AmazonS3ConfigKey = k.parse().map_err(|e| unknown(k, e))?;
                b = b.with_config(key, v.clone());
            }
            Ok(Arc::new(b.build()?))
        }
        "gs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_url(root)
                .with_retry(retry)
                .with_config(
                    GoogleConfigKey::Client(object_store::ClientConfigKey::Timeout),
                    timeout,
                );
            for (k, v) in &settings.options {
                let key: GoogleConfigKey = k.parse().map_err(|e| unknown(k, e))?;
                b = b.with_config(key, v.clone());
            }
            Ok(Arc::new(b.build()?))
        }
        _ => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(root)
                .with_retry(retry)
                .with_config(
                    AzureConfigKey::Client(object_store::ClientConfigKey::Timeout),
                    timeout,
                );
            for (k, v) in &settings.options {
                let key: AzureConfigKey = k.parse().map_err(|e| unknown(k, e))?;
                b = b.with_config(key, v.clone());
            }
            Ok(Arc::new(b.build()?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacs_mirror_dicom::part10::{Receipt, file_header};
    use pacs_mirror_store::index::ObjectId;

    fn part10(uid: &str, meta_ae: &str) -> (Vec<u8>, ObjectId) {
        let body = pacs_mirror_dicom::testing::dataset("1.2.840.10008.5.1.4.1.1.7", uid, "P");
        let receipt = Receipt {
            source_ip: "127.0.0.1".into(),
            received_at_ms: 1,
        };
        let mut file = file_header(
            "1.2.840.10008.5.1.4.1.1.7",
            uid,
            "1.2.840.10008.1.2.1",
            meta_ae,
            &receipt,
        )
        .unwrap();
        file.extend_from_slice(&body);
        (file, ObjectId::of(&body))
    }

    fn folder_bucket(dir: &FsPath) -> Bucket {
        Bucket::open(&BucketSettings {
            url: format!("file://{}", dir.display()),
            options: vec![],
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn keys_round_trip() {
        let h = ObjectId([0xab; 32]);
        let k = object_key(&h);
        assert!(k.starts_with("objects/ab/abab"));
        assert_eq!(parse_object_key(&k), Some(h));
        assert_eq!(parse_object_key("objects/cd/abab.dcm"), None);
        assert_eq!(
            parse_object_key(&k.replace("objects/ab", "objects/cd")),
            None
        );
        // Upper case is not a key we write: a download of the address it
        // parses to would read objects/ab/abab…, not this object.
        assert_eq!(
            parse_object_key(
                &k.to_uppercase()
                    .replace("OBJECTS/", "objects/")
                    .replace(".DCM", ".dcm")
            ),
            None
        );
        let m = manifest_key("1.2.840.1");
        assert!(m.starts_with("studies/") && m.ends_with("/manifest.json"));
        assert!(!m.contains("1.2.840.1"), "no UID in a key");
    }

    /// Create-only: a second upload of the same data set (another agent's
    /// file meta) is verified and leaves the first file's bytes in place;
    /// other bytes under the key are a conflict, never overwritten.
    #[tokio::test(flavor = "multi_thread")]
    async fn uploads_are_create_only_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let bucket_dir = dir.path().join("bucket");
        let bucket = folder_bucket(&bucket_dir);
        bucket.ensure_descriptor("test").await.unwrap();
        bucket.ensure_descriptor("test").await.unwrap();
        let (file_a, hash) = part10("1.2.3.4", "AGENT_A");
        let (file_b, hash_b) = part10("1.2.3.4", "AGENT_B");
        assert_eq!(hash, hash_b);
        let pa = dir.path().join("a.dcm");
        let pb = dir.path().join("b.dcm");
        std::fs::write(&pa, &file_a).unwrap();
        std::fs::write(&pb, &file_b).unwrap();
        let first = bucket.upload(&pa, &hash).await.unwrap();
        assert_eq!(
            first,
            Uploaded::Created {
                file_blake3: ObjectId::of(&file_a).0
            }
        );
        let second = bucket.upload(&pb, &hash).await.unwrap();
        assert_eq!(
            second,
            Uploaded::AlreadyThere {
                file_blake3: ObjectId::of(&file_a).0,
                provenance: Some(Provenance {
                    calling_ae: "AGENT_A".into(),
                    source_ip: "127.0.0.1".into(),
                    received_at_ms: 1,
                    file_bytes: file_a.len() as u64,
                }),
            }
        );
        let stored = std::fs::read(bucket_dir.join(object_key(&hash))).unwrap();
        assert_eq!(stored, file_a, "the first writer's bytes stay");

        // Another object's bytes under this key: conflict, untouched.
        let (other, _) = part10("1.2.3.5", "AGENT_A");
        std::fs::write(bucket_dir.join(object_key(&hash)), &other).unwrap();
        let err = bucket.upload(&pa, &hash).await.unwrap_err();
        assert!(matches!(err, BucketError::Conflict { .. }), "{err}");
        assert!(!err.is_transient());
        assert_eq!(
            std::fs::read(bucket_dir.join(object_key(&hash))).unwrap(),
            other
        );

        // A spool file that no longer matches its address is not uploaded.
        let (file_c, hash_c) = part10("1.2.3.6", "AGENT_A");
        let mut bad = file_c.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let pc = dir.path().join("c.dcm");
        std::fs::write(&pc, &bad).unwrap();
        let err = bucket.upload(&pc, &hash_c).await.unwrap_err();
        assert!(matches!(err, BucketError::SpoolCorrupt { .. }), "{err}");
        assert!(!bucket_dir.join(object_key(&hash_c)).exists());

        let got = dir.path().join("got.dcm");
        bucket.download(&hash, &got).await.unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), other);
        // Into memory: the same bytes and hashes; a body longer than the
        // size it was listed with is an error, not a silent truncation.
        let size = other.len() as u64;
        let (bytes, hashes) = bucket.fetch(&hash, size).await.unwrap();
        assert_eq!(&bytes[..], &other[..]);
        assert_eq!(hashes, bucket.download(&hash, &got).await.unwrap());
        let err = bucket.fetch(&hash, size - 1).await.unwrap_err();
        assert!(matches!(err, BucketError::Invalid { .. }), "{err}");
        let listed = bucket.objects().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, hash);
    }

    /// Large objects go by multipart to staging/ and are published
    /// create-only; staging is emptied.
    #[tokio::test(flavor = "multi_thread")]
    async fn multipart_upload_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let bucket_dir = dir.path().join("bucket");
        let bucket = folder_bucket(&bucket_dir);
        let receipt = Receipt {
            source_ip: "127.0.0.1".into(),
            received_at_ms: 1,
        };
        let mut file =
            file_header("1.2.3", "1.2.3.7", "1.2.840.10008.1.2.1", "A", &receipt).unwrap();
        let offset = file.len();
        file.extend((0..(SINGLE_PUT_MAX_BYTES as usize * 2 + 12345)).map(|i| (i % 251) as u8));
        let hash = ObjectId::of(&file[offset..]);
        let p = dir.path().join("big.dcm");
        std::fs::write(&p, &file).unwrap();
        let up = bucket.upload(&p, &hash).await.unwrap();
        assert_eq!(up.file_blake3(), ObjectId::of(&file).0);
        assert!(matches!(up, Uploaded::Created { .. }));
        let again = bucket.upload(&p, &hash).await.unwrap();
        assert!(matches!(again, Uploaded::AlreadyThere { .. }));
        assert_eq!(
            std::fs::read(bucket_dir.join(object_key(&hash))).unwrap(),
            file
        );
        let staging = bucket_dir.join("staging");
        let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "staging is emptied");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn manifests_merge_across_writers() {
        use manifest::entry;
        let dir = tempfile::tempdir().unwrap();
        let bucket = Arc::new(folder_bucket(dir.path()));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let b = bucket.clone();
            tasks.push(tokio::spawn(async move {
                let hash = format!("{i:02x}{}", "0".repeat(62));
                b.add_to_manifest("1.2.3", &[entry(&format!("1.2.3.{i}"), "1.1", &hash)])
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        bucket
            .add_to_manifest(
                "1.2.3",
                &[entry("1.2.3.0", "1.1", &format!("00{}", "0".repeat(62)))],
            )
            .await
            .unwrap();
        let all = bucket.manifests().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].instances.len(), 20);
        assert_eq!(all[0].study_instance_uid, "1.2.3");
    }

    fn existing(dir: &FsPath) -> Result<Bucket, BucketError> {
        Bucket::open_existing(&BucketSettings {
            url: format!("file://{}", dir.display()),
            options: vec![],
            timeout: Duration::from_secs(5),
        })
    }

    /// Reading never creates a folder; a location is a bucket by its
    /// descriptor or, without one (older versions), by a manifest or an
    /// object of the layout; anything else says what it holds.
    #[tokio::test]
    async fn a_location_is_a_bucket_by_its_layout() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-bucket");
        let e = existing(&missing).unwrap_err();
        assert!(e.is_not_a_bucket(), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("file://{}: no such folder", missing.display())
        );
        assert!(!missing.exists(), "reading created the folder");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let e = existing(&file).unwrap_err();
        assert!(e.to_string().ends_with(": not a folder (a file)"), "{e}");

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = existing(&empty).unwrap().layout().await.unwrap_err();
        assert!(matches!(e, BucketError::Empty { .. }), "{e:?}");
        assert!(e.to_string().contains(": holds nothing"), "{e}");

        let other = dir.path().join("other");
        std::fs::create_dir_all(other.join("photos")).unwrap();
        std::fs::create_dir_all(other.join("studies/x")).unwrap();
        std::fs::write(other.join("studies/x/notes.txt"), b"x").unwrap();
        std::fs::write(other.join("notes.txt"), b"x").unwrap();
        let e = existing(&other).unwrap().layout().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "file://{}: not a pacs-mirror bucket (no descriptor {DESCRIPTOR_KEY}, no study manifests, no objects/): it holds notes.txt, photos/, studies/",
                other.display()
            )
        );
        std::fs::write(other.join(DESCRIPTOR_KEY), b"{}").unwrap();
        let e = existing(&other).unwrap().layout().await.unwrap_err();
        assert!(
            e.to_string()
                .contains("(its pacs-mirror-bucket.json is not a bucket descriptor: "),
            "{e}"
        );

        // Written by an older version: manifests, no descriptor.
        let old = dir.path().join("old");
        let bucket = folder_bucket(&old);
        bucket
            .add_to_manifest(
                "1.2.3",
                &[manifest::entry("1.2.3.1", "1.1", &"ab".repeat(32))],
            )
            .await
            .unwrap();
        let bucket = existing(&old).unwrap();
        assert_eq!(bucket.layout().await.unwrap(), Layout::Undescribed);
        // Only an object (its manifest entry never written).
        let blob_only = dir.path().join("blob-only");
        let (file, hash) = part10("1.2.3.9", "CT");
        let path = dir.path().join("9.dcm");
        std::fs::write(&path, &file).unwrap();
        folder_bucket(&blob_only)
            .upload(&path, &hash)
            .await
            .unwrap();
        assert_eq!(
            existing(&blob_only).unwrap().layout().await.unwrap(),
            Layout::Undescribed
        );
        // A new bucket: its descriptor, nothing else yet.
        let new = dir.path().join("new");
        folder_bucket(&new).ensure_descriptor("site").await.unwrap();
        assert!(matches!(
            existing(&new).unwrap().layout().await.unwrap(),
            Layout::Described(d) if d.created_by == "site"
        ));
    }
}
