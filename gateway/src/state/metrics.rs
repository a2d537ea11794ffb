//! The event counters the flows feed (`NodeState::metrics`): transfers, delivery attempts and
//! retries, refusals, policy decisions, audit verifications and checkpoints. They live here,
//! below the flows, so the send and receive paths can count without importing a surface;
//! `ops::metrics` registers them with the gauges it computes at scrape time and serves them.
//!
//! Invariant: label values are fixed classes or facility ids from the signed directory, never
//! anything a request or a record carries (no patient data, no transfer ids, no free text), so
//! every family stays small and no metric can leak what a record holds.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use policies::{Action, Decision};

/// Upper bounds (seconds) of the submit→receipt histogram: a direct delivery takes tens of
/// milliseconds, a transfer that waited for a peer's return hours.
const LATENCY_BUCKETS: [f64; 15] = [
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
];

/// The `outcome` values of `healthfed_transfers_total`, by direction.
const OUTBOUND_OUTCOMES: [&str; 5] = ["submitted", "delivered", "failed", "cancelled", "requeued"];
const INBOUND_OUTCOMES: [&str; 2] = ["received", "duplicate"];
/// The `reason` values of `healthfed_refusals_total` (`send::outbox::SubmitError::class`,
/// `receive::inbox`'s refusal classes).
const OUTBOUND_REFUSALS: [&str; 5] = ["recipient", "content", "upload", "policy", "local_error"];
const INBOUND_REFUSALS: [&str; 5] = [
    "envelope",
    "policy_or_content",
    "too_large",
    "unavailable",
    "other",
];

/// Which way a transfer goes, seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransferLabels {
    pub direction: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// A facility id the directory lists (deliveries only go to those).
    pub peer: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub action: &'static str,
    pub outcome: &'static str,
}

/// The labels of `state::policy`'s reload counter (kept by the policy handle, which every
/// reload goes through).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The node's event counters. Cloning a family shares it, which is how `ops::metrics`
/// registers them.
pub struct Recorder {
    pub transfers: Family<TransferLabels, Counter>,
    pub latency: Histogram,
    pub attempts: Family<AttemptLabels, Counter>,
    pub retries: Family<PeerLabels, Counter>,
    pub refusals: Family<RefusalLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    /// 1 when the last audit chain verification passed, 0 when it failed, -1 before the first.
    pub audit_verify_ok: Gauge,
    /// Unix seconds of the last audit chain verification (0 before the first).
    pub audit_verified_at: Gauge,
    /// Unix seconds when this process last signed a checkpoint, or started (so a node that
    /// cannot sign still shows a growing age).
    checkpoint_signed_at: AtomicI64,
    pub started_at: i64,
}

impl Default for Recorder {
    fn default() -> Recorder {
        let now = crate::trust::now_unix();
        let audit_verify_ok = Gauge::default();
        audit_verify_ok.set(-1);
        let recorder = Recorder {
            transfers: Family::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            attempts: Family::default(),
            retries: Family::default(),
            refusals: Family::default(),
            decisions: Family::default(),
            audit_verify_ok,
            audit_verified_at: Gauge::default(),
            checkpoint_signed_at: AtomicI64::new(now),
            started_at: now,
        };
        recorder.zeros();
        recorder
    }
}

impl Recorder {
    /// Creates the series of every fixed class at 0, so a scrape shows them before their first
    /// event and `rate()`/`increase()` see that first event (a series that appears at 1 is not
    /// counted as an increase).
    fn zeros(&self) {
        for (direction, outcomes) in [
            (Direction::Outbound, OUTBOUND_OUTCOMES.as_slice()),
            (Direction::Inbound, INBOUND_OUTCOMES.as_slice()),
        ] {
            for &outcome in outcomes {
                let _ = self.transfers.get_or_create(&TransferLabels {
                    direction: direction.as_str(),
                    outcome,
                });
            }
        }
        for (direction, reasons) in [
            (Direction::Outbound, OUTBOUND_REFUSALS.as_slice()),
            (Direction::Inbound, INBOUND_REFUSALS.as_slice()),
        ] {
            for &reason in reasons {
                let _ = self.refusals.get_or_create(&RefusalLabels {
                    direction: direction.as_str(),
                    reason,
                });
            }
        }
        for action in [
            Action::Send,
            Action::Receive,
            Action::Request,
            Action::BreakGlass,
        ] {
            for outcome in ["permit", "deny", "error"] {
                let _ = self.decisions.get_or_create(&DecisionLabels {
                    action: action.as_str(),
                    outcome,
                });
            }
        }
    }

    /// A transfer reached `outcome` (`submitted`, `delivered`, `failed`, `cancelled`, `requeued`,
    /// `received`, `duplicate`).
    pub fn transfer(&self, direction: Direction, outcome: &'static str) {
        self.transfers
            .get_or_create(&TransferLabels {
                direction: direction.as_str(),
                outcome,
            })
            .inc();
    }

    /// An outbound transfer's receipt was verified `latency_ms` after its submission.
    pub fn delivered(&self, latency_ms: u64) {
        self.transfer(Direction::Outbound, "delivered");
        self.latency.observe(latency_ms as f64 / 1000.0);
    }

    /// One delivery attempt to `peer` ended with `outcome` (`delivered`, `refused`, `retry`,
    /// `unreachable`, `local_error`).
    pub fn attempt(&self, peer: &str, outcome: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels {
                peer: peer.to_owned(),
                outcome,
            })
            .inc();
    }

    /// A transfer to `peer` was put back in the queue for another attempt.
    pub fn retry(&self, peer: &str) {
        self.retries
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
            })
            .inc();
    }

    /// A submission (outbound) or an envelope (inbound) was refused; `reason` is a fixed class.
    pub fn refusal(&self, direction: Direction, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                direction: direction.as_str(),
                reason,
            })
            .inc();
    }

    /// A policy decision: permit, deny, or deny because an evaluation failed.
    pub fn decision(&self, action: Action, decision: &Decision) {
        let outcome = match (decision.allowed, decision.errors.is_empty()) {
            (true, _) => "permit",
            (false, true) => "deny",
            (false, false) => "error",
        };
        self.decisions
            .get_or_create(&DecisionLabels {
                action: action.as_str(),
                outcome,
            })
            .inc();
    }

    /// The audit chain was verified (periodic check or `GET /v1/audit/verify`).
    pub fn audit_verified(&self, ok: bool, at_unix: i64) {
        self.audit_verify_ok.set(i64::from(ok));
        self.audit_verified_at.set(at_unix);
    }

    pub fn checkpoint_signed(&self, at_unix: i64) {
        self.checkpoint_signed_at.store(at_unix, Ordering::Relaxed);
    }

    pub fn checkpoint_signed_at(&self) -> i64 {
        self.checkpoint_signed_at.load(Ordering::Relaxed)
    }
}
