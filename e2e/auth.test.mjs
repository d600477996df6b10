// Authentication and the server API, driven by the real `centrifuge` SDK against the real
// `switchboard` binary with a production-like configuration: anonymous clients refused, JWT
// connection and subscription tokens (HS256, signed here by hand with node:crypto the way a
// backend signs them), and the HTTP server API behind a key.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, afterEach, before, describe, test } from 'node:test';
import { promisify } from 'node:util';

import WebSocket from 'ws';

import {
  BIN,
  api,
  apiCall,
  connectClient,
  delay,
  eventStrings,
  newClient,
  publicationQueue,
  rawSocket,
  recordEvents,
  signJwt,
  startServer,
  subscribe,
  uniqueChannel,
  waitFor,
  withTimeout,
} from './helpers.mjs';

const SECRET = 'e2e-hmac-secret-0123456789abcdef';
const API_KEY = 'e2e-api-key';
const EXPIRED_CLOSE_DELAY_S = 2;

const CONFIG = `
[log]
level = "info"

[client]
allow_anonymous = false
expired_close_delay = "${EXPIRED_CLOSE_DELAY_S}s"

[client.token]
hmac_secret_key = "${SECRET}"

[api]
key = "${API_KEY}"

[channel.default]
allow_subscribe_for_client = true

[[channel.namespaces]]
name = "room"
allow_subscribe_for_client = true
presence = true
allow_presence_for_subscriber = true

[[channel.namespaces]]
name = "ul"
allow_user_limited_channels = true
`;

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

const T = { timeout: 30000 };

/** A connection token for `user` signed with the server's secret. */
function token(user, ttlSeconds = 3600, extra = {}) {
  return signJwt({ sub: user, ...extra }, SECRET, ttlSeconds);
}

/** A subscription token for `user` on `channel`. */
function subToken(user, channel, ttlSeconds = 3600) {
  return signJwt({ sub: user, channel }, SECRET, ttlSeconds);
}

/** Connection state events recorded as strings, for assertion messages. */
function stateLog(client) {
  return recordEvents(client, ['connecting', 'connected', 'disconnected', 'error']);
}

function describeLog(log) {
  return JSON.stringify(eventStrings(log));
}

describe('auth: tokens and the server API (production-like config)', () => {
  let server;
  before(async () => {
    server = await startServer({ config: CONFIG });
  }, T);
  after(async () => {
    await server?.stop();
  });

  test('the SDK connects with a `token`; the token `sub` is the user in presence', T, async () => {
    const client = track(newClient(server, { token: token('42') }));
    const connected = waitFor(client, 'connected', 5000);
    client.connect();
    const ctx = await connected;
    assert.ok(ctx.client, 'connected context has a client id');

    const channel = uniqueChannel('room');
    await subscribe(client, channel);
    const result = await api(server, 'presence', { channel }, API_KEY);
    const entries = Object.values(result.presence);
    assert.equal(entries.length, 1, JSON.stringify(result));
    assert.equal(entries[0].user, '42');
    assert.equal(entries[0].client, ctx.client);
  });

  test('a token from `switchboard gentoken` is accepted', T, async () => {
    const env = { ...process.env, SWITCHBOARD_CLIENT__TOKEN__HMAC_SECRET_KEY: SECRET };
    const { stdout } = await promisify(execFile)(BIN, ['gentoken', '--user', '77', '--ttl', '60'], {
      env,
      cwd: server.dir,
      timeout: 10000,
    });
    const generated = stdout.trim().split('\n').pop().trim();
    assert.match(generated, /^[\w-]+\.[\w-]+\.[\w-]+$/, `gentoken printed: ${stdout}`);
    const client = track(await connectClient(server, { token: generated }));
    assert.equal(client.state, 'connected');
  });

  test('the SDK connects through a `getToken` callback, called once', T, async () => {
    let calls = 0;
    const client = track(
      await connectClient(server, {
        getToken: async () => {
          calls++;
          return token('42');
        },
      }),
    );
    assert.equal(client.state, 'connected');
    assert.equal(calls, 1, 'getToken called once for the first connect');
  });

  test('a 3 s token is refreshed through getToken; the client stays connected past expiry + expired_close_delay', T, async () => {
    let calls = 0;
    const client = track(
      newClient(server, {
        getToken: async () => {
          calls++;
          return token('42', 3);
        },
      }),
    );
    const connected = waitFor(client, 'connected', 5000);
    client.connect();
    await connected;
    const log = stateLog(client);
    const channel = uniqueChannel();
    const sub = client.newSubscription(channel);
    const queue = publicationQueue(sub);
    sub.subscribe();
    await waitFor(sub, 'subscribed', 5000);

    // Without a refresh the server would close 3005 at expiry + 2 s = ~5 s after connect.
    await delay((3 + EXPIRED_CLOSE_DELAY_S) * 1000 + 2500);
    assert.equal(client.state, 'connected', describeLog(log));
    assert.deepEqual(eventStrings(log), [], 'no disconnect, reconnect or error while refreshing');
    assert.ok(calls >= 2, `getToken called ${calls} times, expected at least 2`);

    // The connection is alive, not just reported so.
    await api(server, 'publish', { channel, data: { after: 'refresh' } }, API_KEY);
    assert.deepEqual((await queue.next(5000)).data, { after: 'refresh' });
  });

  test('without getToken a 2 s token ends the connection', T, async () => {
    const client = track(newClient(server, { token: token('42', 2) }));
    const log = stateLog(client);
    const connected = waitFor(client, 'connected', 5000);
    client.connect();
    await connected;
    const startedAt = Date.now();
    // The SDK schedules its refresh at the reply's `ttl`; with no getToken it reports a
    // configuration error and gives up as `unauthorized` (disconnected code 1) without
    // reconnecting. The server would close 3005 two seconds later; either way the client must
    // end up disconnected, and not before the token expired.
    const disconnected = await waitFor(client, 'disconnected', (2 + EXPIRED_CLOSE_DELAY_S) * 1000 + 4000);
    const elapsed = Date.now() - startedAt;
    // The reply's ttl is whole seconds (1 or 2 here), so the SDK gives up no sooner than ~1 s.
    assert.ok(elapsed >= 500, `disconnected after ${elapsed} ms, before the token expired`);
    assert.equal(client.state, 'disconnected');
    assert.equal(disconnected.code, 1, `expected the SDK's unauthorized (1); events ${describeLog(log)}`);
    assert.equal(disconnected.reason, 'unauthorized');
    const errors = log.filter((e) => e.event === 'error').map((e) => e.ctx.type);
    assert.ok(errors.includes('configuration'), `SDK errors: ${JSON.stringify(errors)}`);
  });

  test('a connection that never refreshes its 2 s token is closed by the server with 3005', T, async () => {
    const raw = await rawSocket(server);
    track(raw.ws);
    const startedAt = Date.now();
    raw.ws.send(JSON.stringify({ id: 1, connect: { token: token('42', 2) } }));
    const closed = await withTimeout(raw.closed, (2 + EXPIRED_CLOSE_DELAY_S) * 1000 + 5000, 'no close');
    const elapsed = Date.now() - startedAt;
    const replies = raw.messages.flatMap((m) => String(m).split('\n').filter((l) => l.trim()));
    const reply = JSON.parse(replies[0]);
    assert.equal(reply.connect?.expires, true, `connect reply: ${replies[0]}`);
    assert.ok(reply.connect.ttl > 0 && reply.connect.ttl <= 2, `connect reply ttl: ${replies[0]}`);
    assert.equal(closed.code, 3005, `closed ${closed.code} ${closed.reason}`);
    assert.ok(elapsed >= 2500, `closed after ${elapsed} ms, before expiry + grace`);
  });

  test('an expired token at connect: error 109, the SDK calls getToken and connects', T, async () => {
    let calls = 0;
    const client = track(
      newClient(server, {
        token: signJwt({ sub: '42', exp: Math.floor(Date.now() / 1000) - 10 }, SECRET),
        getToken: async () => {
          calls++;
          return token('42');
        },
      }),
    );
    const log = stateLog(client);
    const connected = waitFor(client, 'connected', 8000);
    client.connect();
    await connected;
    assert.equal(calls, 1, `getToken calls; events ${describeLog(log)}`);
    const connectErrors = log.filter((e) => e.event === 'error' && e.ctx.type === 'connect');
    assert.equal(connectErrors[0]?.ctx.error.code, 109, describeLog(log));
  });

  for (const [name, bad] of [
    ['signed with another secret', () => signJwt({ sub: '42' }, 'not-the-secret')],
    [
      'alg none',
      () => {
        const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
        return `${b64({ typ: 'JWT', alg: 'none' })}.${b64({ sub: '42', exp: Math.floor(Date.now() / 1000) + 60 })}.`;
      },
    ],
    ['malformed', () => 'this.is-not.a-jwt'],
  ]) {
    test(`an invalid token (${name}) ends the SDK disconnected with 3500`, T, async () => {
      const client = track(newClient(server, { token: bad() }));
      const log = stateLog(client);
      const disconnected = waitFor(client, 'disconnected', 8000);
      client.connect();
      const ctx = await disconnected;
      assert.equal(ctx.code, 3500, describeLog(log));
      assert.equal(client.state, 'disconnected');
      // No reconnect attempts after a 3500 close.
      await delay(500);
      assert.equal(client.state, 'disconnected', describeLog(log));
    });
  }

  test('no token at all is refused (anonymous off): the SDK does not stay connected', T, async () => {
    const client = track(newClient(server));
    const log = stateLog(client);
    const disconnected = waitFor(client, 'disconnected', 8000);
    client.connect();
    const ctx = await disconnected;
    // docs/CONFIG.md: error 101 to connect and close 3507; the SDK treats both as final.
    assert.ok([101, 3507].includes(ctx.code), describeLog(log));
    assert.equal(client.state, 'disconnected');
  });

  test('a private channel: subscription getToken is called and the subscription works', T, async () => {
    const channel = `$${uniqueChannel()}`;
    const client = track(await connectClient(server, { token: token('42') }));
    const seen = [];
    const sub = await subscribe(client, channel, {
      getToken: async (ctx) => {
        seen.push(ctx.channel);
        return subToken('42', ctx.channel);
      },
    });
    assert.deepEqual(seen, [channel]);
    const queue = publicationQueue(sub);
    await api(server, 'publish', { channel, data: { secret: 1 } }, API_KEY);
    assert.deepEqual((await queue.next(5000)).data, { secret: 1 });
  });

  test('a private channel without a subscription token: error 103', T, async () => {
    const channel = `$${uniqueChannel()}`;
    const client = track(await connectClient(server, { token: token('42') }));
    await assert.rejects(subscribe(client, channel), (err) => {
      assert.equal(err.code, 103, err.message);
      return true;
    });
    assert.equal(client.state, 'connected');
  });

  test('a user-limited channel admits only the listed users', T, async () => {
    const channel = `${uniqueChannel('ul')}#42,43`;
    const owner = track(await connectClient(server, { token: token('42') }));
    await subscribe(owner, channel);
    const stranger = track(await connectClient(server, { token: token('44') }));
    await assert.rejects(subscribe(stranger, channel), (err) => {
      assert.equal(err.code, 103, err.message);
      return true;
    });
  });

  test('server API: publish reaches the SDK subscriber; a wrong key is refused', T, async () => {
    const channel = uniqueChannel();
    const client = track(await connectClient(server, { token: token('42') }));
    const sub = await subscribe(client, channel);
    const queue = publicationQueue(sub);

    const refused = await apiCall(server, 'publish', { channel, data: { no: 1 } }, 'wrong-key');
    assert.notEqual(refused.status, 200, JSON.stringify(refused));
    const missing = await apiCall(server, 'publish', { channel, data: { no: 2 } });
    assert.notEqual(missing.status, 200, JSON.stringify(missing));

    await api(server, 'publish', { channel, data: { yes: 1 } }, API_KEY);
    assert.deepEqual((await queue.next(5000)).data, { yes: 1 });
    assert.equal(queue.pending(), 0, 'refused publishes were not delivered');
  });

  test('server API: disconnect with code 3011 makes the SDK reconnect by itself', T, async () => {
    const channel = uniqueChannel();
    const client = track(await connectClient(server, { token: token('disc-1') }));
    const sub = await subscribe(client, channel);
    const queue = publicationQueue(sub);
    const log = stateLog(client);

    const connecting = waitFor(client, 'connecting', 5000);
    const reconnected = waitFor(client, 'connected', 8000);
    await api(
      server,
      'disconnect',
      { user: 'disc-1', disconnect: { code: 3011, reason: 'force reconnect' } },
      API_KEY,
    );
    const ctx = await connecting;
    assert.equal(ctx.code, 3011, describeLog(log));
    assert.equal(ctx.reason, 'force reconnect');
    await reconnected;
    await waitFor(sub, 'subscribed', 5000);
    assert.deepEqual(eventStrings(log).filter((e) => !e.startsWith('error')), [
      'connecting 3011 force reconnect',
      'connected',
    ]);

    await api(server, 'publish', { channel, data: { back: true } }, API_KEY);
    assert.deepEqual((await queue.next(5000)).data, { back: true });
  });
});
