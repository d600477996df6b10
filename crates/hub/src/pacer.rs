//! Adaptive write coalescing: how long a connection that wrote a moment ago waits before it
//! writes again, chosen from how busy the node is.
//!
//! Every write costs a system call (on loopback and in virtual machines a `sendto` costs several
//! microseconds, the kernel's TCP path included), so at a million deliveries a second a node
//! that writes each message at once saturates its cores and its queues grow: tail latency goes
//! up by tens of milliseconds. Waiting a few milliseconds after a write lets the next messages
//! go out together, at a tenth of the cost. On an idle node that wait would only add latency.
//!
//! The [`Pacer`] decides, for the whole node, from the scheduler's lag: a monitor task sleeps
//! [`CALM_TICK`] at a time ([`TICK`] while the delay is not zero) and measures how late it
//! wakes up. A late wake-up means runnable tasks
//! queue for the CPU, the sign of a saturated node; then the delay doubles (from
//! [`MIN_DELAY`] up to [`MAX_DELAY`]). When wake-ups are on time again the delay decays
//! (by a quarter every [`CALM_STEP`]) back to zero. Connections read the current delay on every
//! write decision ([`Pacer::delay`], one atomic load) and hold only when their previous write was
//! less than the delay ago: a connection that was quiet writes at once, whatever the load.
//!
//! `client.write_delay` set to a duration replaces the adaptive delay with that fixed one
//! ([`crate::config::WriteDelay`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::config::WriteDelay;

/// How often the monitor measures the scheduler's lag while the node delays writes.
pub const TICK: Duration = Duration::from_millis(5);
/// How often it measures while the delay is zero (an idle node wakes up 20 times a second).
pub const CALM_TICK: Duration = Duration::from_millis(50);
/// A wake-up later than this (beyond the timer's 1 ms granularity) counts as a busy node.
pub const BUSY_LAG: Duration = Duration::from_millis(2);
/// Wake-ups within this are on time.
pub const CALM_LAG: Duration = Duration::from_millis(1);
/// The first delay when the node gets busy.
pub const MIN_DELAY: Duration = Duration::from_millis(1);
/// The longest adaptive delay.
pub const MAX_DELAY: Duration = Duration::from_millis(20);
/// How long wake-ups must be on time before the delay decays by a quarter.
pub const CALM_STEP: Duration = Duration::from_millis(100);
/// A delay below this after a decay becomes zero (write at once).
const OFF_BELOW: Duration = Duration::from_micros(500);

/// The node's write coalescing delay (see the module docs).
#[derive(Debug)]
pub struct Pacer {
    /// `None`: adaptive; `Some`: the configured fixed delay.
    fixed: Option<Duration>,
    /// The adaptive delay in microseconds.
    delay_us: AtomicU32,
}

impl Pacer {
    /// A pacer for `setting`.
    pub fn new(setting: WriteDelay) -> Self {
        Self {
            fixed: match setting {
                WriteDelay::Auto => None,
                WriteDelay::Fixed(d) => Some(d),
            },
            delay_us: AtomicU32::new(0),
        }
    }

    /// How long a connection waits after a write before it writes again (zero: at once).
    #[inline]
    pub fn delay(&self) -> Duration {
        match self.fixed {
            Some(d) => d,
            None => Duration::from_micros(u64::from(self.delay_us.load(Ordering::Relaxed))),
        }
    }

    /// Whether the delay adapts to the node's load.
    pub fn is_adaptive(&self) -> bool {
        self.fixed.is_none()
    }

    fn set(&self, delay: Duration) {
        let us = u32::try_from(delay.as_micros()).unwrap_or(u32::MAX);
        self.delay_us.store(us, Ordering::Relaxed);
    }

    /// Runs the lag monitor while `pacer` lives (nothing to do for a fixed delay). Spawn it on
    /// the runtime whose load it should follow.
    pub async fn monitor(pacer: Weak<Pacer>) {
        let mut control = Control::default();
        loop {
            let tick = if control.delay.is_zero() {
                CALM_TICK
            } else {
                TICK
            };
            let due = Instant::now() + tick;
            tokio::time::sleep_until(due.into()).await;
            let now = Instant::now();
            let Some(pacer) = pacer.upgrade() else { return };
            if !pacer.is_adaptive() {
                return;
            }
            pacer.set(control.observe(now.saturating_duration_since(due), now));
        }
    }

    /// Starts [`Pacer::monitor`] on the current tokio runtime, if there is one and the delay is
    /// adaptive.
    pub(crate) fn spawn_monitor(pacer: &Arc<Pacer>) {
        if !pacer.is_adaptive() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(Pacer::monitor(Arc::downgrade(pacer)));
        }
    }
}

/// The control law: multiplicative increase on a late wake-up, slow decay while on time.
#[derive(Debug, Default)]
pub(crate) struct Control {
    delay: Duration,
    /// Since when wake-ups have been on time (none while the delay is zero).
    calm_since: Option<Instant>,
}

impl Control {
    /// The new delay after a wake-up `lag` late at `now`.
    pub(crate) fn observe(&mut self, lag: Duration, now: Instant) -> Duration {
        if lag > BUSY_LAG {
            self.delay = (self.delay * 2).clamp(MIN_DELAY, MAX_DELAY);
            self.calm_since = None;
        } else if lag <= CALM_LAG && !self.delay.is_zero() {
            let since = *self.calm_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= CALM_STEP {
                self.delay = self.delay * 3 / 4;
                if self.delay < OFF_BELOW {
                    self.delay = Duration::ZERO;
                }
                self.calm_since = Some(now);
            }
        } else {
            // Between calm and busy: keep the delay, restart the calm period.
            self.calm_since = None;
        }
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATE: Duration = Duration::from_millis(10);
    const ON_TIME: Duration = Duration::from_micros(300);

    #[test]
    fn a_calm_node_never_delays() {
        let mut c = Control::default();
        let t0 = Instant::now();
        for i in 0..1000 {
            assert_eq!(c.observe(ON_TIME, t0 + TICK * i), Duration::ZERO);
        }
    }

    #[test]
    fn late_wake_ups_double_the_delay_up_to_the_maximum() {
        let mut c = Control::default();
        let t0 = Instant::now();
        let mut seen = Vec::new();
        for i in 0..10 {
            seen.push(c.observe(LATE, t0 + TICK * i));
        }
        assert_eq!(seen[0], MIN_DELAY);
        assert_eq!(seen[1], MIN_DELAY * 2);
        assert_eq!(seen[2], MIN_DELAY * 4);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*seen.last().unwrap(), MAX_DELAY);
    }

    #[test]
    fn the_delay_decays_to_zero_once_wake_ups_are_on_time() {
        let mut c = Control::default();
        let t0 = Instant::now();
        for i in 0..10 {
            c.observe(LATE, t0 + TICK * i);
        }
        // One calm step keeps it; a whole CALM_STEP of calm takes a quarter off.
        let t1 = t0 + TICK * 10;
        assert_eq!(c.observe(ON_TIME, t1), MAX_DELAY);
        assert_eq!(c.observe(ON_TIME, t1 + CALM_STEP), MAX_DELAY * 3 / 4);
        // A lag between calm and busy holds the delay and restarts the calm period.
        let held = c.observe(Duration::from_micros(1500), t1 + CALM_STEP * 2);
        assert_eq!(held, MAX_DELAY * 3 / 4);
        let mut t = t1 + CALM_STEP * 2;
        let mut last = held;
        for _ in 0..400 {
            t += TICK;
            let d = c.observe(ON_TIME, t);
            assert!(d <= last);
            last = d;
        }
        assert_eq!(last, Duration::ZERO, "decayed to zero within 2 s of calm");
    }

    #[test]
    fn a_fixed_delay_is_kept_whatever_the_load() {
        let p = Pacer::new(WriteDelay::Fixed(Duration::from_millis(5)));
        assert!(!p.is_adaptive());
        assert_eq!(p.delay(), Duration::from_millis(5));
        let auto = Pacer::new(WriteDelay::Auto);
        assert!(auto.is_adaptive());
        assert_eq!(auto.delay(), Duration::ZERO);
        auto.set(Duration::from_millis(3));
        assert_eq!(auto.delay(), Duration::from_millis(3));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_monitor_raises_the_delay_while_the_runtime_is_blocked() {
        let pacer = Arc::new(Pacer::new(WriteDelay::Auto));
        tokio::spawn(Pacer::monitor(Arc::downgrade(&pacer)));
        tokio::time::sleep(TICK).await;
        assert_eq!(pacer.delay(), Duration::ZERO);
        // Block the only worker thread for two ticks: the monitor's wake-up falls due meanwhile
        // and comes late.
        std::thread::sleep(CALM_TICK * 2);
        tokio::time::sleep(TICK * 2).await;
        assert!(pacer.delay() >= MIN_DELAY, "{:?}", pacer.delay());
        // The monitor ends with the pacer.
        drop(pacer);
    }
}
