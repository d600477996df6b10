//! Live dashboard: a server-side publisher simulating three sensors (temperature, humidity,
//! load) into `demo-dashboard:sensors` at `demos.dashboard_rate` updates per second, while
//! someone watches (counted with the subscribed/unsubscribed notifications). Each update carries
//! the server's send time, so the page shows end-to-end latency and messages per second.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use switchboard::config::NamespaceOptions;
use switchboard::{Data, HandlerResult, Node, SubscribeReply};

use crate::chat::now_ms;
use crate::{invalid, open_namespace};

/// The dashboard's namespace.
pub(crate) const NAMESPACE: &str = "demo-dashboard";
/// Its one channel.
pub(crate) const CHANNEL: &str = "demo-dashboard:sensors";

pub(crate) fn namespace() -> NamespaceOptions {
    open_namespace(NAMESPACE)
}

/// The feed's state.
pub(crate) struct Dashboard {
    /// Updates per second.
    rate: AtomicU32,
    /// Subscriptions to [`CHANNEL`] on this node.
    watchers: AtomicUsize,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self {
            rate: AtomicU32::new(10),
            watchers: AtomicUsize::new(0),
        }
    }
}

#[derive(Serialize)]
struct Reading {
    seq: u64,
    /// Server time of sending, milliseconds since the Unix epoch.
    t: u64,
    temperature: f64,
    humidity: f64,
    load: f64,
}

#[derive(Serialize)]
struct Welcome {
    rate: u32,
}

impl Dashboard {
    pub(crate) fn set_rate(&self, rate: u32) {
        self.rate.store(rate.clamp(1, 100), Ordering::Relaxed);
    }

    pub(crate) fn subscribe(&self, channel: &str) -> HandlerResult<SubscribeReply> {
        if channel != CHANNEL {
            return Err(invalid(format!("the dashboard's channel is {CHANNEL}")));
        }
        let welcome = Welcome {
            rate: self.rate.load(Ordering::Relaxed),
        };
        Ok(SubscribeReply::accept().with_data(Data::json(&welcome)?))
    }

    /// A subscription to `channel` started (`true`) or ended.
    pub(crate) fn watching(&self, channel: &str, started: bool) {
        if channel != CHANNEL {
            return;
        }
        if started {
            self.watchers.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = self
                .watchers
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Publishes readings for as long as the node lives (skipping while nobody watches).
    pub(crate) fn spawn(self: &Arc<Self>, node: Node) {
        let feed = self.clone();
        tokio::spawn(async move {
            let mut sensors = Sensors::new(now_ms());
            let rate = feed.rate.load(Ordering::Relaxed).max(1);
            let mut interval =
                tokio::time::interval(Duration::from_micros(1_000_000 / rate as u64));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut seq = 0;
            loop {
                interval.tick().await;
                if feed.watchers.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                seq += 1;
                let reading = sensors.next(seq);
                if let Err(e) = node.publish_json(CHANNEL, &reading).await {
                    tracing::debug!("dashboard reading not published: {e}");
                }
            }
        });
    }
}

/// Three random walks (xorshift; no randomness crate needed for a demo).
struct Sensors {
    state: u64,
    temperature: f64,
    humidity: f64,
    load: f64,
}

impl Sensors {
    fn new(seed: u64) -> Self {
        Self {
            state: seed | 1,
            temperature: 21.0,
            humidity: 45.0,
            load: 0.4,
        }
    }

    /// A number in [-1, 1).
    fn noise(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn next(&mut self, seq: u64) -> Reading {
        self.temperature = (self.temperature + self.noise() * 0.3).clamp(15.0, 30.0);
        self.humidity = (self.humidity + self.noise() * 0.8).clamp(20.0, 80.0);
        self.load = (self.load + self.noise() * 0.05).clamp(0.0, 1.0);
        Reading {
            seq,
            t: now_ms(),
            temperature: round2(self.temperature),
            humidity: round2(self.humidity),
            load: round2(self.load),
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensors_stay_in_range_and_watchers_never_go_negative() {
        let mut s = Sensors::new(42);
        for seq in 0..10_000 {
            let r = s.next(seq);
            assert!((15.0..=30.0).contains(&r.temperature));
            assert!((0.0..=1.0).contains(&r.load));
        }
        let d = Dashboard::default();
        d.watching(CHANNEL, false);
        d.watching(CHANNEL, true);
        assert_eq!(d.watchers.load(Ordering::Relaxed), 1);
        d.set_rate(1000);
        assert_eq!(d.rate.load(Ordering::Relaxed), 100);
    }
}
