//! Batches of one channel's publications for a broker's receive task.
//!
//! A receive task that reads several messages at once (a burst from Redis or NATS) would hand
//! each publication to the hub on its own, and every subscriber's queue would be locked and
//! its task woken once per message. [`BatchedEvents`] stands between the task and the hub's
//! [`BrokerEvents`]: it keeps consecutive publications of one channel and hands them over
//! together ([`BrokerEvents::publications`]: one shared queue entry and one wake-up per
//! subscriber) when another channel's publication or any other event comes, when [`MAX_BATCH`]
//! are kept, or when the task calls [`BatchedEvents::flush`] after what it read at once.
//! Everything keeps its order.

use std::sync::Arc;

use parking_lot::Mutex;
use switchboard_proto::{ClientInfo, Publication};

use crate::broker::BrokerEvents;

/// Most publications handed over as one batch.
pub const MAX_BATCH: usize = 256;

/// Consecutive publications of one channel kept for delivery.
#[derive(Default)]
struct Pending {
    channel: String,
    publications: Vec<Publication>,
}

/// [`BrokerEvents`] that hands consecutive publications of one channel to the wrapped events
/// as one batch (see the module docs). Call [`BatchedEvents::flush`] once what was read at
/// once has been given to it; dropping it flushes too.
pub struct BatchedEvents {
    events: Arc<dyn BrokerEvents>,
    /// Only the receive task uses it: the lock is never contended.
    pending: Mutex<Pending>,
}

impl BatchedEvents {
    /// Batches in front of `events`.
    pub fn new(events: Arc<dyn BrokerEvents>) -> Self {
        Self {
            events,
            pending: Mutex::default(),
        }
    }

    /// Hands over the publications kept so far.
    pub fn flush(&self) {
        let mut pending = self.pending.lock();
        if pending.publications.is_empty() {
            return;
        }
        let publications = std::mem::take(&mut pending.publications);
        let channel = std::mem::take(&mut pending.channel);
        drop(pending);
        match &publications[..] {
            [one] => self.events.publication(&channel, one),
            all => self.events.publications(&channel, all),
        }
    }
}

impl Drop for BatchedEvents {
    fn drop(&mut self) {
        self.flush();
    }
}

impl BrokerEvents for BatchedEvents {
    fn publication(&self, channel: &str, publication: &Publication) {
        let mut pending = self.pending.lock();
        if !pending.publications.is_empty() && pending.channel != channel {
            drop(pending);
            self.flush();
            pending = self.pending.lock();
        }
        if pending.publications.is_empty() {
            channel.clone_into(&mut pending.channel);
        }
        pending.publications.push(publication.clone());
        let full = pending.publications.len() >= MAX_BATCH;
        drop(pending);
        if full {
            self.flush();
        }
    }

    fn publications(&self, channel: &str, publications: &[Publication]) {
        for publication in publications {
            self.publication(channel, publication);
        }
    }

    fn join(&self, channel: &str, info: &ClientInfo) {
        self.flush();
        self.events.join(channel, info);
    }

    fn leave(&self, channel: &str, info: &ClientInfo) {
        self.flush();
        self.events.leave(channel, info);
    }

    fn gap(&self, channel: &str) {
        self.flush();
        self.events.gap(channel);
    }

    fn control(&self, message: &[u8]) {
        self.flush();
        self.events.control(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use std::collections::HashMap;

    /// Records every event as a line, a batch as `pubs ch [offsets]`.
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl BrokerEvents for Log {
        fn publication(&self, channel: &str, publication: &Publication) {
            self.0
                .lock()
                .push(format!("pub {channel} {}", publication.offset));
        }
        fn publications(&self, channel: &str, publications: &[Publication]) {
            let offsets: Vec<u64> = publications.iter().map(|p| p.offset).collect();
            self.0.lock().push(format!("pubs {channel} {offsets:?}"));
        }
        fn join(&self, channel: &str, _: &ClientInfo) {
            self.0.lock().push(format!("join {channel}"));
        }
        fn leave(&self, channel: &str, _: &ClientInfo) {
            self.0.lock().push(format!("leave {channel}"));
        }
        fn gap(&self, channel: &str) {
            self.0.lock().push(format!("gap {channel}"));
        }
        fn control(&self, _: &[u8]) {
            self.0.lock().push("control".into());
        }
    }

    fn publication(offset: u64) -> Publication {
        Publication {
            data: RawValue::from_string("{}".into()).unwrap(),
            info: None,
            offset,
            tags: HashMap::new(),
        }
    }

    /// Consecutive publications of a channel go as one batch, a single one as a publication;
    /// another channel, any other event, a full batch and `flush` hand over what is kept,
    /// in order.
    #[test]
    fn consecutive_publications_of_a_channel_go_together_in_order() {
        let log = Arc::new(Log::default());
        let batched = BatchedEvents::new(log.clone());
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: None,
            chan_info: None,
        };
        batched.publication("a", &publication(1));
        batched.publication("a", &publication(2));
        assert!(log.0.lock().is_empty(), "kept until something else comes");
        batched.publication("b", &publication(1));
        batched.join("b", &info);
        batched.publication("a", &publication(3));
        batched.gap("a");
        batched.publications("a", &[publication(7), publication(8)]);
        batched.leave("a", &info);
        batched.publication("b", &publication(2));
        batched.control(b"{}");
        batched.publication("a", &publication(9));
        batched.flush();
        batched.flush();
        for offset in 0..MAX_BATCH as u64 + 1 {
            batched.publication("c", &publication(offset));
        }
        assert_eq!(log.0.lock().len(), 11, "a full batch goes at once");
        drop(batched);
        let log = log.0.lock();
        let want = [
            "pubs a [1, 2]",
            "pub b 1",
            "join b",
            "pub a 3",
            "gap a",
            "pubs a [7, 8]",
            "leave a",
            "pub b 2",
            "control",
            "pub a 9",
        ];
        assert_eq!(log[..want.len()], want);
        assert!(log[want.len()].starts_with("pubs c [0, 1, 2,"));
        assert_eq!(
            log[want.len() + 1],
            format!("pub c {MAX_BATCH}"),
            "dropping flushes"
        );
        assert_eq!(log.len(), want.len() + 2);
    }
}
