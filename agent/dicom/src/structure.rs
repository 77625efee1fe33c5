//! Streaming structural check of a data set as it arrives.
//!
//! Every element header is read and every defined-length value is skipped
//! unread; only undefined-length sequences, items and encapsulated pixel data
//! are descended into. At the end the stream must stop exactly on an element
//! boundary with every sequence and item closed. So a data set cut short —
//! in a header, in a value, in Pixel Data, in a fragment — or with delimiters
//! in impossible places is refused before it could be acknowledged, without
//! decoding pixels and without buffering more than one element header
//! (deflated data sets are inflated on the fly, 64 KiB at a time).
//!
//! Encodings: Implicit VR LE, Explicit VR LE and BE, and the deflated
//! explicit LE syntaxes. Per PS3.5 §6.2.2 the contents of an undefined-length
//! UN element are Implicit VR Little Endian. Nesting deeper than
//! [`MAX_DEPTH`] is refused (a 39 KB file with 1,100 nested sequences crashes
//! parsers that recurse; this one does not recurse, but nothing legitimate
//! nests that deep).
//!
//! Defined-length sequences and items are descended into too (a sequence by
//! its VR, or in Implicit VR by the data dictionary, as dicom-rs reads it):
//! every element, item and fragment inside must end within its container.
//! So once a data set is accepted, no declared length in it exceeds the
//! bytes present, which is what makes it safe to hand to dicom-object: its
//! parser allocates (and zero-fills) a value's declared length before
//! reading it, 4 GiB for a 12-byte lie. [`Walker::for_dicom_rs`] checks a
//! data set the way dicom-rs will read it, for the callers that parse it
//! with dicom-object next.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use flate2::{Decompress, FlushDecompress, Status as ZStatus};

/// Deepest nesting of sequences and items accepted.
pub const MAX_DEPTH: usize = 64;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_DELIMITER: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// Why a data set is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed data set at byte {offset}: {what}")]
pub struct StructureError {
    /// Offset in the (inflated) data set.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
    /// Which kind of flaw it is.
    pub flaw: Flaw,
}

/// The kind of flaw that stopped a walk: the ingest policy keeps such
/// objects and records the flaw as a finding of its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// The data set ends inside an element header or value, an open
    /// sequence or item, or a deflate stream.
    Truncated,
    /// Bytes follow the end of the deflate stream.
    TrailingBytes,
    /// An undefined-length item inside encapsulated Pixel Data (seen from
    /// an independent Storage SCU; PS3.5 A.4 requires defined lengths).
    UndefinedLengthFragment,
    /// Any other impossible structure: a length that runs past its
    /// container, a misplaced delimiter, nesting too deep, a bad deflate
    /// stream.
    Malformed,
}

/// Largest value kept of a captured element ([`Walker::capturing`]); the
/// declared length is kept too, so a longer value is known to be longer.
pub const CAPTURE_LIMIT: usize = 1026;

/// The value of one captured top-level element: at most [`CAPTURE_LIMIT`]
/// bytes of it, and its declared length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// (group, element).
    pub tag: (u16, u16),
    /// The first bytes of the value, as they are in the data set.
    pub value: Vec<u8>,
    /// The declared length of the value.
    pub length: u32,
}

/// What one walk of a data set saw: its verdict, the captured elements and
/// the deviations it noticed along the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Whether the data set is well formed (the first flaw, if not).
    pub structure: Result<(), StructureError>,
    /// Captured top-level elements that were read whole, in order; an
    /// element cut short by the end of the data set is not among them.
    pub captured: Vec<Captured>,
    /// Top-level Pixel Data with undefined length (encapsulated) under a
    /// native transfer syntax.
    pub encapsulated_on_native: bool,
}

impl Observed {
    /// The last captured value of `tag` (a later element wins, as in a
    /// parse into a map).
    pub fn get(&self, tag: (u16, u16)) -> Option<&Captured> {
        self.captured.iter().rev().find(|c| c.tag == tag)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Sequence: holds items.
    Sequence,
    /// Item: holds elements; an undefined-length one ends with an item
    /// delimiter.
    Item,
    /// Encapsulated pixel data: holds fragments (defined-length items).
    Fragments,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: Kind,
    /// Contents are Implicit VR LE (inside an undefined-length UN).
    implicit: bool,
    /// Offset where a defined-length sequence or item ends (None: it ends
    /// with a delimiter).
    end: Option<u64>,
}

/// The checker; feed it the data set bytes in order, then call `finish`.
pub struct Walker {
    explicit: bool,
    big_endian: bool,
    inflate: Option<Box<Decompress>>,
    inflate_done: bool,
    stack: Vec<Frame>,
    /// Header bytes collected so far (at most 12).
    header: [u8; 12],
    header_len: usize,
    /// Value bytes still to skip.
    skip: u64,
    offset: u64,
    failed: Option<StructureError>,
    /// Check the data set as dicom-rs 0.10 reads it ([`Walker::for_dicom_rs`]).
    dicom_rs: bool,
    /// A top-level element at or after Pixel Data (7FE0,0010) has started.
    reached_pixel_data: bool,
    /// Top-level tags whose values are captured.
    wanted: &'static [(u16, u16)],
    /// What has been captured; the last one may still be filling.
    captured: Vec<Captured>,
    /// Whether the value being skipped is the last captured one.
    capturing: bool,
    /// The transfer syntax is native (not encapsulated).
    native: bool,
    /// Encapsulated Pixel Data met under a native transfer syntax.
    encapsulated_on_native: bool,
}

impl Walker {
    /// A checker for a data set in `transfer_syntax`.
    pub fn new(transfer_syntax: &str) -> Self {
        let ts = transfer_syntax.trim_end_matches('\0');
        let deflated = matches!(ts, "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95");
        Walker {
            explicit: ts != "1.2.840.10008.1.2",
            big_endian: ts == "1.2.840.10008.1.2.2",
            inflate: deflated.then(|| Box::new(Decompress::new(false))),
            inflate_done: false,
            stack: Vec::new(),
            header: [0; 12],
            header_len: 0,
            skip: 0,
            offset: 0,
            failed: None,
            dicom_rs: false,
            reached_pixel_data: false,
            wanted: &[],
            captured: Vec::new(),
            capturing: false,
            native: matches!(
                ts,
                "1.2.840.10008.1.2"
                    | "1.2.840.10008.1.2.1"
                    | "1.2.840.10008.1.2.2"
                    | "1.2.840.10008.1.2.1.99"
            ),
            encapsulated_on_native: false,
        }
    }

    /// Also keep the values of these top-level elements (at most
    /// [`CAPTURE_LIMIT`] bytes each, never allocated by the declared
    /// length): the walk is then also the reader of the identifying
    /// attributes, with no second parse.
    pub fn capturing(mut self, tags: &'static [(u16, u16)]) -> Self {
        self.wanted = tags;
        self
    }

    /// A checker for a data set about to be parsed with dicom-object, which
    /// reads two things differently from PS3.5: the contents of an
    /// undefined-length UN element in the data set's own encoding (not as
    /// Implicit VR LE, §6.2.2), and a binary value whose length is not a
    /// multiple of its value size only up to the last whole value, going on
    /// with the next element from there (out of step with the lengths).
    /// This checker reads the first like dicom-rs and refuses the second.
    /// What it accepts, dicom-object reads without a declared length
    /// exceeding the bytes.
    pub fn for_dicom_rs(transfer_syntax: &str) -> Self {
        Walker {
            dicom_rs: true,
            ..Walker::new(transfer_syntax)
        }
    }

    /// Whether a top-level element at or after Pixel Data (7FE0,0010) has
    /// started: everything before it has been fed and checked, and a parse
    /// that stops at Pixel Data reads nothing after this point.
    pub fn reached_pixel_data(&self) -> bool {
        self.reached_pixel_data
    }

    /// Feed the next bytes of the data set (as received).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), StructureError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = match self.inflate.take() {
            None => self.walk(bytes),
            Some(mut z) => {
                let r = self.feed_deflated(&mut z, bytes);
                self.inflate = Some(z);
                r
            }
        };
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn feed_deflated(
        &mut self,
        z: &mut Decompress,
        mut input: &[u8],
    ) -> Result<(), StructureError> {
        let mut out = vec![0u8; 64 * 1024];
        while !input.is_empty() && !self.inflate_done {
            let (before_in, before_out) = (z.total_in(), z.total_out());
            let status = z
                .decompress(input, &mut out, FlushDecompress::None)
                .map_err(|e| self.error(format!("deflate stream: {e}")))?;
            let used = (z.total_in() - before_in) as usize;
            let produced = (z.total_out() - before_out) as usize;
            input = &input[used..];
            self.walk(&out[..produced])?;
            if status == ZStatus::StreamEnd {
                self.inflate_done = true;
            } else if used == 0 && produced == 0 {
                break;
            }
        }
        if self.inflate_done && !input.is_empty() {
            return Err(self.flawed(
                Flaw::TrailingBytes,
                format!("{} bytes after the end of the deflate stream", input.len()),
            ));
        }
        Ok(())
    }

    /// The whole data set has been fed: it must end on an element boundary.
    pub fn finish(self) -> Result<(), StructureError> {
        self.finish_observing().structure
    }

    /// [`Walker::finish`], with what the walk captured and noticed.
    pub fn finish_observing(mut self) -> Observed {
        let structure = self.check_end();
        if self.capturing {
            // Cut short inside a captured value: not read whole.
            self.captured.pop();
        }
        Observed {
            structure,
            captured: self.captured,
            encapsulated_on_native: self.encapsulated_on_native,
        }
    }

    fn check_end(&mut self) -> Result<(), StructureError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if let Some(mut z) = self.inflate.take() {
            // Drain what the inflater still holds.
            let mut out = vec![0u8; 64 * 1024];
            while !self.inflate_done {
                let before = z.total_out();
                let status = z
                    .decompress(&[], &mut out, FlushDecompress::Finish)
                    .map_err(|e| self.error(format!("deflate stream: {e}")))?;
                let produced = (z.total_out() - before) as usize;
                self.walk(&out[..produced])?;
                if status == ZStatus::StreamEnd {
                    self.inflate_done = true;
                } else if produced == 0 {
                    return Err(self.flawed(Flaw::Truncated, "deflate stream cut short".into()));
                }
            }
        }
        if self.skip > 0 {
            return Err(self.flawed(
                Flaw::Truncated,
                format!(
                    "data set ends {} bytes short of the end of an element value",
                    self.skip
                ),
            ));
        }
        if self.header_len > 0 {
            return Err(self.flawed(
                Flaw::Truncated,
                "data set ends inside an element header".into(),
            ));
        }
        if let Some(open) = self.stack.last() {
            return Err(self.flawed(
                Flaw::Truncated,
                format!(
                    "data set ends inside an open {}",
                    match open.kind {
                        Kind::Sequence => "sequence",
                        Kind::Item => "item",
                        Kind::Fragments => "encapsulated pixel data",
                    }
                ),
            ));
        }
        Ok(())
    }

    fn error(&self, what: String) -> StructureError {
        self.flawed(Flaw::Malformed, what)
    }

    fn flawed(&self, flaw: Flaw, what: String) -> StructureError {
        StructureError {
            offset: self.offset,
            what,
            flaw,
        }
    }

    fn implicit_here(&self) -> bool {
        !self.explicit || self.stack.iter().any(|f| f.implicit)
    }

    fn big_endian_here(&self) -> bool {
        self.big_endian && !self.stack.iter().any(|f| f.implicit)
    }

    fn walk(&mut self, mut bytes: &[u8]) -> Result<(), StructureError> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                if self.capturing
                    && let Some(c) = self.captured.last_mut()
                {
                    let room = CAPTURE_LIMIT.saturating_sub(c.value.len());
                    c.value.extend_from_slice(&bytes[..room.min(n as usize)]);
                }
                self.skip -= n;
                self.offset += n;
                bytes = &bytes[n as usize..];
                if self.skip == 0 {
                    self.capturing = false;
                    self.close_ended();
                }
                continue;
            }
            // Collect the header: 8 bytes first, 12 when the VR says so.
            let want = self.header_size();
            let n = (want - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            self.offset += n as u64;
            bytes = &bytes[n..];
            if self.header_len == want && self.header_size() == want {
                self.header_len = 0;
                self.element(want)?;
                if self.skip == 0 {
                    self.close_ended();
                }
            }
        }
        Ok(())
    }

    fn u16_at(&self, i: usize) -> u16 {
        let b = [self.header[i], self.header[i + 1]];
        if self.big_endian_here() {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32_at(&self, i: usize) -> u32 {
        let b = [
            self.header[i],
            self.header[i + 1],
            self.header[i + 2],
            self.header[i + 3],
        ];
        if self.big_endian_here() {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// The header length, as far as the bytes collected so far tell.
    fn header_size(&self) -> usize {
        if self.header_len < 6 {
            return 8;
        }
        let tag = (self.u16_at(0), self.u16_at(2));
        if tag.0 == 0xFFFE || self.implicit_here() {
            return 8;
        }
        // PS3.5 §7.1.2: these VRs have a 2-byte length; every other one,
        // including a VR this build does not know, a reserved field and a
        // 4-byte length (as dicom-rs reads an unknown VR: UN).
        match &self.header[4..6] {
            b"AE" | b"AS" | b"AT" | b"CS" | b"DA" | b"DS" | b"DT" | b"FL" | b"FD" | b"IS"
            | b"LO" | b"LT" | b"PN" | b"SH" | b"SL" | b"SS" | b"ST" | b"TM" | b"UI" | b"UL"
            | b"US" => 8,
            _ => 12,
        }
    }

    /// Where the innermost defined-length container ends (inner ones end
    /// within outer ones, so this is the tightest bound).
    fn limit(&self) -> Option<u64> {
        self.stack.iter().rev().find_map(|f| f.end)
    }

    /// Check that a value (or item) of `len` bytes starting here ends within
    /// its containers; the offset where it ends.
    fn value_end(&self, len: u32, what: &str) -> Result<u64, StructureError> {
        let end = self.offset + u64::from(len);
        match self.limit() {
            Some(limit) if end > limit => Err(self.error(format!(
                "{what} of {len} bytes runs {} bytes past the end of its sequence or item",
                end - limit
            ))),
            _ => Ok(end),
        }
    }

    /// Pop the defined-length containers that end here.
    fn close_ended(&mut self) {
        while self
            .stack
            .last()
            .is_some_and(|f| f.end == Some(self.offset))
        {
            self.stack.pop();
        }
    }

    /// Whether a defined-length element is a sequence, as dicom-rs decides:
    /// by its VR, or in Implicit VR by the standard data dictionary.
    fn is_sequence(&self, tag: (u16, u16), vr: Option<[u8; 2]>) -> bool {
        Self::dicom_rs_vr(tag, vr) == VR::SQ
    }

    /// The VR dicom-rs reads an element with: the explicit one (UN when
    /// unknown), or in Implicit VR the data dictionary's (OW for Pixel Data
    /// and Overlay Data, UN when the tag is not in it).
    fn dicom_rs_vr(tag: (u16, u16), vr: Option<[u8; 2]>) -> VR {
        match vr {
            Some(vr) => VR::from_binary(vr).unwrap_or(VR::UN),
            None if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) => VR::OW,
            None => StandardDataDictionary
                .by_tag(Tag(tag.0, tag.1))
                .map_or(VR::UN, |e| e.vr().relaxed()),
        }
    }

    fn element(&mut self, header_size: usize) -> Result<(), StructureError> {
        let tag = (self.u16_at(0), self.u16_at(2));
        if self.limit().is_some_and(|limit| self.offset > limit) {
            return Err(self.error(format!(
                "header of ({:04X},{:04X}) runs past the end of its sequence or item",
                tag.0, tag.1
            )));
        }
        let top = self.stack.last().map(|f| (f.kind, f.end.is_some()));
        if tag.0 == 0xFFFE {
            let len = self.u32_at(4);
            return match tag {
                ITEM => match top {
                    Some((Kind::Fragments, _)) if len != UNDEFINED => {
                        self.value_end(len, "fragment")?;
                        self.skip = u64::from(len);
                        Ok(())
                    }
                    Some((Kind::Sequence, _)) if len == UNDEFINED => {
                        self.push(Kind::Item, false, None)
                    }
                    Some((Kind::Sequence, _)) => {
                        let end = self.value_end(len, "item")?;
                        self.push(Kind::Item, false, Some(end))
                    }
                    Some((Kind::Fragments, _)) => Err(self.flawed(
                        Flaw::UndefinedLengthFragment,
                        "undefined-length item inside encapsulated Pixel Data \
                         (PS3.5 A.4: fragments have defined lengths)"
                            .into(),
                    )),
                    _ => Err(self.error("item outside a sequence".into())),
                },
                ITEM_DELIMITER if top == Some((Kind::Item, false)) => {
                    self.stack.pop();
                    Ok(())
                }
                SEQUENCE_DELIMITER
                    if matches!(top, Some((Kind::Sequence, false) | (Kind::Fragments, _))) =>
                {
                    self.stack.pop();
                    Ok(())
                }
                _ => Err(self.error(format!("delimiter (FFFE,{:04X}) where it cannot be", tag.1))),
            };
        }
        let top = top.map(|(kind, _)| kind);
        if top == Some(Kind::Sequence) || top == Some(Kind::Fragments) {
            return Err(self.error(format!(
                "element ({:04X},{:04X}) directly inside a sequence (items expected)",
                tag.0, tag.1
            )));
        }
        let (vr, len) = if header_size == 12 {
            (Some([self.header[4], self.header[5]]), self.u32_at(8))
        } else if self.implicit_here() {
            (None, self.u32_at(4))
        } else {
            (
                Some([self.header[4], self.header[5]]),
                u32::from(self.u16_at(6)),
            )
        };
        if self.stack.is_empty() && tag >= PIXEL_DATA {
            self.reached_pixel_data = true;
        }
        if len != UNDEFINED {
            let end = self.value_end(len, &format!("value of ({:04X},{:04X})", tag.0, tag.1))?;
            if len > 0 && self.is_sequence(tag, vr) {
                return self.push(Kind::Sequence, false, Some(end));
            }
            if self.dicom_rs {
                let vr = Self::dicom_rs_vr(tag, vr);
                let unit = value_size(vr);
                if len % unit != 0 {
                    return Err(self.error(format!(
                        "value of ({:04X},{:04X}) {vr:?} has {len} bytes, not a multiple of {unit}",
                        tag.0, tag.1
                    )));
                }
            }
            if self.stack.is_empty() && self.wanted.contains(&tag) {
                self.captured.push(Captured {
                    tag,
                    value: Vec::with_capacity((len as usize).min(CAPTURE_LIMIT)),
                    length: len,
                });
                self.capturing = len > 0;
            }
            self.skip = u64::from(len);
            return Ok(());
        }
        if tag == PIXEL_DATA {
            if self.stack.is_empty() && self.native {
                self.encapsulated_on_native = true;
            }
            // Encapsulated, whatever the VR says (as dicom-rs reads it).
            return self.push(Kind::Fragments, false, None);
        }
        match vr.as_ref().map(|v| &v[..]) {
            None | Some(b"SQ") => self.push(Kind::Sequence, false, None),
            Some(b"UN") => self.push(Kind::Sequence, !self.dicom_rs, None),
            Some(b"OB" | b"OW") => self.push(Kind::Fragments, false, None),
            Some(v) => Err(self.error(format!(
                "undefined length on VR {} of ({:04X},{:04X})",
                String::from_utf8_lossy(v),
                tag.0,
                tag.1
            ))),
        }
    }

    fn push(&mut self, kind: Kind, implicit: bool, end: Option<u64>) -> Result<(), StructureError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(format!("sequences nested deeper than {MAX_DEPTH}")));
        }
        self.stack.push(Frame {
            kind,
            implicit,
            end,
        });
        Ok(())
    }
}

/// Bytes per value of a binary VR (1 for text and bytes).
fn value_size(vr: VR) -> u32 {
    match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::AT | VR::UL | VR::SL | VR::FL | VR::OF | VR::OL => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    const EXPLICIT: &str = "1.2.840.10008.1.2.1";
    const IMPLICIT: &str = "1.2.840.10008.1.2";
    const BIG: &str = "1.2.840.10008.1.2.2";
    const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

    fn le16(v: u16) -> [u8; 2] {
        v.to_le_bytes()
    }

    use crate::testing::element::{long, short};

    fn tag_len(g: u16, e: u16, len: u32) -> Vec<u8> {
        [
            le16(g).to_vec(),
            le16(e).to_vec(),
            len.to_le_bytes().to_vec(),
        ]
        .concat()
    }

    /// A data set with an undefined-length sequence holding an undefined and
    /// a defined-length item, and encapsulated pixel data.
    fn sample() -> Vec<u8> {
        let mut d = short(0x0008, 0x0018, b"UI", b"1.2.3.4\0");
        d.extend(long(0x0008, 0x1115, b"SQ", UNDEFINED, &[]));
        d.extend(tag_len(0xFFFE, 0xE000, UNDEFINED));
        d.extend(short(0x0008, 0x1150, b"UI", b"1.2\0"));
        d.extend(tag_len(0xFFFE, 0xE00D, 0));
        let inner = short(0x0008, 0x1155, b"UI", b"1.3\0");
        d.extend(tag_len(0xFFFE, 0xE000, inner.len() as u32));
        d.extend(inner);
        d.extend(tag_len(0xFFFE, 0xE0DD, 0));
        d.extend(long(0x7FE0, 0x0010, b"OB", UNDEFINED, &[]));
        d.extend(tag_len(0xFFFE, 0xE000, 0)); // empty offset table
        d.extend(tag_len(0xFFFE, 0xE000, 6));
        d.extend([1, 2, 3, 4, 5, 6]);
        d.extend(tag_len(0xFFFE, 0xE0DD, 0));
        d
    }

    fn check(ts: &str, bytes: &[u8], chunk: usize) -> Result<(), StructureError> {
        let mut w = Walker::new(ts);
        for c in bytes.chunks(chunk.max(1)) {
            w.feed(c)?;
        }
        w.finish()
    }

    #[test]
    fn whole_data_set_passes_in_any_chunking() {
        let d = sample();
        for chunk in [1, 2, 3, 7, 12, 13, 64, d.len()] {
            check(EXPLICIT, &d, chunk).unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        }
    }

    #[test]
    fn every_truncation_is_caught() {
        let d = sample();
        for cut in 1..d.len() {
            // A cut exactly on a top-level element boundary is a shorter but
            // well-formed data set; every other cut must fail.
            let boundaries = [8 + 8, 8 + 8 + 12 + 8 + 12 + 8 + 8 + 12 + 8];
            if boundaries.contains(&cut) {
                continue;
            }
            assert!(
                check(EXPLICIT, &d[..cut], 5).is_err(),
                "cut at {cut} passed"
            );
        }
    }

    #[test]
    fn pixel_data_cut_short_is_caught() {
        let mut d = short(0x0008, 0x0018, b"UI", b"1.2.3.4\0");
        d.extend(long(0x7FE0, 0x0010, b"OW", 8192, &vec![0u8; 8192]));
        assert!(check(EXPLICIT, &d, 4096).is_ok());
        let e = check(EXPLICIT, &d[..d.len() - 1000], 4096).unwrap_err();
        assert!(e.what.contains("1000 bytes short"), "{e}");
    }

    #[test]
    fn implicit_and_big_endian() {
        let mut d = tag_len(0x0008, 0x0018, 8);
        d.extend(b"1.2.3.4\0");
        d.extend(tag_len(0x0008, 0x1115, UNDEFINED)); // implicit: undefined = SQ
        d.extend(tag_len(0xFFFE, 0xE000, UNDEFINED));
        d.extend(tag_len(0xFFFE, 0xE00D, 0));
        d.extend(tag_len(0xFFFE, 0xE0DD, 0));
        check(IMPLICIT, &d, 3).unwrap();
        assert!(check(IMPLICIT, &d[..d.len() - 8], 3).is_err());

        let mut be = Vec::new();
        be.extend(0x0008u16.to_be_bytes());
        be.extend(0x0018u16.to_be_bytes());
        be.extend(b"UI");
        be.extend(8u16.to_be_bytes());
        be.extend(b"1.2.3.4\0");
        check(BIG, &be, 5).unwrap();
        // read as little endian the length would be 0x0800: truncated
        assert!(check(EXPLICIT, &be, 5).is_err());
    }

    #[test]
    fn undefined_length_un_holds_implicit_le() {
        let mut d = long(0x0009, 0x1010, b"UN", UNDEFINED, &[]);
        d.extend(tag_len(0xFFFE, 0xE000, UNDEFINED));
        d.extend(tag_len(0x0009, 0x1011, 2));
        d.extend([0, 0]);
        d.extend(tag_len(0xFFFE, 0xE00D, 0));
        d.extend(tag_len(0xFFFE, 0xE0DD, 0));
        check(EXPLICIT, &d, 7).unwrap();
    }

    #[test]
    fn impossible_structures_are_refused() {
        // an item delimiter at top level
        assert!(check(EXPLICIT, &tag_len(0xFFFE, 0xE00D, 0), 8).is_err());
        // an element directly inside a sequence
        let mut d = long(0x0008, 0x1115, b"SQ", UNDEFINED, &[]);
        d.extend(short(0x0008, 0x0018, b"UI", b"1\0"));
        assert!(check(EXPLICIT, &d, 8).is_err());
        // undefined length on a short VR
        let mut d = [le16(8).to_vec(), le16(0x18).to_vec()].concat();
        d.extend(b"UT\0\0");
        d.extend(UNDEFINED.to_le_bytes());
        assert!(check(EXPLICIT, &d, 8).is_err());
        // nesting deeper than the limit
        let mut d = Vec::new();
        for _ in 0..=MAX_DEPTH {
            d.extend(long(0x0008, 0x1115, b"SQ", UNDEFINED, &[]));
            d.extend(tag_len(0xFFFE, 0xE000, UNDEFINED));
        }
        let e = check(EXPLICIT, &d, 64).unwrap_err();
        assert!(e.what.contains("nested"), "{e}");
    }

    #[test]
    fn deflated_streams() {
        let d = sample();
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&d).unwrap();
        let deflated = z.finish().unwrap();
        for chunk in [1, 5, 100, deflated.len()] {
            check(DEFLATED, &deflated, chunk).unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        }
        assert!(check(DEFLATED, &deflated[..deflated.len() - 3], 7).is_err());
    }

    /// A lie nested in a defined-length sequence whose own length is
    /// honest: the walker skipped the sequence whole and accepted it, then
    /// dicom-object descended into it and allocated the 0xFFFFFFF0 bytes the
    /// inner UT declared (an identifier of a C-FIND match, or a C-STORE data
    /// set at commit). Found by the fuzz corpus (`dataset_structure`).
    #[test]
    fn lies_inside_defined_length_sequences_are_caught() {
        let inner = long(0x0018, 0x1030, b"UT", 0xFFFF_FFF0, b"abcd");
        let mut item = tag_len(0xFFFE, 0xE000, inner.len() as u32);
        item.extend(&inner);
        let mut d = short(0x0008, 0x0018, b"UI", b"1.2\0");
        d.extend(long(0x0040, 0xA730, b"SQ", item.len() as u32, &item));
        let e = check(EXPLICIT, &d, 5).unwrap_err();
        assert!(
            e.what.contains("past the end of its sequence or item"),
            "{e}"
        );

        // Honest nesting passes: a defined-length sequence, a defined and an
        // undefined-length item, another defined-length sequence inside.
        let leaf = short(0x0008, 0x1155, b"UI", b"1.3\0");
        let mut inner_item = tag_len(0xFFFE, 0xE000, leaf.len() as u32);
        inner_item.extend(&leaf);
        let inner_seq = long(0x0008, 0x1140, b"SQ", inner_item.len() as u32, &inner_item);
        let mut items = tag_len(0xFFFE, 0xE000, inner_seq.len() as u32);
        items.extend(&inner_seq);
        items.extend(tag_len(0xFFFE, 0xE000, UNDEFINED));
        items.extend(&leaf);
        items.extend(tag_len(0xFFFE, 0xE00D, 0));
        let mut d = long(0x0040, 0xA730, b"SQ", items.len() as u32, &items);
        d.extend(short(0x0040, 0xA731, b"UI", b"1.4\0"));
        for chunk in [1, 3, 8, d.len()] {
            check(EXPLICIT, &d, chunk).unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        }
        // An item longer than its sequence, an element longer than its item.
        let mut short_seq = d.clone();
        short_seq[8..12].copy_from_slice(&(items.len() as u32 - 4).to_le_bytes());
        assert!(check(EXPLICIT, &short_seq, 7).is_err());
        // A delimiter inside a defined-length item or sequence.
        let mut item = tag_len(0xFFFE, 0xE000, 8);
        item.extend(tag_len(0xFFFE, 0xE00D, 0));
        let d = long(0x0040, 0xA730, b"SQ", item.len() as u32, &item);
        assert!(check(EXPLICIT, &d, 4).is_err());
    }

    /// In Implicit VR a defined-length sequence is known by the data
    /// dictionary, as dicom-rs reads it.
    #[test]
    fn implicit_defined_length_sequences_by_the_dictionary() {
        let mut leaf = tag_len(0x0008, 0x1155, 0xFFFF_FFF0);
        leaf.extend(b"1.3\0");
        let mut item = tag_len(0xFFFE, 0xE000, leaf.len() as u32);
        item.extend(&leaf);
        let mut d = tag_len(0x0008, 0x1140, item.len() as u32); // Referenced Image Sequence
        d.extend(&item);
        assert!(check(IMPLICIT, &d, 6).is_err(), "the lie inside is seen");
        // The same bytes under a private tag are an opaque value.
        let mut private = tag_len(0x0009, 0x1140, item.len() as u32);
        private.extend(&item);
        check(IMPLICIT, &private, 6).unwrap();
    }

    /// A VR this build does not know has a 4-byte length, as dicom-rs reads
    /// it (as UN): read with a 2-byte length the walker and dicom-object saw
    /// different elements.
    #[test]
    fn unknown_vrs_have_a_four_byte_length() {
        let d = long(0x0009, 0x1010, b"ZZ", 4, b"abcd");
        check(EXPLICIT, &d, 3).unwrap();
        let d = short(0x0009, 0x1010, b"ZZ", b"abcd");
        assert!(check(EXPLICIT, &d, 3).is_err());
    }

    /// Pixel Data reached at the top level, not inside a sequence; and an
    /// undefined-length UN read as dicom-rs reads it.
    #[test]
    fn pixel_data_reached_and_dicom_rs_mode() {
        let mut w = Walker::new(EXPLICIT);
        let mut d = short(0x0008, 0x0018, b"UI", b"1.2\0");
        d.extend(long(0x0040, 0xA730, b"SQ", UNDEFINED, &[]));
        d.extend(tag_len(0xFFFE, 0xE000, UNDEFINED));
        d.extend(long(0x7FE0, 0x0010, b"OB", 2, &[0, 0]));
        w.feed(&d).unwrap();
        assert!(!w.reached_pixel_data(), "nested Pixel Data does not count");
        d.extend(tag_len(0xFFFE, 0xE00D, 0));
        d.extend(tag_len(0xFFFE, 0xE0DD, 0));
        d.extend(long(0x7FE0, 0x0010, b"OW", 100, &[0; 10]));
        let mut w = Walker::new(EXPLICIT);
        w.feed(&d).unwrap();
        assert!(w.reached_pixel_data());
        assert!(w.finish().is_err(), "and still cut short");

        // PS3.5 contents (Implicit VR) of an undefined-length UN: fine for
        // the standard walker, not for dicom-rs, which reads them as
        // Explicit VR (a 4-byte length taken from the value).
        let mut d = long(0x0009, 0x1010, b"UN", UNDEFINED, &[]);
        d.extend(tag_len(0xFFFE, 0xE000, UNDEFINED));
        d.extend(tag_len(0x0009, 0x1011, 8));
        d.extend(b"1.2.3.4\0");
        d.extend(tag_len(0xFFFE, 0xE00D, 0));
        d.extend(tag_len(0xFFFE, 0xE0DD, 0));
        check(EXPLICIT, &d, 5).unwrap();
        let mut w = Walker::for_dicom_rs(EXPLICIT);
        assert!(w.feed(&d).and_then(|()| w.finish()).is_err());
    }

    /// Implicit VR (6030,0000), a UL by the dictionary, of 2 bytes: dicom-rs
    /// reads 2 >> 2 = 0 values, does not consume "CT", reads it as the next
    /// tag and what follows as a length of 0xFFFF1140, which it allocated
    /// (an identifier or a header that the walker had accepted). Found by
    /// the `dataset_structure` fuzz target (out-of-memory).
    #[test]
    fn binary_values_are_whole_for_dicom_rs() {
        let mut d = tag_len(0x6030, 0x0000, 2);
        d.extend(b"CT");
        d.extend(tag_len(0x0008, 0x1140, UNDEFINED));
        d.extend(tag_len(0xFFFE, 0xE0DD, 0));
        check(IMPLICIT, &d, 3).unwrap();
        let mut w = Walker::for_dicom_rs(IMPLICIT);
        let e = w.feed(&d).unwrap_err();
        assert!(e.what.contains("not a multiple of 4"), "{e}");
        // Explicit VR: a US of 3 bytes, an FD of 4; text of any length.
        for d in [
            short(0x0028, 0x0010, b"US", &[1, 0, 0]),
            short(0x0018, 0x0050, b"FD", &[0; 4]),
        ] {
            let mut w = Walker::for_dicom_rs(EXPLICIT);
            assert!(w.feed(&d).and_then(|()| w.finish()).is_err());
        }
        let mut w = Walker::for_dicom_rs(EXPLICIT);
        let d = short(0x0010, 0x0010, b"PN", b"Doe");
        w.feed(&d).unwrap();
        w.finish().unwrap();
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
                        chunk in 1usize..64,
                        ts in proptest::sample::select(vec![EXPLICIT, IMPLICIT, BIG, DEFLATED])) {
            let _ = check(ts, &bytes, chunk);
        }
    }

    /// Sequences with defined lengths nested `depth` deep (explicit or
    /// implicit VR), around one short element.
    pub(crate) fn nested_defined(depth: usize, implicit: bool) -> Vec<u8> {
        let mut inner = if implicit {
            let mut v = tag_len(0x0008, 0x0100, 2);
            v.extend(b"AB");
            v
        } else {
            short(0x0008, 0x0100, b"SH", b"AB")
        };
        for _ in 0..depth {
            let mut item = tag_len(0xFFFE, 0xE000, inner.len() as u32);
            item.extend(&inner);
            inner = if implicit {
                let mut v = tag_len(0x0040, 0xA730, item.len() as u32);
                v.extend(item);
                v
            } else {
                long(0x0040, 0xA730, b"SQ", item.len() as u32, &item)
            };
        }
        inner
    }

    #[test]
    fn defined_length_nesting_is_walked_and_limited() {
        // 32 levels = 64 frames (sequence + item each): the limit, accepted.
        for implicit in [false, true] {
            let ts = if implicit { IMPLICIT } else { EXPLICIT };
            let ok = nested_defined(MAX_DEPTH / 2, implicit);
            check(ts, &ok, 7).unwrap_or_else(|e| panic!("implicit {implicit}: {e}"));
            // One level more, and 5000 more: refused, without recursion.
            for depth in [MAX_DEPTH / 2 + 1, 5000] {
                let e = check(ts, &nested_defined(depth, implicit), 4096).unwrap_err();
                assert!(
                    e.what.contains("nested"),
                    "implicit {implicit}, {depth}: {e}"
                );
            }
        }
    }
}
