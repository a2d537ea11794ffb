//! The federation operator's state: the root CA, the registered facilities and their
//! certificates, and publishing the CRL and the signed directory.
//!
//! Multi-file operations order their writes so that an interruption leaves something usable:
//! node files are staged under temporary names first, `federation.json` is the commit point,
//! and only then are staged files renamed into place.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::directory::{self, hex32, hex32_vec, Directory, FacilityEntry};
use crate::{
    cert, files, keys, layout, Endpoint, FacilityId, FacilityKind, FacilityStatus, PkiError,
};

const STATE_FORMAT: &str = "healthfed-federation/1";
/// CA validity: 20 years (including leap days).
const CA_VALIDITY: time::Duration = time::Duration::days(7305);
/// Facility TLS certificate validity.
const TLS_VALIDITY: time::Duration = time::Duration::days(365);
/// Certificates start slightly in the past so a peer whose clock lags still accepts them.
const BACKDATE: time::Duration = time::Duration::minutes(5);
/// CRL nextUpdate after thisUpdate, unless `publish_with` is given another.
pub const CRL_VALIDITY: Duration = Duration::from_secs(7 * 86_400);
/// Upper bound for a federation or facility name: X.520 ub-organization-name.
const MAX_NAME_LEN: usize = 64;

/// What `publish` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub crl_path: PathBuf,
    pub directory_path: PathBuf,
    /// The directory version just published.
    pub version: u64,
    /// The CRL number just published.
    pub crl_number: u64,
    /// Unix seconds: the directory's `expires_at`.
    pub directory_expires_at: i64,
    /// Unix seconds: the CRL's nextUpdate.
    pub crl_next_update: i64,
}

/// The `facility.json` file in a node directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacilityFile {
    pub id: FacilityId,
    pub name: String,
    pub kind: FacilityKind,
    pub endpoint: String,
    #[serde(with = "hex32")]
    pub signing_public_key: [u8; 32],
    #[serde(with = "hex32")]
    pub encryption_public_key: [u8; 32],
    #[serde(with = "hex32")]
    pub tls_cert_sha256: [u8; 32],
}

impl FacilityFile {
    /// Read and parse a node's `facility.json`.
    pub fn load(path: &Path) -> Result<FacilityFile, PkiError> {
        let bytes = files::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| json_problem(path, "facility file", &e))
    }
}

/// A federation directory opened for administration. Holds the CA private key.
pub struct Federation {
    dir: PathBuf,
    state: State,
    ca_cert_der: Vec<u8>,
    ca_cert_pem: String,
    ca_key_pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("dir", &self.dir)
            .field("name", &self.state.name)
            .field("facilities", &self.state.facilities.len())
            .field("ca_key", &"[redacted]")
            .finish()
    }
}

/// The operator's state file, `federation.json`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: String,
    name: String,
    created_at: i64,
    /// Last published directory version; 0 before the first publish.
    directory_version: u64,
    /// Last published CRL number; 0 before the first publish.
    crl_number: u64,
    facilities: Vec<FacilityRecord>,
    /// Certificates issued by `issue_tls_cert_with_validity` for unregistered ids, kept so
    /// serials stay unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unattached_certificates: Vec<CertRecord>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FacilityRecord {
    id: FacilityId,
    name: String,
    kind: FacilityKind,
    endpoint: String,
    status: FacilityStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked: Option<Revocation>,
    certificates: Vec<CertRecord>,
    /// Current first; the previous key stays during a rotation overlap.
    #[serde(with = "hex32_vec")]
    signing_keys: Vec<[u8; 32]>,
    /// Current first; the previous key stays during a rotation overlap.
    #[serde(with = "hex32_vec")]
    encryption_keys: Vec<[u8; 32]>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertRecord {
    /// Upper-case hex, as OpenSSL prints it.
    serial: String,
    #[serde(with = "hex32")]
    sha256: [u8; 32],
    not_before: i64,
    not_after: i64,
    role: CertRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked: Option<Revocation>,
}

/// A certificate's place in its facility's life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CertRole {
    /// In `tls.crt`.
    Current,
    /// In `tls-previous.crt` during a rotation overlap.
    Previous,
    /// Issued by `issue_tls_cert_with_validity` (tests); listed in the directory.
    Extra,
    /// Dropped by a second rotation; revoked as superseded.
    Retired,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revocation {
    at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<Reason>,
}

/// RFC 5280 §5.3.1 revocation reasons an operator may give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Reason {
    /// Accepts the kebab-case names and RFC 5280's camelCase names.
    fn parse(s: &str) -> Result<Reason, PkiError> {
        let folded: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        Ok(match folded.as_str() {
            "unspecified" => Reason::Unspecified,
            "keycompromise" => Reason::KeyCompromise,
            "cacompromise" => Reason::CaCompromise,
            "affiliationchanged" => Reason::AffiliationChanged,
            "superseded" => Reason::Superseded,
            "cessationofoperation" => Reason::CessationOfOperation,
            "privilegewithdrawn" => Reason::PrivilegeWithdrawn,
            _ => return Err(PkiError::InvalidReason),
        })
    }

    /// The CRL entry reason code; `unspecified` is omitted as RFC 5280 §5.3.1 recommends.
    fn crl_code(self) -> Option<RevocationReason> {
        match self {
            Reason::Unspecified => None,
            Reason::KeyCompromise => Some(RevocationReason::KeyCompromise),
            Reason::CaCompromise => Some(RevocationReason::CaCompromise),
            Reason::AffiliationChanged => Some(RevocationReason::AffiliationChanged),
            Reason::Superseded => Some(RevocationReason::Superseded),
            Reason::CessationOfOperation => Some(RevocationReason::CessationOfOperation),
            Reason::PrivilegeWithdrawn => Some(RevocationReason::PrivilegeWithdrawn),
        }
    }
}

/// Freshly issued TLS certificate and its private key.
struct IssuedTls {
    cert_pem: String,
    key_pem: Zeroizing<String>,
    record: CertRecord,
}

/// A file staged under a temporary name, waiting to be renamed to `dest`.
struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
}

impl Federation {
    /// Create a federation root CA in `dir`. Refuses if a federation exists there, unless
    /// `force`, which replaces it (and removes its published CRL and directory).
    pub fn init(dir: &Path, name: &str, force: bool) -> Result<Federation, PkiError> {
        validate_name(name)?;
        let exists = [layout::CA_KEY, layout::CA_CERT, layout::STATE]
            .iter()
            .any(|f| dir.join(f).symlink_metadata().is_ok());
        if exists && !force {
            return Err(PkiError::FederationExists {
                dir: dir.to_owned(),
            });
        }
        files::create_private_dir(dir)?;

        let now = OffsetDateTime::now_utc();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, name);
        dn.push(DnType::CommonName, "healthfed federation root CA");
        params.distinguished_name = dn;
        // No intermediates: the root signs facility certificates directly.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        // digitalSignature because the CA key also signs the federation directory.
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = params.not_before + CA_VALIDITY;
        params.serial_number = Some(SerialNumber::from(random_serial()?));
        let ca_cert = params.self_signed(&key)?;
        let key_der = Zeroizing::new(key.serialize_der());

        files::write_atomic(
            &dir.join(layout::CA_KEY),
            files::pem_encode("PRIVATE KEY", &key_der).as_bytes(),
            true,
        )?;
        files::write_atomic(&dir.join(layout::CA_CERT), ca_cert.pem().as_bytes(), false)?;
        // A replaced federation's CRL and directory were signed by the old key: remove them.
        for stale in [layout::CRL, layout::DIRECTORY] {
            remove_if_exists(&dir.join(stale))?;
        }
        let federation = Federation {
            dir: dir.to_owned(),
            state: State {
                format: STATE_FORMAT.to_owned(),
                name: name.to_owned(),
                created_at: now.unix_timestamp(),
                directory_version: 0,
                crl_number: 0,
                facilities: Vec::new(),
                unattached_certificates: Vec::new(),
            },
            ca_cert_der: ca_cert.der().to_vec(),
            ca_cert_pem: ca_cert.pem(),
            ca_key_pkcs8: key_der,
        };
        federation.save(&federation.state)?;
        Ok(federation)
    }

    /// Open an existing federation directory, checking that every file is well-formed and that
    /// the CA key matches the CA certificate.
    pub fn open(dir: &Path) -> Result<Federation, PkiError> {
        let state_path = dir.join(layout::STATE);
        let bytes = files::read(&state_path)?;
        let state: State = serde_json::from_slice(&bytes)
            .map_err(|e| json_problem(&state_path, "federation state file", &e))?;
        if state.format != STATE_FORMAT {
            return Err(PkiError::invalid(
                &state_path,
                format!("unsupported format (expected {STATE_FORMAT})"),
            ));
        }
        validate_state(&state).map_err(|problem| PkiError::invalid(&state_path, problem))?;

        let cert_path = dir.join(layout::CA_CERT);
        let ca_cert_der = files::pem_decode(&cert_path, &files::read(&cert_path)?, "CERTIFICATE")?;
        let ca_point = {
            let parsed = cert::parse(&ca_cert_der)
                .ok_or_else(|| PkiError::invalid(&cert_path, "not a valid X.509 certificate"))?;
            if !parsed.is_ca() {
                return Err(PkiError::invalid(&cert_path, "not a CA certificate"));
            }
            cert::p256_public_point(&parsed).map_err(|p| PkiError::invalid(&cert_path, p))?
        };

        let key_path = dir.join(layout::CA_KEY);
        let key_file = files::read_private(&key_path)?;
        let ca_key_pkcs8 = Zeroizing::new(
            files::pem_decode(&key_path, &key_file, "PRIVATE KEY")
                .map_err(|_| PkiError::invalid(&key_path, "not a PKCS#8 private key"))?,
        );
        let key_point = keys::ecdsa_p256_public(&ca_key_pkcs8)
            .ok_or_else(|| PkiError::invalid(&key_path, "not a PKCS#8 ECDSA P-256 private key"))?;
        if key_point != ca_point {
            return Err(PkiError::invalid(
                &key_path,
                format!("does not match {}", cert_path.display()),
            ));
        }
        let ca_cert_pem = files::pem_encode("CERTIFICATE", &ca_cert_der).to_string();
        Ok(Federation {
            dir: dir.to_owned(),
            state,
            ca_cert_der,
            ca_cert_pem,
            ca_key_pkcs8,
        })
    }

    /// The federation directory this was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The federation name given to `init`.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The CA certificate (DER).
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.ca_cert_der
    }

    /// Registered facility ids, in registration order.
    pub fn facility_ids(&self) -> Vec<FacilityId> {
        self.state.facilities.iter().map(|f| f.id.clone()).collect()
    }

    /// SHA-256 of the facility's current TLS certificate.
    pub fn current_tls_cert_sha256(&self, id: &FacilityId) -> Option<[u8; 32]> {
        self.state
            .facilities
            .iter()
            .find(|f| &f.id == id)?
            .certificates
            .iter()
            .find(|c| c.role == CertRole::Current)
            .map(|c| c.sha256)
    }

    /// Register a facility and write everything its node needs into `out` (see the crate docs
    /// for the layout). Refuses a duplicate id and refuses to overwrite key material in `out`.
    pub fn add_facility(
        &mut self,
        id: &FacilityId,
        name: &str,
        endpoint: &Endpoint,
        kind: FacilityKind,
        out: &Path,
    ) -> Result<(), PkiError> {
        validate_name(name)?;
        if self.state.facilities.iter().any(|f| &f.id == id) {
            return Err(PkiError::DuplicateFacility {
                id: id.clone(),
                dir: self.dir.clone(),
            });
        }
        for file in layout::NODE_FILES.iter().chain(layout::NODE_PREVIOUS_FILES) {
            let path = out.join(file);
            if path.symlink_metadata().is_ok() {
                return Err(PkiError::WouldOverwrite { path });
            }
        }

        let now = OffsetDateTime::now_utc();
        let not_before = now - BACKDATE;
        let tls = self.issue_tls(id, name, endpoint, not_before, not_before + TLS_VALIDITY)?;
        let signing = keys::generate_signing_key()?;
        let encryption = keys::generate_encryption_key()?;
        let facility_file = FacilityFile {
            id: id.clone(),
            name: name.to_owned(),
            kind,
            endpoint: endpoint.url(),
            signing_public_key: signing.public,
            encryption_public_key: encryption.public,
            tls_cert_sha256: tls.record.sha256,
        };

        files::create_private_dir(out)?;
        let staged = self.stage_node_files(out, &tls, &signing, &encryption, &facility_file)?;
        let mut record = tls.record;
        record.role = CertRole::Current;
        let mut next = self.state.clone();
        next.facilities.push(FacilityRecord {
            id: id.clone(),
            name: name.to_owned(),
            kind,
            endpoint: endpoint.url(),
            status: FacilityStatus::Active,
            revoked: None,
            certificates: vec![record],
            signing_keys: vec![signing.public],
            encryption_keys: vec![encryption.public],
        });
        if let Err(e) = self.save(&next) {
            discard(&staged);
            return Err(e);
        }
        self.state = next;
        commit_all(staged)
    }

    /// Revoke every certificate of a facility and mark it revoked in the directory.
    pub fn revoke(&mut self, id: &FacilityId, reason: Option<&str>) -> Result<(), PkiError> {
        let reason = reason.map(Reason::parse).transpose()?;
        let index = self.index_of(id)?;
        let mut next = self.state.clone();
        let facility = next
            .facilities
            .get_mut(index)
            .ok_or_else(|| self.unknown(id))?;
        if facility.status == FacilityStatus::Revoked {
            return Err(PkiError::FacilityRevoked {
                id: id.clone(),
                dir: self.dir.clone(),
            });
        }
        let revocation = Revocation {
            at: OffsetDateTime::now_utc().unix_timestamp(),
            reason,
        };
        for cert in &mut facility.certificates {
            if cert.revoked.is_none() {
                cert.revoked = Some(revocation);
            }
        }
        facility.status = FacilityStatus::Revoked;
        facility.revoked = Some(revocation);
        self.save(&next)?;
        self.state = next;
        Ok(())
    }

    /// Issue a new TLS certificate and new signing/encryption keys for an active facility.
    ///
    /// `out` must be the facility's node directory (its `tls.crt` must be the facility's
    /// current certificate). The current material is kept as `*-previous*` so the node and its
    /// peers accept both during the overlap; material from an earlier rotation is dropped and
    /// its certificate revoked as superseded at the next publish.
    pub fn rotate(&mut self, id: &FacilityId, out: &Path) -> Result<(), PkiError> {
        let index = self.index_of(id)?;
        let facility = self
            .state
            .facilities
            .get(index)
            .ok_or_else(|| self.unknown(id))?;
        if facility.status == FacilityStatus::Revoked {
            return Err(PkiError::FacilityRevoked {
                id: id.clone(),
                dir: self.dir.clone(),
            });
        }
        self.check_node_dir(facility, out)?;
        let endpoint: Endpoint = facility.endpoint.parse()?;

        let now = OffsetDateTime::now_utc();
        let not_before = now - BACKDATE;
        let tls = self.issue_tls(
            id,
            &facility.name,
            &endpoint,
            not_before,
            not_before + TLS_VALIDITY,
        )?;
        let signing = keys::generate_signing_key()?;
        let encryption = keys::generate_encryption_key()?;
        let facility_file = FacilityFile {
            id: id.clone(),
            name: facility.name.clone(),
            kind: facility.kind,
            endpoint: endpoint.url(),
            signing_public_key: signing.public,
            encryption_public_key: encryption.public,
            tls_cert_sha256: tls.record.sha256,
        };
        let staged = self.stage_node_files(out, &tls, &signing, &encryption, &facility_file)?;

        let mut next = self.state.clone();
        let record = next
            .facilities
            .get_mut(index)
            .ok_or_else(|| self.unknown(id))?;
        let superseded = Revocation {
            at: now.unix_timestamp(),
            reason: Some(Reason::Superseded),
        };
        for cert in &mut record.certificates {
            match cert.role {
                CertRole::Previous => {
                    cert.role = CertRole::Retired;
                    cert.revoked.get_or_insert(superseded);
                }
                CertRole::Current => cert.role = CertRole::Previous,
                CertRole::Extra | CertRole::Retired => {}
            }
        }
        let mut new_record = tls.record;
        new_record.role = CertRole::Current;
        record.certificates.push(new_record);
        record.signing_keys = [Some(signing.public), record.signing_keys.first().copied()]
            .into_iter()
            .flatten()
            .collect();
        record.encryption_keys = [
            Some(encryption.public),
            record.encryption_keys.first().copied(),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Err(e) = self.save(&next) {
            discard(&staged);
            return Err(e);
        }
        self.state = next;

        // The federation now lists old and new material, so the node may switch at any moment:
        // move the current files aside, then put the new ones in place.
        for (current, previous) in layout::ROTATED_FILES {
            files::rename(&out.join(current), &out.join(previous))?;
        }
        commit_all(staged)
    }

    /// Write the CRL (nextUpdate 7 days on) and the signed directory, valid for
    /// `directory_validity`.
    pub fn publish(&mut self, directory_validity: Duration) -> Result<Published, PkiError> {
        self.publish_with(directory_validity, CRL_VALIDITY)
    }

    /// Write the CRL, fresh for `crl_validity` (its nextUpdate), and the signed directory,
    /// valid for `directory_validity`. Nodes refuse the directory once it expires and, after
    /// their grace (`federation.crl_grace_secs`), the CRL once its nextUpdate has passed: publish
    /// again well before either.
    pub fn publish_with(
        &mut self,
        directory_validity: Duration,
        crl_validity: Duration,
    ) -> Result<Published, PkiError> {
        let now = OffsetDateTime::now_utc();
        let after = |validity: Duration, what: &'static str| {
            let validity = time::Duration::try_from(validity)
                .ok()
                .filter(|v| *v > time::Duration::ZERO)
                .ok_or(PkiError::InvalidValidity(what))?;
            now.checked_add(validity)
                .ok_or(PkiError::InvalidValidity(what))
        };
        let expires = after(
            directory_validity,
            "directory validity must be positive and not too long",
        )?;
        let crl_next_update = after(
            crl_validity,
            "CRL validity must be positive and not too long",
        )?;
        let mut next = self.state.clone();
        next.directory_version += 1;
        next.crl_number += 1;

        let crl_pem = self.build_crl(&next, now, crl_next_update)?;
        let directory = Directory {
            version: next.directory_version,
            federation: next.name.clone(),
            issued_at: now.unix_timestamp(),
            expires_at: expires.unix_timestamp(),
            facilities: next.facilities.iter().map(directory_entry).collect(),
        };
        let signed = directory::sign_directory(&directory, &self.ca_key_pkcs8)?;

        // Bump the counters before writing, so a failed publish never reuses a version number.
        self.save(&next)?;
        self.state = next;
        let crl_path = self.dir.join(layout::CRL);
        let directory_path = self.dir.join(layout::DIRECTORY);
        files::write_atomic(&crl_path, crl_pem.as_bytes(), false)?;
        files::write_atomic(&directory_path, &signed, false)?;
        Ok(Published {
            crl_path,
            directory_path,
            version: self.state.directory_version,
            crl_number: self.state.crl_number,
            directory_expires_at: expires.unix_timestamp(),
            crl_next_update: crl_next_update.unix_timestamp(),
        })
    }

    /// For tests (expired / not-yet-valid certificates): issue a facility TLS cert+key with
    /// explicit validity, write `tls.crt`/`tls.key` into `out` (same SANs as add-facility). Not
    /// exposed in the CLI.
    ///
    /// Also writes `ca.crt` into `out`. If `id` is registered, the certificate is recorded as an
    /// extra certificate of that facility (listed in the directory, revoked with it); otherwise
    /// it is recorded only so that its serial stays unique.
    pub fn issue_tls_cert_with_validity(
        &mut self,
        id: &FacilityId,
        endpoint: &Endpoint,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        out: &Path,
    ) -> Result<(), PkiError> {
        if not_after <= not_before {
            return Err(PkiError::InvalidValidity(
                "not_after must be after not_before",
            ));
        }
        let index = self.state.facilities.iter().position(|f| &f.id == id);
        let name = index
            .and_then(|i| self.state.facilities.get(i))
            .map_or_else(|| id.to_string(), |f| f.name.clone());
        let tls = self.issue_tls(id, &name, endpoint, not_before, not_after)?;
        files::create_private_dir(out)?;
        files::write_atomic(
            &out.join(layout::CA_CERT),
            self.ca_cert_pem.as_bytes(),
            false,
        )?;
        files::write_atomic(&out.join(layout::TLS_KEY), tls.key_pem.as_bytes(), true)?;
        files::write_atomic(&out.join(layout::TLS_CERT), tls.cert_pem.as_bytes(), false)?;

        let mut next = self.state.clone();
        let mut record = tls.record;
        record.role = CertRole::Extra;
        match index.and_then(|i| next.facilities.get_mut(i)) {
            Some(facility) => facility.certificates.push(record),
            None => next.unattached_certificates.push(record),
        }
        self.save(&next)?;
        self.state = next;
        Ok(())
    }

    fn index_of(&self, id: &FacilityId) -> Result<usize, PkiError> {
        self.state
            .facilities
            .iter()
            .position(|f| &f.id == id)
            .ok_or_else(|| self.unknown(id))
    }

    fn unknown(&self, id: &FacilityId) -> PkiError {
        PkiError::UnknownFacility {
            id: id.clone(),
            dir: self.dir.clone(),
        }
    }

    /// Check that `out` is this facility's node directory before rotating it.
    fn check_node_dir(&self, facility: &FacilityRecord, out: &Path) -> Result<(), PkiError> {
        let cert_path = out.join(layout::TLS_CERT);
        let der = files::pem_decode(&cert_path, &files::read(&cert_path)?, "CERTIFICATE")?;
        let current = facility
            .certificates
            .iter()
            .find(|c| c.role == CertRole::Current)
            .map(|c| c.sha256);
        if current != Some(cert::cert_fingerprint(&der)) {
            return Err(PkiError::invalid(
                &cert_path,
                format!(
                    "is not the current certificate of facility {} in {}",
                    facility.id,
                    self.dir.display()
                ),
            ));
        }
        keys::load_tls_key_der(&out.join(layout::TLS_KEY))?;
        keys::load_x25519_private(&out.join(layout::ENCRYPTION_KEY))?;
        let signing_path = out.join(layout::SIGNING_KEY);
        let signing = keys::load_ed25519_pkcs8(&signing_path)?;
        let public = keys::classify_pkcs8(&signing).map(|(_, pk)| pk);
        if public.as_deref() != facility.signing_keys.first().map(|k| k.as_slice()) {
            return Err(PkiError::invalid(
                &signing_path,
                format!("is not the current signing key of facility {}", facility.id),
            ));
        }
        Ok(())
    }

    fn stage_node_files(
        &self,
        out: &Path,
        tls: &IssuedTls,
        signing: &keys::SigningKeyMaterial,
        encryption: &keys::EncryptionKeyMaterial,
        facility_file: &FacilityFile,
    ) -> Result<Vec<Staged>, PkiError> {
        let mut facility_json = serde_json::to_vec_pretty(facility_file)
            .map_err(|_| PkiError::Crypto("facility file serialisation"))?;
        facility_json.push(b'\n');
        let signing_pem = files::pem_encode("PRIVATE KEY", &signing.pkcs8_v1);
        let encryption_pem = files::pem_encode("PRIVATE KEY", &encryption.pkcs8_v1);
        let contents: [(&str, &[u8], bool); 6] = [
            (layout::CA_CERT, self.ca_cert_pem.as_bytes(), false),
            (layout::TLS_CERT, tls.cert_pem.as_bytes(), false),
            (layout::TLS_KEY, tls.key_pem.as_bytes(), true),
            (layout::SIGNING_KEY, signing_pem.as_bytes(), true),
            (layout::ENCRYPTION_KEY, encryption_pem.as_bytes(), true),
            (layout::FACILITY_JSON, &facility_json, false),
        ];
        let mut staged = Vec::with_capacity(contents.len());
        for (name, bytes, private) in contents {
            let dest = out.join(name);
            let result = files::temp_path_for(&dest)
                .and_then(|tmp| files::stage(&tmp, bytes, private).map(|()| tmp));
            match result {
                Ok(tmp) => staged.push(Staged { tmp, dest }),
                Err(e) => {
                    discard(&staged);
                    return Err(e);
                }
            }
        }
        Ok(staged)
    }

    fn issue_tls(
        &self,
        id: &FacilityId,
        name: &str,
        endpoint: &Endpoint,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedTls, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, name);
        dn.push(DnType::CommonName, id.as_str());
        params.distinguished_name = dn;
        let host_san = match endpoint.ip() {
            Some(ip) => SanType::IpAddress(ip),
            None => SanType::DnsName(endpoint.host().try_into()?),
        };
        params.subject_alt_names = vec![SanType::URI(id.uri().try_into()?), host_san];
        // ExplicitNoCa writes basicConstraints CA:FALSE and the subjectKeyIdentifier.
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let serial = self.unique_serial()?;
        params.serial_number = Some(SerialNumber::from(serial.clone()));

        let issuer = self.issuer()?;
        let cert = params.signed_by(&key, &issuer)?;
        let key_der = Zeroizing::new(key.serialize_der());
        Ok(IssuedTls {
            cert_pem: cert.pem(),
            key_pem: files::pem_encode("PRIVATE KEY", &key_der),
            record: CertRecord {
                serial: cert::serial_hex(&serial),
                sha256: cert::cert_fingerprint(cert.der()),
                not_before: not_before.unix_timestamp(),
                not_after: not_after.unix_timestamp(),
                role: CertRole::Extra,
                revoked: None,
            },
        })
    }

    fn ca_key_pair(&self) -> Result<KeyPair, PkiError> {
        let der = PrivatePkcs8KeyDer::from(self.ca_key_pkcs8.as_slice());
        Ok(KeyPair::from_pkcs8_der_and_sign_algo(
            &der,
            &PKCS_ECDSA_P256_SHA256,
        )?)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let ca = CertificateDer::from(self.ca_cert_der.as_slice());
        Ok(Issuer::from_ca_cert_der(&ca, self.ca_key_pair()?)?)
    }

    fn build_crl(
        &self,
        state: &State,
        now: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, PkiError> {
        let ca_path = self.dir.join(layout::CA_CERT);
        let ski = cert::parse(&self.ca_cert_der)
            .and_then(|c| cert::subject_key_id(&c))
            .ok_or_else(|| {
                PkiError::invalid(&ca_path, "CA certificate has no subjectKeyIdentifier")
            })?;
        let all = state
            .facilities
            .iter()
            .flat_map(|f| f.certificates.iter())
            .chain(state.unattached_certificates.iter());
        let mut revoked_certs = Vec::new();
        for record in all {
            let Some(revocation) = record.revoked else {
                continue;
            };
            let serial = hex::decode(&record.serial).map_err(|_| {
                PkiError::invalid(
                    self.dir.join(layout::STATE),
                    "certificate serial is not hex",
                )
            })?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: OffsetDateTime::from_unix_timestamp(revocation.at).map_err(
                    |_| {
                        PkiError::invalid(
                            self.dir.join(layout::STATE),
                            "revocation time out of range",
                        )
                    },
                )?,
                reason_code: revocation.reason.and_then(Reason::crl_code),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update,
            crl_number: SerialNumber::from(state.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            // The CRL's authorityKeyIdentifier must equal the CA certificate's SKI.
            key_identifier_method: KeyIdMethod::PreSpecified(ski),
        };
        let crl = params.signed_by(&self.issuer()?)?;
        Ok(crl.pem()?)
    }

    fn save(&self, state: &State) -> Result<(), PkiError> {
        let mut bytes = serde_json::to_vec_pretty(state)
            .map_err(|_| PkiError::Crypto("federation state serialisation"))?;
        bytes.push(b'\n');
        files::write_atomic(&self.dir.join(layout::STATE), &bytes, false)
    }

    fn unique_serial(&self) -> Result<Vec<u8>, PkiError> {
        let used = |hex: &str| {
            self.state
                .facilities
                .iter()
                .flat_map(|f| f.certificates.iter())
                .chain(self.state.unattached_certificates.iter())
                .any(|c| c.serial == hex)
        };
        // 126 random bits make a collision practically impossible; the loop makes it certain.
        loop {
            let serial = random_serial()?;
            if !used(&cert::serial_hex(&serial)) {
                return Ok(serial);
            }
        }
    }
}

fn directory_entry(f: &FacilityRecord) -> FacilityEntry {
    let in_service = [CertRole::Current, CertRole::Previous, CertRole::Extra]
        .into_iter()
        .flat_map(|role| f.certificates.iter().filter(move |c| c.role == role))
        .map(|c| c.sha256)
        .collect();
    FacilityEntry {
        id: f.id.clone(),
        name: f.name.clone(),
        kind: f.kind,
        endpoint: f.endpoint.clone(),
        status: f.status,
        tls_cert_sha256: in_service,
        signing_keys: f.signing_keys.clone(),
        encryption_key: f.encryption_keys.first().copied().unwrap_or([0u8; 32]),
    }
}

/// A positive 16-byte serial with its top bits set to 01, so its DER encoding is always exactly
/// 16 bytes (RFC 5280 allows up to 20) and it has 126 random bits.
fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut serial = vec![0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| PkiError::Crypto("no randomness available"))?;
    if let Some(first) = serial.first_mut() {
        *first = (*first & 0x3f) | 0x40;
    }
    Ok(serial)
}

fn validate_name(name: &str) -> Result<(), PkiError> {
    if name.trim().is_empty() {
        return Err(PkiError::InvalidName("must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(PkiError::InvalidName("must be at most 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(PkiError::InvalidName("must not contain control characters"));
    }
    Ok(())
}

/// Invariants the rest of the code relies on; a hand-edited or damaged state file fails here
/// instead of producing a wrong directory.
fn validate_state(state: &State) -> Result<(), String> {
    let mut ids: Vec<&FacilityId> = state.facilities.iter().map(|f| &f.id).collect();
    ids.sort();
    if let Some(pair) = ids.windows(2).find(|w| w.first() == w.get(1)) {
        let id = pair.first().map(|id| id.to_string()).unwrap_or_default();
        return Err(format!("facility {id} is listed twice"));
    }
    for f in &state.facilities {
        if f.endpoint.parse::<Endpoint>().is_err() {
            return Err(format!("facility {} has an invalid endpoint", f.id));
        }
        let current = f
            .certificates
            .iter()
            .filter(|c| c.role == CertRole::Current)
            .count();
        if current != 1 {
            return Err(format!(
                "facility {} must have exactly one current certificate",
                f.id
            ));
        }
        if !(1..=2).contains(&f.signing_keys.len()) || !(1..=2).contains(&f.encryption_keys.len()) {
            return Err(format!(
                "facility {} must have one or two signing and encryption keys",
                f.id
            ));
        }
    }
    let serials = state
        .facilities
        .iter()
        .flat_map(|f| f.certificates.iter())
        .chain(state.unattached_certificates.iter())
        .map(|c| c.serial.as_str());
    if let Some(bad) = serials
        .clone()
        .find(|s| s.is_empty() || hex::decode(s).is_err())
    {
        return Err(format!("certificate serial {bad:?} is not hex"));
    }
    let mut sorted: Vec<&str> = serials.collect();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w.first() == w.get(1)) {
        return Err("a certificate serial is listed twice".to_owned());
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), PkiError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PkiError::io(path, e)),
        _ => Ok(()),
    }
}

fn discard(staged: &[Staged]) {
    for s in staged {
        let _ = fs::remove_file(&s.tmp);
    }
}

fn commit_all(staged: Vec<Staged>) -> Result<(), PkiError> {
    let mut last = None;
    for s in &staged {
        if let Err(e) = files::rename(&s.tmp, &s.dest) {
            discard(&staged);
            return Err(e);
        }
        last = Some(&s.dest);
    }
    match last {
        Some(dest) => files::sync_parent(dest),
        None => Ok(()),
    }
}

/// Describe a JSON error by category and position only: never echo file contents.
fn json_problem(path: &Path, what: &str, e: &serde_json::Error) -> PkiError {
    let category = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "unexpected or missing field or value",
        serde_json::error::Category::Eof => "truncated",
    };
    PkiError::invalid(
        path,
        format!(
            "not a valid {what}: {category} at line {} column {}",
            e.line(),
            e.column()
        ),
    )
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    use super::*;

    #[test]
    fn reasons_parse_in_both_spellings() {
        assert_eq!(
            Reason::parse("key-compromise").unwrap(),
            Reason::KeyCompromise
        );
        assert_eq!(
            Reason::parse("keyCompromise").unwrap(),
            Reason::KeyCompromise
        );
        assert_eq!(
            Reason::parse("cessation_of_operation").unwrap(),
            Reason::CessationOfOperation
        );
        assert!(matches!(
            Reason::parse("bored"),
            Err(PkiError::InvalidReason)
        ));
        assert_eq!(Reason::Unspecified.crl_code(), None);
        assert_eq!(
            Reason::Superseded.crl_code(),
            Some(RevocationReason::Superseded)
        );
    }

    #[test]
    fn serials_are_positive_16_bytes() {
        for _ in 0..64 {
            let s = random_serial().unwrap();
            assert_eq!(s.len(), 16);
            assert_eq!(s.first().unwrap() & 0xc0, 0x40);
        }
        assert_ne!(random_serial().unwrap(), random_serial().unwrap());
    }

    #[test]
    fn names_are_validated() {
        validate_name("Ontario Health Federation").unwrap();
        validate_name("Hôpital Général").unwrap();
        assert!(validate_name("").is_err());
        assert!(validate_name("   ").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
    }
}
