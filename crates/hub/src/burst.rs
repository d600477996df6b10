//! Bursts of publications delivered together.
//!
//! A connection task that handles many `publish` commands in one go (a frame of them, or
//! frames read together) would otherwise fan out each publication on its own: every subscriber's
//! queue locked and its task woken once per message. While a future wrapped by [`gathered`] is
//! polled, the publications that reach this node's registry on that thread are gathered
//! instead, and delivered when the poll returns: consecutive publications of one channel as one
//! run, which each subscriber's queue takes as one entry shared with the other subscribers,
//! under one lock and with at most one wake-up ([`crate::Outbound::push_run`]).
//!
//! Nothing waits longer than the poll that published it: delivery still happens before the
//! task yields, in publication order, across channels too (a run ends where another channel's
//! publication comes between).
//!
//! Publications without an offset are gathered here, in the thread's state. Those of channels
//! with history must reach subscribers in offset order even when publishers on several threads
//! publish into one channel, so their broker holds them instead, in the channel's stream, and
//! delivers them under the stream's lock, whoever flushes first ([`hold`]): the thread's state
//! then only records, in its place, that the stream has publications of this poll to deliver.
//! Before a publication of another stream is held, everything gathered so far is delivered
//! ([`before_hold`]), so that no other thread's flush can deliver it ahead of what this thread
//! published before it. Join, leave, gap and control events first deliver what was gathered,
//! so everything keeps its place. A client that publishes to a channel it is subscribed to gets
//! the publication before its `publish` reply, as when it is delivered at once (its session
//! delivers what was gathered before replying), so only publications of clients that are not
//! subscribed to the channel are batched. A run holds at most [`MAX_RUN`] messages; a longer
//! burst is delivered in several runs.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::registry::Registry;

/// Most messages delivered as one run.
pub const MAX_RUN: usize = 256;

/// Publications of one channel gathered in a row.
struct Run {
    registry: Arc<Registry>,
    channel: Box<str>,
    /// Encoded publications (without offsets), in publication order.
    messages: Vec<Bytes>,
}

/// A stream's held publications, delivered by `deliver` (see [`hold`]).
struct HeldStream {
    /// Tells the stream apart (the address of what `deliver` keeps alive).
    key: usize,
    deliver: Box<dyn FnOnce()>,
}

/// What a gathering poll has to deliver when it ends, in publication order.
enum Entry {
    Run(Run),
    Held(HeldStream),
}

/// The thread's gathering state.
#[derive(Default)]
struct Burst {
    /// Nesting depth of gathering polls on this thread (0: not gathering).
    depth: u32,
    entries: Vec<Entry>,
}

thread_local! {
    static BURST: RefCell<Burst> = RefCell::default();
}

pin_project_lite::pin_project! {
    /// A future whose polls gather the publications they cause (see the module docs).
    pub struct Gathered<F> {
        #[pin]
        inner: F,
    }
}

/// Wraps `future` so that each of its polls gathers the publications it causes and delivers
/// them, batched per channel, when the poll returns. For connection tasks that run commands.
pub fn gathered<F: Future>(future: F) -> Gathered<F> {
    Gathered { inner: future }
}

impl<F: Future> Future for Gathered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = Scope::enter();
        self.project().inner.poll(cx)
    }
}

/// One gathering poll; delivers what was gathered when the outermost one ends (also when the
/// poll unwinds).
struct Scope;

impl Scope {
    fn enter() -> Self {
        BURST.with(|b| b.borrow_mut().depth += 1);
        Scope
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let outermost = BURST.with(|b| {
            let mut b = b.borrow_mut();
            b.depth -= 1;
            b.depth == 0
        });
        if outermost {
            deliver_gathered();
        }
    }
}

/// Whether this thread is in a gathering poll (then [`gather`] keeps what it is given).
pub(crate) fn gathering() -> bool {
    BURST.with(|b| b.borrow().depth > 0)
}

/// Gathers `message`, an encoded publication of `channel` without an offset, for delivery by
/// `registry` when the gathering poll ends. Only while [`gathering`].
pub(crate) fn gather(registry: &Arc<Registry>, channel: &str, message: Bytes) {
    let full = BURST.with(|b| {
        let mut b = b.borrow_mut();
        debug_assert!(b.depth > 0, "gathered outside a gathering poll");
        let same = matches!(b.entries.last(), Some(Entry::Run(run))
            if Arc::ptr_eq(&run.registry, registry) && &*run.channel == channel);
        if !same {
            b.entries.push(Entry::Run(Run {
                registry: registry.clone(),
                channel: channel.into(),
                messages: Vec::new(),
            }));
        }
        let Some(Entry::Run(run)) = b.entries.last_mut() else {
            unreachable!("a run was just ensured")
        };
        run.messages.push(message);
        run.messages.len() >= MAX_RUN
    });
    if full {
        deliver_gathered();
    }
}

/// Delivers what this thread gathered so far, in order (a no-op when nothing was). Called
/// before any other event reaches the registry, so that it keeps its place after the
/// publications gathered before it.
pub(crate) fn deliver_gathered() {
    loop {
        // Take the runs out first: delivering must not hold the thread's state (a delivery
        // can wake tasks, never publish, but stay safe against re-entry).
        let entries = BURST.with(|b| std::mem::take(&mut b.borrow_mut().entries));
        if entries.is_empty() {
            return;
        }
        for entry in entries {
            match entry {
                Entry::Run(run) => run.registry.deliver_run(&run.channel, run.messages),
                Entry::Held(held) => (held.deliver)(),
            }
        }
    }
}

/// Called by a broker, holding no lock, before it holds a publication of the stream `key`
/// (see [`hold`]): delivers everything gathered so far unless the last thing gathered is that
/// stream's own held publications. Returns whether they are (then [`hold`] need not be
/// called again for this publication).
pub(crate) fn before_hold(key: usize) -> bool {
    let held_last = BURST
        .with(|b| matches!(b.borrow().entries.last(), Some(Entry::Held(held)) if held.key == key));
    if !held_last {
        deliver_gathered();
    }
    held_last
}

/// Records that the stream `key` holds publications of this gathering poll, which `deliver`
/// delivers (under the stream's lock, together with any other thread's held ones of the
/// stream, in offset order) when the poll ends, or earlier when something else must go first.
/// Only while [`gathering`], after [`before_hold`] returned false.
pub(crate) fn hold(key: usize, deliver: impl FnOnce() + 'static) {
    BURST.with(|b| {
        let mut b = b.borrow_mut();
        debug_assert!(b.depth > 0, "held outside a gathering poll");
        b.entries.push(Entry::Held(HeldStream {
            key,
            deliver: Box::new(deliver),
        }));
    });
}

/// Runs `f` inside one gathering poll.
#[cfg(test)]
pub(crate) fn in_one_poll(f: impl FnOnce()) {
    let mut f = Some(f);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let future = gathered(std::future::poll_fn(|_| {
        (f.take().expect("polled once"))();
        Poll::Ready(())
    }));
    assert!(std::pin::pin!(future).poll(&mut cx).is_ready());
}
