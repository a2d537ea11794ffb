//! The node's shared context: `NodeState` and the handles it holds (the active policy set,
//! the callers waiting on outcomes). Every flow and surface takes it; it calls nothing above it.
//!
//! Invariant: the state is built once by `node::load_state` and is never replaced, only the
//! handles inside it reload (trust, policy), each atomically and refusing a bad new version.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify, Semaphore};

use gateway_envelope::TransferId;
use gateway_store::Store;

use crate::config::NodeConfig;
use crate::trust::identity::NodeIdentity;
use crate::trust::transport::PeerClients;
use crate::trust::{Trust, TrustHandle};

pub mod circuits;
pub mod outcomes;
pub mod policy;

use circuits::PeerCircuits;
use outcomes::OutcomeWaiters;
use policy::PolicyHandle;

/// Everything the node's tasks share.
pub struct NodeState {
    pub config: Arc<NodeConfig>,
    pub identity: Arc<NodeIdentity>,
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
}

impl NodeState {
    pub fn me(&self) -> &pki_tools::FacilityId {
        &self.config.facility_id
    }

    pub fn trust(&self) -> Arc<Trust> {
        self.trust.current()
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
