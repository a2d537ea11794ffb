//! Per-peer circuits: which recipients are unreachable right now, and which one transfer may
//! probe each of them.
//!
//! Without them, every queued transfer to a peer that is down retries on its own schedule: a
//! hundred queued transfers are a hundred connection attempts per backoff step, and all of
//! them fire together when the peer returns. With them, a connection-level failure opens the
//! peer's circuit; from then on one delivery at a time (the probe) tries the peer, on the
//! circuit's own backoff, and the other transfers wait (parked, without counting attempts).
//! The first answer from the peer closes the circuit and releases the parked transfers to the
//! scheduler, whose worker permits bound how many are delivered at once.
//!
//! The state is in memory only: after a restart every circuit starts closed, and parked
//! transfers come due by themselves (they are parked for a bounded time, never indefinitely).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

/// At most this many parked transfer ids are remembered per peer, to be released the moment
/// the peer answers; those beyond it come due at the end of their parking time.
const MAX_PARKED_PER_PEER: usize = 100_000;

/// The circuits of every peer this node delivers to; a peer without an entry is reachable.
#[derive(Default)]
pub struct PeerCircuits {
    open: Mutex<HashMap<String, Circuit>>,
}

/// An open circuit: the peer failed at the connection level and has not answered since.
struct Circuit {
    down_since_ms: u64,
    /// Consecutive failed probes (the opening failure included): the step of the probe backoff.
    failures: u32,
    next_probe_ms: u64,
    /// The transfer probing the peer right now, if one is.
    probe: Option<[u8; 16]>,
    parked: HashSet<[u8; 16]>,
}

/// What a transfer that is due may do about its peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// The peer is reachable: deliver.
    Send,
    /// The peer is down and this transfer is its probe: deliver, and report the outcome.
    Probe,
    /// The peer is down and another transfer probes it, or the next probe is not due yet: wait.
    /// The transfer is parked until `next_probe_ms` at the earliest.
    Wait { next_probe_ms: u64 },
}

/// A peer's circuit as an operator sees it (ids and times only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitView {
    pub down_since_ms: u64,
    pub failures: u32,
    pub next_probe_ms: u64,
    pub probing: bool,
    pub parked: usize,
}

/// The result of a connection-level failure.
#[derive(Debug, PartialEq, Eq)]
pub struct Unreachable {
    /// True when this failure opened the circuit (the peer was thought reachable).
    pub opened: bool,
    /// Consecutive failed probes, this one included.
    pub failures: u32,
    /// When the next probe may go: the failed transfer is due again then.
    pub next_probe_ms: u64,
}

/// The result of an answer from a peer whose circuit was open.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub down_for_ms: u64,
    /// Transfers that were waiting for the peer, to be made due now.
    pub parked: Vec<[u8; 16]>,
}

impl PeerCircuits {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Circuit>> {
        // The map holds no invariant a panic midway could break.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the peer's circuit is open (a new submission then waits for the scheduler).
    pub fn is_open(&self, peer: &str) -> bool {
        self.lock().contains_key(peer)
    }

    pub fn view(&self, peer: &str) -> Option<CircuitView> {
        self.lock().get(peer).map(|c| CircuitView {
            down_since_ms: c.down_since_ms,
            failures: c.failures,
            next_probe_ms: c.next_probe_ms,
            probing: c.probe.is_some(),
            parked: c.parked.len(),
        })
    }

    /// Decides whether transfer `id`, due now, may be sent to `peer`.
    pub fn admit(&self, peer: &str, id: [u8; 16], now_ms: u64) -> Admission {
        let mut open = self.lock();
        let Some(c) = open.get_mut(peer) else {
            return Admission::Send;
        };
        if c.probe == Some(id) {
            return Admission::Probe;
        }
        if c.probe.is_none() && now_ms >= c.next_probe_ms {
            c.probe = Some(id);
            c.parked.remove(&id);
            return Admission::Probe;
        }
        if c.parked.len() < MAX_PARKED_PER_PEER {
            c.parked.insert(id);
        }
        Admission::Wait {
            next_probe_ms: c.next_probe_ms,
        }
    }

    /// Transfer `id` could not reach `peer` (connect, TLS, connection lost, timeout, or a
    /// gateway/unavailable status). Opens the circuit, or moves its next probe `delay_ms`
    /// away when `id` was the probe. `delay_ms` is called with the number of consecutive
    /// failures. A transfer that was already in flight when the circuit opened does not
    /// advance the backoff: only probes do.
    pub fn unreachable(
        &self,
        peer: &str,
        id: [u8; 16],
        now_ms: u64,
        delay_ms: impl Fn(u32) -> u64,
    ) -> Unreachable {
        let mut open = self.lock();
        match open.get_mut(peer) {
            None => {
                let next_probe_ms = now_ms.saturating_add(delay_ms(1));
                open.insert(
                    peer.to_owned(),
                    Circuit {
                        down_since_ms: now_ms,
                        failures: 1,
                        next_probe_ms,
                        probe: None,
                        parked: HashSet::new(),
                    },
                );
                Unreachable {
                    opened: true,
                    failures: 1,
                    next_probe_ms,
                }
            }
            Some(c) => {
                if c.probe == Some(id) {
                    c.probe = None;
                    c.failures = c.failures.saturating_add(1);
                    c.next_probe_ms = now_ms.saturating_add(delay_ms(c.failures));
                }
                Unreachable {
                    opened: false,
                    failures: c.failures,
                    next_probe_ms: c.next_probe_ms,
                }
            }
        }
    }

    /// `peer` answered transfer `id` (a receipt, a refusal, or a retryable status from the
    /// peer itself): the peer is reachable. Returns what was waiting if the circuit was open.
    pub fn answered(&self, peer: &str, now_ms: u64) -> Option<Closed> {
        let c = self.lock().remove(peer)?;
        Some(Closed {
            down_for_ms: now_ms.saturating_sub(c.down_since_ms),
            parked: c.parked.into_iter().collect(),
        })
    }

    /// Transfer `id` ended without learning anything about `peer` (a local problem): if it was
    /// the probe, the next due transfer may probe instead.
    pub fn released(&self, peer: &str, id: [u8; 16]) {
        if let Some(c) = self.lock().get_mut(peer) {
            if c.probe == Some(id) {
                c.probe = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "clinic-b";

    #[test]
    fn a_closed_circuit_admits_everything() {
        let c = PeerCircuits::default();
        assert_eq!(c.admit(P, [1; 16], 0), Admission::Send);
        assert_eq!(c.admit(P, [2; 16], 0), Admission::Send);
        assert!(!c.is_open(P));
    }

    #[test]
    fn one_probe_at_a_time_on_the_circuit_backoff() {
        let c = PeerCircuits::default();
        let opened = c.unreachable(P, [1; 16], 1000, |n| 100 * u64::from(n));
        assert_eq!(
            opened,
            Unreachable {
                opened: true,
                failures: 1,
                next_probe_ms: 1100
            }
        );
        // Before the probe is due nobody goes; then exactly one.
        assert_eq!(
            c.admit(P, [2; 16], 1050),
            Admission::Wait {
                next_probe_ms: 1100
            }
        );
        assert_eq!(c.admit(P, [2; 16], 1100), Admission::Probe);
        assert_eq!(
            c.admit(P, [3; 16], 1100),
            Admission::Wait {
                next_probe_ms: 1100
            }
        );
        // A failure of a transfer that was in flight before does not advance the backoff.
        let other = c.unreachable(P, [9; 16], 1120, |n| 100 * u64::from(n));
        assert_eq!(other.failures, 1);
        // The probe fails: the next one is two steps away.
        let failed = c.unreachable(P, [2; 16], 1150, |n| 100 * u64::from(n));
        assert_eq!(failed.failures, 2);
        assert_eq!(failed.next_probe_ms, 1350);
        assert_eq!(c.view(P).map(|v| v.probing), Some(false));
        assert_eq!(c.admit(P, [3; 16], 1350), Admission::Probe);
        let closed = c.answered(P, 1400).unwrap();
        assert_eq!(closed.down_for_ms, 400);
        // Both waiting transfers became probes in turn, so none is left parked.
        assert!(closed.parked.is_empty(), "{:?}", closed.parked);
        assert!(!c.is_open(P));
        assert_eq!(c.admit(P, [4; 16], 1400), Admission::Send);
    }

    #[test]
    fn closing_releases_the_parked_transfers() {
        let c = PeerCircuits::default();
        c.unreachable(P, [1; 16], 0, |_| 1000);
        for i in 2..10u8 {
            assert!(matches!(c.admit(P, [i; 16], 10), Admission::Wait { .. }));
        }
        let mut parked = c.answered(P, 20).unwrap().parked;
        parked.sort();
        assert_eq!(parked, (2..10u8).map(|i| [i; 16]).collect::<Vec<_>>());
        assert!(c.answered(P, 30).is_none());
    }

    #[test]
    fn a_probe_that_learned_nothing_frees_the_slot() {
        let c = PeerCircuits::default();
        c.unreachable(P, [1; 16], 0, |_| 10);
        assert_eq!(c.admit(P, [1; 16], 10), Admission::Probe);
        assert!(matches!(c.admit(P, [2; 16], 10), Admission::Wait { .. }));
        c.released(P, [1; 16]);
        assert_eq!(c.admit(P, [2; 16], 10), Admission::Probe);
    }
}
