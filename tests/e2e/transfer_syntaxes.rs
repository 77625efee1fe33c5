//! Acceptance: objects in every common transfer syntax (uncompressed
//! implicit/explicit/big endian, deflated, JPEG baseline and lossless,
//! JPEG-LS, JPEG 2000, RLE) are accepted as proposed and kept byte-exact,
//! with the negotiated transfer syntax in the spool file's meta group.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// A DCMTK association profile proposing CT Image Storage in exactly one
/// transfer syntax, so storescu can neither transcode nor pick another.
pub(crate) fn profile(dir: &Path, name: &str, ts: &str) -> PathBuf {
    let p = dir.join(format!("{name}.cfg"));
    std::fs::write(
        &p,
        format!(
            "[[TransferSyntaxes]]\n[TS]\nTransferSyntax1 = {ts}\n\n\
             [[PresentationContexts]]\n[PCS]\nPresentationContext1 = 1.2.840.10008.5.1.4.1.1.2\\TS\n\n\
             [[Profiles]]\n[ONE]\nPresentationContexts = PCS\n"
        ),
    )
    .expect("writing the storescu profile");
    p
}

fn dcmtk(tool_name: &str, args: &[&str], input: &Path, output: &Path) {
    run_ok(
        Command::new(tool(tool_name))
            .args(args)
            .arg(input)
            .arg(output),
        Duration::from_secs(120),
    );
}

/// Wrap a real JPEG 2000 code stream (OpenJPEG's opj_compress on the
/// synthetic pixels) as encapsulated Pixel Data: the source's other
/// elements unchanged, Explicit VR Little Endian, TS .90 or .91.
pub(crate) fn make_j2k(src: &Path, out: &Path, ts: &str, lossy: bool) {
    let bytes = std::fs::read(src).expect("reading the source");
    let ds = dataset_bytes(&bytes);
    // The synthetic file ends with (7FE0,0010) OW <len> <pixels>.
    let n = ds.len();
    let pixel_len = 512 * 512 * 2;
    let header_at = n - pixel_len - 12;
    assert_eq!(
        &ds[header_at..header_at + 8],
        &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0],
        "expected 16-bit native pixel data at the end of {}",
        src.display()
    );
    // 16-bit big-endian PGM with maxval 4095 (12 bits stored).
    let mut pgm = b"P5\n512 512\n4095\n".to_vec();
    for px in ds[header_at + 12..].chunks(2) {
        pgm.push(px[1]);
        pgm.push(px[0]);
    }
    let pgm_path = out.with_extension("pgm");
    let j2k_path = out.with_extension("j2k");
    std::fs::write(&pgm_path, pgm).expect("writing the PGM");
    let mut cmd = Command::new(tool("opj_compress"));
    cmd.arg("-i").arg(&pgm_path).arg("-o").arg(&j2k_path);
    if lossy {
        cmd.args(["-r", "10"]);
    }
    run_ok(&mut cmd, Duration::from_secs(120));
    let mut cs = std::fs::read(&j2k_path).expect("reading the J2K code stream");
    assert_eq!(
        &cs[..4],
        &[0xFF, 0x4F, 0xFF, 0x51],
        "not a J2K code stream (SOC, SIZ)"
    );
    if cs.len() % 2 == 1 {
        cs.push(0);
    }
    let mut dataset = ds[..header_at].to_vec();
    dataset.extend_from_slice(&[
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    // empty Basic Offset Table, one fragment, sequence delimiter
    dataset.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    dataset.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    dataset.extend_from_slice(&(cs.len() as u32).to_le_bytes());
    dataset.extend_from_slice(&cs);
    dataset.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    let meta = read_meta(&bytes);
    let table = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax(ts)
        .media_storage_sop_class_uid(meta.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(meta.sop_instance_uid.as_str())
        .build()
        .expect("building the meta group");
    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    table.write(&mut file).expect("writing the meta group");
    file.extend_from_slice(&dataset);
    std::fs::write(out, file).expect("writing the J2K file");
}

#[test]
fn every_transfer_syntax_is_kept_byte_exact() {
    let dir = tempdir();
    let src16 = synth(
        &dir.path().join("src16"),
        &["--instances-per-series", "12", "--seed", "2"],
    );
    let src8 = synth(
        &dir.path().join("src8"),
        &[
            "--instances-per-series",
            "1",
            "--seed",
            "3",
            "--bits-allocated",
            "8",
        ],
    );
    let v = dir.path().join("variants");
    std::fs::create_dir_all(&v).expect("mkdir");
    let out = |name: &str| v.join(format!("{name}.dcm"));

    // (name, transfer syntax, file)
    let mut variants: Vec<(&str, &str, PathBuf)> = Vec::new();
    std::fs::copy(&src16[0], out("explicit-le")).expect("copy");
    variants.push(("explicit-le", "1.2.840.10008.1.2.1", out("explicit-le")));
    dcmtk("dcmconv", &["+ti"], &src16[1], &out("implicit-le"));
    variants.push(("implicit-le", "1.2.840.10008.1.2", out("implicit-le")));
    dcmtk("dcmconv", &["+tb"], &src16[2], &out("explicit-be"));
    variants.push(("explicit-be", "1.2.840.10008.1.2.2", out("explicit-be")));
    dcmtk("dcmconv", &["+td"], &src16[3], &out("deflated"));
    variants.push(("deflated", "1.2.840.10008.1.2.1.99", out("deflated")));
    dcmtk("dcmcjpeg", &["+eb"], &src8[0], &out("jpeg-baseline"));
    variants.push((
        "jpeg-baseline",
        "1.2.840.10008.1.2.4.50",
        out("jpeg-baseline"),
    ));
    dcmtk("dcmcjpeg", &["+el"], &src16[4], &out("jpeg-lossless-p14"));
    variants.push((
        "jpeg-lossless-p14",
        "1.2.840.10008.1.2.4.57",
        out("jpeg-lossless-p14"),
    ));
    dcmtk("dcmcjpeg", &["+e1"], &src16[5], &out("jpeg-lossless-sv1"));
    variants.push((
        "jpeg-lossless-sv1",
        "1.2.840.10008.1.2.4.70",
        out("jpeg-lossless-sv1"),
    ));
    dcmtk("dcmcjpls", &["+el"], &src16[6], &out("jpeg-ls-lossless"));
    variants.push((
        "jpeg-ls-lossless",
        "1.2.840.10008.1.2.4.80",
        out("jpeg-ls-lossless"),
    ));
    dcmtk(
        "dcmcjpls",
        &["+en"],
        &src16[7],
        &out("jpeg-ls-near-lossless"),
    );
    variants.push((
        "jpeg-ls-near-lossless",
        "1.2.840.10008.1.2.4.81",
        out("jpeg-ls-near-lossless"),
    ));
    make_j2k(
        &src16[8],
        &out("jpeg2000-lossless"),
        "1.2.840.10008.1.2.4.90",
        false,
    );
    variants.push((
        "jpeg2000-lossless",
        "1.2.840.10008.1.2.4.90",
        out("jpeg2000-lossless"),
    ));
    make_j2k(&src16[9], &out("jpeg2000"), "1.2.840.10008.1.2.4.91", true);
    variants.push(("jpeg2000", "1.2.840.10008.1.2.4.91", out("jpeg2000")));
    dcmtk("dcmcrle", &[], &src16[10], &out("rle"));
    variants.push(("rle", "1.2.840.10008.1.2.5", out("rle")));

    // The tools did what we asked.
    for (name, ts, path) in &variants {
        let (meta, _) = raw_info(path);
        assert_eq!(
            &meta.transfer_syntax, ts,
            "variant {name} was written in another TS"
        );
    }

    let data = dir.path().join("data");
    let cfg = AgentConfig::new(&data);
    let agent = Agent::start(&cfg);
    for (name, ts, path) in &variants {
        let prof = profile(&v, name, ts);
        let prof_s = prof.display().to_string();
        let r = storescu(
            cfg.port,
            SENDER_AE,
            &["-xf", &prof_s, "ONE"],
            std::slice::from_ref(path),
        );
        assert_eq!(
            r.successes(),
            vec![path.clone()],
            "variant {name} ({ts}) was not stored\n{}{}",
            r.log(),
            agent.log_tail()
        );
        for line in r.output.stderr.lines() {
            if let Some(conv) = line.split("Converting transfer syntax: ").nth(1) {
                let (from, to) = conv.split_once(" -> ").unwrap_or((conv, ""));
                assert_eq!(from, to, "storescu transcoded variant {name}: {line}");
            }
        }
    }
    let config_path = agent.config_path.clone();
    agent.stop();

    let rows = index_dump(&config_path);
    assert_eq!(rows.len(), variants.len(), "one index row per variant");
    let by_uid = rows_by_uid(&rows);
    for (name, ts, path) in &variants {
        let (meta, ds) = raw_info(path);
        let row = by_uid
            .get(&meta.sop_instance_uid)
            .unwrap_or_else(|| panic!("variant {name} is not in the index"));
        assert_eq!(&row.transfer_syntax_uid, ts, "index TS of variant {name}");
        assert_eq!(row.blake3, blake3_hex(&ds), "blake3 of variant {name}");
        assert_eq!(row.calling_ae, SENDER_AE);
        check_spool_file(&cfg, row, Some(&ds));
    }
    assert_no_tmp(&cfg, "after a clean stop");
}
