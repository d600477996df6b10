// Unit tests of the client's connection state machine: fake WebSocket (the test is the server),
// fake timers (node:test's MockTimers), no network.

import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, mock, test } from 'node:test';

import {
  backoff,
  Client,
  ConnectingCode,
  DisconnectedCode,
  endpointsFor,
  ErrorCode,
  SwitchboardError,
  VERSION,
} from '../dist/switchboard.js';
import { FakeNetwork, flush, handshake, setup } from './fake.mjs';

beforeEach(() => mock.timers.enable({ apis: ['setTimeout'] }));
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

const names = (events) => events.map(([e]) => e);

describe('connect', () => {
  test('disconnected -> connecting -> connected, with one connect command', async () => {
    const { client, last, events } = setup({ token: 'tok', data: { hello: 1 } });
    const states = [];
    client.on('state', (s) => states.push(`${s.oldState}->${s.newState}`));
    assert.equal(client.state, 'disconnected');
    client.connect();
    assert.equal(client.state, 'connecting');
    const ws = last();
    assert.equal(ws.url, 'ws://server.test/connection/websocket');
    assert.equal(ws.sent.length, 0, 'nothing is sent before the socket opens');
    const cmd = await handshake(ws, { data: { welcome: true } });
    assert.deepEqual(cmd.connect, { token: 'tok', data: { hello: 1 }, name: 'switchboard-js', version: VERSION });
    assert.equal(cmd.id, 1);
    assert.equal(client.state, 'connected');
    assert.equal(client.id, 'client-1');
    assert.equal(client.transport, 'websocket');
    assert.deepEqual(states, ['disconnected->connecting', 'connecting->connected']);
    assert.deepEqual(names(events), ['connecting', 'connected']);
    assert.deepEqual(events[1][1], { client: 'client-1', transport: 'websocket', data: { welcome: true } });
    client.disconnect();
    assert.equal(client.state, 'disconnected');
    assert.ok(ws.closed);
    assert.deepEqual(events[2], ['disconnected', { code: DisconnectedCode.DisconnectCalled, reason: 'disconnect called' }]);
  });

  test('a reconnect-allowed close code reconnects after a full-jitter backoff delay', async () => {
    mock.method(Math, 'random', () => 0.5);
    const { client, sockets, last, events } = setup();
    client.connect();
    await handshake(last());
    last().serverClose(3001, 'shutdown');
    assert.equal(client.state, 'connecting');
    assert.deepEqual(events.at(-1), ['connecting', { code: 3001, reason: 'shutdown' }]);
    // attempt 0: 0.5 * min(1000, 100 * 2^0) = 50 ms
    mock.timers.tick(49);
    assert.equal(sockets.length, 1);
    mock.timers.tick(1);
    assert.equal(sockets.length, 2);
    last().serverClose(1006);
    // attempt 1: 0.5 * 200 = 100 ms (still connecting: no new event)
    mock.timers.tick(99);
    assert.equal(sockets.length, 2);
    mock.timers.tick(1);
    assert.equal(sockets.length, 3);
    await handshake(last());
    assert.equal(client.state, 'connected');
    // The attempt counter starts over after a connection.
    last().serverClose(1006);
    mock.timers.tick(50);
    assert.equal(sockets.length, 4);
    client.disconnect();
  });

  test('backoff is full jitter, capped', () => {
    mock.method(Math, 'random', () => 0.999999);
    assert.equal(backoff(0, 100, 1000), 99);
    assert.equal(backoff(3, 100, 1000), 799);
    assert.equal(backoff(10, 100, 1000), 999);
    assert.equal(backoff(1000, 100, 1000), 999);
    mock.method(Math, 'random', () => 0);
    assert.equal(backoff(5, 100, 1000), 0);
  });

  test('a no-reconnect close code (3500-3999, 4500-4999) disconnects for good', async () => {
    for (const code of [3500, 3503, 4501]) {
      const { client, sockets, last, events } = setup();
      client.connect();
      await handshake(last());
      last().serverClose(code, 'bye');
      assert.equal(client.state, 'disconnected');
      assert.deepEqual(events.at(-1), ['disconnected', { code, reason: 'bye' }]);
      mock.timers.tick(60000);
      assert.equal(sockets.length, 1, `no reconnect after ${code}`);
    }
  });

  test('a connect error reply: temporary reconnects, permanent disconnects with its code', async () => {
    const a = setup();
    a.client.connect();
    a.last().open();
    await flush();
    a.last().answer('connect', { error: { code: 100, message: 'internal server error', temporary: true } });
    assert.equal(a.client.state, 'connecting');
    mock.timers.tick(1000);
    assert.equal(a.sockets.length, 2);
    a.client.disconnect();

    const b = setup();
    b.client.connect();
    b.last().open();
    await flush();
    b.last().answer('connect', { error: { code: 101, message: 'unauthorized' } });
    assert.equal(b.client.state, 'disconnected');
    assert.deepEqual(b.events.at(-1), ['disconnected', { code: 101, reason: 'unauthorized' }]);
  });

  test('the server ping watchdog reconnects when pings stop; pings are answered with pongs', async () => {
    const { client, sockets, last, events } = setup({ maxServerPingDelay: 2000 });
    client.connect();
    await handshake(last(), { ping: 5, pong: true });
    const ws = last();
    mock.timers.tick(6000);
    ws.receive({}); // ping
    await flush();
    assert.equal(ws.sent.at(-1), '{}', 'pong');
    mock.timers.tick(6999);
    assert.equal(client.state, 'connected');
    mock.timers.tick(1);
    assert.equal(client.state, 'connecting');
    assert.deepEqual(events.at(-1), ['connecting', { code: ConnectingCode.NoPing, reason: 'no ping' }]);
    assert.ok(ws.closed);
    mock.timers.tick(1000);
    assert.equal(sockets.length, 2);
    client.disconnect();
  });

  test('no pong when the server did not ask for one', async () => {
    const { client, last } = setup();
    client.connect();
    await handshake(last(), { ping: 5, pong: false });
    last().receive({});
    await flush();
    assert.equal(last().sent.length, 1);
    client.disconnect();
  });

  test('malformed JSON from the server disconnects with BadProtocol', async () => {
    const { client, last, events } = setup();
    client.connect();
    await handshake(last());
    last().onmessage({ data: '{"push":' });
    assert.equal(client.state, 'disconnected');
    assert.equal(events.at(-1)[1].code, DisconnectedCode.BadProtocol);
  });

  test('connect() and disconnect() are idempotent; connect again after disconnect', async () => {
    const { client, sockets, last } = setup();
    client.connect();
    client.connect();
    assert.equal(sockets.length, 1);
    await handshake(last());
    client.disconnect();
    client.disconnect();
    client.connect();
    assert.equal(sockets.length, 2);
    await handshake(last());
    assert.equal(client.state, 'connected');
    client.disconnect();
  });

  test('a listener that throws does not break the state machine', async () => {
    mock.timers.reset(); // real timers: the error is rethrown from one
    const thrown = [];
    const orig = process.listeners('uncaughtException');
    process.removeAllListeners('uncaughtException');
    process.on('uncaughtException', (e) => thrown.push(e.message));
    try {
      const { client, last } = setup();
      client.on('connected', () => {
        throw new Error('app bug');
      });
      const after = [];
      client.on('connected', () => after.push('second listener ran'));
      client.connect();
      await handshake(last());
      assert.equal(client.state, 'connected');
      assert.deepEqual(after, ['second listener ran']);
      await new Promise((resolve) => setTimeout(resolve, 20));
      client.disconnect();
    } finally {
      process.removeAllListeners('uncaughtException');
      for (const l of orig) process.on('uncaughtException', l);
    }
    assert.deepEqual(thrown, ['app bug']);
  });
});

describe('calls', () => {
  test('publish, rpc, history, presence, presence_stats map the wire to promises', async () => {
    const { client, last } = setup();
    client.connect();
    await handshake(last());
    const ws = last();
    const pub = client.publish('chat', { text: 'hi' });
    const rpc = client.rpc('sum', [1, 2]);
    const hist = client.history('chat', { limit: 2, since: { offset: 1, epoch: 'e' } });
    const pres = client.presence('chat');
    const stats = client.presenceStats('chat');
    await flush();
    assert.equal(ws.sent.length, 2, 'the five commands went out in one frame');
    assert.deepEqual(ws.pending('publish').publish, { channel: 'chat', data: { text: 'hi' } });
    assert.deepEqual(ws.pending('history').history, { channel: 'chat', limit: 2, since: { offset: 1, epoch: 'e' } });
    ws.answer('publish');
    ws.answer('rpc', { data: 3 });
    ws.answer('history', { publications: [{ data: 'a', offset: 2, info: { user: 'u', client: 'c', conn_info: 1 } }], offset: 2, epoch: 'e' });
    ws.answer('presence', { presence: { c: { user: 'u', client: 'c', chan_info: { x: 1 } } } });
    ws.answer('presence_stats', { num_clients: 2, num_users: 1 });
    assert.equal(await pub, undefined);
    assert.deepEqual(await rpc, { data: 3 });
    assert.deepEqual(await hist, {
      publications: [{ channel: 'chat', data: 'a', offset: 2, info: { user: 'u', client: 'c', connInfo: 1, chanInfo: undefined }, tags: undefined }],
      offset: 2,
      epoch: 'e',
    });
    assert.deepEqual(await pres, { c: { user: 'u', client: 'c', connInfo: undefined, chanInfo: { x: 1 } } });
    assert.deepEqual(await stats, { numClients: 2, numUsers: 1 });
    client.disconnect();
  });

  test('an error reply rejects with a SwitchboardError carrying the server code', async () => {
    const { client, last } = setup();
    client.connect();
    await handshake(last());
    const p = client.rpc('nope');
    await flush();
    last().answer('rpc', { error: { code: 108, message: 'not available' } });
    await assert.rejects(p, (e) => e instanceof SwitchboardError && e.code === ErrorCode.NotAvailable && e.message === 'not available' && !e.temporary);
    const q = client.publish('x', 1);
    await flush();
    last().answer('publish', { error: { code: 111, message: 'too many requests', temporary: true } });
    await assert.rejects(q, (e) => e.code === 111 && e.temporary === true);
    assert.equal(client.state, 'connected');
    client.disconnect();
  });

  test('a call times out with code 1', async () => {
    const { client, last } = setup({ timeout: 3000 });
    client.connect();
    await handshake(last());
    const p = client.publish('x', 1);
    await flush();
    mock.timers.tick(3000);
    await assert.rejects(p, (e) => e.code === ErrorCode.Timeout);
    client.disconnect();
  });

  test('a call made while connecting waits for the connection; while disconnected it fails at once', async () => {
    const { client, last } = setup();
    await assert.rejects(client.publish('x', 1), (e) => e.code === ErrorCode.ClientDisconnected);
    client.connect();
    const p = client.publish('x', 1);
    await handshake(last());
    await flush();
    last().answer('publish');
    await p;
    client.disconnect();
  });

  test('calls in flight fail with TransportClosed when the connection drops, ClientDisconnected on disconnect()', async () => {
    const { client, last } = setup();
    client.connect();
    await handshake(last());
    const p = client.publish('x', 1);
    await flush();
    last().serverClose(1006);
    await assert.rejects(p, (e) => e.code === ErrorCode.TransportClosed && e.temporary);
    const waiting = client.publish('y', 2);
    client.disconnect();
    await assert.rejects(waiting, (e) => e.code === ErrorCode.ClientDisconnected);
  });

  test('send() is a command without id', async () => {
    const { client, last } = setup();
    client.connect();
    await handshake(last());
    await client.send({ a: 1 });
    await flush();
    assert.deepEqual(last().commands().at(-1), { send: { data: { a: 1 } } });
    client.disconnect();
  });
});

describe('tokens', () => {
  test('getToken is called when there is no token; the token is refreshed before it expires', async () => {
    let n = 0;
    const getToken = mock.fn(async () => `token-${++n}`);
    const { client, last } = setup({ getToken });
    client.connect();
    await flush();
    assert.equal(getToken.mock.callCount(), 1);
    const cmd = await handshake(last(), { expires: true, ttl: 10 });
    assert.equal(cmd.connect.token, 'token-1');
    mock.timers.tick(8999);
    await flush();
    assert.equal(getToken.mock.callCount(), 1);
    mock.timers.tick(1);
    await flush();
    assert.equal(getToken.mock.callCount(), 2);
    assert.deepEqual(last().pending('refresh').refresh, { token: 'token-2' });
    last().answer('refresh', { client: 'client-1', expires: true, ttl: 20 });
    await flush();
    mock.timers.tick(18000);
    await flush();
    assert.equal(getToken.mock.callCount(), 3);
    // A reconnect uses the newest token.
    last().answer('refresh', { expires: false });
    last().serverClose(3005, 'connection expired');
    mock.timers.tick(1000);
    last().open();
    await flush();
    assert.equal(last().pending('connect').connect.token, 'token-3');
    client.disconnect();
  });

  test('error 109 on connect fetches a new token and reconnects', async () => {
    let n = 0;
    const { client, sockets, last } = setup({ token: 'old', getToken: async () => `new-${++n}` });
    client.connect();
    last().open();
    await flush();
    last().answer('connect', { error: { code: 109, message: 'token expired' } });
    assert.equal(client.state, 'connecting');
    mock.timers.tick(0);
    await flush();
    assert.equal(sockets.length, 2);
    const cmd = await handshake(last());
    assert.equal(cmd.connect.token, 'new-1');
    assert.equal(client.state, 'connected');
    client.disconnect();
  });

  test("getToken resolving '' disconnects as unauthorized; throwing retries", async () => {
    const a = setup({ getToken: async () => '' });
    a.client.connect();
    await flush();
    assert.equal(a.client.state, 'disconnected');
    assert.equal(a.events.at(-1)[1].code, DisconnectedCode.Unauthorized);
    assert.equal(a.sockets.length, 0);

    let calls = 0;
    const b = setup({
      getToken: async () => {
        if (++calls === 1) throw new Error('backend down');
        return 'tok';
      },
    });
    b.client.connect();
    await flush();
    assert.equal(b.client.state, 'connecting');
    assert.equal(b.events.find(([e]) => e === 'error')[1].type, 'connectToken');
    mock.timers.tick(1000);
    await flush();
    assert.equal(b.sockets.length, 1);
    b.client.disconnect();
  });
});

describe('transports', () => {
  test('an http(s) address gives websocket, http_stream, sse in order; a ws(s) URL only websocket', () => {
    assert.deepEqual(endpointsFor('https://rt.example.com/prefix/'), [
      { transport: 'websocket', endpoint: 'wss://rt.example.com/prefix/connection/websocket' },
      { transport: 'http_stream', endpoint: 'https://rt.example.com/prefix/connection/http_stream' },
      { transport: 'sse', endpoint: 'https://rt.example.com/prefix/connection/sse' },
    ]);
    assert.deepEqual(endpointsFor('http://h:8000', ['sse', 'websocket']), [
      { transport: 'sse', endpoint: 'http://h:8000/connection/sse' },
      { transport: 'websocket', endpoint: 'ws://h:8000/connection/websocket' },
    ]);
    assert.deepEqual(endpointsFor('wss://h/connection/websocket'), [{ transport: 'websocket', endpoint: 'wss://h/connection/websocket' }]);
    assert.throws(() => new Client([], {}), (e) => e.code === ErrorCode.BadConfiguration);
  });

  test('falls back to the next transport when one fails before connecting; reconnects start with the one that worked', async () => {
    const { fakeFetch } = await import('./fake.mjs');
    const f = fakeFetch();
    const { client, sockets, events } = setup({ fetch: f.fetch }, 'http://server.test:8000');
    client.connect();
    assert.equal(sockets.length, 1);
    assert.equal(sockets[0].url, 'ws://server.test:8000/connection/websocket');
    sockets[0].serverClose(1006); // blocked
    await flush();
    assert.equal(f.streams.length, 1, 'http_stream tried at once');
    const stream = f.streams[0];
    assert.equal(stream.url, 'http://server.test:8000/connection/http_stream');
    const connect = JSON.parse(stream.first);
    stream.push({ id: connect.id, connect: { client: 'c9', session: 's1', node: 'n1', ping: 25, pong: true } });
    await flush();
    assert.equal(client.state, 'connected');
    assert.equal(client.transport, 'http_stream');
    assert.ok(events.some(([e, ctx]) => e === 'error' && ctx.type === 'transport'));
    // Commands go to /emulation with the session.
    const p = client.publish('ch', 1);
    await flush();
    await flush();
    assert.equal(f.posts.length, 1);
    assert.equal(f.posts[0].session, 's1');
    assert.equal(f.posts[0].node, 'n1');
    const cmd = JSON.parse(f.posts[0].data);
    stream.push({ id: cmd.id, publish: {} });
    await p;
    // A ping is answered over /emulation too.
    stream.push({});
    await flush();
    await flush();
    assert.equal(f.posts.at(-1).data, '{}');
    // The server ends the session with a disconnect push: reconnect, over http_stream again.
    stream.push({ push: { disconnect: { code: 3001, reason: 'shutdown', reconnect: true } } });
    await flush();
    assert.equal(client.state, 'connecting');
    assert.ok(stream.aborted);
    mock.timers.tick(1000);
    await flush();
    assert.equal(sockets.length, 1, 'no new WebSocket: the working transport is kept');
    assert.equal(f.streams.length, 2);
    client.disconnect();
  });

  test('an endpoint list spans nodes: a reconnect starts with the one that worked, then tries the others', async () => {
    const { client, sockets, last } = setup({}, [
      { transport: 'websocket', endpoint: 'ws://node-1/connection/websocket' },
      { transport: 'websocket', endpoint: 'ws://node-2/connection/websocket' },
      { transport: 'websocket', endpoint: 'ws://node-3/connection/websocket' },
    ]);
    client.connect();
    sockets[0].serverClose(1006);
    assert.equal(last().url, 'ws://node-2/connection/websocket');
    await handshake(last());
    last().serverClose(3001, 'shutdown');
    mock.timers.tick(1000);
    assert.equal(last().url, 'ws://node-2/connection/websocket', 'the node that worked first');
    last().serverClose(1006);
    assert.equal(last().url, 'ws://node-3/connection/websocket');
    last().serverClose(1006);
    assert.equal(last().url, 'ws://node-1/connection/websocket');
    last().serverClose(1006);
    assert.equal(sockets.length, 5, 'a whole round failed: wait');
    mock.timers.tick(1000);
    assert.equal(last().url, 'ws://node-2/connection/websocket');
    await handshake(last());
    assert.equal(client.state, 'connected');
    client.disconnect();
  });

  test('the transports option sets the order; after every transport failed, wait and start over', async () => {
    mock.method(Math, 'random', () => 0.5);
    const { fakeFetch } = await import('./fake.mjs');
    const f = fakeFetch();
    const { client, sockets } = setup({ fetch: f.fetch, transports: ['http_stream', 'websocket'] }, 'http://s.test');
    client.connect();
    await flush();
    assert.equal(f.streams.length, 1);
    assert.equal(sockets.length, 0);
    f.streams[0].end();
    await flush();
    await flush();
    assert.equal(sockets.length, 1);
    sockets[0].serverClose(1006);
    mock.timers.tick(49);
    await flush();
    assert.equal(f.streams.length, 1);
    mock.timers.tick(1);
    await flush();
    assert.equal(f.streams.length, 2, 'started over with the first transport');
    client.disconnect();
  });

  test('a transport that opens but never answers connect times out and falls back', async () => {
    const { fakeFetch } = await import('./fake.mjs');
    const f = fakeFetch();
    const { client, sockets } = setup({ fetch: f.fetch, timeout: 2000 }, 'http://s.test');
    client.connect();
    sockets[0].open();
    mock.timers.tick(2000);
    await flush();
    assert.ok(sockets[0].closed);
    assert.equal(f.streams.length, 1);
    client.disconnect();
  });

  test('sse without an EventSource is skipped', async () => {
    const { client, sockets } = setup({ transports: ['sse', 'websocket'], eventsource: undefined, fetch: async () => new Response('') }, 'http://s.test');
    client.connect();
    await flush();
    assert.equal(sockets.length, 1);
    client.disconnect();
  });
});

describe('offline detection', () => {
  test('offline drops the connection and waits; online reconnects at once', async () => {
    const net = new FakeNetwork();
    const { client, sockets, last, events } = setup({ networkEvents: net });
    client.connect();
    await handshake(last());
    net.fire('offline');
    assert.equal(client.state, 'connecting');
    assert.deepEqual(events.at(-1), ['connecting', { code: ConnectingCode.Offline, reason: 'offline' }]);
    assert.ok(sockets[0].closed);
    mock.timers.tick(60000);
    await flush();
    assert.equal(sockets.length, 1, 'no attempt while offline');
    net.fire('online');
    assert.equal(sockets.length, 2);
    await handshake(last());
    assert.equal(client.state, 'connected');
    client.disconnect();
    net.fire('offline');
    assert.equal(client.state, 'disconnected', 'listeners are removed on disconnect');
  });
});

describe('server-side subscriptions', () => {
  test('subs in the connect reply and subscribe/unsubscribe/pub/join/leave/message pushes reach the client events', async () => {
    const { client, last, events } = setup();
    client.connect();
    await handshake(last(), {
      subs: { news: { recoverable: true, epoch: 'e1', offset: 4, publications: [{ data: 'p4', offset: 4 }] } },
    });
    const ws = last();
    ws.receive(
      { push: { channel: 'news', pub: { data: 'p5', offset: 5 } } },
      { push: { channel: 'news', join: { info: { user: 'u1', client: 'c1' } } } },
      { push: { channel: 'news', leave: { info: { user: 'u1', client: 'c1' } } } },
      { push: { message: { data: 'direct' } } },
      { push: { channel: 'extra', subscribe: {} } },
      { push: { channel: 'extra', unsubscribe: { code: 2000, reason: 'server unsubscribe' } } },
    );
    const got = events.filter(([e]) => e !== 'connecting' && e !== 'connected');
    assert.deepEqual(got.map(([e, c]) => `${e} ${c.channel ?? ''} ${JSON.stringify(c.data ?? c.info?.user ?? c.code ?? '')}`), [
      'subscribed news ""',
      'publication news "p4"',
      'publication news "p5"',
      'join news "u1"',
      'leave news "u1"',
      'message  "direct"',
      'subscribed extra ""',
      'unsubscribed extra 2000',
    ]);
    assert.equal(got[0][1].recoverable, true);
    // On reconnect the client asks to recover the server-side subscription from its position.
    ws.serverClose(1006);
    mock.timers.tick(1000);
    last().open();
    await flush();
    assert.deepEqual(last().pending('connect').connect.subs, { news: { recover: true, offset: 5, epoch: 'e1' } });
    client.disconnect();
  });
});
