//! The memory budget (`--memory-budget`): a semaphore counted in KiB, for the images between
//! download and engine.
//!
//! A decode is charged once, before it starts, with everything it will hold at its peak: the
//! downloaded body plus the decoder's measured peak (`ocrfleet_ocr::decode::cost_pages`, read
//! from the header before any pixel exists). After decoding the charge shrinks to the RGB pages,
//! which are held until the engine is done with them.
//!
//! **No deadlock, by construction.** A task waits for the budget while holding none of it (one
//! acquire, for its whole need), and whoever holds budget is decoding or waiting for the
//! engine, both of which finish without more budget. So the FIFO queue always moves. A
//! need larger than the whole budget could never be granted: [`Budget::charge`] refuses it at
//! once, and the caller dead-letters the record (`decode/over_memory_budget`) so that an
//! operator can raise the budget and replay it. A wait that lasts long anyway (the engine is
//! stuck, say) is visible: [`Budget::waiting`] feeds a metric and a health fault.
//!
//! What the budget does not hold, and what bounds it instead (the pod's memory is the budget
//! plus these plus the engine's own, see `deploy/docs/production.md`): messages taken from
//! Kafka (`--max-in-flight-bytes`), bodies being downloaded or waiting for the budget
//! (`--fetch-concurrency` × `--fetch-max-bytes`), librdkafka's pre-fetch queue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The shared budget.
#[derive(Clone, Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total_kib: u32,
    /// When each current waiter started waiting, by a ticket number.
    waits: Arc<Mutex<BTreeMap<u64, Instant>>>,
    tickets: Arc<AtomicU64>,
}

/// A share of the budget, given back when dropped.
#[derive(Debug, Default)]
pub struct Charge {
    permit: Option<OwnedSemaphorePermit>,
}

/// Removes a waiter's entry however its wait ends (granted, or the task dropped).
struct Waiting<'a> {
    waits: &'a Mutex<BTreeMap<u64, Instant>>,
    ticket: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.ticket);
    }
}

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        let total_kib = (bytes / 1024).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Budget {
            sem: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            waits: Arc::default(),
            tickets: Arc::default(),
        }
    }

    /// The whole budget in bytes.
    pub fn total(&self) -> u64 {
        u64::from(self.total_kib) * 1024
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.total() - self.sem.available_permits() as u64 * 1024
    }

    /// Waits until `bytes` are free, then holds them; `None` at once when `bytes` is more than
    /// the whole budget (such a charge could never be granted). The caller must hold no other
    /// charge while it waits (see the module documentation).
    pub async fn charge(&self, bytes: u64) -> Option<Charge> {
        let kib = bytes.div_ceil(1024).max(1);
        if kib > u64::from(self.total_kib) {
            return None;
        }
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        self.waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ticket, Instant::now());
        let _waiting = Waiting {
            waits: &self.waits,
            ticket,
        };
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(kib as u32)
            .await
            .expect("the budget semaphore is never closed");
        Some(Charge {
            permit: Some(permit),
        })
    }

    /// Tasks waiting for the budget now, and how long the longest of them has waited.
    pub fn waiting(&self) -> (usize, Duration) {
        let waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = waits.values().min().map_or(Duration::ZERO, |t| t.elapsed());
        (waits.len(), oldest)
    }
}

impl Charge {
    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * 1024)
    }

    /// Gives back everything above `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        if let Some(p) = &mut self.permit {
            let keep = bytes.div_ceil(1024).max(1) as usize;
            if p.num_permits() > keep {
                drop(p.split(p.num_permits() - keep));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn charges_shrink_and_return() {
        let b = Budget::new(10 * 1024);
        let mut c = b.charge(6 * 1024).await.unwrap();
        assert_eq!(b.used(), 6 * 1024);
        c.shrink_to(2 * 1024);
        assert_eq!(b.used(), 2 * 1024);
        let d = b.charge(3000).await.unwrap(); // rounds up to 3 KiB
        assert_eq!(d.bytes(), 3 * 1024);
        drop((c, d));
        assert_eq!(b.used(), 0);
    }

    /// A need above the whole budget is refused at once: waiting for it would hold up every
    /// task behind it for ever (the semaphore is first come, first served).
    #[tokio::test]
    async fn a_charge_over_the_whole_budget_is_refused_not_waited_for() {
        let b = Budget::new(16 << 20);
        assert!(b.charge((16 << 20) + 1).await.is_none());
        assert_eq!(b.waiting().0, 0, "nobody left waiting");
        let all = b.charge(16 << 20).await.expect("exactly the budget fits");
        drop(all);
        // And a small charge behind the refused one is granted at once.
        assert!(b.charge(1024).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_seen_while_they_last() {
        let b = Budget::new(4096);
        let held = b.charge(4096).await.unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.charge(1024).await.map(|c| c.bytes()) });
        tokio::time::sleep(Duration::from_secs(90)).await;
        let (n, oldest) = b.waiting();
        assert_eq!(n, 1);
        assert!(oldest >= Duration::from_secs(90), "{oldest:?}");
        drop(held);
        assert_eq!(waiter.await.unwrap(), Some(1024));
        assert_eq!(b.waiting(), (0, Duration::ZERO));
    }
}
