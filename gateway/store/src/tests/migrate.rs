//! Migration of a format-1 store (patient references in clear), written here by a small
//! writer of the old layout: the layout of `gateway-store` before patient protection
//! (`git show 62ba9c8:gateway/store/src/audit.rs`, `audited.rs`, `collections.rs`).

use std::path::Path;

use super::protect::{assert_no_clear_text, PATIENTS};
use super::{audit_record, inbox_entry, outbox_entry, tid};
use crate::audit::StoredEntry;
use crate::codec::encode;
use crate::migrate::{self, chain_hash_v1, MIGRATED, MIGRATING, PREVIOUS};
use crate::protect::{IfMissing, Keys};
use crate::{
    AuditEntry, AuditFilter, AuditRecord, Store, StoreError, TransferState, STORE_MIGRATED_EVENT,
};

/// What the legacy writer put in the store, to compare with what the migrated store returns.
struct Legacy {
    records: Vec<AuditRecord>,
    head_hash: [u8; 32],
}

fn open_db(path: &Path) -> sled::Db {
    sled::Config::new().path(path).open().expect("open sled")
}

/// Writes a format-1 store into `dir/sled`: the trees and encodings of the old code.
fn write_legacy(dir: &Path, entries: u32) -> Legacy {
    let db = open_db(&dir.join("sled"));
    let tree = |name: &str| db.open_tree(name).expect("tree");
    // Outbox: entry in clear, with its time and due indexes.
    let (outbox, by_time, due) = (tree("outbox"), tree("outbox_by_time"), tree("outbox_due"));
    for (i, patient) in PATIENTS.iter().enumerate() {
        let n = i as u32 + 1;
        let mut entry = outbox_entry(n, 100 + u64::from(n));
        entry.summary.patient_ref = (*patient).to_owned();
        if n == 1 {
            entry.state = TransferState::Delivered;
        }
        outbox
            .insert(tid(n), encode("outbox", &entry).expect("encode"))
            .expect("insert");
        by_time
            .insert(crate::time_key(entry.created_ms, &tid(n)), &[][..])
            .expect("insert");
        if entry.state.is_pending() {
            due.insert(crate::time_key(entry.next_attempt_ms, &tid(n)), &[][..])
                .expect("insert");
            // Its sealed envelope, a file of its own as format 1 kept it (a pending transfer
            // without one would be failed at open as lost in a crash).
            let spool = dir.join("spool/outbox");
            std::fs::create_dir_all(&spool).expect("spool dir");
            std::fs::write(spool.join(hex::encode(tid(n))), b"sealed envelope").expect("write");
        }
    }
    tree("inbox")
        .insert(
            tid(50),
            encode("inbox", &inbox_entry(50, 300)).expect("encode"),
        )
        .expect("insert");
    // Audit: chained with the version-1 hash over postcard((seq, record)), the patient index
    // `patient || 0x00 || seq_be`.
    let (audit, by_patient, by_transfer, glass, head) = (
        tree("audit"),
        tree("audit_by_patient"),
        tree("audit_by_transfer"),
        tree("audit_break_glass"),
        tree("audit_head"),
    );
    let mut records = Vec::new();
    let mut prev = [0u8; 32];
    for i in 0..entries {
        let seq = u64::from(i) + 1;
        let patient = (i % 5 != 4).then(|| PATIENTS[i as usize % PATIENTS.len()]);
        let transfer = (i % 3 != 0).then(|| tid(i % 4 + 1));
        let record = audit_record(patient, transfer, i % 6 == 0);
        let body = postcard::to_allocvec(&(seq, &record)).expect("encode");
        let hash = chain_hash_v1(&prev, &body);
        let value = encode(
            "audit",
            &StoredEntry {
                prev_hash: prev,
                hash,
                body: &body,
            },
        )
        .expect("encode");
        audit.insert(seq.to_be_bytes(), value).expect("insert");
        if let Some(p) = patient {
            let mut key = p.as_bytes().to_vec();
            key.push(0);
            key.extend_from_slice(&seq.to_be_bytes());
            by_patient.insert(key, &[][..]).expect("insert");
        }
        if let Some(id) = transfer {
            let mut key = id.to_vec();
            key.extend_from_slice(&seq.to_be_bytes());
            by_transfer.insert(key, &[][..]).expect("insert");
        }
        if record.break_glass {
            glass.insert(seq.to_be_bytes(), &[][..]).expect("insert");
        }
        prev = hash;
        records.push(record);
    }
    if entries > 0 {
        head.insert(
            b"head",
            encode("audit head", &(u64::from(entries), prev)).expect("encode"),
        )
        .expect("insert");
    }
    // Consents `(patient, bytes)`, indexed by `len_u32_be || patient || id`; requests and
    // records (keyed by patient) in clear.
    let (consents, consents_by_patient) = (tree("consents"), tree("consents_by_patient"));
    for (i, patient) in PATIENTS.iter().enumerate() {
        let id = format!("cd-{i}");
        let directive = format!(r#"{{"id":"{id}","patient":"{patient}"}}"#);
        consents
            .insert(
                id.as_bytes(),
                encode("consent", &(*patient, directive.as_bytes())).expect("encode"),
            )
            .expect("insert");
        let mut key = u32::try_from(patient.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        key.extend_from_slice(patient.as_bytes());
        key.extend_from_slice(id.as_bytes());
        consents_by_patient.insert(key, &[][..]).expect("insert");
        let request = format!(r#"{{"id":"r-{i}","patient":"{patient}"}}"#);
        tree("requests")
            .insert(
                format!("out:r-{i}"),
                encode("request", request.as_bytes()).expect("encode"),
            )
            .expect("insert");
        let bundle = format!(r#"{{"subject":"{patient}"}}"#).repeat(2000);
        tree("records")
            .insert(
                patient.as_bytes(),
                encode("record", bundle.as_bytes()).expect("encode"),
            )
            .expect("insert");
    }
    let meta = tree("store_meta");
    meta.insert(b"retention-indexed", &[1u8][..])
        .expect("insert");
    meta.insert(b"job-done:audit-backfill", &[1u8][..])
        .expect("insert");
    db.flush().expect("flush");
    Legacy {
        records,
        head_hash: prev,
    }
}

fn migrated_entries(store: &Store) -> Vec<AuditEntry> {
    store
        .audit_list(&AuditFilter::default())
        .expect("list")
        .into_iter()
        .filter(|e| e.record.event == STORE_MIGRATED_EVENT)
        .collect()
}

/// What every migrated store must satisfy: all data back in clear through the API, the
/// chain verifying with one `store-migrated` entry at its end, no leftovers of the swap.
fn assert_migrated(dir: &Path, store: &Store, legacy: &Legacy) {
    let n = legacy.records.len() as u64;
    assert_eq!(store.audit_verify(), Ok(n + 1));
    let all = store.audit_list(&AuditFilter::default()).expect("list");
    let replayed: Vec<AuditRecord> = all
        .iter()
        .take(legacy.records.len())
        .map(|e| e.record.clone())
        .collect();
    assert_eq!(replayed, legacy.records);
    let marker = migrated_entries(store);
    assert_eq!(marker.len(), 1);
    assert_eq!(marker[0].seq, n + 1);
    let reason = marker[0].record.reason.as_deref().expect("reason");
    assert!(reason.contains(&hex::encode(legacy.head_hash)), "{reason}");
    assert!(reason.contains(&format!("{n} audit entries")), "{reason}");
    for (i, patient) in PATIENTS.iter().enumerate() {
        let expected: Vec<u64> = all
            .iter()
            .filter(|e| e.record.patient_ref.as_deref() == Some(*patient))
            .map(|e| e.seq)
            .collect();
        let listed = store
            .audit_list(&AuditFilter {
                patient: Some((*patient).to_owned()),
                ..AuditFilter::default()
            })
            .expect("list");
        assert_eq!(listed.iter().map(|e| e.seq).collect::<Vec<_>>(), expected);
        let entry = store
            .outbox_get(&tid(i as u32 + 1))
            .expect("get")
            .expect("present");
        assert_eq!(entry.summary.patient_ref, *patient);
        let consents = store.consent_list(patient).expect("list");
        assert_eq!(consents.len(), 1, "{patient}");
        assert!(String::from_utf8_lossy(&consents[0].1).contains(patient));
        let request = store
            .request_get(&format!("out:r-{i}"))
            .expect("get")
            .expect("present");
        assert!(String::from_utf8_lossy(&request).contains(patient));
        let record = store.record_get(patient).expect("get").expect("present");
        assert_eq!(
            record.len(),
            format!(r#"{{"subject":"{patient}"}}"#).len() * 2000
        );
    }
    // The untouched trees came along.
    assert_eq!(
        store.inbox_get(&tid(50)).expect("get"),
        Some(inbox_entry(50, 300))
    );
    assert!(store.job_done("audit-backfill").expect("job"));
    assert_eq!(store.outbox_pending_iter().count(), PATIENTS.len() - 1);
    for leftover in [MIGRATING, MIGRATED, PREVIOUS] {
        assert!(!dir.join(leftover).exists(), "{leftover} left behind");
    }
}

#[tokio::test]
async fn a_format_1_store_migrates_once_and_then_holds_no_patient_in_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let legacy = write_legacy(dir.path(), 60);
    // The fixture is what it claims: the old layout has the patients in clear.
    let clear = super::protect::files_under(dir.path())
        .iter()
        .any(|(_, bytes)| bytes.windows(15).any(|w| w == PATIENTS[0].as_bytes()));
    assert!(clear, "the legacy store holds the patient in clear");

    let store = Store::open(dir.path()).expect("open migrates");
    assert_migrated(dir.path(), &store, &legacy);
    store.commit().await.expect("commit");
    drop(store);
    assert_no_clear_text(dir.path(), &PATIENTS);

    // A reopen does not migrate again, and the store works as any other.
    let store = Store::open(dir.path()).expect("reopen");
    assert_migrated(dir.path(), &store, &legacy);
    store
        .audit_append(audit_record(Some(PATIENTS[0]), None, false))
        .expect("append");
    assert_eq!(store.audit_verify(), Ok(62));
}

#[test]
fn a_broken_format_1_chain_is_not_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_legacy(dir.path(), 20);
    {
        let db = open_db(&dir.path().join("sled"));
        let audit = db.open_tree("audit").expect("tree");
        let mut value = audit
            .get(7u64.to_be_bytes())
            .expect("get")
            .expect("present")
            .to_vec();
        let last = value.len() - 1;
        value[last] ^= 1;
        audit.insert(7u64.to_be_bytes(), value).expect("tamper");
        db.flush().expect("flush");
    }
    for _ in 0..2 {
        match Store::open(dir.path()) {
            Err(StoreError::MigrationRefused { from: 1, reason }) => {
                assert!(reason.contains("seq 7"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The old store is left as it was, and no partial copy stays behind.
        assert!(!dir.path().join(MIGRATING).exists());
        let db = open_db(&dir.path().join("sled"));
        assert_eq!(db.open_tree("audit").expect("tree").len(), 20);
        assert!(db
            .open_tree("store_meta")
            .expect("tree")
            .get(migrate::FORMAT_KEY)
            .expect("get")
            .is_none());
    }
}

#[test]
fn an_empty_format_1_store_needs_no_migration() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open_db(&dir.path().join("sled"));
        db.open_tree("store_meta")
            .expect("tree")
            .insert(b"retention-indexed", &[1u8][..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let store = Store::open(dir.path()).expect("open");
    assert_eq!(store.audit_len(), 0);
    assert_eq!(store.audit_verify(), Ok(0));
}

/// Builds the migrated copy of the legacy store in `dir` as a migration would, stopping
/// before the swap, as a crash there would.
fn build_only(dir: &Path) {
    let keys = Keys::load(dir, IfMissing::Create).expect("keys");
    let spool = crate::spool::SpoolDirs::new(&dir.join("spool"));
    let old = open_db(&dir.join("sled"));
    let open = |p: &Path| -> Result<sled::Db, StoreError> { Ok(open_db(p)) };
    migrate::build(&old, &dir.join(MIGRATING), &open, &keys, &spool).expect("build");
}

#[tokio::test]
async fn an_interrupted_migration_is_finished_or_redone_at_the_next_open() {
    // Crashed while building: the partial copy is discarded and the migration redone.
    let dir = tempfile::tempdir().expect("tempdir");
    let legacy = write_legacy(dir.path(), 30);
    build_only(dir.path());
    std::fs::write(dir.path().join(MIGRATING).join("junk"), b"partial").expect("write");
    let store = Store::open(dir.path()).expect("open");
    assert_migrated(dir.path(), &store, &legacy);
    drop(store);
    assert_no_clear_text(dir.path(), &PATIENTS);

    // Crashed after the copy was complete, before the old store was moved away.
    let dir = tempfile::tempdir().expect("tempdir");
    let legacy = write_legacy(dir.path(), 30);
    build_only(dir.path());
    std::fs::rename(dir.path().join(MIGRATING), dir.path().join(MIGRATED)).expect("rename");
    let store = Store::open(dir.path()).expect("open");
    assert_migrated(dir.path(), &store, &legacy);
    drop(store);
    assert_no_clear_text(dir.path(), &PATIENTS);

    // Crashed between moving the old store away and moving the new one in.
    let dir = tempfile::tempdir().expect("tempdir");
    let legacy = write_legacy(dir.path(), 30);
    build_only(dir.path());
    std::fs::rename(dir.path().join(MIGRATING), dir.path().join(MIGRATED)).expect("rename");
    std::fs::rename(dir.path().join("sled"), dir.path().join(PREVIOUS)).expect("rename");
    let store = Store::open(dir.path()).expect("open");
    assert_migrated(dir.path(), &store, &legacy);
    drop(store);
    assert_no_clear_text(dir.path(), &PATIENTS);
}
