//! `TrustHandle` with real `pki` material and a real store in a temp dir: the highest directory
//! accepted survives a reopen, and what is refused leaves the current view in place.

use std::time::Duration;

use pki_tools::Federation;

use super::*;

struct Setup {
    tmp: tempfile::TempDir,
    fed: Federation,
    config: Arc<NodeConfig>,
    identity: NodeIdentity,
}

fn setup() -> Setup {
    let f = crate::trust::fixture::one_facility();
    let identity = NodeIdentity::load(&f.config).unwrap();
    Setup {
        tmp: f.tmp,
        fed: f.fed,
        config: f.config,
        identity,
    }
}

fn store(s: &Setup) -> Store {
    Store::open(&s.tmp.path().join("data")).unwrap()
}

#[test]
fn an_older_directory_is_refused_on_reload_and_at_the_next_open() {
    let mut s = setup();
    let v1 = std::fs::read(&s.config.federation.directory).unwrap();
    s.fed.publish(Duration::from_secs(86_400)).unwrap();
    {
        let handle = TrustHandle::open(s.config.clone(), &s.identity, store(&s)).unwrap();
        assert_eq!(handle.current().directory.version, 2);
        std::fs::write(&s.config.federation.directory, &v1).unwrap();
        let refused = handle.reload_if_changed(&s.identity).unwrap_err();
        assert!(
            matches!(
                refused,
                TrustError::DirectoryRollback {
                    version: 1,
                    seen: 2
                }
            ),
            "{refused}"
        );
        assert_eq!(handle.current().directory.version, 2);
    }
    // A new process on the same store: version 1 refuses the start.
    let refused = TrustHandle::open(s.config.clone(), &s.identity, store(&s))
        .err()
        .unwrap();
    assert!(
        matches!(
            refused,
            TrustError::DirectoryRollback {
                version: 1,
                seen: 2
            }
        ),
        "{refused}"
    );
}

#[test]
fn a_crl_that_does_not_verify_leaves_the_current_one() {
    let s = setup();
    let handle = TrustHandle::open(s.config.clone(), &s.identity, store(&s)).unwrap();
    let before = handle.current().crl;
    let pem = std::fs::read(&s.config.federation.crl).unwrap();
    let mut der = rustls_pemfile::crls(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = format!(
        "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
    );
    std::fs::write(&s.config.federation.crl, tampered).unwrap();
    let refused = handle.reload_if_changed(&s.identity).unwrap_err();
    assert!(
        refused
            .to_string()
            .ends_with("CRL refused: CRL signature does not verify with the federation CA key"),
        "{refused}"
    );
    assert_eq!(handle.current().crl, before);
    assert_eq!(handle.usable(), Ok(()));
}
