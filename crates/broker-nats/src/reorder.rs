//! Per-channel ordering on the receiving side: [`Reorder`] puts one channel's publications back
//! in offset order when publishers on several nodes cross on the way, and turns offsets that
//! never arrive (and new epochs) into gaps.

use std::time::{Duration, Instant};

use switchboard_hub::BrokerEvents;
use switchboard_proto::Publication;

/// How long a publication that arrived ahead of a missing offset waits for it.
const REORDER_WINDOW: Duration = Duration::from_millis(100);
/// How many publications may wait; beyond, the missing ones are given up at once.
const REORDER_MAX: usize = 1024;

/// Puts one channel's publications back in offset order. Publishers on several nodes get
/// consecutive offsets but their messages may cross on the way: a publication that arrives
/// ahead of a missing offset is held for up to [`REORDER_WINDOW`]; when the missing one
/// arrives, both are delivered in order; when the window passes, a gap is reported (subscribers
/// recover from history) and the held ones are delivered. A publication older than one already
/// delivered is dropped, and reported as a gap unless one already covers it (it crossed the
/// first publication this node saw of the channel, say). A new epoch is a gap too.
#[derive(Default)]
pub(crate) struct Reorder {
    /// Epoch and offset of the last delivered publication.
    last: Option<(String, u64)>,
    /// Publications of the current epoch waiting for a missing offset.
    held: std::collections::BTreeMap<u64, Publication>,
    /// Offsets of the current epoch up to this one are covered by a gap already reported: one
    /// of them arriving late is dropped without another.
    covered: u64,
    /// When the oldest held publication stops waiting.
    pub(crate) deadline: Option<Instant>,
}

impl Reorder {
    /// Takes one received publication of `channel` (of stream `epoch`) at `now`.
    pub(crate) fn publication(
        &mut self,
        events: &dyn BrokerEvents,
        channel: &str,
        epoch: String,
        publication: Publication,
        now: Instant,
    ) {
        let offset = publication.offset;
        if offset == 0 {
            events.publication(channel, &publication);
            return;
        }
        let Some((last_epoch, last)) = &mut self.last else {
            self.last = Some((epoch, offset));
            events.publication(channel, &publication);
            return;
        };
        if *last_epoch != epoch {
            self.expire(events, channel);
            events.gap(channel);
            self.covered = offset;
            self.last = Some((epoch, offset));
            events.publication(channel, &publication);
            return;
        }
        if offset <= *last || self.held.contains_key(&offset) {
            tracing::debug!(channel, offset, "dropping late publication");
            if offset < *last && offset > self.covered && !self.held.contains_key(&offset) {
                // Lost for this node's subscribers: they must hear of it.
                events.gap(channel);
                self.covered = *last;
            }
            return;
        }
        if offset == *last + 1 {
            *last = offset;
            events.publication(channel, &publication);
            self.release(events, channel);
            return;
        }
        self.held.insert(offset, publication);
        if self.held.len() > REORDER_MAX {
            self.expire(events, channel);
        } else if self.deadline.is_none() {
            self.deadline = Some(now + REORDER_WINDOW);
        }
    }

    /// Delivers held publications that follow the last delivered one.
    fn release(&mut self, events: &dyn BrokerEvents, channel: &str) {
        let Some((_, last)) = &mut self.last else {
            return;
        };
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != *last + 1 {
                break;
            }
            *last += 1;
            events.publication(channel, &entry.remove());
        }
        if self.held.is_empty() {
            self.deadline = None;
        }
    }

    /// The missing offsets are given up: reports the gap and delivers what is held.
    pub(crate) fn expire(&mut self, events: &dyn BrokerEvents, channel: &str) {
        self.deadline = None;
        if self.held.is_empty() {
            return;
        }
        events.gap(channel);
        for (offset, publication) in std::mem::take(&mut self.held) {
            if let Some((_, last)) = &mut self.last {
                *last = offset;
            }
            self.covered = offset;
            events.publication(channel, &publication);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use parking_lot::Mutex;
    use switchboard_proto::ClientInfo;

    use super::*;

    #[derive(Default)]
    struct Recorder {
        log: Mutex<Vec<String>>,
    }

    impl BrokerEvents for Recorder {
        fn publication(&self, _channel: &str, p: &Publication) {
            self.log.lock().push(format!("p{}", p.offset));
        }
        fn join(&self, _channel: &str, _info: &ClientInfo) {}
        fn leave(&self, _channel: &str, _info: &ClientInfo) {}
        fn gap(&self, _channel: &str) {
            self.log.lock().push("gap".into());
        }
    }

    fn publication(offset: u64) -> Publication {
        Publication {
            data: serde_json::value::RawValue::from_string("1".into()).unwrap(),
            info: None,
            offset,
            tags: HashMap::new(),
        }
    }

    fn feed(order: &mut Reorder, events: &Recorder, items: &[(&str, u64)], now: Instant) {
        for (epoch, offset) in items {
            order.publication(events, "ch", epoch.to_string(), publication(*offset), now);
        }
    }

    /// What a fresh [`Reorder`] fed `items` delivered, and the reorder itself.
    fn fed(items: &[(&str, u64)]) -> (String, Reorder) {
        let events = Recorder::default();
        let mut order = Reorder::default();
        feed(&mut order, &events, items, Instant::now());
        let log = events.log.lock().join(" ");
        (log, order)
    }

    #[test]
    fn crossed_publications_are_put_back_in_order() {
        let (log, order) = fed(&[("a", 3), ("a", 5), ("a", 6), ("a", 4), ("a", 7)]);
        assert_eq!(log, "p3 p4 p5 p6 p7");
        assert!(order.deadline.is_none());
    }

    #[test]
    fn missing_offsets_become_gaps_after_the_window_and_late_ones_are_dropped() {
        let events = Recorder::default();
        let mut order = Reorder::default();
        let now = Instant::now();
        feed(&mut order, &events, &[("a", 3), ("a", 5), ("a", 7)], now);
        assert_eq!(order.deadline, Some(now + REORDER_WINDOW));
        order.expire(&events, "ch");
        feed(
            &mut order,
            &events,
            &[("a", 4), ("a", 8), ("b", 1), ("", 0)],
            now,
        );
        assert_eq!(events.log.lock().join(" "), "p3 gap p5 p7 p8 gap p1 p0");
    }

    /// A publication that crossed the first one this node saw of the channel is lost for its
    /// subscribers: it is reported as a gap (once), never dropped silently; a repeat is not.
    #[test]
    fn a_publication_older_than_the_first_seen_is_a_gap() {
        let (log, _) = fed(&[("a", 3), ("a", 2), ("a", 1), ("a", 3), ("a", 4)]);
        assert_eq!(log, "p3 gap p4");
    }
}
