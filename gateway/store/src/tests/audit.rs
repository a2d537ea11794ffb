use ring::digest;

use super::{audit_record, open, reopen, tid};
use crate::{AuditChainError, AuditEntry, AuditFilter, AuditRecord, ChainProblem, Store};

/// The body the store hashes and keeps for `record` at `seq` (its patient sealed afresh):
/// `postcard((seq, stored record))`.
fn stored_body(store: &Store, seq: u64, record: &AuditRecord) -> Vec<u8> {
    let mut sealed = Vec::new();
    let (stored, _) =
        crate::audit::StoredRecord::seal(store.keys(), seq, record, &mut sealed).expect("seal");
    postcard::to_allocvec(&(seq, &stored)).expect("encode")
}

/// The patient index key of entry `seq` about `patient`.
fn patient_index_key(store: &Store, patient: &str, seq: u64) -> Vec<u8> {
    crate::audit::patient_key(&store.keys().tag(patient), seq).to_vec()
}

/// The stored body of entry `seq`, as read from the tree.
fn body_of(store: &Store, seq: u64) -> Vec<u8> {
    let value = store
        .trees()
        .audit
        .get(seq.to_be_bytes())
        .expect("get")
        .expect("present");
    let (_, _, body) = crate::audit::split_stored(&value).expect("parse");
    body.to_vec()
}

/// Appends `n` entries cycling over 7 patients, 5 transfers and every 10th break-glass.
fn fill(store: &Store, n: u32) -> Vec<AuditEntry> {
    (0..n)
        .map(|i| {
            let patient = (i % 7 != 6).then(|| format!("Patient/{}", i % 7));
            let transfer = (i % 3 != 0).then(|| tid(i % 5));
            let record = audit_record(patient.as_deref(), transfer, i % 10 == 0);
            store.audit_append(record).expect("append")
        })
        .collect()
}

fn seqs(entries: &[AuditEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

#[test]
fn append_links_entries_and_verify_counts_them() {
    let (_dir, store) = open();
    let entries = fill(&store, 3000);
    assert_eq!(store.audit_len(), 3000);
    assert_eq!(store.audit_verify(), Ok(3000));
    assert_eq!(
        entries.first().map(|e| (e.seq, e.prev_hash)),
        Some((1, [0; 32]))
    );
    for pair in entries.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    // The hash is the documented formula over the stored body, computed independently here;
    // the body holds the patient sealed, not in clear.
    let e = &entries[40];
    let body = body_of(&store, e.seq);
    let patient = e
        .record
        .patient_ref
        .as_deref()
        .expect("entry 41 has a patient");
    assert!(!body.windows(patient.len()).any(|w| w == patient.as_bytes()));
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"healthfed/audit/2");
    ctx.update(&e.prev_hash);
    ctx.update(&body);
    assert_eq!(ctx.finish().as_ref(), &e.hash[..]);
    // What list returns is what append returned.
    let all = store.audit_list(&AuditFilter::default()).expect("list");
    assert_eq!(all, entries);
}

#[test]
fn zero_time_is_stamped() {
    let (_dir, store) = open();
    let mut record = audit_record(None, None, false);
    record.time_ms = 0;
    let entry = store.audit_append(record).expect("append");
    assert!(
        entry.record.time_ms > 1_600_000_000_000,
        "{}",
        entry.record.time_ms
    );
    let mut record = audit_record(None, None, false);
    record.time_ms = 5;
    assert_eq!(
        store.audit_append(record).expect("append").record.time_ms,
        5
    );
}

#[test]
fn empty_log_verifies() {
    let (_dir, store) = open();
    assert_eq!(store.audit_len(), 0);
    assert_eq!(store.audit_verify(), Ok(0));
}

fn tampered(seq: u64, at: usize) -> AuditChainError {
    let (_dir, store) = open();
    fill(&store, 200);
    let tree = &store.trees().audit;
    let key = seq.to_be_bytes();
    let mut value = tree.get(key).expect("get").expect("present").to_vec();
    let at = at.min(value.len() - 1);
    value[at] ^= 0x01;
    tree.insert(key, value).expect("tamper");
    store
        .audit_verify()
        .expect_err("tampering must be detected")
}

#[test]
fn a_changed_byte_is_detected_at_its_seq() {
    // Layout: version byte, prev_hash (32), hash (32), body length, body.
    assert_eq!(
        tampered(77, 0),
        AuditChainError {
            seq: 77,
            problem: ChainProblem::Undecodable
        }
    );
    assert_eq!(
        tampered(77, 5),
        AuditChainError {
            seq: 77,
            problem: ChainProblem::PrevHashMismatch
        }
    );
    assert_eq!(
        tampered(77, 40),
        AuditChainError {
            seq: 77,
            problem: ChainProblem::HashMismatch
        }
    );
    assert_eq!(
        tampered(77, 90),
        AuditChainError {
            seq: 77,
            problem: ChainProblem::HashMismatch
        }
    );
    assert_eq!(
        tampered(1, usize::MAX),
        AuditChainError {
            seq: 1,
            problem: ChainProblem::HashMismatch
        }
    );
    assert_eq!(
        tampered(200, 100),
        AuditChainError {
            seq: 200,
            problem: ChainProblem::HashMismatch
        }
    );
}

#[test]
fn a_deleted_entry_is_detected_at_its_seq() {
    let (_dir, store) = open();
    fill(&store, 200);
    let tree = &store.trees().audit;
    tree.remove(50u64.to_be_bytes()).expect("delete");
    assert_eq!(
        store.audit_verify(),
        Err(AuditChainError {
            seq: 50,
            problem: ChainProblem::Missing
        })
    );
}

#[test]
fn a_truncated_tail_is_detected() {
    let (_dir, store) = open();
    fill(&store, 20);
    let tree = &store.trees().audit;
    tree.remove(20u64.to_be_bytes()).expect("delete");
    tree.remove(19u64.to_be_bytes()).expect("delete");
    assert_eq!(
        store.audit_verify(),
        Err(AuditChainError {
            seq: 19,
            problem: ChainProblem::Missing
        })
    );
}

#[test]
fn a_rewritten_entry_with_a_consistent_hash_breaks_the_next_link() {
    let (_dir, store) = open();
    let entries = fill(&store, 30);
    // Recompute entry 10 honestly after changing it: its own hash is fine, entry 11's link is not.
    let victim = &entries[9];
    let mut record = victim.record.clone();
    record.outcome = "denied".into();
    let body = stored_body(&store, victim.seq, &record);
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"healthfed/audit/2");
    ctx.update(&victim.prev_hash);
    ctx.update(&body);
    let mut hash = [0; 32];
    hash.copy_from_slice(ctx.finish().as_ref());
    let mut value = vec![1u8];
    value.extend_from_slice(&victim.prev_hash);
    value.extend_from_slice(&hash);
    value = postcard::to_extend(&body, value).expect("encode");
    store
        .trees()
        .audit
        .insert(victim.seq.to_be_bytes(), value)
        .expect("rewrite");
    assert_eq!(
        store.audit_verify(),
        Err(AuditChainError {
            seq: 11,
            problem: ChainProblem::PrevHashMismatch
        })
    );
}

#[test]
fn index_tampering_is_detected_at_the_entry() {
    let (_dir, store) = open();
    fill(&store, 100);
    let t = store.trees();
    // Entry 30 is about Patient/1 (29 % 7 == 1).
    let key = patient_index_key(&store, "Patient/1", 30);
    assert!(t.audit_by_patient.remove(&key).expect("remove").is_some());
    assert_eq!(
        store.audit_verify(),
        Err(AuditChainError {
            seq: 30,
            problem: ChainProblem::IndexMismatch { index: "patient" }
        })
    );
    t.audit_by_patient.insert(&key, &[][..]).expect("restore");
    assert_eq!(store.audit_verify(), Ok(100));
    // A stray key attributing entry 12 to another patient.
    let stray = patient_index_key(&store, "Patient/other", 12);
    t.audit_by_patient.insert(&stray, &[][..]).expect("insert");
    assert_eq!(
        store.audit_verify(),
        Err(AuditChainError {
            seq: 12,
            problem: ChainProblem::IndexMismatch { index: "patient" }
        })
    );
    t.audit_by_patient.remove(&stray).expect("remove");
    // Entry 61 is break-glass (60 % 10 == 0); hiding it from the break-glass index.
    t.audit_break_glass
        .remove(61u64.to_be_bytes())
        .expect("remove");
    assert_eq!(
        store.audit_verify(),
        Err(AuditChainError {
            seq: 61,
            problem: ChainProblem::IndexMismatch {
                index: "break-glass"
            }
        })
    );
}

#[tokio::test]
async fn reopen_continues_the_chain() {
    let (dir, store) = open();
    let first = fill(&store, 10);
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    assert_eq!(store.audit_len(), 10);
    let second = fill(&store, 10);
    assert_eq!(second[0].seq, 11);
    assert_eq!(second[0].prev_hash, first[9].hash);
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    assert_eq!(store.audit_verify(), Ok(20));
}

#[test]
fn query_by_patient_is_exact_and_ordered() {
    let (_dir, store) = open();
    let entries = fill(&store, 100);
    // Patient/1 and a patient whose reference extends it.
    store
        .audit_append(super::audit_record(Some("Patient/1x"), None, false))
        .expect("append");
    let got = store
        .audit_list(&AuditFilter {
            patient: Some("Patient/1".into()),
            ..AuditFilter::default()
        })
        .expect("list");
    let expected: Vec<u64> = entries
        .iter()
        .filter(|e| e.record.patient_ref.as_deref() == Some("Patient/1"))
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs(&got), expected);
    assert!(!expected.is_empty());
    // Paging with since_seq (exclusive) and limit.
    let page = store
        .audit_list(&AuditFilter {
            patient: Some("Patient/1".into()),
            since_seq: Some(expected[2]),
            limit: Some(3),
            ..AuditFilter::default()
        })
        .expect("list");
    assert_eq!(seqs(&page), expected[3..6].to_vec());
    // A reference containing NUL is stored and queried exactly, without disturbing others.
    let odd = store
        .audit_append(super::audit_record(Some("Patient/1\0x"), None, false))
        .expect("append");
    let only_odd = store
        .audit_list(&AuditFilter {
            patient: Some("Patient/1\0x".into()),
            ..AuditFilter::default()
        })
        .expect("list");
    assert_eq!(only_odd, vec![odd]);
    let again = store
        .audit_list(&AuditFilter {
            patient: Some("Patient/1".into()),
            ..AuditFilter::default()
        })
        .expect("list");
    assert_eq!(seqs(&again), expected);
    assert_eq!(store.audit_verify(), Ok(102));
    let none = store
        .audit_list(&AuditFilter {
            patient: Some("Patient/nobody".into()),
            ..AuditFilter::default()
        })
        .expect("list");
    assert!(none.is_empty());
}

#[test]
fn query_by_transfer_and_break_glass() {
    let (_dir, store) = open();
    let entries = fill(&store, 100);
    let by_transfer = store
        .audit_list(&AuditFilter {
            transfer_id: Some(tid(2)),
            ..AuditFilter::default()
        })
        .expect("list");
    let expected: Vec<u64> = entries
        .iter()
        .filter(|e| e.record.transfer_id == Some(tid(2)))
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs(&by_transfer), expected);
    assert!(!expected.is_empty());

    let glass = store
        .audit_list(&AuditFilter {
            break_glass_only: true,
            ..AuditFilter::default()
        })
        .expect("list");
    assert_eq!(
        seqs(&glass),
        (0..10).map(|i| i * 10 + 1).collect::<Vec<u64>>()
    );

    // Combined: Patient/0 and break-glass (i % 70 == 0 → seqs 1, 71).
    let both = store
        .audit_list(&AuditFilter {
            patient: Some("Patient/0".into()),
            break_glass_only: true,
            ..AuditFilter::default()
        })
        .expect("list");
    assert_eq!(seqs(&both), vec![1, 71]);

    let tail = store
        .audit_list(&AuditFilter {
            since_seq: Some(95),
            ..AuditFilter::default()
        })
        .expect("list");
    assert_eq!(seqs(&tail), vec![96, 97, 98, 99, 100]);
    let past_end = store
        .audit_list(&AuditFilter {
            since_seq: Some(u64::MAX),
            ..AuditFilter::default()
        })
        .expect("list");
    assert!(past_end.is_empty());
}

#[test]
fn debug_output_redacts_the_patient() {
    let record = audit_record(Some("Patient/secret-123"), Some(tid(1)), true);
    let shown = format!("{record:?}");
    assert!(!shown.contains("secret-123"), "{shown}");
    let filter = AuditFilter {
        patient: Some("Patient/secret-123".into()),
        ..AuditFilter::default()
    };
    assert!(!format!("{filter:?}").contains("secret-123"));
}

#[test]
fn batch_append_continues_the_chain_atomically() {
    let (_dir, store) = open();
    let single = fill(&store, 3);
    let batch = store
        .audit_append_batch((0..5).map(|i| audit_record(Some("Patient/b"), Some(tid(i)), false)))
        .expect("batch");
    assert_eq!(seqs(&batch), vec![4, 5, 6, 7, 8]);
    assert_eq!(batch[0].prev_hash, single[2].hash);
    assert!(store
        .audit_append_batch([])
        .expect("empty batch")
        .is_empty());
    assert_eq!(store.audit_len(), 8);
    let after = store
        .audit_append(audit_record(None, None, false))
        .expect("append");
    assert_eq!((after.seq, after.prev_hash), (9, batch[4].hash));
    assert_eq!(store.audit_verify(), Ok(9));
    let listed = store
        .audit_list(&AuditFilter {
            patient: Some("Patient/b".into()),
            ..AuditFilter::default()
        })
        .expect("list");
    assert_eq!(listed, batch);
}

#[test]
fn the_hand_parser_agrees_with_postcard() {
    let (_dir, store) = open();
    let entry = store
        .audit_append(audit_record(Some("Patient/1"), Some(tid(1)), true))
        .expect("append");
    let value = store
        .trees()
        .audit
        .get(entry.seq.to_be_bytes())
        .expect("get")
        .expect("present");
    let (prev, hash, body) = crate::audit::split_stored(&value).expect("parse");
    assert_eq!((*prev, *hash), (entry.prev_hash, entry.hash));
    assert_eq!(crate::audit::chain_hash(prev, body), entry.hash);
    // The body is the stored record; sealing again differs only in the nonce and ciphertext,
    // so the lengths agree.
    assert_eq!(
        body.len(),
        stored_body(&store, entry.seq, &entry.record).len()
    );
    let mut longer = value.to_vec();
    longer.push(0);
    assert!(crate::audit::split_stored(&longer).is_none());
    assert!(crate::audit::split_stored(&value[..60]).is_none());
}

/// Verifies with the chain walk split every way that matters for `store`'s log (one range,
/// a few, one per entry, more ranges than entries) and asserts they all agree; returns the
/// outcome. Each split must report exactly what the sequential walk reports.
fn verify_every_split(store: &Store) -> Result<u64, AuditChainError> {
    let sequential = store.audit_verify_in(1, 1);
    let len = store.audit_len();
    for parts in (2..=9).chain([len.saturating_sub(1), len, len + 1, 1000]) {
        assert_eq!(
            store.audit_verify_in(parts, 1),
            sequential,
            "split in {parts} ranges"
        );
    }
    assert_eq!(store.audit_verify(), sequential);
    sequential
}

/// Rewrites entry `victim` with a changed outcome and an honestly recomputed hash: the entry
/// itself verifies, only the next entry's link reveals it.
fn rewrite_consistently(store: &Store, victim: &AuditEntry) {
    let mut record = victim.record.clone();
    record.outcome = "denied".into();
    let body = stored_body(store, victim.seq, &record);
    let hash = crate::audit::chain_hash(&victim.prev_hash, &body);
    let mut value = vec![1u8];
    value.extend_from_slice(&victim.prev_hash);
    value.extend_from_slice(&hash);
    value = postcard::to_extend(&body, value).expect("encode");
    store
        .trees()
        .audit
        .insert(victim.seq.to_be_bytes(), value)
        .expect("rewrite");
}

fn broken(seq: u64, problem: ChainProblem) -> Result<u64, AuditChainError> {
    Err(AuditChainError { seq, problem })
}

#[test]
fn segment_starts_split_evenly_and_never_repeat() {
    use crate::audit::segment_starts;
    assert_eq!(segment_starts(200, 4, 1), vec![1, 51, 101, 151]);
    assert_eq!(segment_starts(3, 8, 1), vec![1, 2, 3]);
    assert_eq!(segment_starts(0, 4, 1), vec![1]);
    assert_eq!(segment_starts(7, 1, 1), vec![1]);
    assert_eq!(segment_starts(10_000_000, 2, 50_000), vec![1, 5_000_001]);
    // Too short to be worth a second thread.
    assert_eq!(segment_starts(60_000, 4, 50_000), vec![1]);
    assert_eq!(segment_starts(u64::MAX, 3, 1).len(), 3);
}

#[test]
fn split_walks_agree_on_a_sound_log_and_an_empty_one() {
    let (_dir, store) = open();
    assert_eq!(verify_every_split(&store), Ok(0));
    fill(&store, 1);
    assert_eq!(verify_every_split(&store), Ok(1));
    fill(&store, 199);
    assert_eq!(verify_every_split(&store), Ok(200));
}

#[test]
fn a_consistent_rewrite_at_a_range_boundary_breaks_the_link_across_it() {
    // With 4 ranges over 200 entries the ranges start at 1, 51, 101 and 151: entry 50 ends
    // the first range, so only the stitching can see that entry 51 no longer links to it.
    let (_dir, store) = open();
    let entries = fill(&store, 200);
    rewrite_consistently(&store, &entries[49]);
    assert_eq!(
        store.audit_verify_in(4, 1),
        broken(51, ChainProblem::PrevHashMismatch)
    );
    assert_eq!(
        verify_every_split(&store),
        broken(51, ChainProblem::PrevHashMismatch)
    );
}

#[test]
fn a_consistent_rewrite_of_the_first_entry_is_caught_by_the_first_link() {
    // Entry 1 re-linked to a non-zero prev_hash (and rehashed): its own hash is right, but
    // the chain must start from zeros, which only the first range's stitching knows.
    let (_dir, store) = open();
    let entries = fill(&store, 20);
    let mut victim = entries[0].clone();
    victim.prev_hash = [7; 32];
    rewrite_consistently(&store, &victim);
    assert_eq!(
        verify_every_split(&store),
        broken(1, ChainProblem::PrevHashMismatch)
    );
}

#[test]
fn missing_entries_at_range_boundaries_are_reported_at_the_first_gap() {
    let cases: [(&[u64], u64); 5] = [
        // The first entry of a range.
        (&[51], 51),
        // The last entry of a range: that range ends short of the next one's start.
        (&[50], 50),
        // A whole range: the walk arrives at range 101 still expecting 51.
        (&(51..=100).collect::<Vec<_>>(), 51),
        // Two gaps in different ranges: the smaller seq wins.
        (&[151, 60], 60),
        // The tail from a boundary on: only the head record reveals it.
        (&(151..=200).collect::<Vec<_>>(), 151),
    ];
    for (deleted, at) in cases {
        let (_dir, store) = open();
        fill(&store, 200);
        for seq in deleted {
            store
                .trees()
                .audit
                .remove(seq.to_be_bytes())
                .expect("delete");
        }
        assert_eq!(
            store.audit_verify_in(4, 1),
            broken(at, ChainProblem::Missing),
            "deleted {deleted:?}"
        );
        assert_eq!(
            verify_every_split(&store),
            broken(at, ChainProblem::Missing)
        );
    }
}

#[test]
fn malformed_keys_next_to_a_boundary_are_found_where_the_sequential_walk_finds_them() {
    // 50_be || 0x00 sorts between entries 50 and 51, at the end of the first of 4 ranges;
    // a 7-byte key sorts before entry 1.
    let mut after_50 = 50u64.to_be_bytes().to_vec();
    after_50.push(0);
    for (key, at) in [(after_50, 51), (vec![0u8; 7], 1)] {
        let (_dir, store) = open();
        let entries = fill(&store, 200);
        let value = store
            .trees()
            .audit
            .get(entries[0].seq.to_be_bytes())
            .expect("get")
            .expect("present");
        store.trees().audit.insert(&key, value).expect("insert");
        assert_eq!(
            store.audit_verify_in(4, 1),
            broken(at, ChainProblem::Undecodable)
        );
        assert_eq!(
            verify_every_split(&store),
            broken(at, ChainProblem::Undecodable)
        );
    }
}

#[test]
fn every_fault_at_every_boundary_matches_the_sequential_walk() {
    // Each kind of damage, at each seq around the boundaries of the splits above: the first
    // entry, both sides of each boundary of 4 ranges over 200 entries, and the last entry.
    for seq in [1u64, 2, 50, 51, 52, 100, 101, 150, 151, 199, 200] {
        for at in [0, 5, 40, 90, usize::MAX] {
            let (_dir, store) = open();
            fill(&store, 200);
            let tree = &store.trees().audit;
            let mut value = tree
                .get(seq.to_be_bytes())
                .expect("get")
                .expect("present")
                .to_vec();
            let at = at.min(value.len() - 1);
            value[at] ^= 0x01;
            tree.insert(seq.to_be_bytes(), value).expect("tamper");
            let got = verify_every_split(&store).expect_err("tampering must be detected");
            assert_eq!(got.seq, seq, "byte {at} of entry {seq}: {got}");
        }
    }
}

#[test]
fn an_entry_past_the_head_ends_every_split_walk() {
    // An entry beyond the head record (as if appended after verification started) is not
    // judged, whichever range it falls in, including after a gap.
    let (_dir, store) = open();
    let entries = fill(&store, 200);
    let value = store
        .trees()
        .audit
        .get(entries[199].seq.to_be_bytes())
        .expect("get")
        .expect("present");
    store
        .trees()
        .audit
        .insert(201u64.to_be_bytes(), value)
        .expect("insert");
    assert_eq!(verify_every_split(&store), Ok(200));
    for seq in [199u64, 200] {
        store
            .trees()
            .audit
            .remove(seq.to_be_bytes())
            .expect("delete");
    }
    assert_eq!(
        verify_every_split(&store),
        broken(199, ChainProblem::Missing)
    );
}

#[test]
fn index_faults_are_found_whatever_the_split() {
    let (_dir, store) = open();
    fill(&store, 100);
    // Entry 51 is about Patient/1 (50 % 7 == 1) and starts the second of 2 ranges.
    let key = patient_index_key(&store, "Patient/1", 51);
    assert!(store
        .trees()
        .audit_by_patient
        .remove(&key)
        .expect("remove")
        .is_some());
    assert_eq!(
        verify_every_split(&store),
        broken(51, ChainProblem::IndexMismatch { index: "patient" })
    );
}

#[test]
fn large_patient_queries_are_exact_across_batches_and_threads() {
    // 3 000 entries, two thirds about Patient/big: over two index batches of 1 024 keys, each
    // fetched on several threads.
    let (_dir, store) = open();
    let entries = store
        .audit_append_batch((0..3000u32).map(|i| {
            let patient = if i % 3 == 2 {
                "Patient/small"
            } else {
                "Patient/big"
            };
            audit_record(Some(patient), Some(tid(i % 2)), i % 10 == 0)
        }))
        .expect("append");
    let of = |patient: &str| -> Vec<u64> {
        entries
            .iter()
            .filter(|e| e.record.patient_ref.as_deref() == Some(patient))
            .map(|e| e.seq)
            .collect()
    };
    let big = of("Patient/big");
    assert_eq!(big.len(), 2000);
    let list = |filter: AuditFilter| store.audit_list(&filter).expect("list");
    let patient = |limit: Option<usize>, since_seq: Option<u64>| AuditFilter {
        patient: Some("Patient/big".into()),
        limit,
        since_seq,
        ..AuditFilter::default()
    };
    let all = list(patient(None, None));
    assert_eq!(seqs(&all), big);
    // What list returns is what append returned, entry for entry.
    let expected: Vec<AuditEntry> = entries
        .iter()
        .filter(|e| e.record.patient_ref.as_deref() == Some("Patient/big"))
        .cloned()
        .collect();
    assert_eq!(all, expected);
    for limit in [
        1, 100, 127, 128, 255, 256, 257, 1023, 1024, 1025, 1999, 2000, 2001,
    ] {
        let got = list(patient(Some(limit), None));
        assert_eq!(seqs(&got), big[..limit.min(2000)].to_vec(), "limit {limit}");
    }
    let got = list(patient(Some(1500), Some(big[100])));
    assert_eq!(seqs(&got), big[101..1601].to_vec());
    // A second condition rejects half of the index's candidates: the limit still counts
    // matches, across batches.
    let both = list(AuditFilter {
        patient: Some("Patient/big".into()),
        transfer_id: Some(tid(1)),
        limit: Some(700),
        ..AuditFilter::default()
    });
    let expected: Vec<u64> = entries
        .iter()
        .filter(|e| {
            e.record.patient_ref.as_deref() == Some("Patient/big")
                && e.record.transfer_id == Some(tid(1))
        })
        .map(|e| e.seq)
        .take(700)
        .collect();
    assert_eq!(seqs(&both), expected);
    assert_eq!(expected.len(), 700);
}

#[test]
fn a_large_query_reports_damage_only_where_a_one_by_one_walk_would() {
    let (_dir, store) = open();
    let entries = store
        .audit_append_batch((0..3000u32).map(|_| audit_record(Some("Patient/big"), None, false)))
        .expect("append");
    let filter = |limit: Option<usize>| AuditFilter {
        patient: Some("Patient/big".into()),
        limit,
        ..AuditFilter::default()
    };
    let audit = &store.trees().audit;
    // An entry deleted from under its index key is skipped.
    audit.remove(500u64.to_be_bytes()).expect("delete");
    let got = store.audit_list(&filter(None)).expect("list");
    assert_eq!(got.len(), 2999);
    assert!(!seqs(&got).contains(&500));
    // An undecodable entry fails the query only if the query reaches it.
    audit
        .insert(2500u64.to_be_bytes(), &[1u8, 0][..])
        .expect("corrupt");
    assert!(store.audit_list(&filter(None)).is_err());
    let before = store.audit_list(&filter(Some(2498))).expect("list");
    assert_eq!(seqs(&before).last(), Some(&entries[2498].seq));
    assert!(store.audit_list(&filter(Some(2499))).is_err());
}
