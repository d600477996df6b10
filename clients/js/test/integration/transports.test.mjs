// Our SDK against the real binary over each transport (WebSocket, HTTP-streaming, SSE):
// connect, subscribe, publish, RPC through the proxy, history, presence, recovery after a
// disconnect, connection and subscription token refresh.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { ErrorCode } from '../../dist/switchboard.js';
import {
  api,
  collect,
  delay,
  Network,
  newClient,
  next,
  rpcBackend,
  signJwt,
  startServer,
  TRANSPORTS,
  uniqueChannel,
} from './support.mjs';

const SECRET = 'sdk-integration-secret';

let server;
let backend;

before(async () => {
  backend = await rpcBackend();
  server = await startServer({
    config: `
mode = "development"

[client]
expired_close_delay = "1s"

[client.token]
hmac_secret_key = "${SECRET}"

[client.subscription_token]
hmac_secret_key = "${SECRET}"

[proxy]
rpc_endpoint = "${backend.url}"

[channel.default]
history_size = 100
history_ttl = "300s"
presence = true
join_leave = true
`,
  });
});

after(async () => {
  await server?.stop();
  await backend?.close();
});

for (const transport of TRANSPORTS) {
  describe(`over ${transport}`, () => {
    test('connect, subscribe, publish and receive; API publications; join and leave', async () => {
      const token = signJwt({ sub: `alice-${transport}` }, SECRET);
      const client = newClient(server, transport, { token });
      const channel = uniqueChannel();
      const sub = client.newSubscription(channel, { joinLeave: true });
      const pubs = collect(sub);
      sub.subscribe();
      client.connect();
      const connected = await next(client, 'connected');
      assert.equal(connected.transport, transport);
      assert.equal(client.transport, transport);
      await sub.ready();
      await sub.publish({ text: 'mine' });
      await api(server, 'publish', { channel, data: { text: 'from api' } });
      await pubs.wait(2);
      assert.deepEqual(pubs.map((p) => p.data), [{ text: 'mine' }, { text: 'from api' }]);
      assert.equal(pubs[0].info.user, `alice-${transport}`);
      assert.equal(pubs[0].offset, 1);

      const bob = newClient(server, transport, { token: signJwt({ sub: 'bob' }, SECRET) });
      const bobSub = bob.newSubscription(channel);
      bobSub.subscribe();
      const joined = next(sub, 'join', (j) => j.info.user === 'bob');
      bob.connect();
      assert.equal((await joined).info.client.length > 0, true);
      if (transport === 'websocket') {
        // Over the HTTP streams the server notices a client that went away only when it next
        // writes to it (at the latest the next ping), so the leave comes that much later.
        const left = next(sub, 'leave');
        bob.disconnect();
        assert.equal((await left).info.user, 'bob');
      }
      bob.disconnect();
      client.disconnect();
      assert.equal(client.state, 'disconnected');
    });

    test('rpc through the proxy, its error code, history, presence and presence stats', async () => {
      const client = newClient(server, transport, { token: signJwt({ sub: 'carol' }, SECRET) });
      client.connect();
      const r = await client.rpc('echo', { n: 42 });
      assert.deepEqual(r.data, { method: 'echo', echo: { n: 42 }, transport });
      await assert.rejects(client.rpc('fail'), (e) => e.code === 4000 && e.message === 'custom failure');
      const channel = uniqueChannel();
      for (let n = 1; n <= 3; n++) await client.publish(channel, { n });
      const h = await client.history(channel, { limit: -1 });
      assert.deepEqual(h.publications.map((p) => [p.offset, p.data.n]), [[1, 1], [2, 2], [3, 3]]);
      assert.ok(h.epoch);
      assert.equal(h.offset, 3);
      const last = await client.history(channel, { limit: 1, reverse: true });
      assert.deepEqual(last.publications.map((p) => p.data.n), [3]);
      const sub = client.newSubscription(channel);
      sub.subscribe();
      await sub.ready();
      const presence = await sub.presence();
      assert.deepEqual(Object.values(presence).map((i) => [i.user, i.client]), [['carol', client.id]]);
      assert.deepEqual(await sub.presenceStats(), { numClients: 1, numUsers: 1 });
      await assert.rejects(client.history('', {}), (e) => e.code === ErrorCode.UnknownChannel);
      client.disconnect();
    });

    test('after a disconnect, resubscribes and recovers exactly the missed publications', async () => {
      const network = new Network();
      const client = newClient(server, transport, { networkEvents: network });
      const channel = uniqueChannel();
      const sub = client.newSubscription(channel, { recoverable: true });
      const pubs = collect(sub);
      sub.subscribe();
      client.connect();
      const first = await next(sub, 'subscribed');
      assert.equal(first.recoverable, true);
      await api(server, 'publish', { channel, data: 1 });
      await pubs.wait(1);
      const firstId = client.id;

      network.fire('offline');
      assert.equal(client.state, 'connecting');
      assert.equal(sub.state, 'subscribing');
      for (let n = 2; n <= 6; n++) await api(server, 'publish', { channel, data: n });
      const resubscribed = next(sub, 'subscribed');
      network.fire('online');
      const ctx = await resubscribed;
      assert.equal(ctx.wasRecovering, true);
      assert.equal(ctx.recovered, true);
      assert.notEqual(client.id, firstId);
      await pubs.wait(6);
      await delay(100);
      assert.deepEqual(pubs.map((p) => p.data), [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(sub.position, { offset: 6, epoch: first.streamPosition.epoch });
      client.disconnect();
    });

    test('connection and subscription tokens are refreshed before they expire', async () => {
      let connTokens = 0;
      let subTokens = 0;
      const channel = `$${uniqueChannel()}`;
      const client = newClient(server, transport, {
        getToken: async () => {
          connTokens++;
          return signJwt({ sub: 'dave' }, SECRET, 2);
        },
      });
      const sub = client.newSubscription(channel, {
        getToken: async (ctx) => {
          subTokens++;
          return signJwt({ sub: 'dave', channel: ctx.channel }, SECRET, 2);
        },
      });
      const states = [];
      client.on('state', (s) => states.push(s.newState));
      const subStates = [];
      sub.on('state', (s) => subStates.push(s.newState));
      const errors = collect(client, 'error');
      sub.subscribe();
      client.connect();
      await sub.ready();
      const id = client.id;
      // Two token lifetimes plus the server's grace: without refreshes it would have closed.
      await delay(4200);
      assert.ok(connTokens >= 3, `connection tokens fetched: ${connTokens}`);
      assert.ok(subTokens >= 3, `subscription tokens fetched: ${subTokens}`);
      assert.equal(client.id, id, 'the same connection all along');
      assert.deepEqual(states, ['connecting', 'connected']);
      assert.deepEqual(subStates, ['subscribing', 'subscribed']);
      assert.deepEqual(errors.map((e) => `${e.type} ${e.error.code} ${e.error.message}`), []);
      await api(server, 'publish', { channel, data: 'still here' });
      assert.equal((await next(sub, 'publication')).data, 'still here');
      client.disconnect();
    });
  });
}

describe('server-side subscriptions', () => {
  test("the token's channels arrive as client-level subscribed and publication events", async () => {
    const channel = uniqueChannel();
    const client = newClient(server, 'websocket', { token: signJwt({ sub: 'erin', channels: [channel] }, SECRET) });
    const subscribed = next(client, 'subscribed', (c) => c.channel === channel);
    client.connect();
    await subscribed;
    const pub = next(client, 'publication', (p) => p.channel === channel);
    await api(server, 'publish', { channel, data: 'server-side' });
    assert.equal((await pub).data, 'server-side');
    client.disconnect();
  });
});
