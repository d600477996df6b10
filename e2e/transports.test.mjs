// The HTTP transports with bidirectional emulation (`http_stream`, `sse`, and `/emulation` for
// client-to-server commands), driven by the real `centrifuge` SDK with Node's fetch and
// ReadableStream (and the `eventsource` package as Node has no EventSource), against the real
// binary: every feature over every transport, the fallback from a WebSocket that fails, and the
// shapes on the wire.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import { Centrifuge } from 'centrifuge';
import { EventSource } from 'eventsource';

import {
  api,
  apiCall,
  publicationQueue,
  signJwt,
  startServer,
  subscribe,
  uniqueChannel,
  waitFor,
  withTimeout,
} from './helpers.mjs';

const SECRET = 'transports-test-secret';
const CONFIG = `
mode = "development"

[client]
ping_interval = "2s"
pong_timeout = "1s"

[client.token]
hmac_secret_key = "${SECRET}"

[channel.default]
history_size = 50
history_ttl = "300s"
force_recovery = true
presence = true
join_leave = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
`;

const TRANSPORTS = ['http_stream', 'sse'];

let server;
before(async () => {
  server = await startServer({ config: CONFIG });
});
after(async () => {
  await server?.stop();
});

const open = new Set();
afterEach(() => {
  for (const c of open) c.disconnect();
  open.clear();
});

function endpoint(transport) {
  return { transport, endpoint: `${server.httpUrl}/connection/${transport}` };
}

/** A client that speaks only `transport` (no WebSocket at all). */
function emulatedClient(transport, options = {}) {
  const c = new Centrifuge([endpoint(transport)], {
    emulationEndpoint: `${server.httpUrl}/emulation`,
    eventsource: EventSource,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    timeout: 5000,
    ...options,
  });
  open.add(c);
  return c;
}

async function connected(client) {
  const ready = waitFor(client, 'connected', 5000);
  client.connect();
  return ready;
}

for (const transport of TRANSPORTS) {
  describe(`over ${transport}`, () => {
    test('connects, subscribes, publishes, and answers server pings for several intervals', async () => {
      const token = signJwt({ sub: `user-${transport}` }, SECRET);
      const client = emulatedClient(transport, { token });
      const ctx = await connected(client);
      assert.equal(ctx.transport, transport);
      const channel = uniqueChannel();
      const sub = await subscribe(client, channel);
      const queue = publicationQueue(sub);
      await sub.publish({ text: 'from the client', n: 1 });
      assert.deepEqual((await queue.next()).data, { text: 'from the client', n: 1 });
      await api(server, 'publish', { channel, data: { text: 'from the API', n: 2 } });
      assert.deepEqual((await queue.next()).data, { text: 'from the API', n: 2 });
      // Pings every two seconds with a one-second pong deadline: a client that could not
      // answer over /emulation would be disconnected (3012) within about three seconds.
      let disconnected = null;
      client.on('disconnected', (c) => (disconnected = c));
      await new Promise((r) => setTimeout(r, 5000));
      assert.equal(disconnected, null);
      assert.equal(client.state, 'connected');
    });

    test('history, presence and rpc errors', async () => {
      const token = signJwt({ sub: `reader-${transport}` }, SECRET);
      const client = emulatedClient(transport, { token });
      await connected(client);
      const channel = uniqueChannel();
      const sub = await subscribe(client, channel);
      for (let n = 1; n <= 3; n++) await api(server, 'publish', { channel, data: { n } });
      const history = await sub.history({ limit: 10 });
      assert.deepEqual(history.publications.map((p) => p.data.n), [1, 2, 3]);
      const presence = await sub.presence();
      assert.deepEqual(Object.values(presence.clients).map((c) => c.user), [`reader-${transport}`]);
      // No RPC handler or proxy: 108 "not available", as over WebSocket.
      await assert.rejects(client.rpc('anything', {}), (e) => e.code === 108);
    });

    test('recovers publications missed while the stream was down', async () => {
      const client = emulatedClient(transport);
      await connected(client);
      const channel = uniqueChannel();
      const sub = await subscribe(client, channel);
      const queue = publicationQueue(sub);
      await api(server, 'publish', { channel, data: { n: 1 } });
      assert.equal((await queue.next()).data.n, 1);
      const subscribedAgain = waitFor(sub, 'subscribed', 10000);
      client.disconnect();
      for (let n = 2; n <= 6; n++) await api(server, 'publish', { channel, data: { n } });
      client.connect();
      const ctx = await subscribedAgain;
      assert.equal(ctx.wasRecovering, true);
      assert.equal(ctx.recovered, true);
      const got = [];
      for (let i = 0; i < 5; i++) got.push((await queue.next()).data.n);
      assert.deepEqual(got, [2, 3, 4, 5, 6]);
    });

    test('a server-side disconnect arrives as a disconnect push with its code', async () => {
      const user = `kicked-${transport}-${Date.now()}`;
      const client = emulatedClient(transport, { token: signJwt({ sub: user }, SECRET) });
      await connected(client);
      const gone = waitFor(client, 'disconnected', 5000);
      await api(server, 'disconnect', { user, disconnect: { code: 4501, reason: 'go away' } });
      const ctx = await gone;
      assert.equal(ctx.code, 4501);
      assert.equal(ctx.reason, 'go away');
    });
  });
}

test('the SDK falls back to http_stream, then sse, when WebSocket fails', async () => {
  // A WebSocket that can never open, as behind a proxy that breaks upgrades.
  class BrokenWebSocket {
    constructor() {
      setTimeout(() => {
        this.onerror?.(new Error('blocked'));
        this.onclose?.({ code: 1006, reason: '' });
      }, 10);
    }
    close() {}
    send() {}
  }
  for (const [transports, expected] of [
    [['websocket', 'http_stream', 'sse'], 'http_stream'],
    [['websocket', 'sse'], 'sse'],
  ]) {
    const c = new Centrifuge(
      transports.map((t) =>
        t === 'websocket'
          ? { transport: t, endpoint: `${server.wsUrl}` }
          : endpoint(t),
      ),
      {
        websocket: BrokenWebSocket,
        eventsource: EventSource,
        emulationEndpoint: `${server.httpUrl}/emulation`,
        minReconnectDelay: 50,
        maxReconnectDelay: 200,
        timeout: 5000,
      },
    );
    open.add(c);
    const ctx = await connected(c);
    assert.equal(ctx.transport, expected);
    const channel = uniqueChannel();
    const sub = await subscribe(c, channel);
    const queue = publicationQueue(sub);
    await api(server, 'publish', { channel, data: { via: expected } });
    assert.deepEqual((await queue.next()).data, { via: expected });
    c.disconnect();
  }
});

describe('on the wire', () => {
  test('http_stream: newline-delimited replies; /emulation carries later commands', async () => {
    const controller = new AbortController();
    const res = await fetch(`${server.httpUrl}/connection/http_stream`, {
      method: 'POST',
      body: JSON.stringify({ id: 1, connect: {} }),
      signal: controller.signal,
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /application\/json/);
    const reader = res.body.getReader();
    const lines = lineReader(reader);
    const reply = JSON.parse(await lines.next());
    assert.equal(reply.id, 1);
    assert.ok(reply.connect.session, 'connect reply has a session');
    assert.ok(reply.connect.node, 'connect reply has a node');
    const channel = uniqueChannel();
    const post = await fetch(`${server.httpUrl}/emulation`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        session: reply.connect.session,
        node: reply.connect.node,
        data: JSON.stringify({ id: 2, subscribe: { channel } }),
      }),
    });
    assert.equal(post.status, 204);
    assert.equal(JSON.parse(await lines.next()).id, 2);
    // Data passes through byte for byte.
    const data = '{"b":1,  "a":[1.50,"\\u00e9"]}';
    await fetch(`${server.httpUrl}/api/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: `{"channel":"${channel}","data":${data}}`,
    });
    let push;
    do push = await lines.next();
    while (push === '{}');
    assert.ok(push.includes(`"data":${data}`), push);
    controller.abort();
  });

  test('/emulation refuses unknown sessions and malformed requests', async () => {
    const unknown = await fetch(`${server.httpUrl}/emulation`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ session: 'nope', node: '', data: '{}' }),
    });
    assert.equal(unknown.status, 404);
    const bad = await fetch(`${server.httpUrl}/emulation`, { method: 'POST', body: '[' });
    assert.equal(bad.status, 400);
    const missing = await fetch(`${server.httpUrl}/connection/sse`);
    assert.equal(missing.status, 400);
  });

  test('sse: one event per message, disconnect push at the end', async () => {
    const user = `sse-wire-${Date.now()}`;
    const connect = JSON.stringify({ id: 1, connect: { token: signJwt({ sub: user }, SECRET) } });
    const res = await fetch(
      `${server.httpUrl}/connection/sse?cf_connect=${encodeURIComponent(connect)}`,
    );
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /text\/event-stream/);
    const text = readAll(res);
    await withTimeout(
      (async () => {
        for (;;) {
          const { body } = await apiCall(server, 'info', {});
          if (body.result.nodes.some((n) => n.num_users > 0)) return;
          await new Promise((r) => setTimeout(r, 50));
        }
      })(),
      5000,
    );
    await api(server, 'disconnect', { user, disconnect: { code: 4502, reason: 'bye' } });
    const events = (await withTimeout(text, 5000)).split('\n\n').filter(Boolean);
    assert.ok(events.length >= 2, events.join('|'));
    for (const e of events) assert.match(e, /^data: /);
    assert.equal(JSON.parse(events[0].slice(6)).id, 1);
    const last = JSON.parse(events.at(-1).slice(6));
    assert.deepEqual(last.push.disconnect.code, 4502);
  });
});

/** Reads lines from a fetch body reader. */
function lineReader(reader) {
  const decoder = new TextDecoder();
  let buf = '';
  return {
    async next() {
      for (;;) {
        const i = buf.indexOf('\n');
        if (i >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          return line;
        }
        const { done, value } = await withTimeout(reader.read(), 5000, 'no line in time');
        if (done) throw new Error(`stream ended; left: ${buf}`);
        buf += decoder.decode(value, { stream: true });
      }
    },
  };
}

async function readAll(res) {
  return new TextDecoder().decode(await res.arrayBuffer());
}

describe('no sticky sessions (two nodes on the local Redis)', () => {
  const prefix = `sb-e2e-transports-${process.pid}-${Date.now()}`;
  const clusterConfig = `
mode = "development"

[broker]
type = "redis"

[broker.redis]
addresses = ["redis://127.0.0.1:6379"]
prefix = "${prefix}"

[channel.default]
history_size = 50
history_ttl = "300s"
force_recovery = true
`;
  let a;
  let b;
  before(async () => {
    [a, b] = await Promise.all([
      startServer({ config: clusterConfig }),
      startServer({ config: clusterConfig }),
    ]);
  });
  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
  });

  for (const transport of TRANSPORTS) {
    test(`${transport}: the stream on node A, every command posted to node B`, async () => {
      const c = new Centrifuge(
        [{ transport, endpoint: `${a.httpUrl}/connection/${transport}` }],
        {
          emulationEndpoint: `${b.httpUrl}/emulation`,
          eventsource: EventSource,
          minReconnectDelay: 100,
          maxReconnectDelay: 1000,
          timeout: 5000,
        },
      );
      open.add(c);
      await connected(c);
      const channel = uniqueChannel();
      const sub = await subscribe(c, channel);
      const queue = publicationQueue(sub);
      await sub.publish({ n: 1 });
      assert.deepEqual((await queue.next()).data, { n: 1 });
      await api(b, 'publish', { channel, data: { n: 2 } });
      assert.deepEqual((await queue.next()).data, { n: 2 });
      const history = await sub.history({ limit: 10 });
      assert.deepEqual(history.publications.map((p) => p.data.n), [1, 2]);
    });
  }
});

test('production mode serves the HTTP transports only when turned on', async () => {
  const off = await startServer({ config: 'mode = "production"\n' });
  const on = await startServer({ config: 'mode = "production"\n[transports]\nsse = true\n' });
  try {
    const post = (s, path) => fetch(`${s.httpUrl}${path}`, { method: 'POST', body: '{}' });
    assert.equal((await post(off, '/connection/http_stream')).status, 404);
    assert.equal((await post(off, '/emulation')).status, 404);
    assert.equal((await fetch(`${off.httpUrl}/connection/sse?cf_connect=x`)).status, 404);
    assert.equal((await post(on, '/connection/http_stream')).status, 404);
    // On: served (a session that does not exist is a 404 of /emulation itself, with a body).
    const emulation = await fetch(`${on.httpUrl}/emulation`, {
      method: 'POST',
      body: JSON.stringify({ session: 'x', node: '', data: '{}' }),
    });
    assert.equal(emulation.status, 404);
    assert.match(await emulation.text(), /session not found/);
    // A cross-origin preflight from a page the configuration does not allow is refused.
    const preflight = await fetch(`${on.httpUrl}/emulation`, {
      method: 'OPTIONS',
      headers: { Origin: 'https://elsewhere.example', 'Access-Control-Request-Method': 'POST' },
    });
    assert.equal(preflight.status, 403);
  } finally {
    await Promise.all([off.stop(), on.stop()]);
  }
});

test('CORS: an allowed origin gets its preflight answered and the stream readable', async () => {
  const s = await startServer({
    config: `mode = "development"\n[client]\nallowed_origins = ["https://app.example"]\n`,
  });
  try {
    const preflight = await fetch(`${s.httpUrl}/connection/http_stream`, {
      method: 'OPTIONS',
      headers: {
        Origin: 'https://app.example',
        'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'content-type',
      },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get('access-control-allow-origin'), 'https://app.example');
    assert.equal(preflight.headers.get('access-control-allow-credentials'), 'true');
    assert.match(preflight.headers.get('access-control-allow-methods'), /POST/);
    assert.equal(preflight.headers.get('access-control-allow-headers'), 'content-type');
    const controller = new AbortController();
    const res = await fetch(`${s.httpUrl}/connection/http_stream`, {
      method: 'POST',
      headers: { Origin: 'https://app.example', 'Content-Type': 'application/json' },
      body: JSON.stringify({ id: 1, connect: {} }),
      signal: controller.signal,
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('access-control-allow-origin'), 'https://app.example');
    controller.abort();
    const refused = await fetch(`${s.httpUrl}/connection/http_stream`, {
      method: 'POST',
      headers: { Origin: 'https://evil.example' },
      body: JSON.stringify({ id: 1, connect: {} }),
    });
    assert.equal(refused.status, 403);
  } finally {
    await s.stop();
  }
});

describe('unidirectional', () => {
  test('uni_sse: a plain EventSource gets the connect push, then publications of its channels', async () => {
    const channel = uniqueChannel();
    const token = signJwt({ sub: 'uni-reader', channels: [channel] }, SECRET);
    const url = `${server.httpUrl}/connection/uni_sse?cf_connect=${encodeURIComponent(
      JSON.stringify({ token }),
    )}`;
    const es = new EventSource(url);
    const messages = [];
    const waiters = [];
    es.onmessage = (e) => {
      messages.push(JSON.parse(e.data));
      for (const w of waiters.splice(0)) w();
    };
    const until = (pred) =>
      withTimeout(
        (async () => {
          while (!messages.some(pred)) await new Promise((r) => waiters.push(r));
          return messages.find(pred);
        })(),
        5000,
        `no matching message in ${JSON.stringify(messages)}`,
      );
    try {
      const connect = await until((m) => m.connect);
      assert.ok(connect.connect.client);
      assert.ok(channel in connect.connect.subs, JSON.stringify(connect));
      assert.equal(connect.connect.pong, undefined, 'no pong expected from a unidirectional client');
      await api(server, 'publish', { channel, data: { hello: 'uni' } });
      const pub = await until((m) => m.pub);
      assert.equal(pub.channel, channel);
      assert.deepEqual(pub.pub.data, { hello: 'uni' });
    } finally {
      es.close();
    }
  });

  test('uni_http_stream with curl: one push per line; a bad token ends the stream with 3500', async () => {
    const { spawn } = await import('node:child_process');
    const channel = uniqueChannel();
    const token = signJwt({ sub: 'curl-reader', channels: [channel] }, SECRET);
    const curl = spawn('curl', [
      '-sN',
      '-X', 'POST',
      '--data', JSON.stringify({ token }),
      `${server.httpUrl}/connection/uni_http_stream`,
    ]);
    let out = '';
    curl.stdout.on('data', (d) => (out += d));
    try {
      await withTimeout(
        (async () => {
          while (!out.includes('"connect"')) await new Promise((r) => setTimeout(r, 20));
        })(),
        5000,
        'no connect push from curl',
      );
      await api(server, 'publish', { channel, data: { n: 1 } });
      await withTimeout(
        (async () => {
          while (!out.includes('"pub"')) await new Promise((r) => setTimeout(r, 20));
        })(),
        5000,
        `no publication in ${out}`,
      );
      const lines = out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
      assert.ok(lines[0].connect);
      const pub = lines.find((l) => l.pub);
      assert.equal(pub.channel, channel);
      assert.deepEqual(pub.pub.data, { n: 1 });
    } finally {
      curl.kill();
    }
    const bad = await fetch(`${server.httpUrl}/connection/uni_http_stream`, {
      method: 'POST',
      body: JSON.stringify({ token: 'not.a.token' }),
    });
    const text = await withTimeout(bad.text(), 5000);
    const last = JSON.parse(text.trim().split('\n').at(-1));
    assert.equal(last.disconnect.code, 3500, text);
    const notObject = await fetch(`${server.httpUrl}/connection/uni_http_stream`, {
      method: 'POST',
      body: '[1]',
    });
    assert.equal(notObject.status, 400);
  });
});
