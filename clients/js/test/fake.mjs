// Test doubles for the unit tests: a scripted WebSocket (the test plays the server), a
// scripted fetch for the HTTP-streaming transport, and a network event source.

import { Client } from '../dist/switchboard.js';

/** Lets queued microtasks and promise chains run (timers stay mocked). */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A WebSocket whose server side is the test. */
export class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = false;
    this.answered = new Set();
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }

  send(data) {
    if (this.closed) throw new Error('send on a closed socket');
    this.sent.push(data);
  }

  close() {
    this.closed = true;
  }

  /** The server accepts the connection. */
  open() {
    this.onopen?.({});
  }

  /** The server sends these objects in one frame. */
  receive(...objects) {
    this.onmessage?.({ data: objects.map((o) => JSON.stringify(o)).join('\n') });
  }

  /** The server (or the network) closes the connection. */
  serverClose(code = 1006, reason = '') {
    this.closed = true;
    this.onclose?.({ code, reason });
  }

  /** Every command the client sent, parsed. */
  commands() {
    return this.sent.flatMap((frame) => frame.split('\n')).map((line) => JSON.parse(line));
  }

  /** The first command with `method` not answered yet (null if none). */
  pending(method) {
    return this.commands().find((c) => method in c && !this.answered.has(c.id)) || null;
  }

  /** Answers the first unanswered `method` command with `result` (or `{ error }`). */
  answer(method, result = {}) {
    const cmd = this.pending(method);
    if (!cmd) throw new Error(`no ${method} command to answer; sent: ${this.sent.join(' | ')}`);
    this.answered.add(cmd.id);
    if (result.error) this.receive({ id: cmd.id, error: result.error });
    else this.receive({ id: cmd.id, [method]: result });
    return cmd;
  }
}

/** A client on fake WebSockets; `last()` is the newest socket. */
export function setup(options = {}, endpoint = 'ws://server.test/connection/websocket') {
  const sockets = [];
  class WS extends FakeWebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  const client = new Client(endpoint, {
    websocket: WS,
    networkEvents: null,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    ...options,
  });
  const events = [];
  for (const e of ['connecting', 'connected', 'disconnected', 'error', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave', 'message']) {
    client.on(e, (ctx) => events.push([e, ctx]));
  }
  return { client, sockets, events, last: () => sockets[sockets.length - 1] };
}

/** Opens `ws` and answers its connect command with `result`; returns the connect command. */
export async function handshake(ws, result = {}) {
  ws.open();
  await flush();
  const cmd = ws.answer('connect', { client: 'client-1', version: '0.1.0', ping: 25, pong: true, ...result });
  await flush();
  return cmd;
}

/** Records a subscription's events as [name, ctx]. */
export function record(emitter, names) {
  const log = [];
  for (const n of names) emitter.on(n, (ctx) => log.push([n, ctx]));
  return log;
}

/** An EventTarget standing in for `window` (online/offline). */
export class FakeNetwork extends EventTarget {
  fire(type) {
    this.dispatchEvent(new Event(type));
  }
}

/**
 * A fetch for the HTTP-streaming transport: `streams` are the open `/connection/http_stream`
 * responses (push lines with `stream.push(obj)`, end with `stream.end()`), `posts` the
 * `/emulation` bodies.
 */
export function fakeFetch() {
  const streams = [];
  const posts = [];
  const encoder = new TextEncoder();
  const fn = async (url, init) => {
    if (String(url).endsWith('/emulation')) {
      posts.push(JSON.parse(init.body));
      return new Response(null, { status: 204 });
    }
    let controller;
    const body = new ReadableStream({ start: (c) => (controller = c) });
    const stream = {
      url: String(url),
      first: init.body,
      push: (...objects) => controller.enqueue(encoder.encode(objects.map((o) => JSON.stringify(o) + '\n').join(''))),
      end: () => controller.close(),
    };
    init.signal?.addEventListener('abort', () => {
      stream.aborted = true;
      try {
        controller.error(new Error('aborted'));
      } catch {}
    });
    streams.push(stream);
    return new Response(body, { status: 200, headers: { 'content-type': 'application/json' } });
  };
  return { fetch: fn, streams, posts };
}
