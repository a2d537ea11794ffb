//! Patient identifiers at rest: none in clear in any file of the store directory, all of them
//! back on read, and the key file's checks.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{audit_record, inbox_entry, open, outbox_entry, reopen, tid};
use crate::{AuditFilter, AuditRecord, SpoolKind, Store, StoreError, TransferState};

/// Patient references the tests write: an SSN-like id, a name, and two ids one of which
/// extends the other.
pub(super) const PATIENTS: [&str; 4] = [
    "pat-123-45-6789",
    "Jane Quinn Doe-Smithson",
    "pat-77",
    "pat-770",
];

/// Every file under `dir`, recursively, as (path, bytes).
pub(super) fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                out.push((path, bytes));
            }
        }
    }
    out
}

/// Asserts that no file under `dir` contains any of `needles`, as UTF-8 or as UTF-16LE.
pub(super) fn assert_no_clear_text(dir: &Path, needles: &[&str]) {
    let files = files_under(dir);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("db")),
        "sled's data file is among the files checked"
    );
    for needle in needles {
        let utf16: Vec<u8> = needle.encode_utf16().flat_map(u16::to_le_bytes).collect();
        for form in [needle.as_bytes(), utf16.as_slice()] {
            for (path, bytes) in &files {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form),
                    "{} holds a patient reference in clear",
                    path.display()
                );
            }
        }
    }
}

fn about(patient: &str, event: &str, n: u32) -> AuditRecord {
    let mut r = audit_record(Some(patient), Some(tid(n)), n % 2 == 0);
    r.event = event.into();
    r
}

/// Writes every kind of value the store holds, each naming one of [`PATIENTS`].
fn write_everything(store: &Store) {
    for (i, patient) in PATIENTS.iter().enumerate() {
        let n = i as u32 + 1;
        let mut entry = outbox_entry(n, 100 + u64::from(n));
        entry.summary.patient_ref = (*patient).to_owned();
        store
            .outbox_insert_audited(&entry, vec![about(patient, "submitted", n)])
            .expect("insert outbox");
        store
            .outbox_update_audited(&tid(n), |e| {
                e.state = TransferState::Delivered;
                e.last_error = None;
                vec![about(patient, "delivered", n)]
            })
            .expect("update outbox");
        let inbox_id = 100 + n;
        store
            .inbox_insert_audited(
                &inbox_entry(inbox_id, 200),
                vec![about(patient, "received", inbox_id)],
            )
            .expect("insert inbox");
        store
            .audit_append(about(patient, "fetched", n))
            .expect("append");
        store
            .audit_append_batch([
                about(patient, "policy-decision", n),
                about(patient, "acked", n),
            ])
            .expect("append batch");
        let directive = format!(r#"{{"id":"cd-{n}","patient":"{patient}","effect":"permit"}}"#);
        store
            .consent_put(patient, &format!("cd-{n}"), directive.as_bytes())
            .expect("consent");
        let request = format!(r#"{{"id":"r-{n}","patient":"{patient}","state":"pending"}}"#);
        store
            .request_put(&format!("out:r-{n}"), request.as_bytes())
            .expect("request");
        // Large enough for a sled blob file, which must be sealed too.
        let mut bundle = Vec::new();
        while bundle.len() < 300 * 1024 {
            bundle.extend_from_slice(format!(r#"{{"subject":"{patient}"}},"#).as_bytes());
        }
        store.record_put(patient, &bundle).expect("record");
        let mut w = store
            .spool_writer(&tid(n), SpoolKind::Outbox)
            .expect("spool");
        w.write_all(b"sealed envelope bytes").expect("write");
        w.finish().expect("finish");
    }
    // Retention removes the settled envelopes, auditing each with its patient.
    let expired = store
        .expire_envelopes(
            u64::MAX,
            100,
            |e| AuditRecord {
                patient_ref: e.patient_ref.clone(),
                ..about("unused", "envelope-removed", 0)
            },
            |_| None,
        )
        .expect("expire");
    assert_eq!(expired.removed.len(), PATIENTS.len());
}

#[tokio::test]
async fn no_patient_reference_is_stored_in_clear_and_all_read_back() {
    let (dir, store) = open();
    write_everything(&store);
    store.commit().await.expect("commit");
    // A reopen makes sled recover and rewrite its snapshot: that must be clean too.
    let store = reopen(&dir, store);
    store.commit().await.expect("commit");
    let audit_len = store.audit_len();
    drop(store);
    assert_no_clear_text(dir.path(), &PATIENTS);

    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.audit_verify(), Ok(audit_len));
    for (i, patient) in PATIENTS.iter().enumerate() {
        let n = i as u32 + 1;
        let entry = store.outbox_get(&tid(n)).expect("get").expect("present");
        assert_eq!(entry.summary.patient_ref, *patient);
        // Exact: "pat-77" does not see "pat-770"'s entries.
        let listed = store
            .audit_list(&AuditFilter {
                patient: Some((*patient).to_owned()),
                ..AuditFilter::default()
            })
            .expect("list");
        let events: Vec<&str> = listed.iter().map(|e| e.record.event.as_str()).collect();
        assert_eq!(
            events,
            [
                "submitted",
                "delivered",
                "received",
                "fetched",
                "policy-decision",
                "acked",
                "envelope-removed"
            ],
            "{patient}"
        );
        assert!(listed
            .iter()
            .all(|e| e.record.patient_ref.as_deref() == Some(*patient)));
        let consents = store.consent_list(patient).expect("consents");
        assert_eq!(consents.len(), 1, "{patient}");
        assert_eq!(consents[0].0, format!("cd-{n}"));
        assert_eq!(
            store
                .consent_get(&format!("cd-{n}"))
                .expect("get")
                .map(|(p, _)| p),
            Some((*patient).to_owned())
        );
        let request = store
            .request_get(&format!("out:r-{n}"))
            .expect("get")
            .expect("present");
        assert!(String::from_utf8(request).expect("utf8").contains(patient));
        let record = store.record_get(patient).expect("get").expect("present");
        assert!(record.starts_with(format!(r#"{{"subject":"{patient}"}}"#).as_bytes()));
    }
    assert_eq!(store.outbox_page(None, 10).expect("page").len(), 4);
    assert_eq!(store.outbox_iter().count(), 4);
    assert_eq!(store.request_list().expect("list").len(), 4);
    assert_eq!(store.record_get("pat-7").expect("get"), None);
    assert!(store.consent_list("pat-7").expect("list").is_empty());
}

#[tokio::test]
async fn a_sealed_value_moved_to_another_key_does_not_open() {
    let (_dir, store) = open();
    store.record_put("pat-1", b"one").expect("put");
    store.record_put("pat-2", b"two").expect("put");
    let t = store.trees();
    let k1 = store.keys().tag("pat-1");
    let k2 = store.keys().tag("pat-2");
    let v1 = t.records.get(k1).expect("get").expect("present");
    t.records.insert(k2, v1).expect("move");
    assert!(matches!(
        store.record_get("pat-2"),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(
        store.record_get("pat-1").expect("get"),
        Some(b"one".to_vec())
    );
}

fn key_path(dir: &Path) -> std::path::PathBuf {
    dir.join("patient-index.key")
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn key_problem(dir: &Path) -> String {
    match Store::open(dir) {
        Err(StoreError::KeyFile { problem, .. }) => problem.to_owned(),
        other => panic!("expected a key file refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_key_file_is_private_and_refused_otherwise() {
    let (dir, store) = open();
    store.record_put("pat-1", b"one").expect("put");
    store.commit().await.expect("commit");
    drop(store);
    let path = key_path(dir.path());
    let meta = std::fs::metadata(&path).expect("key file exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);

    for mode in [0o644, 0o640, 0o604, 0o660] {
        set_mode(&path, mode);
        assert!(
            key_problem(dir.path()).contains("group or others"),
            "{mode:o}"
        );
    }
    set_mode(&path, 0o600);
    let secret = std::fs::read(&path).expect("read");
    for len in [31, 33, 0] {
        let mut wrong = secret.clone();
        wrong.resize(len, 7);
        std::fs::write(&path, &wrong).expect("write");
        assert!(key_problem(dir.path()).contains("32 bytes"), "{len}");
    }
    // A store that holds sealed data does not silently start over with a new secret.
    std::fs::remove_file(&path).expect("remove");
    assert!(key_problem(dir.path()).contains("missing"));
    assert!(!path.exists());

    std::fs::write(&path, &secret).expect("restore");
    set_mode(&path, 0o600);
    let store = Store::open(dir.path()).expect("open with the key restored");
    assert_eq!(
        store.record_get("pat-1").expect("get"),
        Some(b"one".to_vec())
    );
}

#[tokio::test]
async fn the_secret_survives_reopen() {
    let (dir, store) = open();
    store
        .audit_append(audit_record(Some("pat-123-45-6789"), None, false))
        .expect("append");
    store
        .consent_put("pat-123-45-6789", "cd-1", b"{}")
        .expect("put");
    let index_keys = |store: &Store| -> Vec<Vec<u8>> {
        let t = store.trees();
        t.audit_by_patient
            .iter()
            .chain(t.consents_by_patient.iter())
            .chain(t.records.iter())
            .map(|item| item.expect("read").0.to_vec())
            .collect()
    };
    let secret = std::fs::read(key_path(dir.path())).expect("read");
    let before = index_keys(&store);
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    assert_eq!(std::fs::read(key_path(dir.path())).expect("read"), secret);
    assert_eq!(index_keys(&store), before);
    let again = store
        .audit_append(audit_record(Some("pat-123-45-6789"), None, false))
        .expect("append");
    let listed = store
        .audit_list(&AuditFilter {
            patient: Some("pat-123-45-6789".into()),
            ..AuditFilter::default()
        })
        .expect("list");
    assert_eq!(
        listed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, again.seq]
    );
    assert_eq!(
        store.consent_list("pat-123-45-6789").expect("list").len(),
        1
    );
    // Another store's secret is another key: same patient, different tag.
    let (_other_dir, other) = open();
    assert_ne!(
        other.keys().tag("pat-123-45-6789"),
        store.keys().tag("pat-123-45-6789")
    );
}

#[test]
fn a_store_of_a_newer_format_is_refused() {
    let (dir, store) = open();
    store
        .trees()
        .store_meta
        .insert(
            crate::migrate::FORMAT_KEY,
            crate::codec::encode("store format", &4u32).expect("encode"),
        )
        .expect("insert");
    drop(store);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::UnsupportedFormat {
            found: 4,
            supported: 3
        })
    ));
}
