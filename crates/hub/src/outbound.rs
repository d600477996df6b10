//! A connection's bounded outbound queue, shared between the hub (producers) and the
//! connection's transport task (the one consumer).
//!
//! Items are encoded messages ([`Bytes`], usually shared by every subscriber of a publication),
//! or runs of them ([`Item::Run`]: a burst of one channel's publications, one entry shared by
//! every subscriber that got it).
//! The queue holds no allocation while empty. When the queued bytes exceed the configured limit
//! the queue is cleared and closed with [`DisconnectCode::SLOW`]: a slow consumer is disconnected
//! with a code instead of growing the server's memory (the client reconnects and recovers).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_proto::DisconnectCode;

use serde_json::value::RawValue;

/// A request from outside the session (server API), applied by the connection's task.
#[derive(Debug)]
#[non_exhaustive]
pub enum Control {
    /// Subscribe the client to a channel, without permission checks.
    Subscribe {
        /// Channel name.
        channel: String,
        /// Channel info for this subscriber.
        info: Option<Box<RawValue>>,
    },
    /// Unsubscribe the client from a channel.
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// Set the connection's expiry (unix seconds; `None` = never expires).
    Refresh {
        /// New expiry.
        expire_at: Option<u64>,
    },
    /// The node may have missed publications of the channel: unsubscribe the client with code
    /// 2500 so that it resubscribes and recovers.
    InsufficientState {
        /// Channel name.
        channel: String,
    },
}

impl Control {
    /// Bytes this control counts for in its queue's limit: the request and what it carries.
    fn size(&self) -> usize {
        let carried = match self {
            Control::Subscribe { channel, info } => {
                channel.len() + info.as_ref().map_or(0, |i| i.get().len())
            }
            Control::Unsubscribe { channel } | Control::InsufficientState { channel } => {
                channel.len()
            }
            Control::Refresh { .. } => 0,
        };
        std::mem::size_of::<Control>() + carried
    }
}

/// What the consumer gets from [`Outbound::poll_drain`].
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Control requests are waiting: take them with [`Outbound::take_controls`] (the session
    /// does, in [`crate::Client::apply_controls`]).
    Controls,
    /// Items were moved into the caller's buffer.
    Items,
    /// The queue was closed; send what was drained (if anything) then disconnect with this code.
    Closed(DisconnectCode),
}

/// One entry of the queue: a message, or a run of messages (a burst of one channel's
/// publications, see [`crate::burst`]) shared by every subscriber that got it, so that queueing
/// a burst costs each subscriber one entry and one reference count, not one per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One encoded message.
    One(Bytes),
    /// Encoded messages, in order.
    Run(Arc<[Bytes]>),
}

impl Item {
    /// The messages of this entry, in order.
    pub fn messages(&self) -> &[Bytes] {
        match self {
            Item::One(message) => std::slice::from_ref(message),
            Item::Run(run) => run,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    controls: Vec<Control>,
    items: VecDeque<Item>,
    bytes: usize,
    waker: Option<Waker>,
    /// Queued bytes from which a push wakes the consumer (0: any push). A consumer that holds
    /// its writes ([`Outbound::poll_hold`]) sets it, so that it is woken only once the queue
    /// holds enough to write at once.
    wake_at: usize,
    closed: Option<DisconnectCode>,
}

/// The outbound queue. See the module docs.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    max_bytes: usize,
    closed: AtomicBool,
}

/// Result of [`Outbound::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued.
    Queued,
    /// The queue is closed; the item was dropped.
    Closed,
    /// The item overflowed the queue, which is now closed with [`DisconnectCode::SLOW`].
    Overflow,
}

impl Outbound {
    /// An empty queue that holds at most `max_bytes` (at least one item is always accepted).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_bytes,
            closed: AtomicBool::new(false),
        }
    }

    /// Queues one encoded message and wakes the consumer.
    pub fn push(&self, item: Bytes) -> PushOutcome {
        if self.closed.load(Ordering::Relaxed) {
            return PushOutcome::Closed;
        }
        let waker;
        let outcome;
        {
            let mut state = self.state.lock();
            if state.closed.is_some() {
                return PushOutcome::Closed;
            }
            if state.bytes + item.len() > self.max_bytes && state.bytes > 0 {
                self.overflow(&mut state);
                outcome = PushOutcome::Overflow;
            } else {
                state.bytes += item.len();
                state.items.push_back(Item::One(item));
                outcome = PushOutcome::Queued;
            }
            waker = if state.bytes >= state.wake_at || state.closed.is_some() {
                state.waker.take()
            } else {
                None
            };
        }
        if let Some(w) = waker {
            w.wake();
        }
        outcome
    }

    /// Queues a run of encoded messages (`bytes` long in all) in order, as many
    /// [`Outbound::push`] calls would, but as one entry shared with the other subscribers that
    /// get it, under one lock and with at most one wake-up: a burst of publications costs each
    /// subscriber one lock, one entry and one reference count instead of one per message.
    /// Returns how many messages were queued: all of them, or fewer when the queue is closed or
    /// the run overflowed it (then it is closed with 3008 and emptied, as for a push). Into an
    /// empty queue a run longer than the limit goes message by message, as pushes would.
    pub fn push_run(&self, run: &Arc<[Bytes]>, bytes: usize) -> usize {
        if self.closed.load(Ordering::Relaxed) {
            return 0;
        }
        let mut queued = 0;
        let waker = {
            let mut state = self.state.lock();
            if state.closed.is_some() {
                return 0;
            }
            if state.bytes + bytes <= self.max_bytes {
                state.bytes += bytes;
                state.items.push_back(Item::Run(run.clone()));
                queued = run.len();
            } else if state.bytes > 0 {
                // The pushes would have queued a part, then overflowed: the queue ends empty
                // and closed all the same.
                self.overflow(&mut state);
            } else {
                for message in run.iter() {
                    if state.bytes + message.len() > self.max_bytes && state.bytes > 0 {
                        self.overflow(&mut state);
                        break;
                    }
                    state.bytes += message.len();
                    state.items.push_back(Item::One(message.clone()));
                    queued += 1;
                }
            }
            if state.bytes >= state.wake_at || state.closed.is_some() {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        queued
    }

    /// Empties the queue and closes it with 3008 "slow"; the caller holds the lock.
    fn overflow(&self, state: &mut State) {
        state.items = VecDeque::new();
        state.controls = Vec::new();
        state.bytes = 0;
        state.closed = Some(DisconnectCode::SLOW);
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Counts `bytes` held for this consumer outside the queue (a new subscription's
    /// publications waiting for its subscribe reply) against the queue's limit. Returns the
    /// outcome a push of that size would have had: on `Overflow` the queue is closed with 3008,
    /// as for a push. Give the bytes back with [`Outbound::release`] before queueing them.
    pub(crate) fn reserve(&self, bytes: usize) -> PushOutcome {
        let waker = {
            let mut state = self.state.lock();
            if state.closed.is_some() {
                return PushOutcome::Closed;
            }
            if state.bytes + bytes <= self.max_bytes || state.bytes == 0 {
                state.bytes += bytes;
                return PushOutcome::Queued;
            }
            self.overflow(&mut state);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        PushOutcome::Overflow
    }

    /// Gives back bytes counted by [`Outbound::reserve`].
    pub(crate) fn release(&self, bytes: usize) {
        let mut state = self.state.lock();
        state.bytes = state.bytes.saturating_sub(bytes);
    }

    /// Closes the queue with `code`: queued items are still delivered, then the consumer
    /// disconnects. The first close wins.
    pub fn close(&self, code: DisconnectCode) {
        let waker = {
            let mut state = self.state.lock();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(code);
            self.closed.store(true, Ordering::Relaxed);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues a control request for the session (server-side subscribe, unsubscribe, refresh)
    /// and wakes the consumer. Controls count toward the queue's byte limit like messages (a
    /// session that does not take them is closed with 3008). Returns false when the queue is
    /// closed (also when this control closed it).
    pub(crate) fn push_control(&self, control: Control) -> bool {
        let size = control.size();
        let (waker, queued) = {
            let mut state = self.state.lock();
            if state.closed.is_some() {
                return false;
            }
            let queued = if state.bytes + size > self.max_bytes && state.bytes > 0 {
                self.overflow(&mut state);
                false
            } else {
                state.bytes += size;
                state.controls.push(control);
                true
            };
            (state.waker.take(), queued)
        };
        if let Some(w) = waker {
            w.wake();
        }
        queued
    }

    /// Takes the queued control requests.
    pub fn take_controls(&self) -> Vec<Control> {
        let mut state = self.state.lock();
        let controls = std::mem::take(&mut state.controls);
        let size: usize = controls.iter().map(Control::size).sum();
        state.bytes = state.bytes.saturating_sub(size);
        controls
    }

    /// The code the queue was closed with, if it was.
    pub(crate) fn close_code(&self) -> Option<DisconnectCode> {
        self.state.lock().closed
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Moves queued messages into `into` (up to `max_items`, or a little more so as not to
    /// split a run), or registers the consumer's waker and returns `Pending` when there is
    /// nothing to do.
    ///
    /// With `controls`, pending controls come first ([`Drained::Controls`]); without, they stay
    /// queued and only items are drained: a consumer whose session is busy passes `false` and
    /// takes the controls once it is idle again.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        into: &mut Vec<Bytes>,
        max_items: usize,
        controls: bool,
    ) -> Poll<Drained> {
        self.poll_drain_with(cx, max_items, controls, |item| match item {
            Item::One(message) => into.push(message),
            Item::Run(run) => into.extend(run.iter().cloned()),
        })
    }

    /// [`Outbound::poll_drain`] that moves the queue's entries as they are (a run stays one
    /// shared entry; see [`Item::messages`]): for a consumer that copies the messages out
    /// anyway, such as a writer gathering them into one frame.
    pub fn poll_drain_items(
        &self,
        cx: &mut Context<'_>,
        into: &mut Vec<Item>,
        max_messages: usize,
        controls: bool,
    ) -> Poll<Drained> {
        self.poll_drain_with(cx, max_messages, controls, |item| into.push(item))
    }

    fn poll_drain_with(
        &self,
        cx: &mut Context<'_>,
        max_messages: usize,
        controls: bool,
        mut take: impl FnMut(Item),
    ) -> Poll<Drained> {
        let mut state = self.state.lock();
        if controls && !state.controls.is_empty() && state.closed.is_none() {
            return Poll::Ready(Drained::Controls);
        }
        if !state.items.is_empty() {
            let mut bytes = 0;
            let mut messages = 0;
            while messages < max_messages {
                let Some(item) = state.items.pop_front() else {
                    break;
                };
                let parts = item.messages();
                messages += parts.len();
                bytes += parts.iter().map(Bytes::len).sum::<usize>();
                take(item);
            }
            state.bytes -= bytes;
            if state.items.is_empty() && state.items.capacity() > 64 {
                state.items = VecDeque::new();
            }
            return Poll::Ready(Drained::Items);
        }
        if let Some(code) = state.closed {
            return Poll::Ready(Drained::Closed(code));
        }
        register(&mut state, cx, 0);
        Poll::Pending
    }

    /// `Ready(code)` once the queue was closed for overflow (3008 "slow"); otherwise registers the
    /// consumer's waker. For a consumer that does not drain because its transport cannot write
    /// (the peer stopped reading): the overflow already dropped what was queued, so it should
    /// disconnect at once instead of waiting for a write that may never complete.
    pub fn poll_overflowed(&self, cx: &mut Context<'_>) -> Poll<DisconnectCode> {
        let mut state = self.state.lock();
        if let Some(code) = state.closed.filter(|c| *c == DisconnectCode::SLOW) {
            return Poll::Ready(code);
        }
        register(&mut state, cx, 0);
        Poll::Pending
    }

    /// `Ready(bytes queued)` when something is waiting (items, controls, or the queue was
    /// closed), without taking it; otherwise registers the consumer's waker.
    pub fn poll_queued(&self, cx: &mut Context<'_>) -> Poll<usize> {
        let mut state = self.state.lock();
        if !state.items.is_empty() || !state.controls.is_empty() || state.closed.is_some() {
            return Poll::Ready(state.bytes);
        }
        register(&mut state, cx, 0);
        Poll::Pending
    }

    /// For a consumer that holds its writes to let more messages gather: `Ready` once the
    /// queue holds `limit` bytes or more, has controls, or was closed (stop holding, write
    /// now); otherwise registers the consumer's waker to be woken only then, not by every push.
    pub fn poll_hold(&self, cx: &mut Context<'_>, limit: usize) -> Poll<()> {
        let mut state = self.state.lock();
        if state.bytes >= limit || !state.controls.is_empty() || state.closed.is_some() {
            return Poll::Ready(());
        }
        register(&mut state, cx, limit);
        Poll::Pending
    }

    /// The queue's byte limit.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

/// Registers the consumer's waker, to be woken by pushes once `wake_at` bytes are queued.
fn register(state: &mut State, cx: &Context<'_>, wake_at: usize) {
    state.wake_at = wake_at;
    match &mut state.waker {
        Some(w) if w.will_wake(cx.waker()) => {}
        slot => *slot = Some(cx.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn drain(q: &Outbound) -> Poll<(Drained, Vec<Bytes>)> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut v = Vec::new();
        q.poll_drain(&mut cx, &mut v, 100, true).map(|d| (d, v))
    }

    #[test]
    fn fifo_and_pending_when_empty() {
        let q = Outbound::new(100);
        assert!(drain(&q).is_pending());
        assert_eq!(q.push(Bytes::from_static(b"a")), PushOutcome::Queued);
        assert_eq!(q.push(Bytes::from_static(b"b")), PushOutcome::Queued);
        let Poll::Ready((Drained::Items, v)) = drain(&q) else {
            panic!()
        };
        assert_eq!(v, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn overflow_closes_with_slow() {
        let q = Outbound::new(10);
        assert_eq!(q.push(Bytes::from(vec![0; 8])), PushOutcome::Queued);
        assert_eq!(q.push(Bytes::from(vec![0; 8])), PushOutcome::Overflow);
        assert_eq!(q.push(Bytes::from(vec![0; 1])), PushOutcome::Closed);
        let Poll::Ready((Drained::Closed(code), v)) = drain(&q) else {
            panic!()
        };
        assert_eq!(code, DisconnectCode::SLOW);
        assert!(v.is_empty());
    }

    /// Counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A waker and the counter of its wake-ups.
    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    /// `push_run` queues a run as one entry, in order, waking the consumer once; it overflows
    /// like the pushes it stands for (the queue ends empty and closed with 3008); consumers
    /// get its messages one by one (`poll_drain`) or as the shared entry (`poll_drain_items`).
    #[test]
    fn push_run_is_pushes_in_one_go() {
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let q = Outbound::new(10);
        assert!(drain_with(&q, &mut cx).is_pending());
        let run: Arc<[Bytes]> = [b"ab", b"cd", b"ef"]
            .iter()
            .map(|b| Bytes::from_static(*b))
            .collect();
        assert_eq!(q.push(Bytes::from_static(b"x")), PushOutcome::Queued);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(q.push_run(&run, 6), 3);
        assert_eq!(q.queued_bytes(), 7);
        let Poll::Ready((Drained::Items, v)) = drain_with(&q, &mut cx) else {
            panic!()
        };
        assert_eq!(v, [&b"x"[..], b"ab", b"cd", b"ef"]);
        assert_eq!(q.queued_bytes(), 0);
        assert!(drain_with(&q, &mut cx).is_pending());
        assert_eq!(q.push_run(&run, 6), 3);
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            2,
            "one wake-up for the run"
        );
        let mut items = Vec::new();
        assert_eq!(
            q.poll_drain_items(&mut cx, &mut items, 100, true),
            Poll::Ready(Drained::Items)
        );
        assert_eq!(items, [Item::Run(run.clone())]);
        assert_eq!(q.queued_bytes(), 0);

        // 6 + 6 > 10: the run overflows a queue that holds something; it ends empty and
        // closed with 3008.
        assert_eq!(q.push_run(&run, 6), 3);
        assert_eq!(q.push_run(&run, 6), 0);
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(q.push(Bytes::from_static(b"x")), PushOutcome::Closed);
        let Poll::Ready((Drained::Closed(code), v)) = drain_with(&q, &mut cx) else {
            panic!()
        };
        assert_eq!(code, DisconnectCode::SLOW);
        assert!(v.is_empty());

        // Into an empty queue, a run longer than the limit goes as pushes would: what fits,
        // then the overflow; a first message larger than the limit is still taken.
        let q = Outbound::new(4);
        assert_eq!(q.push_run(&run, 6), 2);
        assert!(q.is_closed());
        assert_eq!(q.queued_bytes(), 0);
        let q = Outbound::new(4);
        let large: Arc<[Bytes]> = [Bytes::from(vec![0; 20])].into();
        assert_eq!(q.push_run(&large, 20), 1);
        assert!(!q.is_closed());
    }

    /// A holding consumer is woken once a write's worth is queued, not by every push.
    #[test]
    fn a_hold_is_woken_only_by_enough_bytes() {
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let q = Outbound::new(100);
        assert_eq!(q.push(Bytes::from(vec![0; 10])), PushOutcome::Queued);
        assert!(q.poll_hold(&mut cx, 30).is_pending());
        q.push(Bytes::from(vec![0; 10]));
        assert_eq!(count.0.load(Ordering::Relaxed), 0, "20 bytes: no wake-up");
        q.push(Bytes::from(vec![0; 10]));
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "30 bytes: woken");
        assert!(q.poll_hold(&mut cx, 30).is_ready());
        assert_eq!(q.poll_queued(&mut cx), Poll::Ready(30));
        // Draining resets the threshold: the next push wakes again.
        let Poll::Ready((Drained::Items, _)) = drain_with(&q, &mut cx) else {
            panic!()
        };
        assert!(drain_with(&q, &mut cx).is_pending());
        q.push(Bytes::from_static(b"x"));
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        // A close wakes a holding consumer whatever is queued.
        q.poll_drain(&mut cx, &mut Vec::new(), 100, true).is_ready();
        assert!(q.poll_hold(&mut cx, 30).is_pending());
        q.close(DisconnectCode::SHUTDOWN);
        assert_eq!(count.0.load(Ordering::Relaxed), 3);
        assert!(q.poll_hold(&mut cx, 30).is_ready());
    }

    fn drain_with(q: &Outbound, cx: &mut Context<'_>) -> Poll<(Drained, Vec<Bytes>)> {
        let mut v = Vec::new();
        q.poll_drain(cx, &mut v, 100, true).map(|d| (d, v))
    }

    #[test]
    fn one_big_item_is_accepted_when_empty() {
        let q = Outbound::new(4);
        assert_eq!(q.push(Bytes::from(vec![0; 8])), PushOutcome::Queued);
    }

    #[test]
    fn close_delivers_queued_first() {
        let q = Outbound::new(100);
        q.push(Bytes::from_static(b"x"));
        q.close(DisconnectCode::SHUTDOWN);
        q.close(DisconnectCode::SLOW);
        assert!(matches!(drain(&q), Poll::Ready((Drained::Items, _))));
        assert!(matches!(
            drain(&q),
            Poll::Ready((Drained::Closed(DisconnectCode::SHUTDOWN), _))
        ));
    }
}
