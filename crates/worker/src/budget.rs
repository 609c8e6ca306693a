//! The memory budget (`--memory-budget`): a semaphore counted in KiB.
//!
//! Everything big that a message holds while in flight is charged to it: the message itself
//! (key, value, headers) from the moment the pipeline takes it until it is finished, the
//! download body while it is read, and the decoder's peak while it decodes (its real
//! intermediates, see `ocrfleet_ocr::decode::cost`), shrunk to the RGB image afterwards and held
//! until the engine is done with it. A charge larger than the whole budget is cut to the whole
//! budget, so one huge item waits for everything else to finish instead of deadlocking.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shared budget.
#[derive(Clone, Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total_kib: u32,
}

/// A share of the budget, given back when dropped.
#[derive(Debug, Default)]
pub struct Charge {
    permit: Option<OwnedSemaphorePermit>,
}

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        let total_kib = (bytes / 1024).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Budget {
            sem: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    fn kib(&self, bytes: u64) -> u32 {
        bytes.div_ceil(1024).clamp(1, u64::from(self.total_kib)) as u32
    }

    /// Waits until `bytes` are free, then holds them.
    pub async fn charge(&self, bytes: u64) -> Charge {
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(self.kib(bytes))
            .await
            .expect("the budget semaphore is never closed");
        Charge {
            permit: Some(permit),
        }
    }

    /// Bytes free now.
    #[cfg(test)]
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64 * 1024
    }
}

impl Charge {
    /// Bytes held.
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

    /// Adds `other`'s bytes to this charge.
    pub fn merge(&mut self, other: Charge) {
        match (&mut self.permit, other.permit) {
            (Some(a), Some(b)) => a.merge(b),
            (None, b) => self.permit = b,
            (_, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn charges_shrink_merge_and_return() {
        let b = Budget::new(10 * 1024);
        let mut c = b.charge(6 * 1024).await;
        assert_eq!(b.available(), 4 * 1024);
        c.shrink_to(2 * 1024);
        assert_eq!(b.available(), 8 * 1024);
        let d = b.charge(3000).await; // rounds up to 3 KiB
        c.merge(d);
        assert_eq!(c.bytes(), 5 * 1024);
        drop(c);
        assert_eq!(b.available(), 10 * 1024);
    }

    #[tokio::test]
    async fn a_charge_over_the_whole_budget_is_cut_to_it() {
        let b = Budget::new(4096);
        let c = b.charge(1 << 30).await;
        assert_eq!(c.bytes(), 4096);
        assert_eq!(b.available(), 0);
    }
}
