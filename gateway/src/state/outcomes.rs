//! Callers waiting for a transfer's final outcome (`POST /v1/transfers?wait=receipt`).
//!
//! One slot per transfer id, so an outcome wakes only the callers waiting for that transfer.
//! (A broadcast channel woke every waiting request on every outcome: with N requests waiting,
//! N wake-ups per delivery.)

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// Whether a transfer was delivered (receipt verified) or not (failed, cancelled).
pub type Delivered = bool;

#[derive(Default)]
pub struct OutcomeWaiters {
    slots: Mutex<HashMap<[u8; 16], Vec<oneshot::Sender<Delivered>>>>,
}

impl OutcomeWaiters {
    /// A receiver for the outcome of `id`. Register before reading the transfer's state from
    /// the store: [`OutcomeWaiters::finish`] runs after the final state is written, so either
    /// the read sees that state or the receiver gets the outcome.
    pub fn register(&self, id: [u8; 16]) -> oneshot::Receiver<Delivered> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut slots) = self.slots.lock() {
            slots.entry(id).or_default().push(tx);
        }
        rx
    }

    /// Hands the outcome of `id` to everyone waiting for it.
    pub fn finish(&self, id: [u8; 16], delivered: Delivered) {
        let waiting = self
            .slots
            .lock()
            .ok()
            .and_then(|mut slots| slots.remove(&id));
        for tx in waiting.into_iter().flatten() {
            let _ = tx.send(delivered);
        }
    }

    /// Drops the registrations of `id` whose receiver is gone (a caller that stopped waiting).
    pub fn forget(&self, id: [u8; 16]) {
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(waiting) = slots.get_mut(&id) {
                waiting.retain(|tx| !tx.is_closed());
                if waiting.is_empty() {
                    slots.remove(&id);
                }
            }
        }
    }

    /// Transfers someone is waiting for.
    pub fn len(&self) -> usize {
        self.slots.lock().map_or(0, |slots| slots.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_outcome_reaches_only_its_own_waiters() {
        let waiters = OutcomeWaiters::default();
        let a1 = waiters.register([1; 16]);
        let a2 = waiters.register([1; 16]);
        let mut b = waiters.register([2; 16]);
        waiters.finish([1; 16], true);
        assert_eq!(a1.await, Ok(true));
        assert_eq!(a2.await, Ok(true));
        assert!(b.try_recv().is_err(), "transfer 2 has no outcome yet");
        assert_eq!(waiters.len(), 1);
        waiters.finish([2; 16], false);
        assert_eq!(b.await, Ok(false));
        assert!(waiters.is_empty());
        // An outcome nobody waits for is dropped, not kept.
        waiters.finish([3; 16], true);
        assert!(waiters.is_empty());
    }

    #[test]
    fn a_caller_that_stops_waiting_leaves_nothing_behind() {
        let waiters = OutcomeWaiters::default();
        let gone = waiters.register([1; 16]);
        let staying = waiters.register([1; 16]);
        drop(gone);
        waiters.forget([1; 16]);
        assert_eq!(waiters.len(), 1, "one caller still waits");
        drop(staying);
        waiters.forget([1; 16]);
        assert!(waiters.is_empty());
    }
}
