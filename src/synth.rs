//! Synthetic test data: deterministic CT studies with no patient data.
//!
//! `pacs-mirror synth --out DIR` writes Part-10 files (Explicit VR Little
//! Endian) of CT Image Storage instances, laid out as
//! `DIR/ST<nnnn>/SE<nnnn>/IM<nnnnn>.dcm`. The pixels are a smooth phantom
//! (body, lungs, spine, vessels, a lesion whose size changes along the
//! stack) plus seeded noise, so lossless compressors have something to
//! compress and lossy JPEG works on the 8-bit variant. The same arguments
//! always give byte-identical files; UIDs live under a `2.25.<decimal>` root
//! derived from the seed and the patient ID prefix.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use dicom_core::value::C;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Arguments of `pacs-mirror synth`.
#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output directory (created if missing); files go to
    /// OUT/ST<nnnn>/SE<nnnn>/IM<nnnnn>.dcm.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of studies (one synthetic patient each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9999))]
    pub studies: u32,
    /// Series per study.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9999))]
    pub series_per_study: u32,
    /// Instances (slices) per series.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=99999))]
    pub instances_per_series: u32,
    /// Rows of each image.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..))]
    pub rows: u16,
    /// Columns of each image.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..))]
    pub columns: u16,
    /// Bits allocated: 16 (12 bits stored) or 8 (8 bits stored).
    #[arg(long, default_value_t = 16, value_parser = parse_bits_allocated)]
    pub bits_allocated: u16,
    /// Seed: the same seed gives the same UIDs and the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Patient ID prefix; study k belongs to patient <PREFIX><kkkk>.
    #[arg(long = "patient-id", default_value = "SYNTH")]
    pub patient_id: String,
}

fn parse_bits_allocated(s: &str) -> Result<u16, String> {
    match s {
        "8" => Ok(8),
        "16" => Ok(16),
        _ => Err(format!("{s:?}: bits allocated must be 8 or 16")),
    }
}

/// Write the files and print one summary line.
pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let (files, bytes) = generate(args)?;
    println!(
        "wrote {files} files ({bytes} bytes) to {}",
        args.out.display()
    );
    Ok(())
}

/// Write the files; returns (file count, total bytes).
pub fn generate(args: &SynthArgs) -> anyhow::Result<(u64, u64)> {
    validate(args)?;
    let generator = Generator::new(args);
    let mut files = 0u64;
    let mut bytes = 0u64;
    for study in 0..args.studies {
        for series in 0..args.series_per_study {
            let dir = args
                .out
                .join(format!("ST{:04}", study + 1))
                .join(format!("SE{:04}", series + 1));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for instance in 0..args.instances_per_series {
                let path = dir.join(format!("IM{:05}.dcm", instance + 1));
                generator.write_instance(study, series, instance, &path)?;
                bytes += std::fs::metadata(&path)
                    .with_context(|| format!("reading back {}", path.display()))?
                    .len();
                files += 1;
            }
        }
    }
    Ok((files, bytes))
}

fn validate(args: &SynthArgs) -> anyhow::Result<()> {
    let p = &args.patient_id;
    if p.is_empty() || p.len() > 56 {
        bail!("--patient-id must be 1 to 56 characters (4 digits are appended)");
    }
    if !p
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '\\' && c != '^' && c != '=')
    {
        bail!("--patient-id {p:?}: use printable ASCII without spaces, '\\', '^' or '='");
    }
    if args.bits_allocated != 8 && args.bits_allocated != 16 {
        bail!("--bits-allocated must be 8 or 16");
    }
    if args.rows == 0 || args.columns == 0 {
        bail!("--rows and --columns must be at least 1");
    }
    Ok(())
}

/// A 64-bit value derived from the seed, the prefix and a label.
fn derive(seed: u64, prefix: &str, label: &str, indices: &[u32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"pacs-mirror synth v1\0");
    h.update(&seed.to_le_bytes());
    h.update(prefix.as_bytes());
    h.update(b"\0");
    h.update(label.as_bytes());
    h.update(b"\0");
    for i in indices {
        h.update(&i.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

fn derive_u64(seed: u64, prefix: &str, label: &str, indices: &[u32]) -> u64 {
    let b = derive(seed, prefix, label, indices);
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

struct Generator<'a> {
    args: &'a SynthArgs,
    /// `2.25.<decimal>`: at most 5 + 31 characters.
    root: String,
    study_date: String,
    study_time_s: u32,
}

impl<'a> Generator<'a> {
    fn new(args: &'a SynthArgs) -> Self {
        let b = derive(args.seed, &args.patient_id, "root", &[]);
        let mut v = [0u8; 16];
        v.copy_from_slice(&b[..16]);
        // 100 bits, top bit set: 31 decimal digits, never a leading zero.
        let n = (u128::from_le_bytes(v) & ((1u128 << 100) - 1)) | (1u128 << 99);
        let root = format!("2.25.{n}");
        let d = derive_u64(args.seed, &args.patient_id, "date", &[]);
        let study_date = format!(
            "{:04}{:02}{:02}",
            2020 + d % 6,
            1 + (d >> 8) % 12,
            1 + (d >> 16) % 28
        );
        let study_time_s = (7 * 3600 + (d >> 24) % (12 * 3600)) as u32;
        Generator {
            args,
            root,
            study_date,
            study_time_s,
        }
    }

    fn study_uid(&self, study: u32) -> String {
        format!("{}.1.{}", self.root, study + 1)
    }
    fn series_uid(&self, study: u32, series: u32) -> String {
        format!("{}.2.{}.{}", self.root, study + 1, series + 1)
    }
    fn frame_of_reference_uid(&self, study: u32, series: u32) -> String {
        format!("{}.4.{}.{}", self.root, study + 1, series + 1)
    }
    fn sop_uid(&self, study: u32, series: u32, instance: u32) -> String {
        format!(
            "{}.3.{}.{}.{}",
            self.root,
            study + 1,
            series + 1,
            instance + 1
        )
    }

    fn write_instance(
        &self,
        study: u32,
        series: u32,
        instance: u32,
        path: &Path,
    ) -> anyhow::Result<()> {
        let a = self.args;
        let rows = a.rows;
        let cols = a.columns;
        let n = a.instances_per_series.max(1);
        // Geometry: 500 mm field of view, 2.5 mm slices going feet-wards.
        let spacing = 500.0 / f64::from(cols.max(rows));
        let thickness = 2.5;
        let z = -(f64::from(instance) * thickness);
        let x0 = -(f64::from(cols) * spacing) / 2.0;
        let y0 = -(f64::from(rows) * spacing) / 2.0;

        let series_time = self.study_time_s + 60 * series;
        let time = |s: u32| {
            let s = s % 86_400;
            format!("{:02}{:02}{:02}", s / 3600, (s / 60) % 60, s % 60)
        };
        let (bits_stored, slope, intercept) = if a.bits_allocated == 8 {
            (8u16, "16", "-1024")
        } else {
            (12u16, "1", "-1024")
        };
        let patient_id = format!("{}{:04}", a.patient_id, study + 1);
        let patient_name = format!("{}^P{:04}", a.patient_id, study + 1);
        let hu = self.phantom(study, series, instance, n);
        let pixel_value: PrimitiveValue = if a.bits_allocated == 8 {
            let v: Vec<u8> = hu
                .iter()
                .map(|&h| ((h + 1024.0) / 16.0).round().clamp(0.0, 255.0) as u8)
                .collect();
            PrimitiveValue::U8(C::from_vec(v))
        } else {
            let v: Vec<u16> = hu
                .iter()
                .map(|&h| (h + 1024.0).round().clamp(0.0, 4095.0) as u16)
                .collect();
            PrimitiveValue::U16(C::from_vec(v))
        };
        let pixel_vr = if a.bits_allocated == 8 {
            VR::OB
        } else {
            VR::OW
        };

        let ds = |v: f64| format_ds(v);
        let elements: Vec<DataElement<InMemDicomObject>> = vec![
            el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
            el(
                tags::IMAGE_TYPE,
                VR::CS,
                strs(&["ORIGINAL", "PRIMARY", "AXIAL"]),
            ),
            el(
                tags::INSTANCE_CREATION_DATE,
                VR::DA,
                self.study_date.as_str(),
            ),
            el(tags::INSTANCE_CREATION_TIME, VR::TM, time(series_time)),
            el(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
            el(
                tags::SOP_INSTANCE_UID,
                VR::UI,
                self.sop_uid(study, series, instance),
            ),
            el(tags::STUDY_DATE, VR::DA, self.study_date.as_str()),
            el(tags::SERIES_DATE, VR::DA, self.study_date.as_str()),
            el(tags::ACQUISITION_DATE, VR::DA, self.study_date.as_str()),
            el(tags::CONTENT_DATE, VR::DA, self.study_date.as_str()),
            el(tags::STUDY_TIME, VR::TM, time(self.study_time_s)),
            el(tags::SERIES_TIME, VR::TM, time(series_time)),
            el(tags::ACQUISITION_TIME, VR::TM, time(series_time)),
            el(tags::CONTENT_TIME, VR::TM, time(series_time)),
            el(
                tags::ACCESSION_NUMBER,
                VR::SH,
                format!(
                    "A{:08}",
                    derive_u64(a.seed, &a.patient_id, "acc", &[study]) % 100_000_000
                ),
            ),
            el(tags::MODALITY, VR::CS, "CT"),
            el(tags::MANUFACTURER, VR::LO, "pacs-mirror synth"),
            el(tags::INSTITUTION_NAME, VR::LO, "SYNTHETIC"),
            el(
                tags::REFERRING_PHYSICIAN_NAME,
                VR::PN,
                PrimitiveValue::Empty,
            ),
            el(tags::STATION_NAME, VR::SH, "SYNTH"),
            el(tags::STUDY_DESCRIPTION, VR::LO, "SYNTHETIC CT PHANTOM"),
            el(
                tags::SERIES_DESCRIPTION,
                VR::LO,
                format!("AXIAL {} (SYNTHETIC)", series + 1),
            ),
            el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "PHANTOM"),
            el(tags::PATIENT_NAME, VR::PN, patient_name),
            el(tags::PATIENT_ID, VR::LO, patient_id),
            el(tags::PATIENT_BIRTH_DATE, VR::DA, PrimitiveValue::Empty),
            el(tags::PATIENT_SEX, VR::CS, "O"),
            el(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"),
            el(tags::SLICE_THICKNESS, VR::DS, ds(thickness)),
            el(tags::KVP, VR::DS, "120"),
            el(tags::PATIENT_POSITION, VR::CS, "HFS"),
            el(tags::STUDY_INSTANCE_UID, VR::UI, self.study_uid(study)),
            el(
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                self.series_uid(study, series),
            ),
            el(tags::STUDY_ID, VR::SH, format!("{}", study + 1)),
            el(tags::SERIES_NUMBER, VR::IS, format!("{}", series + 1)),
            el(tags::ACQUISITION_NUMBER, VR::IS, "1"),
            el(tags::INSTANCE_NUMBER, VR::IS, format!("{}", instance + 1)),
            el(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                strs(&[&ds(x0), &ds(y0), &ds(z)]),
            ),
            el(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                strs(&["1", "0", "0", "0", "1", "0"]),
            ),
            el(
                tags::FRAME_OF_REFERENCE_UID,
                VR::UI,
                self.frame_of_reference_uid(study, series),
            ),
            el(
                tags::POSITION_REFERENCE_INDICATOR,
                VR::LO,
                PrimitiveValue::Empty,
            ),
            el(tags::SLICE_LOCATION, VR::DS, ds(z)),
            el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
            el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            el(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
            el(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)),
            el(
                tags::PIXEL_SPACING,
                VR::DS,
                strs(&[&ds(spacing), &ds(spacing)]),
            ),
            el(
                tags::BITS_ALLOCATED,
                VR::US,
                PrimitiveValue::from(a.bits_allocated),
            ),
            el(tags::BITS_STORED, VR::US, PrimitiveValue::from(bits_stored)),
            el(
                tags::HIGH_BIT,
                VR::US,
                PrimitiveValue::from(bits_stored - 1),
            ),
            el(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ),
            el(tags::WINDOW_CENTER, VR::DS, "40"),
            el(tags::WINDOW_WIDTH, VR::DS, "400"),
            el(tags::RESCALE_INTERCEPT, VR::DS, intercept),
            el(tags::RESCALE_SLOPE, VR::DS, slope),
            el(tags::RESCALE_TYPE, VR::LO, "HU"),
            el(tags::PIXEL_DATA, pixel_vr, pixel_value),
        ];
        let obj = InMemDicomObject::from_element_iter(elements);
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                    .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE),
            )
            .context("building the file meta group")?;
        file.write_to_file(path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Hounsfield units, row-major, for one slice.
    fn phantom(&self, study: u32, series: u32, instance: u32, n: u32) -> Vec<f64> {
        let a = self.args;
        let rows = usize::from(a.rows);
        let cols = usize::from(a.columns);
        let mut rng = StdRng::seed_from_u64(derive_u64(
            a.seed,
            &a.patient_id,
            "noise",
            &[study, series, instance],
        ));
        // Per-study variation of the anatomy, fixed along the stack.
        let v = derive_u64(a.seed, &a.patient_id, "anatomy", &[study]);
        let jitter = |k: u32| ((v >> (k * 8)) & 0xff) as f64 / 255.0 - 0.5; // -0.5..0.5
        let t = if n > 1 {
            f64::from(instance) / f64::from(n - 1)
        } else {
            0.5
        };
        let body_a = 0.43 + 0.03 * jitter(0);
        let body_b = 0.33 + 0.03 * jitter(1);
        let lung_r = 0.11 + 0.05 * (std::f64::consts::PI * t).sin() + 0.01 * jitter(2);
        let lesion_r = 0.06 * (1.0 - ((t - 0.5 + 0.2 * jitter(3)) * 4.0).powi(2)).max(0.0);
        let lesion = (0.58 + 0.05 * jitter(4), 0.45 + 0.05 * jitter(5));
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            // Normalised coordinates in [-0.5, 0.5], square pixels.
            let y = (r as f64 + 0.5) / rows as f64 - 0.5;
            for c in 0..cols {
                let x = (c as f64 + 0.5) / cols as f64 - 0.5;
                let e = (x / body_a).powi(2) + (y / body_b).powi(2);
                let mut h = if e > 1.0 {
                    -1000.0
                } else if e > 0.80 {
                    -100.0 // subcutaneous fat
                } else {
                    // soft tissue with a gentle gradient
                    35.0 + 25.0 * x - 15.0 * y
                };
                if e <= 0.80 {
                    let d = |cx: f64, cy: f64| ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
                    // lungs
                    let dl = d(-0.17, -0.03).min(d(0.17, -0.03));
                    if dl < lung_r {
                        h = -850.0 + 60.0 * (dl / lung_r);
                    }
                    // spine (cortical rim and cancellous core)
                    let ds = d(0.0, 0.2);
                    if ds < 0.05 {
                        h = if ds > 0.035 { 900.0 } else { 250.0 };
                    }
                    // aorta with contrast, heart
                    if d(0.04, 0.12) < 0.03 {
                        h = 220.0;
                    }
                    if d(0.05, -0.1) < 0.09 && dl >= lung_r {
                        h = 45.0;
                    }
                    // a lesion that appears and disappears along the stack
                    if d(lesion.0 - 0.5, lesion.1 - 0.5) < lesion_r {
                        h = 80.0;
                    }
                }
                // noise: about 8 HU (sum of three uniforms)
                let noise: f64 = (0..3).map(|_| rng.random_range(-8.0..8.0)).sum::<f64>() / 1.7;
                out.push(h + noise);
            }
        }
        out
    }
}

fn el<V: Into<PrimitiveValue>>(tag: Tag, vr: VR, value: V) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value.into())
}

fn strs(values: &[&str]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|s| s.to_string()).collect())
}

/// A Decimal String of at most 16 characters.
fn format_ds(v: f64) -> String {
    let s = format!("{v:.8}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    let s = if s == "-0" { "0" } else { s };
    s.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: &Path) -> SynthArgs {
        SynthArgs {
            out: out.to_path_buf(),
            studies: 2,
            series_per_study: 2,
            instances_per_series: 3,
            rows: 64,
            columns: 48,
            bits_allocated: 16,
            seed: 7,
            patient_id: "T".into(),
        }
    }

    #[test]
    fn deterministic_and_well_formed() -> anyhow::Result<()> {
        let a = tempfile::tempdir()?;
        let b = tempfile::tempdir()?;
        let (n, bytes) = generate(&args(a.path()))?;
        assert_eq!(n, 12);
        assert!(bytes > 12 * 64 * 48 * 2);
        generate(&args(b.path()))?;
        let rel = Path::new("ST0002/SE0001/IM00003.dcm");
        let fa = std::fs::read(a.path().join(rel))?;
        let fb = std::fs::read(b.path().join(rel))?;
        assert_eq!(fa, fb);
        let obj = dicom_object::open_file(a.path().join(rel))?;
        assert_eq!(
            obj.meta().transfer_syntax().trim_end_matches('\0'),
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        );
        let uid = obj.element(tags::SOP_INSTANCE_UID)?.to_str()?.to_string();
        assert!(uid.starts_with("2.25."));
        assert!(uid.len() <= 64);
        assert!(uid.ends_with(".3.2.1.3"));
        assert_eq!(obj.element(tags::PATIENT_ID)?.to_str()?, "T0002");
        let px = obj.element(tags::PIXEL_DATA)?.to_bytes()?;
        assert_eq!(px.len(), 64 * 48 * 2);
        Ok(())
    }

    #[test]
    fn seed_changes_uids_and_pixels() -> anyhow::Result<()> {
        let a = tempfile::tempdir()?;
        let b = tempfile::tempdir()?;
        generate(&args(a.path()))?;
        let mut other = args(b.path());
        other.seed = 8;
        generate(&other)?;
        let rel = Path::new("ST0001/SE0001/IM00001.dcm");
        let oa = dicom_object::open_file(a.path().join(rel))?;
        let ob = dicom_object::open_file(b.path().join(rel))?;
        assert_ne!(
            oa.element(tags::SOP_INSTANCE_UID)?.to_str()?,
            ob.element(tags::SOP_INSTANCE_UID)?.to_str()?
        );
        assert_ne!(
            oa.element(tags::PIXEL_DATA)?.to_bytes()?,
            ob.element(tags::PIXEL_DATA)?.to_bytes()?
        );
        Ok(())
    }

    #[test]
    fn eight_bit_variant() -> anyhow::Result<()> {
        let a = tempfile::tempdir()?;
        let mut args = args(a.path());
        args.bits_allocated = 8;
        args.studies = 1;
        args.series_per_study = 1;
        args.instances_per_series = 1;
        generate(&args)?;
        let obj = dicom_object::open_file(a.path().join("ST0001/SE0001/IM00001.dcm"))?;
        assert_eq!(obj.element(tags::BITS_STORED)?.to_int::<u16>()?, 8);
        assert_eq!(obj.element(tags::PIXEL_DATA)?.to_bytes()?.len(), 64 * 48);
        Ok(())
    }

    #[test]
    fn ds_formatting() {
        assert_eq!(format_ds(2.5), "2.5");
        assert_eq!(format_ds(-0.0), "0");
        assert_eq!(format_ds(0.9765625), "0.9765625");
        assert_eq!(format_ds(1.0 / 3.0), "0.33333333");
        assert_eq!(format_ds(-250.0), "-250");
    }
}
