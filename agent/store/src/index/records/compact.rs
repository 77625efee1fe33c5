//! The compact binary body of version-2 records (see the parent module's
//! header for where it is used and the migration rule).
//!
//! # Layout
//! ```text
//! 0x02  kind:u8  fields of that kind, in order, nothing after them
//! ```
//! Field encodings:
//! - integers: unsigned LEB128 (7 bits a byte, low first, at most 10
//!   bytes); a second timestamp of the same row is the zigzag LEB128 of
//!   its difference from the first;
//! - text: LEB128 `h`, then `h >> 1` bytes: UTF-8 when `h` is even; when
//!   odd, `h >> 1` characters of `0-9` and `.` (a UID, a date, an IPv4
//!   address) packed two a byte (`0`–`9` as 0–9, `.` as 10, high nibble
//!   first, an odd count padded with 0);
//! - a hex digest (blake3): LEB128 `h`, then when `h` is odd `h >> 1` raw
//!   bytes (lowercase hex of them is the text), when even `h >> 1` bytes of
//!   UTF-8 (any other text, kept as it was);
//! - `Option`: 0 (none) or 1 then the value;
//! - a list: its LEB128 count, then its elements.
//!
//! Every value decodes back to exactly the value encoded (the text forms
//! are chosen by what the text is, never by guessing on decode).
//!
//! # Invariants
//! - A kind's layout never changes once written by a release: a changed
//!   record gets a new kind number, and the reader of the old one stays
//!   (with its test).
//! - Decoding never allocates by a length it read: every length is checked
//!   against the bytes left first. Bytes left after the last field, an
//!   integer over 64 bits, text that is not UTF-8 and an unknown kind are
//!   errors, never guesses.

use std::any::Any;

use super::{
    Finding, FindingClass, InstanceRecord, ObjectRecord, OutboxRecord, RECORD_V2, RecordError,
};
use crate::index::outbox::DeliveryRecord;

/// A record with a compact body.
pub(super) trait Compact: Sized + Any {
    /// Its kind number (the byte after the version marker).
    const KIND: u8;
    /// Write its fields.
    fn put(&self, w: &mut Writer);
    /// Read its fields.
    fn get(r: &mut Reader<'_>) -> Result<Self, RecordError>;
}

/// `record` in the compact encoding, marker included, when its type has
/// one.
pub(super) fn encode_any(record: &dyn Any) -> Option<Vec<u8>> {
    fn as_<C: Compact>(record: &dyn Any) -> Option<Vec<u8>> {
        record.downcast_ref::<C>().map(|r| {
            let mut w = Writer(vec![RECORD_V2, C::KIND]);
            r.put(&mut w);
            w.0
        })
    }
    as_::<InstanceRecord>(record)
        .or_else(|| as_::<ObjectRecord>(record))
        .or_else(|| as_::<OutboxRecord>(record))
        .or_else(|| as_::<DeliveryRecord>(record))
}

/// Decode a compact body (after the version marker) as a `T`: the kind
/// byte says what it is; a `T` of another kind is an error.
pub(super) fn decode_any<T: Any>(body: &[u8]) -> Result<T, RecordError> {
    fn read<C: Compact>(body: &[u8]) -> Result<Box<dyn Any>, RecordError> {
        let mut r = Reader(body);
        let c = C::get(&mut r)?;
        if !r.0.is_empty() {
            return Err(RecordError::Body(format!(
                "{} bytes after the last field",
                r.0.len()
            )));
        }
        Ok(Box::new(c))
    }
    let (&kind, body) = body.split_first().ok_or(RecordError::Body(
        "a compact record without its kind".into(),
    ))?;
    let record = match kind {
        InstanceRecord::KIND => read::<InstanceRecord>(body)?,
        ObjectRecord::KIND => read::<ObjectRecord>(body)?,
        OutboxRecord::KIND => read::<OutboxRecord>(body)?,
        DeliveryRecord::KIND => read::<DeliveryRecord>(body)?,
        other => return Err(RecordError::UnknownKind(other)),
    };
    record.downcast::<T>().map(|b| *b).map_err(|_| {
        RecordError::Body(format!(
            "a record of kind {kind} read as {}",
            std::any::type_name::<T>()
        ))
    })
}

/// Where a compact body is written.
pub(super) struct Writer(Vec<u8>);

impl Writer {
    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// `v` relative to `base`, zigzagged.
    fn delta(&mut self, base: u64, v: u64) {
        let d = v.wrapping_sub(base) as i64;
        self.uint(((d << 1) ^ (d >> 63)) as u64);
    }

    fn text(&mut self, s: &str) {
        let b = s.as_bytes();
        if !b.is_empty() && b.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
            self.uint(((b.len() as u64) << 1) | 1);
            let nib = |c: u8| if c == b'.' { 10 } else { c - b'0' };
            for pair in b.chunks(2) {
                let hi = nib(pair[0]);
                let lo = pair.get(1).map_or(0, |c| nib(*c));
                self.0.push((hi << 4) | lo);
            }
        } else {
            self.uint((b.len() as u64) << 1);
            self.0.extend_from_slice(b);
        }
    }

    fn hex(&mut self, s: &str) {
        let b = s.as_bytes();
        let lower_hex = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
        if !b.is_empty() && b.len() % 2 == 0 && b.iter().all(lower_hex) {
            self.uint(((b.len() as u64 / 2) << 1) | 1);
            let val = |c: u8| {
                if c.is_ascii_digit() {
                    c - b'0'
                } else {
                    c - b'a' + 10
                }
            };
            for pair in b.chunks(2) {
                self.0.push((val(pair[0]) << 4) | val(pair[1]));
            }
        } else {
            self.uint((b.len() as u64) << 1);
            self.0.extend_from_slice(b);
        }
    }

    fn opt<T>(&mut self, v: &Option<T>, put: impl FnOnce(&mut Self, &T)) {
        match v {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                put(self, v);
            }
        }
    }
}

/// What is left of a compact body being read.
pub(super) struct Reader<'a>(&'a [u8]);

fn short() -> RecordError {
    RecordError::Body("compact record cut short".into())
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, RecordError> {
        let (&b, rest) = self.0.split_first().ok_or_else(short)?;
        self.0 = rest;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], RecordError> {
        let n = usize::try_from(n).map_err(|_| short())?;
        if n > self.0.len() {
            return Err(short());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn uint(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RecordError::Body("an integer over 64 bits".into()))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        u32::try_from(self.uint()?).map_err(|_| RecordError::Body("a count over 32 bits".into()))
    }

    fn delta(&mut self, base: u64) -> Result<u64, RecordError> {
        let z = self.uint()?;
        let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
        Ok(base.wrapping_add(d as u64))
    }

    fn utf8(bytes: &[u8]) -> Result<String, RecordError> {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| RecordError::Body("text that is not UTF-8".into()))
    }

    fn text(&mut self) -> Result<String, RecordError> {
        let h = self.uint()?;
        let len = h >> 1;
        if h & 1 == 0 {
            return Reader::utf8(self.take(len)?);
        }
        let packed = self.take(len.div_ceil(2))?;
        let mut out = String::with_capacity(packed.len() * 2);
        let chr = |n: u8| match n {
            0..=9 => Ok(char::from(b'0' + n)),
            10 => Ok('.'),
            _ => Err(RecordError::Body(format!(
                "packed text with a nibble of {n}"
            ))),
        };
        for (i, b) in packed.iter().enumerate() {
            out.push(chr(b >> 4)?);
            if (2 * i + 1) < len as usize {
                out.push(chr(b & 0xf)?);
            }
        }
        Ok(out)
    }

    fn hex(&mut self) -> Result<String, RecordError> {
        let h = self.uint()?;
        let bytes = self.take(h >> 1)?;
        if h & 1 == 0 {
            return Reader::utf8(bytes);
        }
        Ok(crate::index::hash_hex(bytes))
    }

    fn opt<T>(
        &mut self,
        get: impl FnOnce(&mut Self) -> Result<T, RecordError>,
    ) -> Result<Option<T>, RecordError> {
        match self.byte()? {
            0 => Ok(None),
            1 => get(self).map(Some),
            b => Err(RecordError::Body(format!("an option marked {b}"))),
        }
    }
}

/// The stable number of a finding class in compact records (0: a class
/// this build does not know, read as [`FindingClass::Other`]).
fn class_code(c: FindingClass) -> u8 {
    match c {
        FindingClass::Other => 0,
        FindingClass::MissingAttribute => 1,
        FindingClass::NonconformantUid => 2,
        FindingClass::SopClassMismatch => 3,
        FindingClass::Structure => 4,
        FindingClass::TrailingBytes => 5,
        FindingClass::UndefinedLengthFragment => 6,
        FindingClass::EncapsulatedOnNative => 7,
    }
}

fn class_of(code: u8) -> FindingClass {
    FindingClass::ALL
        .into_iter()
        .find(|c| class_code(*c) == code)
        .unwrap_or(FindingClass::Other)
}

impl Compact for InstanceRecord {
    const KIND: u8 = 1;

    fn put(&self, w: &mut Writer) {
        w.text(&self.sop_instance_uid);
        w.text(&self.sop_class_uid);
        w.text(&self.transfer_syntax_uid);
        w.hex(&self.blake3);
        w.uint(self.dataset_bytes);
        w.uint(self.file_bytes);
        w.text(&self.patient_id);
        w.text(&self.study_instance_uid);
        w.text(&self.series_instance_uid);
        w.text(&self.calling_ae);
        w.text(&self.source_ip);
        w.uint(self.received_at_ms);
        w.text(&self.study_date);
        w.text(&self.modality);
        w.uint(self.findings.len() as u64);
        for f in &self.findings {
            w.0.push(class_code(f.class));
            w.text(&f.detail);
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, RecordError> {
        let mut rec = InstanceRecord {
            sop_instance_uid: r.text()?,
            sop_class_uid: r.text()?,
            transfer_syntax_uid: r.text()?,
            blake3: r.hex()?,
            dataset_bytes: r.uint()?,
            file_bytes: r.uint()?,
            patient_id: r.text()?,
            study_instance_uid: r.text()?,
            series_instance_uid: r.text()?,
            calling_ae: r.text()?,
            source_ip: r.text()?,
            received_at_ms: r.uint()?,
            study_date: r.text()?,
            modality: r.text()?,
            findings: Vec::new(),
        };
        // Not allocated by the count read: each finding is read first.
        for _ in 0..r.uint()? {
            let class = class_of(r.byte()?);
            rec.findings.push(Finding {
                class,
                detail: r.text()?,
            });
        }
        Ok(rec)
    }
}

impl Compact for ObjectRecord {
    const KIND: u8 = 2;

    fn put(&self, w: &mut Writer) {
        w.text(&self.sop_instance_uid);
        w.uint(self.dataset_bytes);
        w.uint(self.file_bytes);
        w.text(&self.sop_class_uid);
        w.text(&self.transfer_syntax_uid);
        w.opt(&self.evicted_at_ms, |w, v| w.uint(*v));
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, RecordError> {
        Ok(ObjectRecord {
            sop_instance_uid: r.text()?,
            dataset_bytes: r.uint()?,
            file_bytes: r.uint()?,
            sop_class_uid: r.text()?,
            transfer_syntax_uid: r.text()?,
            evicted_at_ms: r.opt(Reader::uint)?,
        })
    }
}

impl Compact for OutboxRecord {
    const KIND: u8 = 3;

    fn put(&self, w: &mut Writer) {
        w.uint(self.enqueued_at_ms);
        w.uint(u64::from(self.attempts));
        w.opt(&self.last_error, |w, e| w.text(e));
        w.opt(&self.file_bytes, |w, v| w.uint(*v));
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, RecordError> {
        Ok(OutboxRecord {
            enqueued_at_ms: r.uint()?,
            attempts: r.u32()?,
            last_error: r.opt(Reader::text)?,
            file_bytes: r.opt(Reader::uint)?,
        })
    }
}

impl Compact for DeliveryRecord {
    const KIND: u8 = 4;

    fn put(&self, w: &mut Writer) {
        w.uint(self.delivered_at_ms);
        w.uint(u64::from(self.attempts));
        w.delta(self.delivered_at_ms, self.enqueued_at_ms);
        w.opt(&self.stored_blake3, |w, h| w.hex(h));
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, RecordError> {
        let delivered_at_ms = r.uint()?;
        Ok(DeliveryRecord {
            delivered_at_ms,
            attempts: r.u32()?,
            enqueued_at_ms: r.delta(delivered_at_ms)?,
            stored_blake3: r.opt(Reader::hex)?,
        })
    }
}
