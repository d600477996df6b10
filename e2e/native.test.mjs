// The native protocol (Centrifugo client protocol v2, JSON over WebSocket) driven by the real
// `centrifuge` SDK from npm and by raw `ws` sockets, against the real `switchboard` binary.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import WebSocket from 'ws';

import {
  BrowserLikeWebSocket,
  connectClient,
  delay,
  eventStrings,
  publicationQueue,
  rawSocket,
  recordEvents,
  startServer,
  subscribe,
  uniqueChannel,
  waitFor,
  withTimeout,
} from './helpers.mjs';

// Every client and raw socket a test opens is closed after it, pass or fail.
const open = new Set();
function track(x) {
  open.add(x);
  return x;
}
afterEach(() => {
  for (const x of open) {
    if (x instanceof WebSocket) x.terminate();
    else x.disconnect();
  }
  open.clear();
});

async function client(server, options) {
  return track(await connectClient(server, options));
}

/** Opens a raw socket, sends a connect command and returns it with the connect reply. */
async function rawConnected(server) {
  const raw = await rawSocket(server);
  track(raw.ws);
  raw.ws.send(JSON.stringify({ id: 1, connect: {} }));
  const reply = await withTimeout(
    new Promise((resolve, reject) => {
      const check = () => {
        try {
          for (const m of raw.messages) {
            for (const line of String(m).split('\n')) {
              if (!line.trim()) continue;
              const obj = JSON.parse(line);
              if (obj.id === 1) resolve(obj);
            }
          }
        } catch (err) {
          reject(new Error(`bad frame from the server: ${err.message}; frames: ${raw.messages}`));
        }
      };
      raw.ws.on('message', check);
      check();
      raw.closed.then((c) => reject(new Error(`closed ${c.code} ${c.reason} before the connect reply`)));
    }),
    5000,
    'no connect reply on the raw socket',
  );
  assert.equal(reply.error, undefined, `connect refused: ${JSON.stringify(reply)}`);
  assert.ok(reply.connect, `unexpected connect reply: ${JSON.stringify(reply)}`);
  return { ...raw, reply };
}

const T = { timeout: 20000 };

describe('development mode (bare run)', () => {
  let server;
  before(async () => {
    server = await startServer();
  }, T);
  after(async () => {
    await server?.stop();
  });

  test('(a) a publication from another client arrives exactly, after `subscribed`', T, async () => {
    const channel = uniqueChannel('chat');
    const receiver = await client(server);
    const sub = receiver.newSubscription(channel);
    const subscribedEvents = recordEvents(sub, ['subscribed']);
    const queue = publicationQueue(sub);
    const subscribed = waitFor(sub, 'subscribed', 5000);
    sub.subscribe();
    const ctx = await subscribed;
    assert.equal(ctx.channel, channel);
    assert.equal(sub.state, 'subscribed');

    const publisher = await client(server);
    const data = {
      text: 'hello',
      n: 42,
      float: 1.5,
      flag: true,
      nothing: null,
      nested: { list: [1, 'two', { three: 3 }] },
      unicode: 'żółw 🐢 "quoted" \\ back\nslash',
    };
    await withTimeout(publisher.publish(channel, data), 5000, 'publish did not resolve');
    const pub = await queue.next(5000);
    assert.equal(pub.channel, channel);
    assert.deepEqual(pub.data, data);

    // Exactly once: the next publication is the marker, not a duplicate.
    await publisher.publish(channel, { marker: true });
    assert.deepEqual((await queue.next(5000)).data, { marker: true });
    assert.equal(queue.pending(), 0);
    assert.equal(subscribedEvents.length, 1, 'exactly one `subscribed` event');
  });

  test('(b) several publications arrive in order', T, async () => {
    const channel = uniqueChannel();
    const receiver = await client(server);
    const sub = await subscribe(receiver, channel);
    const queue = publicationQueue(sub);
    const publisher = await client(server);

    // One after another, each acknowledged before the next.
    for (let i = 0; i < 20; i++) await publisher.publish(channel, { seq: i });
    for (let i = 0; i < 20; i++) assert.deepEqual((await queue.next(5000)).data, { seq: i });

    // A burst: all commands written before any reply (the SDK and server batch frames).
    const burst = [];
    for (let i = 0; i < 200; i++) burst.push(publisher.publish(channel, { burst: i }));
    await withTimeout(Promise.all(burst), 10000, 'burst publishes did not all resolve');
    const got = [];
    for (let i = 0; i < 200; i++) got.push((await queue.next(5000)).data.burst);
    assert.deepEqual(got, [...Array(200).keys()]);
    assert.equal(queue.pending(), 0);
  });

  test('(f) rpc without an RPC handler is answered with error 108 (not available)', T, async () => {
    const c = await client(server);
    const events = recordEvents(c, ['disconnected', 'connecting']);
    await assert.rejects(
      withTimeout(c.rpc('no_such_method', { x: 1 }), 5000, 'rpc got no answer'),
      (err) => {
        assert.equal(err.code, 108, `expected code 108, got ${JSON.stringify(err)}`);
        return true;
      },
    );
    assert.equal(c.state, 'connected');
    assert.deepEqual(eventStrings(events), [], 'unexpected connection events');
  });

  test('(h) malformed JSON closes the connection with 3501', T, async () => {
    // As the very first frame.
    const first = await rawSocket(server);
    track(first.ws);
    first.ws.send('{"id":1,"connect":{}');
    const c1 = await withTimeout(first.closed, 5000, 'no close after malformed first frame');
    assert.equal(c1.code, 3501, `close ${c1.code} ${c1.reason}`);

    // After a successful connect.
    const second = await rawConnected(server);
    second.ws.send('this is not json');
    const c2 = await withTimeout(second.closed, 5000, 'no close after malformed frame');
    assert.equal(c2.code, 3501, `close ${c2.code} ${c2.reason}`);
  });

  test('(h) a binary frame closes the JSON connection with 3501', T, async () => {
    const fresh = await rawSocket(server);
    track(fresh.ws);
    fresh.ws.send(Buffer.from([0x08, 0x01, 0x12, 0x00, 0xff, 0xfe]), { binary: true });
    const c1 = await withTimeout(fresh.closed, 5000, 'no close after a binary first frame');
    assert.equal(c1.code, 3501, `close ${c1.code} ${c1.reason}`);

    const connected = await rawConnected(server);
    connected.ws.send(Buffer.from([0x08, 0x02, 0x12, 0x00, 0xff, 0xfe]), { binary: true });
    const c2 = await withTimeout(connected.closed, 5000, 'no close after a binary frame');
    assert.equal(c2.code, 3501, `close ${c2.code} ${c2.reason}`);
  });
});

describe('namespace permissions (development mode config)', () => {
  let server;
  before(async () => {
    server = await startServer({
      config: `
mode = "development"

[[channel.namespaces]]
name = "closed"
allow_subscribe_for_client = false

[[channel.namespaces]]
name = "open"
`,
    });
  }, T);
  after(async () => {
    await server?.stop();
  });

  test('(c) subscribing where allow_subscribe_for_client = false fails with 103; the connection stays', T, async () => {
    const c = await client(server);
    const events = recordEvents(c, ['disconnected', 'connecting']);

    const err = await subscribe(c, uniqueChannel('closed')).then(
      () => assert.fail('subscribe to a closed namespace succeeded'),
      (e) => e,
    );
    assert.equal(err.code, 103, err.message);
    assert.equal(c.state, 'connected');

    // The connection is still usable: an allowed channel subscribes and receives.
    for (const channel of [uniqueChannel('open'), uniqueChannel()]) {
      const sub = await subscribe(c, channel);
      const queue = publicationQueue(sub);
      await c.publish(channel, { ok: channel });
      assert.deepEqual((await queue.next(5000)).data, { ok: channel });
    }
    assert.equal(c.state, 'connected');
    assert.deepEqual(eventStrings(events), [], 'unexpected connection events');
  });
});

describe('production-like config', () => {
  let server;
  before(async () => {
    server = await startServer({
      config: `
[client]
allow_anonymous = true

[channel]
allow_unknown_namespaces = false

[channel.default]
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true

[[channel.namespaces]]
name = "news"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
`,
    });
  }, T);
  after(async () => {
    await server?.stop();
  });

  test('(d) subscribing to an unknown namespace fails with 102; the connection stays', T, async () => {
    const c = await client(server);
    const events = recordEvents(c, ['disconnected', 'connecting']);

    const err = await subscribe(c, uniqueChannel('nosuchns')).then(
      () => assert.fail('subscribe to an unknown namespace succeeded'),
      (e) => e,
    );
    assert.equal(err.code, 102, err.message);
    assert.equal(c.state, 'connected');

    await subscribe(c, uniqueChannel('news'));
    await subscribe(c, uniqueChannel());
    assert.equal(c.state, 'connected');
    assert.deepEqual(eventStrings(events), [], 'unexpected connection events');
  });
});

describe('heartbeats (ping_interval 2s, pong_timeout 1s)', () => {
  let server;
  before(async () => {
    server = await startServer({
      env: {
        SWITCHBOARD_CLIENT__PING_INTERVAL: '2s',
        SWITCHBOARD_CLIENT__PONG_TIMEOUT: '1s',
      },
    });
  }, T);
  after(async () => {
    await server?.stop();
  });

  test('(e) an idle SDK client answers pings and stays connected past several intervals', T, async () => {
    // Count server pings received and pongs sent on the SDK's own socket.
    const counts = { pingsIn: 0, pongsOut: 0 };
    class CountingWebSocket extends BrowserLikeWebSocket {
      constructor(...args) {
        super(...args);
        this.on('message', (data, isBinary) => {
          if (isBinary) return;
          for (const line of data.toString().split('\n')) if (line.trim() === '{}') counts.pingsIn++;
        });
      }
      send(data, ...rest) {
        if (typeof data === 'string') {
          for (const line of data.split('\n')) if (line.trim() === '{}') counts.pongsOut++;
        }
        return super.send(data, ...rest);
      }
    }
    const channel = uniqueChannel();
    const c = await client(server, { websocket: CountingWebSocket });
    const sub = await subscribe(c, channel);
    const queue = publicationQueue(sub);
    const events = recordEvents(c, ['disconnected', 'connecting', 'error']);
    const subEvents = recordEvents(sub, ['subscribing', 'unsubscribed', 'error']);

    await delay(7000); // idle: 3 ping intervals (a missed pong would close at ~3 s)

    assert.deepEqual(eventStrings(events), [], 'the idle client lost its connection');
    assert.deepEqual(eventStrings(subEvents), [], 'the idle subscription was disturbed');
    assert.equal(c.state, 'connected');
    assert.ok(counts.pingsIn >= 2, `expected >= 2 pings in 7 s, got ${counts.pingsIn}`);
    assert.ok(counts.pongsOut >= 2, `expected the SDK to send >= 2 pongs, got ${counts.pongsOut}`);

    await c.publish(channel, { still: 'alive' });
    assert.deepEqual((await queue.next(5000)).data, { still: 'alive' });
  });

  test('(e) a raw client that never answers pings is closed with 3012 (no pong)', T, async () => {
    const raw = await rawConnected(server);
    assert.equal(raw.reply.connect.ping, 2, `connect reply: ${JSON.stringify(raw.reply)}`);
    assert.equal(raw.reply.connect.pong, true, `connect reply: ${JSON.stringify(raw.reply)}`);
    const started = Date.now();
    const closed = await withTimeout(raw.closed, 8000, 'not closed within 8 s without pongs');
    const elapsed = Date.now() - started;
    assert.equal(closed.code, 3012, `close ${closed.code} ${closed.reason}`);
    assert.ok(
      raw.messages.some((m) => String(m).split('\n').some((l) => l.trim() === '{}')),
      `no ping received before the close; frames: ${JSON.stringify(raw.messages)}`,
    );
    assert.ok(elapsed >= 1500, `closed after only ${elapsed} ms`);
  });
});

describe('graceful shutdown', () => {
  let server;
  before(async () => {
    server = await startServer();
  }, T);
  after(async () => {
    await server?.stop();
  });

  test('(g) SIGTERM disconnects clients with 3001 "shutdown" and reconnect advice', T, async () => {
    const c = await client(server);
    await subscribe(c, uniqueChannel());
    const events = recordEvents(c, ['disconnected', 'connecting']);
    const connecting = waitFor(c, 'connecting', 5000);

    server.terminate();
    const ctx = await connecting;
    assert.equal(ctx.code, 3001, `connecting ${ctx.code} ${ctx.reason}`);
    assert.equal(ctx.reason, 'shutdown');
    assert.equal(c.state, 'connecting');
    assert.equal(events[0].event, 'connecting', 'the first event is `connecting`, not `disconnected`');
    assert.ok(!events.some((e) => e.event === 'disconnected'), 'the client must not give up');

    // The drained server exits by itself, cleanly, within its drain timeout (5 s by default).
    const exit = await withTimeout(server.exited, 10000, 'server still running 10 s after SIGTERM');
    assert.deepEqual(exit, { code: 0, signal: null }, `exit after SIGTERM; output:\n${server.logs()}`);
    c.disconnect();
  });
});
