// The load of a fault run: a publisher that publishes through the server API at a steady rate and
// records which publications were acknowledged, and subscribers using the real `centrifuge` SDK
// that record everything the SDK tells them.
//
// Publisher: publication `seq` goes to channel `channels[seq % n]` with data `{ seq }` and
// `idempotency_key` `<run>-<seq>`, first through node `seq % nodes`; an attempt that fails (error
// answer, HTTP error, refused connection, no answer within `attemptTimeoutMs`) is retried with the
// same key through the next node, with backoff, up to `maxAttempts` times. A publication is
// acknowledged when an attempt answered a result (its offset and epoch are recorded); the others
// are "unacknowledged": their outcome is unknown, they need not arrive, but must not arrive twice.
//
// Subscribers: one `Centrifuge` client each, with a home node, subscribed to every channel. The SDK
// takes one URL, so the WebSocket class given to it picks the node at each (re)connect: the
// current node, or the next one when the last attempt could not even open (a client with a list
// of endpoints, like a balancer that skips a dead node). Each subscription records, in order:
// `subscribed` (wasRecovering, recovered, stream position), `subscribing` and `unsubscribed` (code,
// reason), `error`, and every publication (offset, seq, time).

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

import { now } from './clock.mjs';

/** The publisher; its `records` (one per publication, by seq) feed the verdict. */
export class Publisher {
  constructor({ nodes, channels, rate, apiKey, runId, attemptTimeoutMs = 5000, maxAttempts = 5, maxInFlight = 600 }) {
    this.nodes = nodes; // [{ name, httpUrl }]
    this.channels = channels;
    this.rate = rate;
    this.apiKey = apiKey;
    this.runId = runId;
    this.attemptTimeoutMs = attemptTimeoutMs;
    this.maxAttempts = maxAttempts;
    this.maxInFlight = maxInFlight;
    this.records = []; // by seq: { seq, channel, t0, tEnd, acked, offset, epoch, attempts: [...] }
    this.inFlight = 0;
    this.skipped = 0;
    this.errors = {}; // "node:code" -> count, per failed attempt
    this.pending = new Set();
    this.timer = null;
  }

  start() {
    this.startedAt = now();
    let sent = 0;
    this.timer = setInterval(() => {
      const due = Math.floor(((now() - this.startedAt) / 1000) * this.rate);
      while (sent < due) {
        sent++;
        if (this.inFlight >= this.maxInFlight) {
          this.skipped++;
          continue;
        }
        this.publish();
      }
    }, 5);
  }

  /** Stops publishing and waits until every publication has its final outcome. */
  async stop() {
    clearInterval(this.timer);
    this.timer = null;
    while (this.pending.size) await Promise.race([...this.pending]);
  }

  publish() {
    const seq = this.records.length;
    const rec = {
      seq,
      channel: this.channels[seq % this.channels.length],
      t0: now(),
      tEnd: null,
      acked: false,
      offset: null,
      epoch: null,
      attempts: [],
    };
    this.records.push(rec);
    this.inFlight++;
    const p = this.attemptLoop(rec).finally(() => {
      this.inFlight--;
      this.pending.delete(p);
    });
    this.pending.add(p);
  }

  async attemptLoop(rec) {
    for (let i = 0; i < this.maxAttempts; i++) {
      const node = this.nodes[(rec.seq + i) % this.nodes.length];
      const started = now();
      const outcome = await this.attempt(node, rec);
      rec.attempts.push({ node: node.name, t: started, dt: Math.round(now() - started), outcome: outcome.error || 'ok' });
      if (!outcome.error) {
        rec.acked = true;
        rec.offset = outcome.offset;
        rec.epoch = outcome.epoch;
        rec.tEnd = now();
        return;
      }
      const key = outcome.error;
      this.errors[key] = (this.errors[key] || 0) + 1;
      if (i + 1 < this.maxAttempts) {
        const backoff = Math.min(2000, 200 * 2 ** i);
        await new Promise((r) => setTimeout(r, backoff / 2 + Math.random() * (backoff / 2)));
      }
    }
    rec.tEnd = now();
  }

  async attempt(node, rec) {
    try {
      const res = await fetch(`${node.httpUrl}/api/publish`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-API-Key': this.apiKey },
        body: JSON.stringify({
          channel: rec.channel,
          data: { seq: rec.seq, t0: Math.round(rec.t0) },
          idempotency_key: `${this.runId}-${rec.seq}`,
        }),
        signal: AbortSignal.timeout(this.attemptTimeoutMs),
      });
      const text = await res.text();
      let body;
      try {
        body = JSON.parse(text);
      } catch {
        return { error: `http${res.status}` };
      }
      if (res.status !== 200) return { error: `http${res.status}${body?.error ? `/${body.error.code}` : ''}` };
      if (body.error) return { error: `error${body.error.code}` };
      const r = body.result || {};
      if (typeof r.offset !== 'number' || !r.epoch) return { error: 'no-position' };
      return { offset: r.offset, epoch: r.epoch };
    } catch (err) {
      if (err.name === 'TimeoutError' || err.name === 'AbortError') return { error: 'timeout' };
      return { error: err.cause?.code || err.name || 'fetch-error' };
    }
  }
}

/**
 * `ws` made to behave like a browser's WebSocket where centrifuge-js depends on it:
 *   - one message event per event-loop turn (`allowSynchronousEvents: false`): centrifuge-js
 *     5.7.4 dispatches replies through a promise chain that assumes it (see e2e/helpers.mjs,
 *     BrowserLikeWebSocket); without it, publications arriving in one TCP read can be handed to
 *     the application out of order;
 *   - no message event once the socket is no longer OPEN (the WHATWG WebSocket drops messages
 *     received after close() was called); `ws` goes on emitting what it has buffered, and
 *     centrifuge-js (which does not check which transport a message comes from) would hand an
 *     old connection's publications to a subscription already recovered on the new one.
 * Either artefact would otherwise be reported here as a server reorder or duplicate.
 */
function webSocketFor(sub) {
  return class extends WebSocket {
    constructor(_url, protocols) {
      const node = sub.nodes[sub.current];
      super(node.wsUrl, protocols, { allowSynchronousEvents: false });
      const attempt = { node: node.name, opened: false };
      sub.connectAttempts.push(attempt);
      this.on('open', () => {
        attempt.opened = true;
        sub.connectedNode = node.name;
      });
      this.on('close', () => {
        // An attempt that never opened: try the next node the next time.
        if (!attempt.opened) sub.current = (sub.current + 1) % sub.nodes.length;
      });
      this.on('error', () => {});
    }

    emit(event, ...args) {
      if (event === 'message' && this.readyState !== WebSocket.OPEN) {
        sub.droppedAfterClose++;
        return false;
      }
      return super.emit(event, ...args);
    }
  };
}

/** One subscriber: a `Centrifuge` client and one subscription per channel. */
export class Subscriber {
  constructor({ id, nodes, home, channels }) {
    this.id = id;
    this.nodes = nodes;
    this.home = home;
    this.current = home;
    this.connectedNode = null;
    this.connectAttempts = [];
    this.droppedAfterClose = 0;
    this.clientEvents = [];
    this.subs = new Map(); // channel -> { sub, events }
    this.client = new Centrifuge('ws://chosen-by-the-websocket-class/', {
      websocket: webSocketFor(this),
      minReconnectDelay: 100,
      maxReconnectDelay: 2000,
      timeout: 5000,
      name: `faults-${id}`,
    });
    for (const ev of ['connecting', 'connected', 'disconnected', 'error']) {
      this.client.on(ev, (ctx) => {
        if (this.closing) return;
        this.clientEvents.push({
          ev,
          t: now(),
          node: this.connectedNode,
          code: ctx?.code ?? ctx?.error?.code,
          reason: ctx?.reason ?? ctx?.error?.message,
        });
      });
    }
    for (const ch of channels) {
      const events = [];
      const sub = this.client.newSubscription(ch, { minResubscribeDelay: 100, maxResubscribeDelay: 2000 });
      sub.on('subscribed', (ctx) => {
        if (this.closing) return;
        events.push({
          ev: 'subscribed',
          t: now(),
          node: this.connectedNode,
          wasRecovering: !!ctx.wasRecovering,
          recovered: !!ctx.recovered,
          epoch: ctx.streamPosition?.epoch ?? null,
          offset: ctx.streamPosition?.offset ?? null,
        });
      });
      sub.on('subscribing', (ctx) => {
        if (this.closing) return;
        events.push({ ev: 'subscribing', t: now(), node: this.connectedNode, code: ctx.code, reason: ctx.reason });
      });
      sub.on('unsubscribed', (ctx) => {
        if (this.closing) return;
        events.push({ ev: 'unsubscribed', t: now(), node: this.connectedNode, code: ctx.code, reason: ctx.reason });
        // The application would reload its state and subscribe again; so do we (the verdict
        // counts what was missed in between as signalled).
        if (!this.closing) setTimeout(() => !this.closing && sub.subscribe(), 200);
      });
      sub.on('error', (ctx) => {
        if (this.closing) return;
        events.push({
          ev: 'error',
          t: now(),
          node: this.connectedNode,
          type: ctx.type,
          code: ctx.error?.code,
          reason: ctx.error?.message,
        });
      });
      sub.on('publication', (ctx) => {
        if (this.closing) return;
        events.push({
          ev: 'pub',
          t: now(),
          node: this.connectedNode,
          offset: ctx.offset ?? null,
          seq: typeof ctx.data?.seq === 'number' ? ctx.data.seq : null,
          t0: typeof ctx.data?.t0 === 'number' ? ctx.data.t0 : null,
        });
      });
      this.subs.set(ch, { sub, events });
    }
  }

  start() {
    for (const { sub } of this.subs.values()) sub.subscribe();
    this.client.connect();
  }

  /** Whether every subscription is subscribed now. */
  allSubscribed() {
    for (const { sub } of this.subs.values()) if (sub.state !== 'subscribed') return false;
    return true;
  }

  close() {
    this.closing = true;
    this.client.disconnect();
  }
}
