//! Counting in sliding windows: the most instants in any window `[t, t + window)`, as a strict
//! per-second limit (Meta's) counts sends. Shared by the pacing tests and the benchmarks.

use std::time::{Duration, Instant};

/// The most instants in any window of `window`.
pub fn most_in(window: Duration, mut at: Vec<Instant>) -> usize {
    at.sort();
    let (mut most, mut start) = (0, 0);
    for end in 0..at.len() {
        while at[end] - at[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// The most instants in any one-second window `[t, t + 1 s)`.
pub fn most_in_one_second(at: Vec<Instant>) -> usize {
    most_in(Duration::from_secs(1), at)
}
