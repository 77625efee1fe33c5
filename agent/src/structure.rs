//! Streaming structural check of a data set as it arrives.
//!
//! Every element header is read and every other defined-length value is
//! skipped unread; sequences and items (of defined or undefined length) and
//! encapsulated pixel data are descended into. At the end the stream must
//! stop exactly on an element boundary with every sequence and item closed,
//! and every element must lie inside the sequence or item that holds it. So a
//! data set cut short — in a header, in a value, in Pixel Data, in a
//! fragment —, with a length larger than what holds it, or with delimiters in
//! impossible places is refused before it could be acknowledged, without
//! decoding pixels and without buffering more than one element header
//! (deflated data sets are inflated on the fly, 64 KiB at a time).
//!
//! Encodings: Implicit VR LE, Explicit VR LE and BE, and the deflated
//! explicit LE syntaxes. Per PS3.5 §6.2.2 the contents of an undefined-length
//! UN element are Implicit VR Little Endian; in Implicit VR a defined-length
//! element is a sequence when the data dictionary says SQ (as the parser
//! that reads the header later decides). Nesting deeper than [`MAX_DEPTH`]
//! is refused, whether the sequences and items have defined lengths or not
//! (a 39 KB file with 1,100 nested sequences crashes parsers that recurse,
//! dicom-object's among them; this walker does not recurse).
//!
//! The same walk guards the header parser (`crate::part10`): dicom-object
//! allocates a value's declared length before reading it, and recurses into
//! sequences, so it is only ever given bytes this walker accepted —
//! [`Walker::complete_len`] for a prefix, [`Walker::until_pixel_data`] for
//! the attributes before Pixel Data.

use flate2::{Decompress, FlushDecompress, Status as ZStatus};

/// Deepest nesting of sequences and items accepted.
pub const MAX_DEPTH: usize = 64;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_DELIMITER: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: (u16, u16) = (0xFFFE, 0xE0DD);

/// Why a data set is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed data set at byte {offset}: {what}")]
pub struct StructureError {
    /// Offset in the (inflated) data set.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Sequence: holds items.
    Sequence,
    /// Item: holds elements; of undefined length, ends with an item delimiter.
    Item,
    /// Encapsulated pixel data: holds fragments (defined-length items).
    Fragments,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: Kind,
    /// Contents are Implicit VR LE (inside an undefined-length UN).
    implicit: bool,
    /// Where a defined-length sequence or item ends (offset in the data
    /// set); None for one that ends with a delimiter.
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
    /// Where the header of the value being skipped starts.
    pending_start: u64,
    offset: u64,
    failed: Option<StructureError>,
    /// Stop at the first top-level element from (7FE0,0010) on.
    stop_before_pixel_data: bool,
    /// Where that element starts, once reached (the rest is not looked at).
    stopped_at: Option<u64>,
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
            pending_start: 0,
            offset: 0,
            failed: None,
            stop_before_pixel_data: false,
            stopped_at: None,
        }
    }

    /// A checker of the attributes before Pixel Data only: it stops at the
    /// first top-level element whose tag is (7FE0,0010) or greater (where
    /// dicom-object's `read_until(PIXEL_DATA)` stops), and [`Walker::finish`]
    /// accepts a data set that ends there.
    pub fn until_pixel_data(transfer_syntax: &str) -> Self {
        let mut w = Walker::new(transfer_syntax);
        w.stop_before_pixel_data = true;
        w
    }

    /// Whether [`Walker::until_pixel_data`] has reached Pixel Data.
    pub fn reached_pixel_data(&self) -> bool {
        self.stopped_at.is_some()
    }

    /// How many bytes of what was fed form complete elements: the offset
    /// where the first element whose header or value is not complete yet
    /// starts (at any depth), or where Pixel Data starts. Every element
    /// before it has all its bytes there, so a parser given only that many
    /// bytes never meets a length larger than what it holds. None for a
    /// deflated data set (offsets are those of the inflated bytes) and after
    /// an error.
    pub fn complete_len(&self) -> Option<u64> {
        if self.inflate.is_some() || self.failed.is_some() {
            return None;
        }
        if let Some(at) = self.stopped_at {
            return Some(at);
        }
        Some(if self.skip > 0 {
            self.pending_start
        } else {
            self.offset - self.header_len as u64
        })
    }

    /// Feed the next bytes of the data set (as received).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), StructureError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.stopped_at.is_some() {
            return Ok(());
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
            return Err(self.error("bytes after the end of the deflate stream".into()));
        }
        Ok(())
    }

    /// The whole data set has been fed: it must end on an element boundary.
    pub fn finish(mut self) -> Result<(), StructureError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.stopped_at.is_some() {
            return Ok(());
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
                    return Err(self.error("deflate stream cut short".into()));
                }
            }
        }
        if self.skip > 0 {
            return Err(self.error(format!(
                "data set ends {} bytes short of the end of an element value",
                self.skip
            )));
        }
        if self.header_len > 0 {
            return Err(self.error("data set ends inside an element header".into()));
        }
        if let Some(open) = self.stack.last() {
            return Err(self.error(format!(
                "data set ends inside an open {}",
                match open.kind {
                    Kind::Sequence => "sequence",
                    Kind::Item => "item",
                    Kind::Fragments => "encapsulated pixel data",
                }
            )));
        }
        Ok(())
    }

    fn error(&self, what: String) -> StructureError {
        StructureError {
            offset: self.offset,
            what,
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
            if self.stopped_at.is_some() {
                return Ok(());
            }
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                self.skip -= n;
                self.offset += n;
                bytes = &bytes[n as usize..];
                if self.skip == 0 {
                    self.close_finished();
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
        match &self.header[4..6] {
            b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN"
            | b"UR" | b"UT" | b"UV" => 12,
            _ => 8,
        }
    }

    fn element(&mut self, header_size: usize) -> Result<(), StructureError> {
        let start = self.offset - header_size as u64;
        if self.limit().is_some_and(|limit| self.offset > limit) {
            return Err(self.error(
                "element header runs past the end of the sequence or item holding it".into(),
            ));
        }
        let tag = (self.u16_at(0), self.u16_at(2));
        let top = self.stack.last().copied();
        let top_kind = top.map(|f| f.kind);
        if tag.0 == 0xFFFE {
            let len = self.u32_at(4);
            return match tag {
                ITEM => match top_kind {
                    Some(Kind::Fragments) if len != UNDEFINED => self.value(start, len),
                    Some(Kind::Sequence) if len == UNDEFINED => self.push(Kind::Item, false, None),
                    Some(Kind::Sequence) => self.push_defined(Kind::Item, len),
                    _ => Err(self.error("item outside a sequence".into())),
                },
                ITEM_DELIMITER
                    if top_kind == Some(Kind::Item) && top.and_then(|f| f.end).is_none() =>
                {
                    self.stack.pop();
                    self.close_finished();
                    Ok(())
                }
                SEQUENCE_DELIMITER
                    if top.is_some_and(|f| {
                        f.kind == Kind::Fragments || (f.kind == Kind::Sequence && f.end.is_none())
                    }) =>
                {
                    self.stack.pop();
                    self.close_finished();
                    Ok(())
                }
                _ => Err(self.error(format!("delimiter (FFFE,{:04X}) where it cannot be", tag.1))),
            };
        }
        if top_kind == Some(Kind::Sequence) || top_kind == Some(Kind::Fragments) {
            return Err(self.error(format!(
                "element ({:04X},{:04X}) directly inside a sequence (items expected)",
                tag.0, tag.1
            )));
        }
        if self.stop_before_pixel_data && self.stack.is_empty() && tag >= (0x7FE0, 0x0010) {
            self.stopped_at = Some(start);
            return Ok(());
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
        if len != UNDEFINED {
            let sequence = match vr {
                Some(v) => &v == b"SQ",
                None => implicit_vr_is_sequence(tag),
            };
            if sequence {
                return self.push_defined(Kind::Sequence, len);
            }
            return self.value(start, len);
        }
        match vr.as_ref().map(|v| &v[..]) {
            None | Some(b"SQ") => self.push(Kind::Sequence, false, None),
            Some(b"UN") => self.push(Kind::Sequence, true, None),
            Some(b"OB" | b"OW") => self.push(Kind::Fragments, false, None),
            Some(v) => Err(self.error(format!(
                "undefined length on VR {} of ({:04X},{:04X})",
                String::from_utf8_lossy(v),
                tag.0,
                tag.1
            ))),
        }
    }

    /// The end of the innermost defined-length sequence or item, if any:
    /// nothing inside it may go past it.
    fn limit(&self) -> Option<u64> {
        self.stack.iter().rev().find_map(|f| f.end)
    }

    /// A value of `len` bytes follows the header that started at `start`:
    /// skip it (it must fit in what holds it).
    fn value(&mut self, start: u64, len: u32) -> Result<(), StructureError> {
        let end = self.offset + u64::from(len);
        if self.limit().is_some_and(|limit| end > limit) {
            return Err(self.error(format!(
                "a value of {len} bytes runs past the end of the sequence or item holding it"
            )));
        }
        self.skip = u64::from(len);
        self.pending_start = start;
        if len == 0 {
            self.close_finished();
        }
        Ok(())
    }

    /// A defined-length sequence or item of `len` bytes starts here.
    fn push_defined(&mut self, kind: Kind, len: u32) -> Result<(), StructureError> {
        let end = self.offset + u64::from(len);
        if self.limit().is_some_and(|limit| end > limit) {
            return Err(self.error(format!(
                "a sequence or item of {len} bytes runs past the end of the one holding it"
            )));
        }
        self.push(kind, false, Some(end))?;
        if len == 0 {
            self.close_finished();
        }
        Ok(())
    }

    /// Close the defined-length sequences and items that end here.
    fn close_finished(&mut self) {
        while self
            .stack
            .last()
            .is_some_and(|f| f.end == Some(self.offset))
        {
            self.stack.pop();
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

/// In Implicit VR, whether the data dictionary makes `tag` a sequence (the
/// rule dicom-parser applies when it reads the header).
fn implicit_vr_is_sequence(tag: (u16, u16)) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_core::Tag(tag.0, tag.1))
        .is_some_and(|e| e.vr().relaxed() == dicom_core::VR::SQ)
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

    /// Explicit VR LE element with a short (2-byte) length.
    fn short(g: u16, e: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = [le16(g), le16(e)].concat();
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    fn long(g: u16, e: u16, vr: &[u8; 2], len: u32, value: &[u8]) -> Vec<u8> {
        let mut v = [le16(g), le16(e)].concat();
        v.extend_from_slice(vr);
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(value);
        v
    }

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

    /// `depth` levels of defined-length sequence + item around one element
    /// (Content Sequence, which the dictionary knows as SQ). Explicit VR LE,
    /// or Implicit VR LE when `implicit`.
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

    #[test]
    fn lengths_inside_defined_length_sequences_must_fit() {
        // A value longer than the item holding it (it would end inside the
        // next element): refused, though the data set's total length adds up.
        let inner = short(0x0008, 0x0100, b"SH", b"AB");
        let mut item = tag_len(0xFFFE, 0xE000, inner.len() as u32);
        item.extend(&inner);
        let mut d = long(0x0040, 0xA730, b"SQ", item.len() as u32, &item);
        check(EXPLICIT, &d, 5).unwrap();
        let lying = d.len() - 2 - 2; // the SH value length
        d[lying] = 40;
        d.extend([b'x'; 38]);
        let e = check(EXPLICIT, &d, 5).unwrap_err();
        assert!(e.what.contains("runs past"), "{e}");
        // An item longer than its sequence.
        let mut d = long(0x0040, 0xA730, b"SQ", item.len() as u32, &item);
        let item_len_at = 12 + 4;
        d[item_len_at] += 2;
        d.extend([0, 0]);
        let e = check(EXPLICIT, &d, 5).unwrap_err();
        assert!(e.what.contains("runs past"), "{e}");
        // A sequence delimiter in a defined-length sequence.
        let mut d = long(0x0040, 0xA730, b"SQ", 8, &[]);
        d.extend(tag_len(0xFFFE, 0xE0DD, 0));
        assert!(check(EXPLICIT, &d, 8).is_err());
    }

    #[test]
    fn complete_len_stops_before_the_first_incomplete_element() {
        // A 1 KiB data set whose UT declares 0xFFFFFFF0 bytes.
        let mut d = short(0x0008, 0x0018, b"UI", b"1.2.3.4\0");
        let ut_at = d.len() as u64;
        d.extend(long(0x0040, 0xA160, b"UT", 0xFFFF_FFF0, &[b'x'; 1024]));
        let mut w = Walker::new(EXPLICIT);
        w.feed(&d).unwrap();
        assert_eq!(w.complete_len(), Some(ut_at));
        assert!(w.finish().unwrap_err().what.contains("short"));
        // Inside a header: the element starts where the header does.
        let mut w = Walker::new(EXPLICIT);
        w.feed(&d[..ut_at as usize + 5]).unwrap();
        assert_eq!(w.complete_len(), Some(ut_at));
        // Inside a defined-length sequence: its elements before the cut are
        // complete, the one cut is not.
        let seq = nested_defined(3, false);
        let mut w = Walker::new(EXPLICIT);
        w.feed(&seq[..seq.len() - 1]).unwrap();
        assert_eq!(w.complete_len(), Some((seq.len() - 10) as u64));
        // Deflated: offsets are not those of the input.
        let mut w = Walker::new(DEFLATED);
        w.feed(&[]).unwrap();
        assert_eq!(w.complete_len(), None);
    }

    #[test]
    fn until_pixel_data_stops_there() {
        let mut d = short(0x0008, 0x0018, b"UI", b"1.2.3.4\0");
        let pixels_at = d.len() as u64;
        // Pixel Data declaring more than follows: not looked at.
        d.extend(long(0x7FE0, 0x0010, b"OW", 0xFFFF_FFF0, &[0; 16]));
        let mut w = Walker::until_pixel_data(EXPLICIT);
        w.feed(&d[..d.len() - 3]).unwrap();
        assert!(w.reached_pixel_data());
        assert_eq!(w.complete_len(), Some(pixels_at));
        w.finish().unwrap();
        // Without Pixel Data the data set must be complete.
        let mut w = Walker::until_pixel_data(EXPLICIT);
        w.feed(&d[..pixels_at as usize - 1]).unwrap();
        assert!(!w.reached_pixel_data());
        assert!(w.finish().is_err());
        // The ordinary walker goes on into Pixel Data.
        assert!(check(EXPLICIT, &d, 64).is_err());
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

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
                        chunk in 1usize..64,
                        ts in proptest::sample::select(vec![EXPLICIT, IMPLICIT, BIG, DEFLATED])) {
            let _ = check(ts, &bytes, chunk);
        }
    }
}
