//! This node's own key material, loaded once at start. Every private key file must be mode 0600
//! (no group or other bits): a node refuses to start otherwise.

use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use gateway_envelope::{EncryptionSecretKey, SigningKey, VerifyingKey};
use pki_tools::keys::{load_ed25519_pkcs8, load_tls_key_der, load_x25519_private};

use crate::config::NodeConfig;
use crate::trust::{read_single_cert, TrustError};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Cert(#[from] TrustError),
    #[error("{path}: the certificate names facility {found}, but this node is {expected}")]
    WrongFacility {
        path: String,
        found: String,
        expected: String,
    },
}

pub struct NodeIdentity {
    pub tls_cert: CertificateDer<'static>,
    tls_key: Zeroizing<Vec<u8>>,
    pub signing: SigningKey,
    pub encryption: EncryptionSecretKey,
    pub previous_encryption: Option<EncryptionSecretKey>,
}

impl NodeIdentity {
    pub fn load(config: &NodeConfig) -> Result<NodeIdentity, IdentityError> {
        let keys = &config.keys;
        let key_err = |e: &dyn std::fmt::Display| IdentityError::Key(e.to_string());
        let tls_key = load_tls_key_der(&keys.tls_key).map_err(|e| key_err(&e))?;
        let signing_der = load_ed25519_pkcs8(&keys.signing_key).map_err(|e| key_err(&e))?;
        let signing = SigningKey::from_pkcs8(&signing_der)
            .map_err(|e| IdentityError::Key(format!("{}: {e}", keys.signing_key.display())))?;
        let encryption = EncryptionSecretKey::from_bytes(
            *load_x25519_private(&keys.encryption_key).map_err(|e| key_err(&e))?,
        );
        let previous_encryption = match &keys.previous_encryption_key {
            Some(path) => Some(EncryptionSecretKey::from_bytes(
                *load_x25519_private(path).map_err(|e| key_err(&e))?,
            )),
            None => None,
        };
        let tls_cert = read_single_cert(&keys.tls_cert)?;
        let found = pki_tools::facility_id_from_cert(&tls_cert)
            .map_err(|e| IdentityError::Key(format!("{}: {e}", keys.tls_cert.display())))?;
        if found != config.facility_id {
            return Err(IdentityError::WrongFacility {
                path: keys.tls_cert.display().to_string(),
                found: found.to_string(),
                expected: config.facility_id.to_string(),
            });
        }
        Ok(NodeIdentity {
            tls_cert,
            tls_key,
            signing,
            encryption,
            previous_encryption,
        })
    }

    pub fn tls_key_der(&self) -> &[u8] {
        &self.tls_key
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Current key first, then the previous one during a rotation overlap.
    pub fn decryption_keys(&self) -> Vec<&EncryptionSecretKey> {
        let mut keys = vec![&self.encryption];
        keys.extend(self.previous_encryption.as_ref());
        keys
    }
}
