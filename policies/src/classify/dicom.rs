//! DICOM Part 10 files: only the header is read (with dicom-rs, stopping at the
//! pixel data), for the PatientID (0010,0020). What an image shows cannot be
//! classified from codes, so its content is always `unclassified`.

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::OpenFileOptions;

use super::patients::{Patients, PatientsBuilder};
use super::ClassifyError;

/// The patients of a DICOM file: its PatientID, if it has a non-empty one.
pub(crate) fn read(bytes: &[u8]) -> Result<Patients, ClassifyError> {
    // dicom-rs sizes its buffers from the lengths the header claims: a 4-GiB claim in a few
    // bytes made it allocate 4 GiB. Every length is checked against the bytes present first.
    check_lengths(bytes)?;
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(bytes)
        .map_err(|_| ClassifyError::Dicom)?;
    let mut builder = PatientsBuilder::default();
    let element = object
        .element_opt(tags::PATIENT_ID)
        .map_err(|_| ClassifyError::Dicom)?;
    if let Some(element) = element {
        let id = element.to_str().map_err(|_| ClassifyError::Dicom)?;
        // DICOM pads strings to an even length with spaces (or NUL).
        let id = id.trim_matches(|c: char| c == ' ' || c == '\0');
        if !id.is_empty() {
            builder.add(vec![id.to_owned()], Vec::new());
        }
    }
    Ok(builder.build())
}

/// Elements nested deeper than this (sequences in items in sequences …) are refused.
const MAX_NESTING: usize = 16;

const ITEM: u32 = 0xFFFE_E000;
const ITEM_END: u32 = 0xFFFE_E00D;
const SEQUENCE_END: u32 = 0xFFFE_E0DD;
const PIXEL_DATA: u32 = 0x7FE0_0010;
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Walks the file meta group and the data set up to the pixel data, refusing any element whose
/// length runs past the end of `bytes`, and any encoding this walk cannot follow (big endian,
/// deflated). Only lengths are read; values are skipped.
fn check_lengths(bytes: &[u8]) -> Result<(), ClassifyError> {
    let mut r = Walker {
        bytes,
        pos: 132,
        explicit: true,
    };
    // The file meta group is always explicit VR little endian.
    let mut transfer_syntax: Option<Vec<u8>> = None;
    while r.peek_group()? == Some(0x0002) {
        let (tag, len) = r.header()?;
        let value = r.take(len)?;
        if tag == 0x0002_0010 {
            transfer_syntax = Some(value.to_vec());
        }
    }
    let ts = transfer_syntax.ok_or(ClassifyError::Dicom)?;
    let ts = String::from_utf8_lossy(&ts);
    r.explicit = match ts.trim_end_matches(['\0', ' ']) {
        "1.2.840.10008.1.2" => false,
        // Big endian and deflated data sets cannot be walked by length here: refused.
        "1.2.840.10008.1.2.2" | "1.2.840.10008.1.2.1.99" => return Err(ClassifyError::Dicom),
        _ => true,
    };
    r.elements(0, None, true)
}

struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
    explicit: bool,
}

impl Walker<'_> {
    fn u16_at(&self, at: usize) -> Result<u16, ClassifyError> {
        let b = self.bytes.get(at..at + 2).ok_or(ClassifyError::Dicom)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32_at(&self, at: usize) -> Result<u32, ClassifyError> {
        let b = self.bytes.get(at..at + 4).ok_or(ClassifyError::Dicom)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn peek_group(&self) -> Result<Option<u16>, ClassifyError> {
        if self.pos >= self.bytes.len() {
            return Ok(None);
        }
        self.u16_at(self.pos).map(Some)
    }

    /// Reads an element header; returns the tag and the value length.
    fn header(&mut self) -> Result<(u32, u32), ClassifyError> {
        let group = self.u16_at(self.pos)?;
        let element = self.u16_at(self.pos + 2)?;
        let tag = (u32::from(group) << 16) | u32::from(element);
        // Item and delimiter tags have no VR in any encoding.
        if group == 0xFFFE || !self.explicit {
            let len = self.u32_at(self.pos + 4)?;
            self.pos += 8;
            return Ok((tag, len));
        }
        let vr = self
            .bytes
            .get(self.pos + 4..self.pos + 6)
            .ok_or(ClassifyError::Dicom)?;
        let long = matches!(
            vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        );
        if long {
            let len = self.u32_at(self.pos + 8)?;
            self.pos += 12;
            Ok((tag, len))
        } else {
            let len = u32::from(self.u16_at(self.pos + 6)?);
            self.pos += 8;
            Ok((tag, len))
        }
    }

    fn take(&mut self, len: u32) -> Result<&[u8], ClassifyError> {
        let len = usize::try_from(len).map_err(|_| ClassifyError::Dicom)?;
        let end = self.pos.checked_add(len).ok_or(ClassifyError::Dicom)?;
        let value = self.bytes.get(self.pos..end).ok_or(ClassifyError::Dicom)?;
        self.pos = end;
        Ok(value)
    }

    /// Elements until `end` (a delimiter tag) or the end of the bytes; at the top level, until
    /// the pixel data. An undefined length opens a sequence (or an item) walked recursively; a
    /// defined-length value that starts with an item tag is walked as a sequence too (in
    /// implicit VR only the dictionary knows which elements are sequences, and a nested item's
    /// length is as untrusted as any other).
    fn elements(&mut self, depth: usize, end: Option<u32>, top: bool) -> Result<(), ClassifyError> {
        if depth > MAX_NESTING {
            return Err(ClassifyError::Dicom);
        }
        loop {
            if self.pos >= self.bytes.len() {
                // A delimited list needs its delimiter.
                return if end.is_none() {
                    Ok(())
                } else {
                    Err(ClassifyError::Dicom)
                };
            }
            let (tag, len) = self.header()?;
            if Some(tag) == end {
                return Ok(());
            }
            if top && tag == PIXEL_DATA {
                return Ok(());
            }
            match (tag, len) {
                (ITEM, UNDEFINED) => self.elements(depth + 1, Some(ITEM_END), false)?,
                (_, UNDEFINED) => self.elements(depth + 1, Some(SEQUENCE_END), false)?,
                _ => {
                    let explicit = self.explicit;
                    let value = self.take(len)?;
                    if value.starts_with(&[0xFE, 0xFF, 0x00, 0xE0]) {
                        items(value, explicit, depth + 1)?;
                    }
                }
            }
        }
    }
}

/// The items of a defined-length sequence value, each walked within its own bounds.
fn items(value: &[u8], explicit: bool, depth: usize) -> Result<(), ClassifyError> {
    if depth > MAX_NESTING {
        return Err(ClassifyError::Dicom);
    }
    let mut w = Walker {
        bytes: value,
        pos: 0,
        explicit,
    };
    while w.pos < value.len() {
        let (tag, len) = w.header()?;
        if tag != ITEM {
            return Err(ClassifyError::Dicom);
        }
        if len == UNDEFINED {
            w.elements(depth + 1, Some(ITEM_END), false)?;
        } else {
            let item = w.take(len)?;
            Walker {
                bytes: item,
                pos: 0,
                explicit,
            }
            .elements(depth + 1, None, false)?;
        }
    }
    Ok(())
}
