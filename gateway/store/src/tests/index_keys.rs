//! `IndexKeys::parse` (the chain walk's hand reading of a stored body) against serde's
//! postcard decoding of the same view: both accept exactly the same bodies and read the same
//! seq and index keys, on real stored bodies and on every truncation and single-byte change.

use std::fmt;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::{audit_record, open, tid};
use crate::codec::decode_body;
use crate::index_keys::IndexKeys;
use crate::protect::PatientTag;
use crate::{AuditRecord, Store, TransferId};

/// The serde view the walk used before `IndexKeys`: `StoredRecord`'s fields in order,
/// strings as bytes.
#[derive(Deserialize)]
struct RecordView<'a> {
    _time_ms: u64,
    #[serde(borrow)]
    _event: &'a [u8],
    transfer_id: Option<TransferId>,
    #[serde(borrow)]
    _peer: Option<&'a [u8]>,
    #[serde(borrow)]
    patient: Option<PatientView<'a>>,
    #[serde(borrow)]
    _purpose: Option<&'a [u8]>,
    #[serde(borrow)]
    _clinician: Option<&'a [u8]>,
    #[serde(borrow)]
    _outcome: &'a [u8],
    #[serde(borrow)]
    _reason: Option<&'a [u8]>,
    _policy_ids: SkipStrs,
    break_glass: bool,
}

#[derive(Deserialize)]
struct PatientView<'a> {
    tag: PatientTag,
    #[serde(borrow)]
    _sealed: &'a [u8],
}

struct SkipStrs;

impl<'de> Deserialize<'de> for SkipStrs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SkipStrs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SkipStrs, A::Error> {
                while seq.next_element::<&'de [u8]>()?.is_some() {}
                Ok(SkipStrs)
            }
        }
        deserializer.deserialize_seq(V)
    }
}

/// What serde reads of `body`, in `IndexKeys`'s terms.
type Read = (u64, Option<TransferId>, Option<PatientTag>, bool);

fn by_serde(body: &[u8]) -> Option<Read> {
    let (seq, v): (u64, RecordView<'_>) = decode_body("test", body).ok()?;
    Some((seq, v.transfer_id, v.patient.map(|p| p.tag), v.break_glass))
}

fn by_hand(body: &[u8]) -> Option<Read> {
    let k = IndexKeys::parse(body)?;
    Some((
        k.seq,
        k.transfer_id.copied(),
        k.patient_tag.copied(),
        k.break_glass,
    ))
}

/// Stored bodies of entries covering every optional field present and absent, long fields
/// (two-byte length varints) and many policy ids.
fn stored_bodies() -> Vec<Vec<u8>> {
    let (_dir, store) = open();
    let long = "x".repeat(300);
    let mut records: Vec<AuditRecord> = vec![
        audit_record(Some("Patient/p1"), Some(tid(1)), false),
        audit_record(None, None, false),
        audit_record(Some("Patient/p2"), None, true),
        audit_record(None, Some(tid(2)), true),
    ];
    let mut bare = audit_record(None, None, false);
    bare.peer = None;
    bare.purpose = None;
    bare.clinician = None;
    bare.policy_ids = Vec::new();
    records.push(bare);
    let mut full = audit_record(Some(&format!("Patient/{long}")), Some(tid(3)), true);
    full.reason = Some(long.clone());
    full.event = long.clone();
    full.policy_ids = (0..200).map(|i| format!("policy-{i}")).collect();
    full.time_ms = u64::MAX;
    records.push(full);
    for r in records {
        store.audit_append(r).expect("append");
    }
    bodies_of(&store)
}

fn bodies_of(store: &Store) -> Vec<Vec<u8>> {
    store
        .trees()
        .audit
        .iter()
        .map(|item| {
            let (_, value) = item.expect("read");
            let (_, _, body) = crate::audit::split_stored(&value).expect("split");
            body.to_vec()
        })
        .collect()
}

#[test]
fn reads_real_bodies_as_serde_does() {
    let bodies = stored_bodies();
    assert_eq!(bodies.len(), 6);
    for (i, body) in bodies.iter().enumerate() {
        let read = by_hand(body);
        assert!(read.is_some(), "body {i} refused");
        assert_eq!(read, by_serde(body), "body {i}");
        assert_eq!(read.map(|r| r.0), Some(i as u64 + 1));
    }
    // The fields the index needs come out as appended.
    assert_eq!(by_hand(&bodies[0]).and_then(|r| r.1), Some(tid(1)));
    assert!(by_hand(&bodies[0]).and_then(|r| r.2).is_some());
    assert_eq!(
        by_hand(&bodies[1]).map(|r| (r.1, r.2, r.3)),
        Some((None, None, false))
    );
    assert_eq!(by_hand(&bodies[2]).map(|r| (r.1, r.3)), Some((None, true)));
}

#[test]
fn agrees_with_serde_on_every_truncation_and_byte_change() {
    let mut checked = 0u64;
    for body in stored_bodies() {
        for len in 0..body.len() {
            let cut = &body[..len];
            assert_eq!(by_hand(cut), by_serde(cut), "truncated to {len}");
            assert_eq!(by_hand(cut), None, "a truncated body is refused");
            checked += 1;
        }
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(by_hand(&longer), None, "trailing bytes are refused");
        assert_eq!(by_serde(&longer), None);
        for at in 0..body.len() {
            let orig = body[at];
            for b in [0x00, 0x01, 0x02, 0x7f, 0x80, 0xff, orig ^ 0x01, orig ^ 0x80] {
                let mut changed = body.clone();
                changed[at] = b;
                assert_eq!(
                    by_hand(&changed),
                    by_serde(&changed),
                    "byte {at} := {b:#04x}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 10_000, "{checked} variants");
}

#[test]
fn varints_follow_postcard_limits() {
    // seq = u64::MAX in ten bytes, then a minimal record: accepted by both.
    let mut body = vec![0xff; 9];
    body.push(0x01);
    let rest = [
        0x00, // time_ms
        0x00, // event ""
        0x00, // transfer_id None
        0x00, // peer None
        0x00, // patient None
        0x00, // purpose None
        0x00, // clinician None
        0x00, // outcome ""
        0x00, // reason None
        0x00, // policy_ids []
        0x00, // break_glass false
    ];
    body.extend_from_slice(&rest);
    assert_eq!(by_hand(&body).map(|r| r.0), Some(u64::MAX));
    assert_eq!(by_hand(&body), by_serde(&body));
    // A tenth byte above 1 overflows u64; an eleventh continuation byte is too long.
    let mut over = body.clone();
    over[9] = 0x02;
    assert_eq!(by_hand(&over), None);
    assert_eq!(by_serde(&over), None);
    let mut long = vec![0xff; 10];
    long.push(0x00);
    long.extend_from_slice(&rest);
    assert_eq!(by_hand(&long), None);
    assert_eq!(by_serde(&long), None);
    // A non-minimal varint (0 as 0x80 0x00) is accepted by both, as postcard does.
    let mut padded = vec![0x80, 0x00];
    padded.extend_from_slice(&rest);
    assert_eq!(by_hand(&padded).map(|r| r.0), Some(0));
    assert_eq!(by_hand(&padded), by_serde(&padded));
}
