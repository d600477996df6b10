//! The background task of a client: owns the socket, matches replies to requests, routes
//! pushes to subscriptions, answers pings, and reconnects (resubscribing, with recovery).
//!
//! Handles talk to it through a bounded queue of [`Op`]s and get answers through oneshot
//! channels; request timeouts are enforced on the handle's side, and abandoned pending entries
//! are swept here.

use std::collections::HashMap;
use std::future::{poll_fn, Future as _};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_proto::StreamPosition;
use switchboard_ws::{Message, WsError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::{ClientEvent, Config, Shared};
use crate::connection::{self, reconnect_allowed, Connected, Failure, Socket};
use crate::error::ClientError;
use crate::protocol::{
    encode_command, lines, parse_line, raw_bytes, to_params, Incoming, SubscribeRequest, WireError,
    WirePush, WireSubscribeResult, PONG,
};
use crate::subscription::{SubscribeOptions, SubscriptionEvent};

/// Largest frame the client writes when it batches commands (servers limit message size).
const MAX_BATCH_BYTES: usize = 32 << 10;
/// Ops taken from the queue in one go before writing.
const MAX_BATCH_OPS: usize = 256;

/// A request from a handle to the task.
#[derive(Debug)]
pub(crate) enum Op {
    /// A command with a reply: the reply's raw result object.
    Call {
        method: String,
        params: String,
        reply: oneshot::Sender<Result<Bytes, ClientError>>,
    },
    /// `send`: no id, no reply.
    Send {
        params: String,
    },
    Subscribe {
        channel: String,
        options: SubscribeOptions,
        generation: u64,
        events: mpsc::Sender<SubscriptionEvent>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// Unsubscribe `channel`; only the subscription of that `generation` when set (a dropped
    /// handle must not end a newer subscription to the same channel).
    Unsubscribe {
        channel: String,
        generation: Option<u64>,
        reply: Option<oneshot::Sender<Result<Bytes, ClientError>>>,
    },
    Disconnect {
        reply: oneshot::Sender<()>,
    },
}

/// A command waiting for its reply.
#[derive(Debug)]
enum Pending {
    Call(oneshot::Sender<Result<Bytes, ClientError>>),
    Subscribe {
        channel: String,
        generation: u64,
    },
    /// Nobody waits (unsubscribe after a dropped handle).
    Ignore,
}

/// One subscription, kept across reconnects.
#[derive(Debug)]
struct SubState {
    generation: u64,
    options: SubscribeOptions,
    events: mpsc::Sender<SubscriptionEvent>,
    /// The caller of the first subscribe, until the first reply.
    reply: Option<oneshot::Sender<Result<(), ClientError>>>,
    /// Last position seen, when the channel is recoverable (or `since` was given).
    position: Option<StreamPosition>,
    /// Whether the subscribe in flight asked for recovery.
    recovering: bool,
}

/// How a session (or the client) ended.
#[derive(Debug, Clone)]
struct End {
    code: u32,
    reason: String,
    reconnect: bool,
    /// Whether to run the WebSocket closing handshake (false: the transport is gone).
    graceful: bool,
}

impl End {
    fn local(reason: &str) -> Self {
        Self {
            code: 1000,
            reason: reason.into(),
            reconnect: false,
            graceful: true,
        }
    }

    fn from_failure(f: &Failure) -> Self {
        let (code, reason) = match &f.error {
            ClientError::Disconnected { code, reason } => (*code, reason.clone()),
            ClientError::Server { code, message, .. } => (*code, message.clone()),
            other => (1006, other.to_string()),
        };
        Self {
            code,
            reason,
            reconnect: f.reconnect,
            graceful: false,
        }
    }

    fn error(&self) -> ClientError {
        ClientError::Disconnected {
            code: self.code,
            reason: self.reason.clone(),
        }
    }
}

/// What woke the session loop.
enum Step {
    Op(Option<Op>),
    Read(Result<(), WsError>),
    WriteFailed(WsError),
    NoPing,
}

pub(crate) struct Driver {
    config: Arc<Config>,
    shared: Arc<Shared>,
    ops: mpsc::Receiver<Op>,
    subs: HashMap<String, SubState>,
    pending: HashMap<u32, Pending>,
    /// Sweep abandoned pending calls when the map reaches this size.
    sweep_at: usize,
    next_id: u32,
    /// Calls made while disconnected, sent after the next connect.
    offline: Vec<Op>,
    /// Commands to write with the next flush.
    out: Vec<Bytes>,
    /// Whether pings must be answered (from the connect reply).
    pong: bool,
    /// The caller of `disconnect`, answered when the task ends.
    disconnect_reply: Option<oneshot::Sender<()>>,
}

impl Driver {
    pub(crate) fn new(config: Arc<Config>, shared: Arc<Shared>, ops: mpsc::Receiver<Op>) -> Self {
        Self {
            config,
            shared,
            ops,
            subs: HashMap::new(),
            pending: HashMap::new(),
            sweep_at: 64,
            next_id: 0,
            offline: Vec::new(),
            out: Vec::new(),
            pong: false,
            disconnect_reply: None,
        }
    }

    /// Runs the client until it is closed for good. `first` gets the outcome of the first
    /// connection attempt, which is not retried.
    pub(crate) async fn run(mut self, first: oneshot::Sender<Result<(), ClientError>>) {
        let mut first = Some(first);
        let mut attempt: u32 = 0;
        loop {
            let id = self.next_id();
            let end = match connection::dial(&self.config, id).await {
                Ok(conn) => {
                    attempt = 0;
                    if let Some(first) = first.take() {
                        if first.send(Ok(())).is_err() {
                            // The caller of `connect` gave up.
                            return;
                        }
                    }
                    let end = self.session(conn).await;
                    self.fail_pending(&end);
                    let reconnect = end.reconnect && self.config.reconnect.is_some();
                    self.shared.emit(ClientEvent::Disconnected {
                        code: end.code,
                        reason: end.reason.clone(),
                        reconnect,
                    });
                    if !reconnect {
                        return self.finish(&end);
                    }
                    end
                }
                Err(failure) => {
                    let end = End::from_failure(&failure);
                    if let Some(first) = first.take() {
                        let _ = first.send(Err(failure.error));
                        return self.finish(&end);
                    }
                    tracing::debug!(error = %failure.error, "reconnect attempt failed");
                    if !end.reconnect {
                        self.shared.emit(ClientEvent::Disconnected {
                            code: end.code,
                            reason: end.reason.clone(),
                            reconnect: false,
                        });
                        return self.finish(&end);
                    }
                    end
                }
            };
            let Some(backoff) = self.config.reconnect else {
                return self.finish(&end);
            };
            let delay = backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            if let Some(end) = self.wait_offline(delay).await {
                self.shared.emit(ClientEvent::Disconnected {
                    code: end.code,
                    reason: end.reason.clone(),
                    reconnect: false,
                });
                return self.finish(&end);
            }
        }
    }

    fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    fn insert_pending(&mut self, id: u32, pending: Pending) {
        if self.pending.len() >= self.sweep_at {
            // Calls whose caller timed out: nobody reads their reply.
            self.pending.retain(|_, p| match p {
                Pending::Call(tx) => !tx.is_closed(),
                _ => true,
            });
            self.sweep_at = (self.pending.len() * 2).max(64);
        }
        self.pending.insert(id, pending);
    }

    /// Waits `delay` before reconnecting, handling ops meanwhile. `Some` when the client
    /// must end instead.
    async fn wait_offline(&mut self, delay: Duration) -> Option<End> {
        let mut sleep = pin!(tokio::time::sleep(delay));
        loop {
            tokio::select! {
                _ = &mut sleep => return None,
                op = self.ops.recv() => match op {
                    None => return Some(End::local("client dropped")),
                    Some(op) => {
                        if let Some(end) = self.handle_op(op, false) {
                            return Some(end);
                        }
                    }
                },
            }
        }
    }

    /// Ends the client: records why, fails what waits, ends subscriptions.
    fn finish(mut self, end: &End) {
        *self.shared.closed.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((end.code, end.reason.clone()));
        self.ops.close();
        self.fail_pending(end);
        for op in self.offline.drain(..) {
            if let Op::Call { reply, .. } = op {
                let _ = reply.send(Err(end.error()));
            }
        }
        for (_, sub) in self.subs.drain() {
            match sub.reply {
                Some(reply) => {
                    let _ = reply.send(Err(end.error()));
                }
                None => {
                    let _ = sub.events.try_send(SubscriptionEvent::Unsubscribed {
                        code: end.code,
                        reason: end.reason.clone(),
                    });
                }
            }
        }
        if let Some(reply) = self.disconnect_reply.take() {
            let _ = reply.send(());
        }
    }

    /// Fails pending calls after a connection ended; subscribes in flight are redone on the
    /// next connection.
    fn fail_pending(&mut self, end: &End) {
        for (_, p) in self.pending.drain() {
            if let Pending::Call(tx) = p {
                let _ = tx.send(Err(end.error()));
            }
        }
    }

    /// Handles a request from a handle; `Some` when the client must end.
    fn handle_op(&mut self, op: Op, online: bool) -> Option<End> {
        match op {
            Op::Call { reply, .. } if reply.is_closed() => {}
            op @ (Op::Call { .. } | Op::Send { .. }) if !online => self.offline.push(op),
            Op::Call {
                method,
                params,
                reply,
            } => {
                let id = self.next_id();
                self.insert_pending(id, Pending::Call(reply));
                self.out.push(encode_command(id, &method, &params));
            }
            Op::Send { params } => self.out.push(encode_command(0, "send", &params)),
            Op::Subscribe {
                channel,
                options,
                generation,
                events,
                reply,
            } => {
                if self.subs.contains_key(&channel) {
                    let _ = reply.send(Err(ClientError::Server {
                        code: 105,
                        message: "already subscribed".into(),
                        temporary: false,
                    }));
                    return None;
                }
                let sub = SubState {
                    generation,
                    position: options.since.clone(),
                    options,
                    events,
                    reply: Some(reply),
                    recovering: false,
                };
                self.subs.insert(channel.clone(), sub);
                if online {
                    self.send_subscribe(&channel);
                }
            }
            Op::Unsubscribe {
                channel,
                generation,
                reply,
            } => {
                let matches = self
                    .subs
                    .get(&channel)
                    .is_some_and(|s| generation.is_none_or(|g| g == s.generation));
                if !matches {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(Bytes::new()));
                    }
                    return None;
                }
                if let Some(sub) = self.subs.remove(&channel) {
                    let ended = ClientError::Disconnected {
                        code: 0,
                        reason: "unsubscribed".into(),
                    };
                    match sub.reply {
                        Some(r) => drop(r.send(Err(ended))),
                        None => drop(sub.events.try_send(SubscriptionEvent::Unsubscribed {
                            code: 0,
                            reason: "unsubscribed".into(),
                        })),
                    }
                }
                if online {
                    self.send_unsubscribe(&channel, reply.map_or(Pending::Ignore, Pending::Call));
                } else if let Some(reply) = reply {
                    let _ = reply.send(Ok(Bytes::new()));
                }
            }
            Op::Disconnect { reply } => {
                self.disconnect_reply = Some(reply);
                return Some(End::local("disconnect called"));
            }
        }
        None
    }

    fn send_unsubscribe(&mut self, channel: &str, pending: Pending) {
        let id = self.next_id();
        self.insert_pending(id, pending);
        let params = to_params(&serde_json::json!({ "channel": channel }));
        self.out.push(encode_command(id, "unsubscribe", &params));
    }

    /// Queues a subscribe for `channel`, asking for recovery when a position is known.
    fn send_subscribe(&mut self, channel: &str) {
        let id = self.next_id();
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        let (recover, epoch, offset) = match &sub.position {
            Some(p) => (true, p.epoch.as_str(), p.offset),
            None => (false, "", 0),
        };
        sub.recovering = recover;
        let params = to_params(&SubscribeRequest {
            channel,
            token: &sub.options.token,
            data: sub.options.data.as_deref(),
            recover,
            epoch,
            offset,
            positioned: sub.options.positioned,
            recoverable: sub.options.recoverable,
            join_leave: sub.options.join_leave,
        });
        let pending = Pending::Subscribe {
            channel: channel.to_owned(),
            generation: sub.generation,
        };
        self.insert_pending(id, pending);
        self.out.push(encode_command(id, "subscribe", &params));
    }

    /// Queues the collected commands on the socket, batched into frames of bounded size.
    fn queue_out(&mut self, ws: &mut Socket) {
        let mut start = 0;
        while start < self.out.len() {
            let mut end = start;
            let mut size = 0;
            while end < self.out.len()
                && (end == start || size + self.out[end].len() < MAX_BATCH_BYTES)
            {
                size += self.out[end].len() + 1;
                end += 1;
            }
            ws.queue_text_batch(&self.out[start..end], Some(b'\n'));
            start = end;
        }
        self.out.clear();
    }

    /// Drives one connected session until it ends.
    async fn session(&mut self, conn: Connected) -> End {
        let Connected {
            mut ws,
            result,
            rest,
        } = conn;
        self.pong = result.pong;
        *self
            .shared
            .client_id
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = result.client.clone();
        self.shared.emit(ClientEvent::Connected {
            client: result.client,
        });
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.send_subscribe(&channel);
        }
        for op in std::mem::take(&mut self.offline) {
            // Only calls and sends are queued offline: they never end the client.
            let _ = self.handle_op(op, true);
        }
        let end = self.session_loop(&mut ws, rest, result.ping).await;
        if end.graceful {
            let code = u16::try_from(end.code)
                .ok()
                .filter(|c| switchboard_ws::is_valid_close_code(*c))
                .unwrap_or(1000);
            let _ = ws.close(code, &end.reason).await;
        }
        end
    }

    async fn session_loop(&mut self, ws: &mut Socket, rest: Vec<Bytes>, ping: u32) -> End {
        for line in rest {
            if let Some(end) = self.on_line(line).await {
                return end;
            }
        }
        let ping_window =
            (ping > 0).then(|| Duration::from_secs(ping.into()) + self.config.max_ping_delay);
        let mut deadline = pin!(tokio::time::sleep(
            ping_window.unwrap_or(Duration::from_secs(3600))
        ));
        let mut msgs = Vec::new();
        let mut read_first = false;
        loop {
            if !self.out.is_empty() {
                self.queue_out(ws);
            }
            read_first = !read_first;
            let ops = &mut self.ops;
            let step = poll_fn(|cx| {
                if ws.has_pending_writes() {
                    if let Poll::Ready(Err(e)) = ws.poll_flush(cx) {
                        return Poll::Ready(Step::WriteFailed(e));
                    }
                }
                for read in [read_first, !read_first] {
                    if read {
                        if let Poll::Ready(r) = ws.poll_read_messages(cx, &mut msgs) {
                            return Poll::Ready(Step::Read(r));
                        }
                    } else if let Poll::Ready(op) = ops.poll_recv(cx) {
                        return Poll::Ready(Step::Op(op));
                    }
                }
                if ping_window.is_some() && deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Step::NoPing);
                }
                Poll::Pending
            })
            .await;
            match step {
                Step::Op(None) => return End::local("client dropped"),
                Step::Op(Some(op)) => {
                    if let Some(end) = self.handle_op(op, true) {
                        return end;
                    }
                    for _ in 1..MAX_BATCH_OPS {
                        let Ok(op) = self.ops.try_recv() else { break };
                        if let Some(end) = self.handle_op(op, true) {
                            return end;
                        }
                    }
                }
                Step::Read(Ok(())) => {
                    if let Some(window) = ping_window {
                        deadline.as_mut().reset(Instant::now() + window);
                    }
                    for msg in std::mem::take(&mut msgs) {
                        if let Some(end) = self.on_message(msg).await {
                            return end;
                        }
                    }
                }
                Step::Read(Err(e)) | Step::WriteFailed(e) => {
                    let failure = connection::ws_failure(e);
                    let mut end = End::from_failure(&failure);
                    // After a protocol error the socket queued a close frame: send it.
                    end.graceful = matches!(failure.error, ClientError::Disconnected { code, .. } if code != 1006);
                    return end;
                }
                Step::NoPing => {
                    return End {
                        code: 1006,
                        reason: "no ping".into(),
                        reconnect: true,
                        graceful: false,
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, msg: Message) -> Option<End> {
        match msg {
            Message::Text(frame) => {
                for line in lines(&frame) {
                    if let Some(end) = self.on_line(line).await {
                        return Some(end);
                    }
                }
                None
            }
            Message::Close(frame) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| (f.code, f.reason));
                Some(End {
                    code: code.into(),
                    reason,
                    reconnect: reconnect_allowed(code.into()),
                    graceful: true,
                })
            }
            // Binary frames belong to the Protobuf protocol, which this client does not speak.
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => None,
        }
    }

    async fn on_line(&mut self, line: Bytes) -> Option<End> {
        let incoming = match parse_line(&line) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "malformed message from server");
                return Some(End {
                    code: 1002,
                    reason: format!("malformed message from server: {e}"),
                    reconnect: false,
                    graceful: true,
                });
            }
        };
        match incoming {
            Incoming::Ping => {
                if self.pong {
                    self.out.push(Bytes::from_static(PONG));
                }
            }
            Incoming::Reply { id, result } => match self.pending.remove(&id) {
                Some(Pending::Call(tx)) => {
                    let r = match result {
                        Ok(raw) => Ok(raw.map_or_else(Bytes::new, |r| raw_bytes(&line, r))),
                        Err(e) => Err(server_error(e)),
                    };
                    let _ = tx.send(r);
                }
                Some(Pending::Subscribe {
                    channel,
                    generation,
                }) => {
                    self.on_subscribe_reply(channel, generation, result, &line)
                        .await
                }
                Some(Pending::Ignore) | None => {}
            },
            Incoming::Push(push) => return self.on_push(*push, &line).await,
        }
        None
    }

    async fn on_subscribe_reply(
        &mut self,
        channel: String,
        generation: u64,
        result: Result<Option<&RawValue>, WireError>,
        line: &Bytes,
    ) {
        if self
            .subs
            .get(&channel)
            .is_none_or(|s| s.generation != generation)
        {
            return;
        }
        let parsed = result.map_err(server_error).and_then(|raw| match raw {
            Some(raw) => serde_json::from_str::<WireSubscribeResult<'_>>(raw.get())
                .map_err(|e| ClientError::protocol(format!("bad subscribe result: {e}"))),
            None => Ok(WireSubscribeResult::default()),
        });
        let res = match parsed {
            Ok(res) => res,
            Err(e) => {
                let Some(sub) = self.subs.remove(&channel) else {
                    return;
                };
                match sub.reply {
                    Some(reply) => drop(reply.send(Err(e))),
                    None => {
                        let (code, reason) = match e {
                            ClientError::Server { code, message, .. } => (code, message),
                            other => (0, other.to_string()),
                        };
                        let _ = sub
                            .events
                            .send(SubscriptionEvent::Unsubscribed { code, reason })
                            .await;
                    }
                }
                return;
            }
        };
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        if let Some(reply) = sub.reply.take() {
            if reply.send(Ok(())).is_err() {
                // The caller timed out: nobody holds the subscription.
                self.subs.remove(&channel);
                self.send_unsubscribe(&channel, Pending::Ignore);
                return;
            }
        }
        let mut position = sub.position.take().filter(|p| p.epoch == res.epoch);
        let mut events = Vec::with_capacity(1 + res.publications.len());
        for p in &res.publications {
            if accept(&mut position, p.offset) {
                events.push(SubscriptionEvent::Publication(p.to_public(line)));
            }
        }
        if res.recoverable {
            let offset = position.as_ref().map_or(0, |p| p.offset).max(res.offset);
            position = Some(StreamPosition {
                offset,
                epoch: res.epoch.clone(),
            });
        } else {
            position = None;
        }
        sub.position = position.clone();
        let subscribed = SubscriptionEvent::Subscribed {
            was_recovering: sub.recovering || res.was_recovering,
            recovered: res.recovered,
            position,
        };
        for event in std::iter::once(subscribed).chain(events) {
            if !self.deliver(&channel, event).await {
                return;
            }
        }
    }

    /// Sends `event` to `channel`'s subscription (waiting for room); when its handle is gone,
    /// unsubscribes and returns false.
    async fn deliver(&mut self, channel: &str, event: SubscriptionEvent) -> bool {
        let Some(sub) = self.subs.get(channel) else {
            return false;
        };
        if sub.events.send(event).await.is_ok() {
            return true;
        }
        self.subs.remove(channel);
        self.send_unsubscribe(channel, Pending::Ignore);
        false
    }

    async fn on_push(&mut self, push: WirePush<'_>, line: &Bytes) -> Option<End> {
        if let Some(d) = push.disconnect {
            return Some(End {
                code: d.code,
                reason: d.reason,
                reconnect: d.reconnect,
                graceful: true,
            });
        }
        if let Some(m) = &push.message {
            let data = m
                .data
                .map_or_else(|| Bytes::from_static(b"null"), |d| raw_bytes(line, d));
            self.shared.emit(ClientEvent::Message(data));
            return None;
        }
        let Some(sub) = self.subs.get_mut(&push.channel) else {
            self.shared.emit(ClientEvent::Push(line.clone()));
            return None;
        };
        let event = if let Some(p) = &push.publication {
            if !accept(&mut sub.position, p.offset) {
                return None;
            }
            SubscriptionEvent::Publication(p.to_public(line))
        } else if let Some(j) = &push.join {
            SubscriptionEvent::Join(j.info.to_public(line))
        } else if let Some(l) = &push.leave {
            SubscriptionEvent::Leave(l.info.to_public(line))
        } else if let Some(u) = push.unsubscribe {
            if u.code >= 2500 {
                // The server asks to resubscribe (with recovery when possible).
                self.send_subscribe(&push.channel);
                return None;
            }
            if let Some(sub) = self.subs.remove(&push.channel) {
                let _ = sub.events.try_send(SubscriptionEvent::Unsubscribed {
                    code: u.code,
                    reason: u.reason,
                });
            }
            return None;
        } else {
            self.shared.emit(ClientEvent::Push(line.clone()));
            return None;
        };
        self.deliver(&push.channel, event).await;
        None
    }
}

/// Whether a publication at `offset` is new for a subscription at `position` (advancing it).
/// Publications of channels without positions (offset 0) are always new.
fn accept(position: &mut Option<StreamPosition>, offset: u64) -> bool {
    match position {
        Some(p) if offset > 0 => {
            if offset <= p.offset {
                return false;
            }
            p.offset = offset;
            true
        }
        _ => true,
    }
}

fn server_error(e: WireError) -> ClientError {
    ClientError::Server {
        code: e.code,
        message: e.message,
        temporary: e.temporary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_deduplicates_by_offset() {
        let mut none = None;
        assert!(accept(&mut none, 5));
        assert!(accept(&mut none, 5));
        let mut pos = Some(StreamPosition {
            offset: 3,
            epoch: "e".into(),
        });
        assert!(!accept(&mut pos, 2));
        assert!(!accept(&mut pos, 3));
        assert!(accept(&mut pos, 4));
        assert_eq!(pos.as_ref().unwrap().offset, 4);
        assert!(accept(&mut pos, 0));
    }
}
