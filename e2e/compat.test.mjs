// Protocol behaviour the official SDKs (and their own test suites) rely on, where Switchboard once
// differed from Centrifugo: RPC without a handler, recovery from an offset with an empty epoch,
// invalid subscription tokens, refused subscribes and join/leave, and the user personal channel.
// Driven by the real `centrifuge` SDK (and a raw socket where the SDK cannot send the command).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  api,
  connectClient,
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

const SECRET = 'e2e-compat-secret-0123456789abcdef';
const API_KEY = 'e2e-compat-key';

const CONFIG = `
mode = "development"
[api]
key = "${API_KEY}"
[client]
allow_anonymous = true
[client.token]
hmac_secret_key = "${SECRET}"
[client.subscribe_to_user_personal_channel]
enabled = true
personal_channel_namespace = "personal"
[[channel.namespaces]]
name = "rec"
history_size = 100
history_ttl = "5m"
force_recovery = true
presence = true
join_leave = true
force_push_join_leave = true
[[channel.namespaces]]
name = "personal"
[[channel.namespaces]]
name = "private"
allow_subscribe_for_client = false
allow_subscribe_for_anonymous = false
`;

describe('compatibility with Centrifugo behaviour', () => {
  let server;

  before(async () => {
    server = await startServer({ config: CONFIG });
  });

  after(async () => {
    await server?.stop();
  });

  test('rpc without an RPC handler answers 108 "not available"', async () => {
    const client = await connectClient(server);
    try {
      await assert.rejects(client.rpc('anything', { x: 1 }), (err) => {
        assert.equal(err.code, 108, JSON.stringify(err));
        return true;
      });
    } finally {
      client.disconnect();
    }
  });

  test('getState with an empty epoch recovers from the offset in the current epoch', async () => {
    const channel = uniqueChannel('rec');
    for (let n = 1; n <= 3; n++) await api(server, 'publish', { channel, data: { n } }, API_KEY);
    const client = await connectClient(server);
    try {
      const sub = client.newSubscription(channel, {
        getState: async () => ({ offset: 1, epoch: '' }),
      });
      const pubs = publicationQueue(sub);
      const subscribed = waitFor(sub, 'subscribed', 5000);
      const errors = recordEvents(sub, ['error']);
      sub.subscribe();
      const ctx = await subscribed;
      assert.equal(ctx.recovered, true, JSON.stringify(ctx));
      assert.deepEqual((await pubs.next()).data, { n: 2 });
      assert.deepEqual((await pubs.next()).data, { n: 3 });
      assert.equal(errors.length, 0, JSON.stringify(errors));
    } finally {
      client.disconnect();
    }
  });

  test('an empty epoch on an empty channel recovers nothing, with recovered true', async () => {
    const channel = uniqueChannel('rec');
    const { ws, messages, closed } = await rawSocket(server);
    try {
      ws.send('{"id":1,"connect":{}}');
      ws.send(`{"id":2,"subscribe":{"channel":"${channel}","recover":true,"offset":0,"epoch":"","flag":2}}`);
      const reply = await withTimeout(
        (async () => {
          for (;;) {
            const line = messages.flatMap((m) => m.split('\n')).find((l) => l.includes('"id":2'));
            if (line) return JSON.parse(line);
            await new Promise((r) => setTimeout(r, 10));
          }
        })(),
        5000,
        'no subscribe reply',
      );
      assert.equal(reply.error, undefined, JSON.stringify(reply));
      assert.equal(reply.subscribe.recovered, true, JSON.stringify(reply));
      assert.ok(!reply.subscribe.publications?.length, JSON.stringify(reply));
    } finally {
      ws.close();
      await closed;
    }
  });

  test('an unverifiable subscription token gets 103 and the connection lives', async () => {
    const client = await connectClient(server, { token: signJwt({ sub: 'ann' }, SECRET) });
    const disconnects = recordEvents(client, ['disconnected', 'connecting']);
    try {
      const bad = signJwt({ sub: 'ann', channel: 'private:x' }, 'not-the-secret');
      await assert.rejects(subscribe(client, 'private:x', { token: bad }), (err) => {
        assert.equal(err.code, 103, err.message);
        return true;
      });
      await assert.rejects(
        subscribe(client, 'private:y', { token: 'not.a.jwt' }),
        (err) => err.code === 103,
      );
      // Still the same live connection: an RPC round trip answers, no reconnect happened.
      await assert.rejects(client.rpc('m', {}), (err) => err.code === 108);
      assert.equal(client.state, 'connected');
      assert.deepEqual(disconnects, []);
    } finally {
      client.disconnect();
    }
  });

  test('a valid subscription token for another channel closes the connection with 3500', async () => {
    const client = await connectClient(server, {
      token: signJwt({ sub: 'bea' }, SECRET),
      maxReconnectDelay: 60000,
      minReconnectDelay: 60000,
    });
    try {
      const other = signJwt({ sub: 'bea', channel: 'private:other' }, SECRET);
      const sub = client.newSubscription('private:mine', { token: other });
      const gone = waitFor(client, 'disconnected', 5000).catch(() => null);
      const connecting = waitFor(client, 'connecting', 5000).catch(() => null);
      sub.subscribe();
      const ctx = await Promise.race([gone, connecting]);
      assert.ok(ctx, 'the connection was closed');
      assert.equal(ctx.code, 3500, JSON.stringify(ctx));
    } finally {
      client.disconnect();
    }
  });

  test('a refused subscribe sends no leave to the channel', async () => {
    const channel = uniqueChannel('rec');
    await api(server, 'publish', { channel, data: { n: 1 } }, API_KEY);
    const watcher = await connectClient(server);
    const { ws, messages, closed } = await rawSocket(server);
    try {
      const sub = await subscribe(watcher, channel);
      const events = recordEvents(sub, ['join', 'leave']);
      ws.send('{"id":1,"connect":{}}');
      // A position from another epoch, with the flag that refuses unrecovered subscriptions.
      ws.send(`{"id":2,"subscribe":{"channel":"${channel}","recover":true,"offset":1,"epoch":"nope","flag":2}}`);
      // Then a normal subscribe, whose join the watcher waits for.
      ws.send(`{"id":3,"subscribe":{"channel":"${channel}"}}`);
      const replies = () =>
        messages.flatMap((m) => m.split('\n')).map((l) => JSON.parse(l));
      const rawClient = await withTimeout(
        (async () => {
          for (;;) {
            const reply = replies().find((r) => r.id === 1);
            if (reply) return reply.connect.client;
            await new Promise((r) => setTimeout(r, 10));
          }
        })(),
        5000,
        'no connect reply',
      );
      // The join may have come while we waited for the connect reply: look at the record.
      const joined = () => events.some((e) => e.event === 'join' && e.ctx.info.client === rawClient);
      await withTimeout(
        (async () => {
          while (!joined()) await new Promise((r) => setTimeout(r, 10));
        })(),
        5000,
        'no join of the raw client',
      );
      const refused = replies().find((r) => r.id === 2);
      assert.equal(refused?.error?.code, 112, JSON.stringify(messages));
      const about = events.filter((e) => e.ctx.info.client === rawClient).map((e) => e.event);
      assert.deepEqual(about, ['join'], 'the refused subscribe announced nothing');
    } finally {
      ws.close();
      await closed;
      watcher.disconnect();
    }
  });

  test('an authenticated user is subscribed to the personal channel', async () => {
    const client = newClient(server, { token: signJwt({ sub: '42' }, SECRET) });
    const publication = waitFor(client, 'publication', 5000);
    const subscribed = waitFor(client, 'subscribed', 5000, (ctx) => ctx.channel === 'personal:#42');
    client.connect();
    try {
      await subscribed;
      await api(server, 'publish', { channel: 'personal:#42', data: { hi: 42 } }, API_KEY);
      const ctx = await publication;
      assert.equal(ctx.channel, 'personal:#42');
      assert.deepEqual(ctx.data, { hi: 42 });
    } finally {
      client.disconnect();
    }
  });
});
