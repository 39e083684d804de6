//! Restart backoff: a pure function of the failure count and a seeded generator.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A small deterministic generator (SplitMix64): the core's only source of randomness,
/// seeded at construction so simulations replay exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Exponential backoff for quick repeated crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long counts as healthy and resets the failure count.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// Delay before the restart that follows `quick_failures` consecutive quick crashes
    /// (0 = the crash ended a healthy run: restart at once). Jitter is up to +25%, still capped.
    pub fn delay(&self, quick_failures: u32, rng: &mut SeededRng) -> Duration {
        if quick_failures == 0 {
            return Duration::ZERO;
        }
        let exp = quick_failures.saturating_sub(1).min(32);
        let base = self
            .initial
            .saturating_mul(1u32 << exp.min(31))
            .min(self.max);
        let jitter_ms = (base.as_millis() as u64 / 4).max(1);
        let jitter = Duration::from_millis(rng.next_u64() % jitter_ms);
        // Saturating: a journal or snapshot may carry any durations.
        base.saturating_add(jitter).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A journal or snapshot may carry any policy; found by review of the fuzz targets.
    #[test]
    fn huge_delays_saturate_instead_of_overflowing() {
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            healthy_after: Duration::MAX,
        };
        let mut rng = SeededRng::new(1);
        for failures in [1, 2, 40, u32::MAX] {
            assert_eq!(huge.delay(failures, &mut rng), Duration::MAX);
        }
    }

    #[test]
    fn healthy_run_restarts_at_once_and_quick_crashes_double() {
        let b = Backoff::default();
        let mut rng = SeededRng::new(1);
        assert_eq!(b.delay(0, &mut rng), Duration::ZERO);
        let d1 = b.delay(1, &mut rng);
        let d4 = b.delay(4, &mut rng);
        assert!(d1 >= Duration::from_millis(100) && d1 < Duration::from_millis(126));
        assert!(d4 >= Duration::from_millis(800) && d4 < Duration::from_millis(1001));
    }

    proptest! {
        #[test]
        fn delay_is_capped_and_monotone_in_base(n in 1u32..10_000, seed: u64) {
            let b = Backoff::default();
            let d = b.delay(n, &mut SeededRng::new(seed));
            prop_assert!(d <= b.max);
            prop_assert!(d >= b.initial);
        }

        #[test]
        fn same_seed_same_delays(seed: u64) {
            let b = Backoff::default();
            let (mut r1, mut r2) = (SeededRng::new(seed), SeededRng::new(seed));
            for n in 0..20 {
                prop_assert_eq!(b.delay(n, &mut r1), b.delay(n, &mut r2));
            }
        }
    }
}
