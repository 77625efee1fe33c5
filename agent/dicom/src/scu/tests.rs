use super::store::{Reader, open_source, read_block};
use super::*;
use crate::dimse::Status;
use crate::part10::{Receipt, file_header};
use crate::testing::dataset;
use crate::testing::peers::{free_port, received_datasets, start_storescp};
use std::path::Path;

const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const RLE: &str = "1.2.840.10008.1.2.5";

/// The same object held in memory, under a name that is no file.
fn in_memory(o: &Outgoing) -> Outgoing {
    Outgoing {
        path: o.path.with_extension("in-memory"),
        memory: Some(InMemory(std::fs::read(&o.path).unwrap().into())),
        ..o.clone()
    }
}

fn write_object(dir: &Path, uid: &str, ts: &str) -> (Outgoing, Vec<u8>) {
    let body = dataset(SC, uid, "P1");
    let receipt = Receipt {
        source_ip: "127.0.0.1".into(),
        received_at_ms: 1,
    };
    let mut bytes = file_header(SC, uid, ts, "SENDER", &receipt).unwrap();
    bytes.extend_from_slice(&body);
    let path = dir.join(format!("{uid}.dcm"));
    std::fs::write(&path, bytes).unwrap();
    (
        Outgoing {
            path,
            memory: None,
            sop_class_uid: SC.into(),
            sop_instance_uid: uid.into(),
            transfer_syntax_uid: ts.into(),
            dataset_blake3: None,
        },
        body,
    )
}

/// A spool file damaged after it was received is never stored at a peer:
/// found before anything is sent (the association stays usable), or
/// before the last fragment of a large data set (the association is
/// aborted, so the peer discards what it got); the same on the
/// re-encoding fallback.
#[tokio::test(flavor = "multi_thread")]
async fn a_spool_file_that_no_longer_matches_its_address_is_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let checked = |(o, body): (Outgoing, Vec<u8>)| {
        let hash = *blake3::hash(&body).as_bytes();
        (
            Outgoing {
                dataset_blake3: Some(hash),
                ..o
            },
            body,
        )
    };
    let damage = |o: &Outgoing, at_end: u64| {
        let mut bytes = std::fs::read(&o.path).unwrap();
        let i = bytes.len() - 1 - at_end as usize;
        bytes[i] ^= 0x5A;
        std::fs::write(&o.path, bytes).unwrap();
    };
    // small: one block
    let (small, _) = checked(write_object(dir.path(), "1.2.3.301", EXPLICIT_LE));
    damage(&small, 0);
    // large: 3 MiB of pixel-like data, damaged in its first MiB
    let uid = "1.2.3.302";
    let mut body = dataset(SC, uid, "P1");
    let pad = 3u32 << 20;
    body.extend_from_slice(&[0x09, 0, 0x10, 0x10, b'O', b'B', 0, 0]);
    body.extend_from_slice(&pad.to_le_bytes());
    body.extend((0..pad).map(|i| (i % 253) as u8));
    let receipt = Receipt {
        source_ip: "127.0.0.1".into(),
        received_at_ms: 1,
    };
    let mut file = file_header(SC, uid, EXPLICIT_LE, "SENDER", &receipt).unwrap();
    file.extend_from_slice(&body);
    let path = dir.path().join(format!("{uid}.dcm"));
    std::fs::write(&path, &file).unwrap();
    let (large, _) = checked((
        Outgoing {
            path,
            memory: None,
            sop_class_uid: SC.into(),
            sop_instance_uid: uid.into(),
            transfer_syntax_uid: EXPLICIT_LE.into(),
            dataset_blake3: None,
        },
        body,
    ));
    damage(&large, u64::from(pad) - 1000);
    let (good, good_body) = checked(write_object(dir.path(), "1.2.3.303", EXPLICIT_LE));

    let out = dir.path().join("received");
    let (_guard, peer) = start_storescp(&["+B"], &out).await;
    let contexts = contexts_for(&[small.clone(), good.clone()]);
    let mut scu = Scu::connect(&peer, &contexts).await.unwrap();
    match scu.store(&small).await {
        Err(ScuError::Corrupt { aborted: false, .. }) => {}
        other => panic!("a damaged small object: {other:?}"),
    }
    // nothing was sent: the association goes on
    assert_eq!(scu.store(&good).await.unwrap(), Status::Success);
    let e = scu.store(&large).await.unwrap_err();
    assert!(
        matches!(e, ScuError::Corrupt { aborted: true, .. }),
        "a damaged large object: {e:?}"
    );
    assert!(!e.is_transient());
    assert!(e.to_string().contains("verify spool"), "{e}");
    // the association is gone
    assert!(scu.store(&good).await.is_err());
    // storescp needs a moment to notice the abort
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received_datasets(&out), vec![good_body.clone()]);

    // The fallback: re-encoded only from a data set that matches.
    let out = dir.path().join("received-implicit");
    let (_guard, peer) = start_storescp(&["+B", "+xi"], &out).await;
    let mut scu = Scu::connect(&peer, &contexts_for(std::slice::from_ref(&small)))
        .await
        .unwrap();
    match scu.store_reporting(&small).await {
        Err(ScuError::Corrupt { aborted: false, .. }) => {}
        other => panic!("a damaged object on the fallback: {other:?}"),
    }
    let (status, reencoded) = scu.store_reporting(&good).await.unwrap();
    assert_eq!(status, Status::Success);
    assert!(reencoded.is_some());
    scu.release().await;
    assert_eq!(received_datasets(&out).len(), 1);
}

/// A peer that accepts Implicit VR Little Endian only (storescp +xi):
/// an Explicit VR object goes over the fallback context, re-encoded
/// losslessly (every element equal); the context list stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn explicit_le_falls_back_to_implicit_losslessly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received");
    let (_guard, peer) = start_storescp(&["+B", "+xi"], &out).await;
    let (a, _) = write_object(dir.path(), "1.2.3.201", EXPLICIT_LE);
    let (r, _) = write_object(dir.path(), "1.2.3.202", RLE);
    let contexts = contexts_for(&[a.clone(), r.clone()]);
    assert_eq!(
        contexts,
        vec![
            (SC.to_string(), vec![EXPLICIT_LE.to_string()]),
            (SC.to_string(), vec![IMPLICIT_VR_LE.to_string()]),
            (SC.to_string(), vec![RLE.to_string()]),
        ]
    );
    let mut scu = Scu::connect(&peer, &contexts).await.unwrap();
    let (status, reencoded) = scu.store_reporting(&a).await.unwrap();
    assert_eq!(status, Status::Success);
    let reencoded = reencoded.expect("sent re-encoded");
    assert_eq!(reencoded.transfer_syntax_uid, IMPLICIT_VR_LE);
    // The same object from memory is re-encoded to the same bytes (the
    // peer stores it under the same SOP Instance UID: still one file).
    let (status, again) = scu.store_reporting(&in_memory(&a)).await.unwrap();
    assert_eq!(status, Status::Success);
    assert_eq!(again, Some(reencoded.clone()));
    // No lossless fallback for a compressed object.
    assert!(matches!(
        scu.store(&r).await,
        Err(ScuError::NoContext { .. })
    ));
    scu.release().await;
    let got: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(got.len(), 1);
    // The hash reported is that of the data set the peer received.
    let bytes = std::fs::read(&got[0]).unwrap();
    let offset = crate::part10::dataset_offset(&got[0]).unwrap() as usize;
    assert_eq!(reencoded.blake3, *blake3::hash(&bytes[offset..]).as_bytes());
    let received = dicom_object::open_file(&got[0]).unwrap();
    assert_eq!(
        received.meta().transfer_syntax().trim_end_matches('\0'),
        IMPLICIT_VR_LE
    );
    let original = dicom_object::open_file(&a.path).unwrap();
    let n = original.iter().count();
    assert!(n > 3);
    assert_eq!(received.iter().count(), n);
    for e in original.iter() {
        let tag = e.header().tag;
        assert_eq!(
            received.element(tag).unwrap().value(),
            e.value(),
            "element {tag} changed in the re-encoding"
        );
    }
    // At most MAX_CONTEXTS: fallbacks give way to originals.
    let many: Vec<Outgoing> = (0..100)
        .map(|i| Outgoing {
            sop_class_uid: format!("1.2.3.{i}"),
            ..a.clone()
        })
        .collect();
    let c = contexts_for(&many);
    assert_eq!(c.len(), MAX_CONTEXTS);
    assert!(
        many.iter()
            .all(|o| c.contains(&(o.sop_class_uid.clone(), vec![EXPLICIT_LE.to_string()])))
    );
}

/// Split `bytes` into PDUs with dicom-ul's own reader: (context, last,
/// data) of each single-PDV P-DATA-TF.
fn parse_pdus(mut bytes: &[u8], max_pdu: u32) -> Vec<(u8, bool, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes[2..6].try_into().unwrap()) as usize;
        let pdu = dicom_ul::pdu::read_pdu(&bytes[..6 + len], max_pdu, true)
            .unwrap()
            .expect("a whole PDU");
        let Pdu::PData { data } = pdu else {
            panic!("not P-DATA-TF: {pdu:?}")
        };
        assert_eq!(data.len(), 1, "one PDV per PDU");
        let pdv = data.into_iter().next().unwrap();
        assert_eq!(pdv.value_type, PDataValueType::Data);
        out.push((pdv.presentation_context_id, pdv.is_last, pdv.data));
        bytes = &bytes[6 + len..];
    }
    out
}

/// Blocks are complete P-DATA-TF PDUs within the peer's limit, at most
/// MAX_SEND_CHUNK data bytes each, only the data set's very last
/// fragment flagged last, and together exactly the data set; a reused
/// buffer does not leak bytes of the previous object. The same from a
/// file and from memory.
#[test]
fn blocks_are_framed_pdus_of_the_data_set() {
    let dir = tempfile::tempdir().unwrap();
    let (o, body) = write_object(dir.path(), "1.2.3.301", EXPLICIT_LE);
    // A big data set: the file's own, padded with a large private-ish
    // tail of known bytes (the framing does not parse it).
    let big: Vec<u8> = (0..(MAX_SEND_CHUNK * 2 + 12_345))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut bytes = std::fs::read(&o.path).unwrap();
    bytes.extend_from_slice(&big);
    let big_path = dir.path().join("big.dcm");
    std::fs::write(&big_path, &bytes).unwrap();
    let mut want_big = body.clone();
    want_big.extend_from_slice(&big);

    let at = |path: &Path| Outgoing {
        path: path.to_path_buf(),
        ..o.clone()
    };
    let big_o = at(&big_path);
    let cases = [
        (o.clone(), body.clone(), 16_378usize),
        (big_o.clone(), want_big.clone(), 16_378),
        (big_o.clone(), want_big.clone(), 1_000_000),
        (big_o.clone(), want_big.clone(), MAX_SEND_CHUNK),
    ];
    let from_memory = cases
        .clone()
        .map(|(object, want, chunk)| (in_memory(&object), want, chunk));
    for (object, want, chunk) in cases.into_iter().chain(from_memory) {
        let path = object.path.clone();
        assert_eq!(
            matches!(Reader::open(&object).unwrap().0, Reader::Memory(_)),
            object.memory.is_some()
        );
        let max_pdu = chunk as u32 + 6;
        let (mut source, mut buf, mut used) =
            open_source(&object, 7, chunk, vec![0xEE; 64]).unwrap();
        let mut got = Vec::new();
        let mut blocks = 0;
        loop {
            blocks += 1;
            let pdus = parse_pdus(&buf[..used], max_pdu);
            let data: usize = pdus.iter().map(|p| p.2.len()).sum();
            assert!(data <= MAX_SEND_CHUNK, "block of {data} bytes");
            for (i, (pc, last, d)) in pdus.iter().enumerate() {
                assert_eq!(*pc, 7);
                assert!(d.len() <= chunk);
                let final_one = source.remaining == 0 && i + 1 == pdus.len();
                assert_eq!(*last, final_one, "{}: last flag of PDU {i}", path.display());
                got.extend_from_slice(d);
            }
            if source.remaining == 0 {
                break;
            }
            used = read_block(&mut source, &mut buf).unwrap();
        }
        assert_eq!(got.len(), want.len());
        assert!(got == want, "{}: data differs", path.display());
        assert_eq!(blocks, want.len().div_ceil(MAX_SEND_CHUNK).max(1));
    }

    // An empty data set: one empty fragment, flagged last.
    let meta_only = dir.path().join("meta-only.dcm");
    let offset = crate::part10::dataset_offset(&o.path).unwrap() as usize;
    std::fs::write(&meta_only, &std::fs::read(&o.path).unwrap()[..offset]).unwrap();
    let (source, buf, used) = open_source(&at(&meta_only), 3, 16_378, Vec::new()).unwrap();
    assert_eq!(source.remaining, 0);
    assert_eq!(
        parse_pdus(&buf[..used], 16_384),
        vec![(3, true, Vec::new())]
    );

    // Not a Part-10 file, or gone: an error before anything is sent.
    let junk = dir.path().join("junk.dcm");
    std::fs::write(&junk, vec![0u8; 300]).unwrap();
    assert!(open_source(&at(&junk), 1, 16_378, Vec::new()).is_err());
    assert!(open_source(&in_memory(&at(&junk)), 1, 16_378, Vec::new()).is_err());
    assert!(open_source(&at(&dir.path().join("gone.dcm")), 1, 16_378, Vec::new()).is_err());
}

/// Reading ahead: each object's bytes arrive intact whether its first
/// block was read ahead, announced but not stored next (the stale read
/// is dropped), or not announced at all; objects held in memory (2 and
/// 4, whose files are gone) mixed in, announced or not.
#[tokio::test(flavor = "multi_thread")]
async fn read_ahead_keeps_every_object_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received");
    let (_guard, peer) = start_storescp(&["+B"], &out).await;
    let objects: Vec<(Outgoing, Vec<u8>)> = (0..5)
        .map(|i| write_object(dir.path(), &format!("1.2.3.40{i}"), EXPLICIT_LE))
        .collect();
    let outgoing: Vec<Outgoing> = objects
        .iter()
        .enumerate()
        .map(|(i, (o, _))| {
            if i % 2 == 0 && i > 0 {
                in_memory(o)
            } else {
                o.clone()
            }
        })
        .collect();
    for o in outgoing.iter().filter(|o| o.memory.is_some()) {
        std::fs::remove_file(o.path.with_extension("dcm")).unwrap();
    }
    let mut scu = Scu::connect(&peer, &contexts_for(&outgoing)).await.unwrap();
    // 0 announces 1 (used), 1 announces 3 (stale: 2 comes next),
    // 2 announces nothing, 3 announces 4 (used), 4 last.
    let plan: [(usize, Option<usize>); 5] = [
        (0, Some(1)),
        (1, Some(3)),
        (2, None),
        (3, Some(4)),
        (4, None),
    ];
    for (i, next) in plan {
        if let Some(n) = next {
            scu.read_ahead(&outgoing[n]);
        }
        assert_eq!(scu.store(&outgoing[i]).await.unwrap(), Status::Success);
    }
    assert!(scu.spare.len() <= 2, "at most two spare buffers");
    scu.release().await;
    let received = received_datasets(&out);
    let mut sent: Vec<Vec<u8>> = objects.into_iter().map(|(_, b)| b).collect();
    sent.sort();
    assert_eq!(received, sent);
}

/// Against a real DCMTK storescp in bit-preserving mode (+B), which
/// accepts uncompressed transfer syntaxes only.
#[tokio::test(flavor = "multi_thread")]
async fn stores_byte_exact_into_dcmtk_and_reports_refused_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received");
    let (_guard, peer) = start_storescp(&["+B"], &out).await;

    let (a, body_a) = write_object(dir.path(), "1.2.3.101", EXPLICIT_LE);
    let (b, body_b) = write_object(dir.path(), "1.2.3.102", EXPLICIT_LE);
    let (c, _) = write_object(dir.path(), "1.2.3.103", RLE);
    let objects = [a.clone(), c.clone(), b.clone()];
    // explicit LE, its implicit fallback, RLE
    assert_eq!(contexts_for(&objects).len(), 3);
    let mut scu = Scu::connect(&peer, &contexts_for(&objects)).await.unwrap();
    assert_eq!(scu.store(&a).await.unwrap(), Status::Success);
    let refused = scu.store(&c).await.unwrap_err();
    assert!(matches!(refused, ScuError::NoContext { .. }), "{refused}");
    assert!(!refused.is_transient());
    // a spool file that cannot be read is this object's problem, not the
    // peer's: permanent, and nothing was sent
    let missing = Outgoing {
        path: dir.path().join("gone.dcm"),
        ..a.clone()
    };
    let e = scu.store(&missing).await.unwrap_err();
    assert!(
        matches!(e, ScuError::File { .. }) && !e.is_transient(),
        "{e}"
    );
    // the association is still usable after a refused context
    assert_eq!(scu.store(&b).await.unwrap(), Status::Success);
    scu.release().await;

    // What storescp wrote holds exactly our data set bytes.
    let received = received_datasets(&out);
    let mut sent = vec![body_a, body_b];
    sent.sort();
    assert_eq!(received, sent);

    // A closed port is a transient, clearly worded failure.
    let closed = Peer {
        port: free_port(),
        ..peer
    };
    let e = echo(&closed).await.unwrap_err();
    assert!(matches!(e, ScuError::Refused { .. }), "{e}");
    assert!(e.is_transient());
}
