//! Acceptance (large object): a 1 GiB multi-frame instance is received with
//! the agent's peak RSS under 150 MiB, and stored byte-exact. Takes about a
//! minute; it runs with the rest of the suite.

use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;

use crate::harness::*;

const FRAMES: usize = 2048; // × 512×512×2 bytes = 1 GiB
const FRAME_BYTES: usize = 512 * 512 * 2;
const MULTIFRAME_WORD_SC: &str = "1.2.840.10008.5.1.4.1.1.7.3";

/// Write the 1 GiB file; returns the blake3 and length of its data set.
pub(crate) fn write_large(src: &Path, out: &Path) -> (String, u64) {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(src)
        .expect("parsing the synthetic file");
    let mut obj = obj.into_inner();
    obj.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(MULTIFRAME_WORD_SC),
    ));
    obj.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from(FRAMES.to_string()),
    ));
    obj.remove_element(tags::PIXEL_DATA);
    let file = obj
        .with_meta(dicom_object::FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .expect("meta");
    let mut head = Vec::new();
    file.write_all(&mut head).expect("encoding the header");
    // The first frame's pixels, from the synthetic file.
    let bytes = std::fs::read(src).expect("read");
    let pixels = &bytes[bytes.len() - FRAME_BYTES..];

    let mut hasher = blake3::Hasher::new();
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out).expect("create"));
    w.write_all(&head).expect("write");
    let ds_head = &head[dataset_offset(&head)..];
    hasher.update(ds_head);
    let mut el = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0];
    el.extend_from_slice(&((FRAMES * FRAME_BYTES) as u32).to_le_bytes());
    w.write_all(&el).expect("write");
    hasher.update(&el);
    let mut frame = pixels.to_vec();
    for k in 0..FRAMES {
        // Each frame differs: add k to every 12-bit sample.
        for (o, i) in frame.chunks_mut(2).zip(pixels.chunks(2)) {
            let v = (u16::from_le_bytes([i[0], i[1]]).wrapping_add(k as u16)) & 0x0FFF;
            o.copy_from_slice(&v.to_le_bytes());
        }
        w.write_all(&frame).expect("write");
        hasher.update(&frame);
    }
    w.flush().expect("flush");
    let len = (ds_head.len() + el.len() + FRAMES * FRAME_BYTES) as u64;
    (hasher.finalize().to_hex().to_string(), len)
}

/// blake3 of a file's data set, streamed.
pub(crate) fn dataset_hash_streamed(path: &Path) -> (String, u64) {
    let mut f = std::fs::File::open(path).expect("open");
    let mut head = vec![0u8; 144];
    f.read_exact(&mut head).expect("read head");
    let off = dataset_offset(&head);
    let mut rest = vec![0u8; off - 144];
    f.read_exact(&mut rest).expect("read meta");
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).expect("read");
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    (h.finalize().to_hex().to_string(), n)
}

#[test]
fn one_gib_instance_with_flat_memory() {
    let dir = tempdir();
    let src = synth(
        &dir.path().join("src"),
        &["--instances-per-series", "1", "--seed", "9"],
    );
    let big = dir.path().join("big.dcm");
    let t = Instant::now();
    let (hash, len) = write_large(&src[0], &big);
    eprintln!("wrote {len} bytes of data set in {:?}", t.elapsed());
    let meta = read_meta(&{
        let mut b = vec![0u8; 4096];
        let mut f = std::fs::File::open(&big).expect("open");
        f.read_exact(&mut b).expect("read");
        b
    });

    let cfg = AgentConfig::new(&dir.path().join("data"));
    let agent = Agent::start(&cfg);
    let t = Instant::now();
    let r = storescu(cfg.port, SENDER_AE, &[], std::slice::from_ref(&big));
    assert_eq!(
        r.successes(),
        vec![big.clone()],
        "the 1 GiB store did not succeed\n{}{}",
        r.log(),
        agent.log_tail()
    );
    eprintln!("sent 1 GiB in {:?}", t.elapsed());
    let hwm = agent.vm_hwm_kib();
    eprintln!("agent peak RSS (VmHWM): {} KiB", hwm);
    let config_path = agent.config_path.clone();
    agent.stop();
    assert!(
        hwm < 150 * 1024,
        "agent peak RSS {hwm} KiB ≥ 150 MiB for a 1 GiB object"
    );

    let rows = index_dump(&config_path);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.sop_instance_uid, meta.sop_instance_uid);
    assert_eq!(row.sop_class_uid, MULTIFRAME_WORD_SC);
    assert_eq!(row.blake3, hash, "blake3 of the stored 1 GiB data set");
    assert_eq!(row.dataset_bytes, len);
    let (stored_hash, stored_len) = dataset_hash_streamed(&row.path);
    assert_eq!(stored_len, len, "data set length of the spool file");
    assert_eq!(stored_hash, hash, "blake3 of the spool file's data set");
    assert_no_tmp(&cfg, "after a clean stop");
}
