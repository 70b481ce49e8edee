//! The session pool: `parallel` sessions on one model, a fair queue in front of them, and the
//! choice of which idle session serves a request (the one whose last conversation shares the
//! longest prefix of messages with it, so a follow-up turn finds its KV cache and image
//! features where it left them).

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Model, Session};

/// One idle session and the conversation it last held, as one hash per message.
struct Slot {
    session: Session,
    key: Vec<u64>,
}

/// The pool.
pub struct Workers {
    idle: Mutex<Vec<Slot>>,
    /// One permit per session; tokio's semaphore queues waiters first come, first served.
    permits: Arc<Semaphore>,
    n: usize,
}

/// A session taken from the pool; give it back with [`Workers::put`].
pub struct Lease {
    pub session: Session,
    _permit: OwnedSemaphorePermit,
}

impl Workers {
    pub fn new(model: &Model, n: usize) -> Workers {
        let idle = (0..n)
            .map(|_| Slot {
                session: model.session(),
                key: Vec::new(),
            })
            .collect();
        Workers {
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(n)),
            n,
        }
    }

    /// Sessions in the pool.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Waits for a free session and takes the one that best continues `key`. `None` only if
    /// the pool was closed (it never is while serving).
    pub async fn take(&self, key: &[u64]) -> Option<Lease> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // A held permit guarantees an idle slot: there are as many permits as sessions.
        let best = idle
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| common(&s.key, key))
            .map(|(i, _)| i)?;
        let slot = idle.swap_remove(best);
        Some(Lease {
            session: slot.session,
            _permit: permit,
        })
    }

    /// Returns a session with the conversation it now holds.
    pub fn put(&self, lease: Lease, key: Vec<u64>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(Slot {
            session: lease.session,
            key,
        });
        // The permit is released when `lease` drops, after the slot is back.
    }
}

/// Length of the common prefix of two keys.
fn common(a: &[u64], b: &[u64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
