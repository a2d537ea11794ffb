//! Reloading the identity with real `pki` material in a temp dir.

use std::path::Path;

use pki_tools::directory::{verify_directory, Directory};

use super::*;

use crate::trust::fixture::{one_facility as setup, OneFacility as Setup};

fn directory(s: &Setup) -> Directory {
    let bytes = std::fs::read(&s.config.federation.directory).unwrap();
    verify_directory(&bytes, s.fed.ca_cert_der(), crate::trust::now_unix(), None).unwrap()
}

fn fingerprint(node: &Path) -> [u8; 32] {
    let cert = read_single_cert(&node.join("tls.crt")).unwrap();
    pki_tools::cert_fingerprint(&cert)
}

#[test]
fn a_rotated_set_is_used_once_listed_and_the_old_keys_keep_opening() {
    let mut s = setup();
    let handle = IdentityHandle::new(NodeIdentity::load(&s.config).unwrap(), s.config.clone());
    let first = handle.current();
    let dir = directory(&s);
    let me = dir.facility(&s.id);
    assert_eq!(
        handle.reload_if_changed(me).unwrap(),
        IdentityReload::Unchanged
    );

    // Rotated, not published: the new encryption key opens, nothing else changes.
    s.fed.rotate(&s.id, &s.node).unwrap();
    let waiting = handle.reload_if_changed(me).unwrap();
    assert_eq!(waiting, IdentityReload::WaitingForDirectory);
    let now = handle.current();
    assert_eq!(now.tls_fingerprint(), first.tls_fingerprint());
    assert_eq!(now.verifying_key(), first.verifying_key());
    assert_eq!(now.decryption_keys().len(), 2);
    assert_eq!(
        handle.reload_if_changed(me).unwrap(),
        IdentityReload::Unchanged
    );

    // Published: the new set is in use; the first keys still open and verify.
    s.fed
        .publish(std::time::Duration::from_secs(86_400))
        .unwrap();
    let dir = directory(&s);
    let me = dir.facility(&s.id);
    assert_eq!(
        handle.reload_if_changed(me).unwrap(),
        IdentityReload::Switched
    );
    let now = handle.current();
    assert_eq!(now.tls_fingerprint(), fingerprint(&s.node));
    assert_ne!(now.verifying_key(), first.verifying_key());
    assert!(now.holds_encryption_key(&first.encryption.public_key()));
    assert!(now.own_verifying_keys().contains(&first.verifying_key()));

    // A restart after a second rotation: pki keeps one previous set, the keyring the rest.
    s.fed.rotate(&s.id, &s.node).unwrap();
    let restarted = NodeIdentity::load(&s.config).unwrap();
    assert!(restarted.holds_encryption_key(&first.encryption.public_key()));
    assert!(restarted
        .own_verifying_keys()
        .contains(&first.verifying_key()));
    let ring = s.config.data_dir.join(KEYRING_DIR);
    let mode = std::fs::metadata(&ring).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn a_mismatched_set_is_refused_once_and_the_current_identity_stays() {
    let mut s = setup();
    let handle = IdentityHandle::new(NodeIdentity::load(&s.config).unwrap(), s.config.clone());
    let first = handle.current();
    s.fed.rotate(&s.id, &s.node).unwrap();
    s.fed
        .publish(std::time::Duration::from_secs(86_400))
        .unwrap();
    std::fs::copy(s.node.join("tls-previous.key"), s.node.join("tls.key")).unwrap();
    let dir = directory(&s);
    let me = dir.facility(&s.id);
    let refused = handle.reload_if_changed(me);
    assert!(
        matches!(refused, Err(IdentityError::TlsKeyMismatch { .. })),
        "{refused:?}"
    );
    assert_eq!(
        handle.reload_if_changed(me).unwrap(),
        IdentityReload::Unchanged
    );
    let now = handle.current();
    assert_eq!(now.tls_fingerprint(), first.tls_fingerprint());
    assert_eq!(now.verifying_key(), first.verifying_key());
    assert_eq!(now.decryption_keys().len(), 1);
}
