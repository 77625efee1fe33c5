//! Fixtures for tests (this crate's and its dependents'): small data sets
//! and hand-written elements, and a DCMTK storescp peer. Not used by the
//! product.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// A minimal data set (Explicit VR LE) with the attributes the agent reads:
/// SOP class and instance, patient ID, study `1.2.3`, series `1.2.3.1`.
pub fn dataset(sop_class: &str, sop_instance: &str, patient_id: &str) -> Vec<u8> {
    dataset_in_study(sop_class, sop_instance, patient_id, "1.2.3")
}

/// [`dataset`] in study `study` (series still `1.2.3.1`).
pub fn dataset_in_study(
    sop_class: &str,
    sop_instance: &str,
    patient_id: &str,
    study: &str,
) -> Vec<u8> {
    let mut ds = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::SOP_CLASS_UID, VR::UI, sop_class),
        (tags::SOP_INSTANCE_UID, VR::UI, sop_instance),
        (tags::PATIENT_ID, VR::LO, patient_id),
        (tags::STUDY_INSTANCE_UID, VR::UI, study),
        (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.1"),
    ] {
        ds.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    let mut body = Vec::new();
    ds.write_dataset_with_ts(
        &mut body,
        &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .expect("encoding a small data set in memory");
    body
}

/// Explicit VR Little Endian element bytes, written by hand (lengths need
/// not match the value: hostile inputs are the point), for fuzz seeds and
/// the tests of the readers.
pub mod element {
    /// An element with a 2-byte length, the value's own.
    pub fn short(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = [group.to_le_bytes(), element.to_le_bytes()].concat();
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    /// An element with a 4-byte length field (`len`, whatever `value` is).
    pub fn long(group: u16, element: u16, vr: &[u8; 2], len: u32, value: &[u8]) -> Vec<u8> {
        let mut v = [group.to_le_bytes(), element.to_le_bytes()].concat();
        v.extend_from_slice(vr);
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    /// [`long`] for OB, OW, SQ, UN and UT, else a 2-byte length of `len`.
    pub fn by_vr(group: u16, element: u16, vr: &[u8; 2], len: u32, value: &[u8]) -> Vec<u8> {
        if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
            return long(group, element, vr, len, value);
        }
        let mut v = [group.to_le_bytes(), element.to_le_bytes()].concat();
        v.extend_from_slice(vr);
        v.extend_from_slice(&(len as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }
}

/// A real DCMTK storescp as a test peer (the tests of SCU roles).
pub mod peers {
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use crate::scu::{Peer, echo};

    pub struct Storescp(Child);
    impl Drop for Storescp {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// DCMTK storescp as AE MIRROR with `args`, writing into `out`
    /// (created); returns once it answers C-ECHO.
    pub async fn start_storescp(args: &[&str], out: &Path) -> (Storescp, Peer) {
        start_storescp_on(args, out, free_port()).await
    }

    /// [`start_storescp`] on `port`.
    pub async fn start_storescp_on(args: &[&str], out: &Path, port: u16) -> (Storescp, Peer) {
        std::fs::create_dir_all(out).unwrap();
        let child = Command::new("storescp")
            .args(args)
            .args(["-aet", "MIRROR", "-od"])
            .arg(out)
            .arg(port.to_string())
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp not found: run scripts/test, which installs dcmtk");
        let guard = Storescp(child);
        let peer = storescp_peer(port);
        for _ in 0..100 {
            if echo(&peer).await.is_ok() {
                return (guard, peer);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("storescp did not answer C-ECHO");
    }

    /// How we call the storescp of [`start_storescp_on`] on `port`.
    pub fn storescp_peer(port: u16) -> Peer {
        Peer {
            calling_ae: "PACS_MIRROR".into(),
            called_ae: "MIRROR".into(),
            host: "127.0.0.1".into(),
            port,
            timeout: Duration::from_secs(10),
            tls: None,
            pace: None,
        }
    }

    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// The data sets of the files storescp wrote into `dir`, sorted.
    pub fn received_datasets(dir: &Path) -> Vec<Vec<u8>> {
        let mut received: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let off = crate::part10::dataset_offset(&p).unwrap() as usize;
                std::fs::read(&p).unwrap()[off..].to_vec()
            })
            .collect();
        received.sort();
        received
    }
}
