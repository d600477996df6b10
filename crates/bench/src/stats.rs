//! Per-subscriber delivery accounting and latency histograms.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::pool::WorkerOut;

/// Bits of the duplicate-detection window (sequence numbers behind the newest one).
const WINDOW_WORDS: usize = 16;
const WINDOW: u64 = (WINDOW_WORDS * 64) as u64;

/// What one subscriber saw. Sequence numbers start at 1 (0 is the start barrier).
#[derive(Debug, Clone)]
pub(crate) struct SubStats {
    /// Distinct messages received.
    pub(crate) received: u64,
    /// Messages that arrived after a later one.
    pub(crate) out_of_order: u64,
    /// Messages received more than once (detected within the last 1,024 sequence numbers).
    pub(crate) duplicated: u64,
    /// Highest sequence number seen.
    pub(crate) max_seq: u64,
    /// Whether the start barrier arrived.
    pub(crate) barrier: bool,
    /// Why the connection ended early, if it did (close code, reason or error).
    pub(crate) ended: Option<String>,
    seen: [u64; WINDOW_WORDS],
}

impl Default for SubStats {
    fn default() -> Self {
        Self {
            received: 0,
            out_of_order: 0,
            duplicated: 0,
            max_seq: 0,
            barrier: false,
            ended: None,
            seen: [0; WINDOW_WORDS],
        }
    }
}

impl SubStats {
    /// Records sequence number `seq` (>= 1).
    pub(crate) fn record(&mut self, seq: u64) {
        if seq > self.max_seq {
            if seq - self.max_seq >= WINDOW {
                self.seen = [0; WINDOW_WORDS];
            } else {
                for s in self.max_seq + 1..seq {
                    self.clear(s);
                }
            }
            self.set(seq);
            self.max_seq = seq;
            self.received += 1;
        } else if self.max_seq - seq >= WINDOW {
            self.out_of_order += 1;
            self.received += 1;
        } else if self.is_set(seq) {
            self.duplicated += 1;
        } else {
            self.set(seq);
            self.out_of_order += 1;
            self.received += 1;
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = (seq % WINDOW) as usize;
        (i / 64, 1 << (i % 64))
    }
    fn set(&mut self, seq: u64) {
        let (w, b) = Self::bit(seq);
        self.seen[w] |= b;
    }
    fn clear(&mut self, seq: u64) {
        let (w, b) = Self::bit(seq);
        self.seen[w] &= !b;
    }
    fn is_set(&self, seq: u64) -> bool {
        let (w, b) = Self::bit(seq);
        self.seen[w] & b != 0
    }
}

/// A latency histogram in microseconds.
pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) samples: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Delivery problems summed over subscribers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Integrity {
    /// Messages a subscriber should have received but did not (summed).
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    /// Subscribers with at least one lost, duplicated or out-of-order message.
    pub(crate) subscribers_affected: u64,
    /// Subscribers whose connection ended during the run.
    pub(crate) subscribers_disconnected: u64,
    /// The first few reasons connections ended, with counts.
    pub(crate) disconnect_reasons: Vec<(String, u64)>,
}

impl Integrity {
    /// Adds another process's totals.
    pub(crate) fn merge(&mut self, other: &Integrity) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.subscribers_affected += other.subscribers_affected;
        self.subscribers_disconnected += other.subscribers_disconnected;
        for (kind, n) in &other.disconnect_reasons {
            add_kind(&mut self.disconnect_reasons, kind, *n);
        }
    }

    /// Adds one subscriber that should have received `expected` messages.
    pub(crate) fn add(&mut self, s: &SubStats, expected: u64) {
        let lost = expected.saturating_sub(s.received);
        self.lost += lost;
        self.duplicated += s.duplicated;
        self.out_of_order += s.out_of_order;
        if lost + s.duplicated + s.out_of_order > 0 {
            self.subscribers_affected += 1;
        }
        if let Some(why) = &s.ended {
            self.subscribers_disconnected += 1;
            count_kind(&mut self.disconnect_reasons, why);
        }
    }
}

/// Sums the workers' latency histograms and checks every subscriber against the `sent`
/// messages spread round-robin over `channels`.
pub(crate) fn collect(
    workers: &[WorkerOut],
    channels: u64,
    sent: u64,
) -> (Histogram<u64>, Integrity) {
    let mut hist = histogram();
    let mut integrity = Integrity::default();
    for w in workers {
        let _ = hist.add(&w.latency);
        for (i, s) in &w.subs {
            let c = (*i as u64) % channels;
            let expected = sent / channels + u64::from(c < sent % channels);
            if s.ended.as_deref() == Some("connect failed") {
                continue;
            }
            integrity.add(s, expected);
        }
    }
    (hist, integrity)
}

/// A histogram as (value, count) pairs, to send to another process.
pub(crate) fn histogram_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds (value, count) pairs from [`histogram_pairs`] to `h`.
pub(crate) fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        let _ = h.record_n(value, count);
    }
}

/// Counts one occurrence of `kind`, keeping at most 8 distinct kinds.
pub(crate) fn count_kind(kinds: &mut Vec<(String, u64)>, kind: &str) {
    add_kind(kinds, kind, 1);
}

/// Counts `n` occurrences of `kind`, keeping at most 8 distinct kinds.
pub(crate) fn add_kind(kinds: &mut Vec<(String, u64)>, kind: &str, n: u64) {
    if let Some((_, m)) = kinds.iter_mut().find(|(k, _)| k == kind) {
        *m += n;
    } else if kinds.len() < 8 {
        kinds.push((kind.to_owned(), n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_gaps_duplicates_and_reordering() {
        let mut s = SubStats::default();
        for seq in [1, 2, 4, 3, 3, 6, 2000, 5] {
            s.record(seq);
        }
        assert_eq!(s.received, 7);
        assert_eq!(s.duplicated, 1);
        assert_eq!(s.out_of_order, 2);
        let mut i = Integrity::default();
        i.add(&s, 2000);
        assert_eq!(i.lost, 1993);
        assert_eq!(i.subscribers_affected, 1);
    }
}
