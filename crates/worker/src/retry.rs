//! Backoff for the waits that must not give up: indexing, dead-lettering and the index
//! template at start-up (a message is only committed once it is indexed or dead-lettered).
//! Exponential with jitter, capped at 10 s, from `backon` (the same crate the fetch retries use).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays starting near `first`, doubling up to 10 s, jittered, never ending.
pub fn unbounded(first: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_and_never_ends() {
        let d: Vec<Duration> = unbounded(Duration::from_millis(100)).take(40).collect();
        assert_eq!(d.len(), 40);
        assert!(
            d[0] >= Duration::from_millis(100) && d[0] <= Duration::from_millis(200),
            "{:?}",
            d[0]
        );
        assert!(
            d.iter().all(|x| *x <= Duration::from_secs(20)),
            "cap (plus jitter)"
        );
        assert!(d[39] >= Duration::from_secs(10));
    }
}
