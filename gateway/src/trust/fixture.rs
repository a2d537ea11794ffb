//! Test fixture of the trust layer's unit tests: one facility laid out by the real `pki`
//! library in a temp dir, with the node.toml the config template renders for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pki_tools::{FacilityId, FacilityKind, Federation};

use crate::config::{ConfigTemplate, NodeConfig};

pub(crate) struct OneFacility {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) fed: Federation,
    pub(crate) id: FacilityId,
    /// The facility's node directory (keys, certificate, node.toml).
    pub(crate) node: PathBuf,
    pub(crate) config: Arc<NodeConfig>,
}

/// `hosp-a`, published in a directory valid for a day.
pub(crate) fn one_facility() -> OneFacility {
    let tmp = tempfile::tempdir().unwrap();
    let fed_dir = tmp.path().join("fed");
    let mut fed = Federation::init(&fed_dir, "Test", false).unwrap();
    let id: FacilityId = "hosp-a".parse().unwrap();
    let node = tmp.path().join("hosp-a");
    let endpoint = "https://127.0.0.1:7443".parse().unwrap();
    fed.add_facility(&id, "A", &endpoint, FacilityKind::Hospital, &node)
        .unwrap();
    fed.publish(Duration::from_secs(86_400)).unwrap();
    let text = ConfigTemplate {
        facility_id: "hosp-a",
        peer_listen: "127.0.0.1:7443".parse().unwrap(),
        local_listen: "127.0.0.1:7080".parse().unwrap(),
        token_sha256_hex: &"ab".repeat(32),
        directory: &fed_dir.join("directory.json"),
        crl: &fed_dir.join("crl.pem"),
    }
    .render()
    .unwrap();
    let path = node.join("node.toml");
    std::fs::write(&path, text).unwrap();
    let config = Arc::new(NodeConfig::load(&path).unwrap());
    OneFacility {
        tmp,
        fed,
        id,
        node,
        config,
    }
}
