//! What the audit chain walk and the archive's removal need of a stored entry body
//! `postcard((seq, StoredRecord))`: the seq, the index keys it implies (patient tag, transfer
//! id, break-glass flag), and that the whole body is well formed. Read by hand, field by
//! field in [`StoredRecord`](crate::audit)'s order, with postcard's rules (LEB128 varints,
//! `0`/`1` option and bool tags, length-prefixed bytes), allocating nothing: the walk reads
//! every entry of a 10 M-entry log, and serde's generic decoding of the same view was about
//! 6 % of its CPU. Strings are taken as bytes: the chain hash already covers every byte, so
//! the walk needs no UTF-8 check. `tests::index_keys` holds the serde view as the reference
//! and checks both agree on real bodies and on every truncation and single-byte change.

use crate::protect::{PatientTag, TAG_LEN};
use crate::types::TransferId;

/// The parts of a stored body that the walk checks or indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexKeys<'a> {
    pub(crate) seq: u64,
    pub(crate) transfer_id: Option<&'a TransferId>,
    pub(crate) patient_tag: Option<&'a PatientTag>,
    pub(crate) break_glass: bool,
}

impl<'a> IndexKeys<'a> {
    /// Reads `body`; `None` where postcard would refuse it as `(u64, StoredRecord)` up to
    /// UTF-8 (trailing bytes included).
    pub(crate) fn parse(body: &'a [u8]) -> Option<IndexKeys<'a>> {
        let mut r = Reader(body);
        let seq = r.varint()?;
        let _time_ms = r.varint()?;
        let _event = r.bytes()?;
        let transfer_id = r.option(Reader::array::<16>)?;
        let _peer = r.option(Reader::bytes)?;
        let patient_tag = r.option(|r| {
            let tag = r.array::<TAG_LEN>()?;
            let _sealed = r.bytes()?;
            Some(tag)
        })?;
        let _purpose = r.option(Reader::bytes)?;
        let _clinician = r.option(Reader::bytes)?;
        let _outcome = r.bytes()?;
        let _reason = r.option(Reader::bytes)?;
        for _ in 0..r.varint()? {
            let _policy_id = r.bytes()?;
        }
        let break_glass = r.flag()?;
        r.0.is_empty().then_some(IndexKeys {
            seq,
            transfer_id,
            patient_tag,
            break_glass,
        })
    }
}

/// The unread rest of a body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// postcard's u64 (and, on 64-bit targets, usize) varint: at most ten 7-bit groups, the
    /// tenth holding only the top bit.
    fn varint(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (i < 9 || b <= 1).then_some(out);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }

    fn array<const N: usize>(&mut self) -> Option<&'a [u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(head)
    }

    fn flag(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// An option: `Some(None)` for tag 0, `Some(Some(_))` for tag 1 and a readable value.
    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.byte()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }
}
