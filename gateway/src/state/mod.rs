//! The node's shared context: `NodeState` and the handles it holds (the active policy set,
//! the callers waiting on outcomes). Every flow and surface takes it; it calls nothing above it.
//!
//! Invariant: the state is built once by `node::load_state` and is never replaced, only the
//! handles inside it reload (identity, trust, policy), each atomically and refusing a bad new
//! version.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify, Semaphore};

use gateway_envelope::TransferId;
use gateway_store::Store;

use crate::config::NodeConfig;
use crate::trust::identity::{IdentityHandle, IdentityReload, NodeIdentity};
use crate::trust::transport::PeerClients;
use crate::trust::{Trust, TrustHandle};

pub mod circuits;
pub mod metrics;
pub mod outcomes;
pub mod overview;
pub mod policy;

use circuits::PeerCircuits;
use outcomes::OutcomeWaiters;
use policy::PolicyHandle;

/// Everything the node's tasks share.
pub struct NodeState {
    pub config: Arc<NodeConfig>,
    /// This node's keys and certificate; reloaded with `reload_keys_and_trust`.
    pub identity: IdentityHandle,
    pub trust: TrustHandle,
    pub store: Store,
    pub policy: PolicyHandle,
    pub clients: PeerClients,
    /// Wakes the delivery scheduler when a transfer is queued.
    pub wake: Notify,
    /// Transfers a delivery task currently owns, so the scheduler never starts two.
    pub inflight: Mutex<HashSet<[u8; 16]>>,
    /// One permit per delivery worker (`delivery.workers`), shared by the scheduler and by
    /// submissions that hand their transfer straight to a free worker.
    pub delivery_permits: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    /// Callers waiting for outbound transfers' final outcomes (`wait=receipt`).
    pub waiters: OutcomeWaiters,
    /// Which peers are unreachable and which transfer probes each (`send::delivery`).
    pub circuits: PeerCircuits,
    /// Event counters for `/metrics` (`ops::metrics` serves them).
    pub metrics: metrics::Recorder,
}

/// What `NodeState::reload_keys_and_trust` changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeysReload {
    pub trust: bool,
    pub identity: bool,
    /// New key files were read and their encryption key added for opening only.
    pub opening_keys: bool,
}

impl NodeState {
    pub fn me(&self) -> &pki_tools::FacilityId {
        &self.config.facility_id
    }

    pub fn trust(&self) -> Arc<Trust> {
        self.trust.current()
    }

    /// The keys and certificate in use now. Hold the `Arc` for one operation (a seal, an open,
    /// a receipt) so it sees one consistent set across a reload.
    pub fn identity(&self) -> Arc<NodeIdentity> {
        self.identity.current()
    }

    /// Reloads the federation trust, then the node identity against the directory now loaded,
    /// then (when the identity changed) the TLS configurations, and drops pooled outbound
    /// connections so the next ones present the new certificate. Each step refuses a bad new
    /// version with a logged reason and keeps the current one. Called on the reload interval,
    /// on SIGHUP and by a receive that met an envelope sealed to a key not loaded yet.
    pub async fn reload_keys_and_trust(&self) -> KeysReload {
        let mut outcome = KeysReload::default();
        match self.trust.reload_if_changed(&self.identity()) {
            Ok(true) => {
                outcome.trust = true;
                tracing::info!(
                    version = self.trust().directory.version,
                    "federation trust reloaded"
                );
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "federation trust reload refused; keeping the current view")
            }
        }
        let trust = self.trust();
        let me = trust.directory.facility(self.me());
        match self.identity.reload_if_changed(me) {
            Ok(IdentityReload::Unchanged) => {}
            Ok(IdentityReload::WaitingForDirectory) => {
                outcome.opening_keys = true;
                tracing::warn!(
                    "new key files found; their encryption key is held for opening, but the federation directory does not list their signing key and certificate yet: still signing and presenting the current ones until `pki publish` reaches this node"
                );
            }
            Ok(IdentityReload::Switched) => {
                outcome.identity = true;
                let identity = self.identity();
                tracing::info!(
                    fingerprint = %hex::encode(identity.tls_fingerprint()),
                    signing_key = %hex::encode(identity.verifying_key().0),
                    "node identity reloaded: new certificate and keys in use"
                );
                match self.trust.reload_if_changed(&identity) {
                    Ok(_) => {}
                    Err(e) => tracing::error!(
                        error = %e,
                        "tls configuration not rebuilt with the new identity; connections keep the previous certificate"
                    ),
                }
                self.clients.forget_all().await;
            }
            Err(e) => tracing::warn!(
                error = %e,
                "node identity reload refused; keeping the current keys and certificate"
            ),
        }
        outcome
    }

    pub fn mark_inflight(&self, id: &TransferId) -> bool {
        match self.inflight.lock() {
            Ok(mut set) => set.insert(id.0),
            Err(poisoned) => poisoned.into_inner().insert(id.0),
        }
    }

    pub fn clear_inflight(&self, id: &TransferId) {
        match self.inflight.lock() {
            Ok(mut set) => set.remove(&id.0),
            Err(poisoned) => poisoned.into_inner().remove(&id.0),
        };
    }
}
