// The Socket.IO front door of the real binary, driven by the real `socket.io-client`: polling then
// upgrade, WebSocket only, rooms on the hub (a Socket.IO client, a native `centrifuge` client and
// the server API meet in one channel), acks, JWT auth in `auth.token`, CONNECT_ERROR.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { io } from 'socket.io-client';

import {
  api,
  connectClient,
  publicationQueue,
  roundRobin,
  signJwt,
  startChatExample,
  startServer,
  subscribe,
  withTimeout,
} from './helpers.mjs';

const SECRET = 'e2e-socketio-secret-0123456789abcdef';
const API_KEY = 'e2e-socketio-api-key';

const CONFIG = `
[client]
allow_anonymous = false

[client.token]
hmac_secret_key = "${SECRET}"

[api]
key = "${API_KEY}"

[channel.default]
allow_subscribe_for_client = true
allow_publish_for_client = true
allow_publish_for_subscriber = true

[[channel.namespaces]]
name = "readonly"
allow_subscribe_for_client = true

[socketio]
enabled = true
ping_interval = "1s"
ping_timeout = "1s"
cors_origins = ["*"]
`;

let seq = 0;
const room = () => `sio-${process.pid}-${Date.now().toString(36)}-${++seq}`;

/** A connected socket.io-client socket (rejects on connect_error). */
function connect(server, opts = {}, nsp = '/') {
  const socket = io(`${server.httpUrl}${nsp === '/' ? '' : nsp}`, {
    reconnection: false,
    forceNew: true,
    auth: { token: signJwt({ sub: 'u1' }, SECRET) },
    ...opts,
  });
  // The transport the session opened with (before any upgrade).
  socket.io.once('open', () => (socket.openedWith = socket.io.engine.transport.name));
  const ready = new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => reject(err));
  });
  return withTimeout(ready, 5000, 'socket.io connect timed out');
}

/** The next `event` on `socket`, with its arguments. */
function next(socket, event, timeoutMs = 5000) {
  return withTimeout(
    new Promise((resolve) => socket.once(event, (...args) => resolve(args))),
    timeoutMs,
    `no ${event} within ${timeoutMs} ms`,
  );
}

describe('socket.io-client against the binary', () => {
  let server;
  const sockets = [];
  before(async () => {
    server = await startServer({ config: CONFIG });
  });
  after(async () => {
    for (const s of sockets) s.close();
    await server?.stop();
  });

  test('connects over polling, then upgrades to WebSocket', async () => {
    const s = await connect(server, { transports: ['polling', 'websocket'] });
    sockets.push(s);
    assert.equal(s.openedWith, 'polling');
    if (s.io.engine.transport.name !== 'websocket') {
      await withTimeout(
        new Promise((resolve) => s.io.engine.once('upgrade', resolve)),
        5000,
        'no upgrade',
      );
    }
    assert.equal(s.io.engine.transport.name, 'websocket');
    const r = room();
    const ack = await s.timeout(5000).emitWithAck('join', r);
    assert.deepEqual(ack, {});
  });

  test('connects over WebSocket only', async () => {
    const s = await connect(server, { transports: ['websocket'] });
    sockets.push(s);
    assert.equal(s.io.engine.transport.name, 'websocket');
    assert.ok(s.id);
  });

  test('a connection without a valid token gets CONNECT_ERROR', async () => {
    await assert.rejects(connect(server, { auth: {} }), (err) => {
      assert.match(err.message, /unauthorized/);
      assert.equal(err.data.code, 101);
      return true;
    });
    await assert.rejects(connect(server, { auth: { token: signJwt({ sub: 'x' }, 'wrong') } }));
  });

  test('rooms are hub channels: Socket.IO clients, a native client and the server API meet', async () => {
    const r = room();
    const a = await connect(server, { transports: ['websocket'] });
    const b = await connect(server, { transports: ['polling'], upgrade: false });
    sockets.push(a, b);
    assert.deepEqual(await a.timeout(5000).emitWithAck('join', r), {});
    assert.deepEqual(await b.timeout(5000).emitWithAck('join', r), {});
    const native = await connectClient(server, { token: signJwt({ sub: 'n1' }, SECRET) });
    const sub = await subscribe(native, r);
    const pubs = publicationQueue(sub);

    // A broadcast from a: b and the native client get it, a does not.
    let aGotOwn = false;
    a.on('chat', () => (aGotOwn = true));
    const atB = next(b, 'chat');
    assert.deepEqual(await a.timeout(5000).emitWithAck('broadcast', r, 'chat', 'hi', { n: 1 }), {});
    assert.deepEqual(await atB, ['hi', { n: 1 }]);
    const pub = await pubs.next();
    assert.deepEqual(pub.data, { event: 'chat', args: ['hi', { n: 1 }] });

    // A server API publication reaches both Socket.IO clients.
    const atA = next(a, 'news');
    const atB2 = next(b, 'news');
    await api(server, 'publish', { channel: r, data: { event: 'news', args: [42] } }, API_KEY);
    assert.deepEqual(await atA, [42]);
    assert.deepEqual(await atB2, [42]);

    // Data of another shape arrives as a `message` event.
    const plain = next(a, 'message');
    await api(server, 'publish', { channel: r, data: { text: 'plain' } }, API_KEY);
    assert.deepEqual(await plain, [{ text: 'plain' }]);

    // After leaving, nothing more arrives.
    assert.deepEqual(await a.timeout(5000).emitWithAck('leave', r), {});
    assert.equal(aGotOwn, false);
    native.disconnect();
  });

  test('room events carry their arguments unchanged (key order too), over WebSocket and polling', async () => {
    const r = room();
    const a = await connect(server, { transports: ['websocket'] });
    const ws = await connect(server, { transports: ['websocket'] });
    const polling = await connect(server, { transports: ['polling'], upgrade: false });
    sockets.push(a, ws, polling);
    for (const s of [a, ws, polling]) assert.deepEqual(await s.timeout(5000).emitWithAck('join', r), {});
    const sent = [{ z: 1, a: { y: 'é', b: [3, 2.5, null] }, m: true }, 'two', 3];
    const atWs = next(ws, 'shape');
    const atPolling = next(polling, 'shape');
    assert.deepEqual(await a.timeout(5000).emitWithAck('broadcast', r, 'shape', ...sent), {});
    for (const got of [await atWs, await atPolling]) {
      assert.equal(JSON.stringify(got), JSON.stringify(sent));
    }
    // Several publications in a row reach every socket, in order.
    const want = Array.from({ length: 20 }, (_, i) => ({ s: i, t: 20 - i }));
    const seen = [ws, polling].map((s) => {
      const got = [];
      s.on('seq', (v) => got.push(v));
      return got;
    });
    for (const v of want) a.emit('broadcast', r, 'seq', v);
    await withTimeout(
      (async () => {
        while (seen.some((g) => g.length < want.length)) await new Promise((res) => setTimeout(res, 20));
      })(),
      5000,
      'not every seq event arrived',
    );
    for (const got of seen) assert.equal(JSON.stringify(got), JSON.stringify(want));
  });

  test('namespace permissions apply: /readonly rooms can be joined but not broadcast to', async () => {
    const s = await connect(server, { transports: ['websocket'] }, '/readonly');
    sockets.push(s);
    assert.deepEqual(await s.timeout(5000).emitWithAck('join', 'r1'), {});
    const denied = await s.timeout(5000).emitWithAck('broadcast', 'r1', 'x', 1);
    assert.equal(denied.error.code, 103);
  });

  test('other events go to RPC: without an RPC handler the ack carries the error', async () => {
    const s = await connect(server, { transports: ['websocket'] });
    sockets.push(s);
    const reply = await s.timeout(5000).emitWithAck('sum', 1, 2);
    assert.ok(reply.error, JSON.stringify(reply));
  });
});

const BROKERS = {
  redis: (prefix) => `[broker]\ntype = "redis"\n\n[broker.redis]\naddresses = ["redis://127.0.0.1:6379"]\nprefix = "${prefix}"\n`,
  nats: (prefix) => `[broker]\ntype = "nats"\n\n[broker.nats]\nurl = "nats://127.0.0.1:4222"\nprefix = "${prefix}"\n`,
};

for (const [broker, brokerConfig] of Object.entries(BROKERS)) describe(`socket.io on three nodes (local ${broker}), no sticky sessions`, () => {
  const prefix = `sb-e2e-socketio-${process.pid}-${Date.now()}`;
  const clusterConfig = `${CONFIG}\n${brokerConfig(prefix)}`;
  let nodes = [];
  let lb;
  const sockets = [];
  before(async () => {
    nodes = await Promise.all([0, 1, 2].map(() => startServer({ config: clusterConfig })));
    lb = await roundRobin(nodes);
  });
  after(async () => {
    for (const s of sockets) s.close();
    await lb?.close();
    await Promise.all(nodes.map((n) => n.stop()));
  });

  test('every polling request of a session goes to another node than the last', async () => {
    const s = await connect(lb, { transports: ['polling'], upgrade: false });
    sockets.push(s);
    const r = room();
    assert.deepEqual(await s.timeout(5000).emitWithAck('join', r), {});
    const atS = next(s, 'news');
    await api(nodes[1], 'publish', { channel: r, data: { event: 'news', args: ['via B'] } }, API_KEY);
    assert.deepEqual(await atS, ['via B']);
    for (let k = 0; k < 5; k++) {
      const reply = await s.timeout(5000).emitWithAck('join', `${r}-${k}`);
      assert.deepEqual(reply, {});
    }
    assert.ok(lb.seen.every((n) => n > 2), `requests per node: ${lb.seen}`);
  });

  test('a client on node A and one on node B meet in a room', async () => {
    const r = room();
    const a = await connect(nodes[0], { transports: ['websocket'] });
    const b = await connect(nodes[1], { transports: ['polling'], upgrade: false });
    sockets.push(a, b);
    assert.deepEqual(await a.timeout(5000).emitWithAck('join', r), {});
    assert.deepEqual(await b.timeout(5000).emitWithAck('join', r), {});
    const atB = next(b, 'chat');
    const atA = next(a, 'chat');
    assert.deepEqual(await a.timeout(5000).emitWithAck('broadcast', r, 'chat', 'from A'), {});
    assert.deepEqual(await atB, ['from A']);
    assert.deepEqual(await b.timeout(5000).emitWithAck('broadcast', r, 'chat', 'from B'), {});
    assert.deepEqual(await atA, ['from B']);
  });
});

describe('library semantics: the socketio_chat example (typed handlers in Rust)', () => {
  let chat;
  const sockets = [];
  before(async () => {
    chat = await startChatExample();
  });
  after(async () => {
    for (const s of sockets) s.close();
    await chat?.stop();
  });

  test('typed handlers, rooms as hub channels, a native client and the server API in the room', async () => {
    const r = room();
    const a = await connect(chat, { transports: ['websocket'], auth: {} });
    const b = await connect(chat, { transports: ['polling'], auth: {} });
    sockets.push(a, b);
    assert.deepEqual(await a.timeout(5000).emitWithAck('join', r), { joined: r });
    assert.deepEqual(await b.timeout(5000).emitWithAck('join', r), { joined: r });
    const native = await connectClient(chat);
    const pubs = publicationQueue(await subscribe(native, r));
    let aGotOwn = false;
    a.on('said', () => (aGotOwn = true));
    const atB = next(b, 'said');
    a.emit('say', { room: r, text: 'hello' });
    assert.deepEqual(await atB, [a.id, 'hello']);
    assert.deepEqual((await pubs.next()).data, { event: 'said', args: [a.id, 'hello'] });
    const atA = next(a, 'news');
    const res = await fetch(`${chat.httpUrl}/api/publish`, {
      method: 'POST',
      body: JSON.stringify({ channel: r, data: { event: 'news', args: [1] } }),
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await atA, [1]);
    assert.equal(aGotOwn, false);
    native.disconnect();
  });

  test('acks both ways, with binary', async () => {
    const s = await connect(chat, { transports: ['polling', 'websocket'], auth: {} });
    sockets.push(s);
    const [text, bin] = await new Promise((resolve, reject) =>
      s.timeout(5000).emit('echo', 'x', Buffer.from([1, 2, 3]), (err, ...args) => (err ? reject(err) : resolve(args))),
    );
    assert.equal(text, 'x');
    assert.deepEqual([...new Uint8Array(bin)], [1, 2, 3]);
    s.on('question', (q, ack) => ack(`answer to ${q}`));
    const answer = next(s, 'answer');
    s.emit('ask', 'life');
    assert.deepEqual(await answer, ['answer to life']);
  });
});

describe('connection state recovery on the hub history', () => {
  let server;
  const sockets = [];
  before(async () => {
    server = await startServer({
      config: CONFIG.replace(
        '[channel.default]',
        '[channel.default]\nhistory_size = 100\nhistory_ttl = "300s"',
      ).replace('cors_origins = ["*"]', 'cors_origins = ["*"]\nrecovery = true'),
    });
  });
  after(async () => {
    for (const s of sockets) s.close();
    await server?.stop();
  });

  test('a client that comes back gets its rooms and what it missed; socket.recovered', async () => {
    const r = room();
    const s = await connect(server, { transports: ['websocket'], reconnection: true, reconnectionDelay: 100 });
    sockets.push(s);
    assert.equal(s.recovered, false);
    const joined = next(s, 'sb:offset');
    assert.deepEqual(await s.timeout(5000).emitWithAck('join', r), {});
    await joined;
    const first = next(s, 'news');
    await api(server, 'publish', { channel: r, data: { event: 'news', args: [1] } }, API_KEY);
    const [n1, offset] = await first;
    assert.equal(n1, 1);
    assert.equal(typeof offset, 'string');

    // The connection drops; two publications go out while the client is away.
    const disconnected = next(s, 'disconnect');
    s.io.engine.close();
    await disconnected;
    await api(server, 'publish', { channel: r, data: { event: 'news', args: [2] } }, API_KEY);
    await api(server, 'publish', { channel: r, data: { event: 'news', args: [3] } }, API_KEY);
    const got = [];
    s.on('news', (n) => got.push(n));
    await next(s, 'connect');
    assert.equal(s.recovered, true);
    const deadline = Date.now() + 5000;
    while (got.length < 2 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    assert.deepEqual(got, [2, 3]);

    // The room is back: new publications arrive too.
    const later = next(s, 'news');
    await api(server, 'publish', { channel: r, data: { event: 'news', args: [4] } }, API_KEY);
    assert.equal((await later)[0], 4);
  });

  test('a client with an unknown offset is not recovered', async () => {
    const s = await connect(server, { transports: ['websocket'] });
    sockets.push(s);
    s._pid = 'made-up';
    s._lastOffset = 'garbage';
    const disconnected = next(s, 'disconnect');
    s.io.reconnection(true);
    s.io.engine.close();
    await disconnected;
    await next(s, 'connect');
    assert.equal(s.recovered, false);
  });
});
