//! A sliding-window counter without a lock: the last `span` of time in [`SLOTS`] slots, each one
//! atomic word holding the slot's epoch (which slice of time it counts) and its count.
//!
//! What the breaker's failure rate and the retry budget's ratio are computed over. Adding is one
//! compare-and-swap on one word; summing reads [`SLOTS`] words. A slot whose epoch is older than
//! the window counts nothing, so nothing has to sweep old slots away.

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots per window: the window slides by a tenth of its span.
pub const SLOTS: usize = 10;

/// Counts events over the last `span_ms` (in slots of `span_ms / SLOTS`).
#[derive(Debug)]
pub struct Window {
    /// Each slot: epoch in the high 32 bits, count in the low 32.
    slots: [AtomicU64; SLOTS],
    /// Length of one slot, in milliseconds (at least 1).
    slot_ms: u64,
}

impl Window {
    /// A window over the last `span_ms` milliseconds.
    pub fn new(span_ms: u64) -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            slot_ms: (span_ms / SLOTS as u64).max(1),
        }
    }

    fn epoch(&self, now_ms: u64) -> u32 {
        // Wraps after 2^32 slots (decades at 1 ms slots); comparisons below wrap with it.
        (now_ms / self.slot_ms) as u32
    }

    /// Counts `n` events at `now_ms`.
    pub fn add(&self, now_ms: u64, n: u32) {
        let epoch = self.epoch(now_ms);
        let slot = &self.slots[epoch as usize % SLOTS];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if (current >> 32) as u32 == epoch {
                let count = (current as u32).saturating_add(n);
                (u64::from(epoch) << 32) | u64::from(count)
            } else {
                // The slot still holds an older slice of time: this event starts it afresh.
                (u64::from(epoch) << 32) | u64::from(n)
            };
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Events counted within the window ending at `now_ms`.
    pub fn sum(&self, now_ms: u64) -> u64 {
        let epoch = self.epoch(now_ms);
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|v| (epoch.wrapping_sub((v >> 32) as u32) as usize) < SLOTS)
            .map(|v| u64::from(v as u32))
            .sum()
    }

    /// Forgets everything counted.
    pub fn clear(&self) {
        for s in &self.slots {
            s.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_of_the_window() {
        // A window of 1000 ms in slots of 100 ms; (time, added) then (time, expected sum).
        let w = Window::new(1000);
        let steps: &[(u64, u32, u64)] = &[
            (0, 1, 1),
            (50, 2, 3),
            (150, 1, 4),
            (999, 0, 4),
            // The first slot (0..100 ms) leaves at 1000 ms, the second (100..200 ms) at 1100.
            (1000, 0, 1),
            (1099, 0, 1),
            (1100, 0, 0),
            // A slot reused after a full turn starts from zero.
            (2005, 5, 5),
            (2099, 1, 6),
        ];
        for &(t, add, want) in steps {
            if add > 0 {
                w.add(t, add);
            }
            assert_eq!(w.sum(t), want, "at {t} ms");
        }
        w.clear();
        assert_eq!(w.sum(2099), 0);
    }
}
