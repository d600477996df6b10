// Our SDK against three switchboard nodes on the local Redis (a key prefix of its own): a client
// whose node goes away while it is offline reconnects to another node and recovers exactly the
// publications it missed, in order, over WebSocket and over HTTP-streaming.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';

import WebSocket from 'ws';

import { Client } from '../../dist/switchboard.js';
import { api, collect, delay, Network, next, startServer, uniqueChannel } from './support.mjs';

const PREFIX = `sdk-cluster-${process.pid}-${Date.now().toString(36)}`;
const REDIS = process.env.REDIS_ADDRESS || '127.0.0.1:6379';

const config = (name) => `
mode = "development"
node_name = "${name}"

[broker]
type = "redis"

[broker.redis]
addresses = ["redis://${REDIS}"]
prefix = "${PREFIX}"

[channel.default]
history_size = 100
history_ttl = "300s"
`;

/** Deletes the keys of this run (SCAN + DEL, never a flush). */
function cleanRedis() {
  const [host, port] = REDIS.split(':');
  const keys = execFileSync('redis-cli', ['-h', host, '-p', port, '--scan', '--pattern', `${PREFIX}*`], {
    encoding: 'utf8',
  })
    .split('\n')
    .filter(Boolean);
  for (let i = 0; i < keys.length; i += 100) {
    execFileSync('redis-cli', ['-h', host, '-p', port, 'del', ...keys.slice(i, i + 100)]);
  }
}

describe('three nodes on Redis', () => {
  let nodes = [];

  before(async () => {
    nodes = await Promise.all(['sdk-n1', 'sdk-n2', 'sdk-n3'].map((n) => startServer({ config: config(n) })));
  });

  after(async () => {
    await Promise.all(nodes.map((n) => n.stop()));
    cleanRedis();
  });

  const cases = [
    { transport: 'websocket', first: 0, publishVia: 1, endpoint: (n) => `ws://${n.address}/connection/websocket` },
    { transport: 'http_stream', first: 1, publishVia: 2, endpoint: (n) => `${n.httpUrl}/connection/http_stream` },
  ];

  for (const { transport, first, publishVia, endpoint } of cases) {
    test(`over ${transport}: reconnecting to another node recovers exactly the missed publications`, async () => {
      const ordered = [nodes[first], ...nodes.filter((_, i) => i !== first && nodes[i].running)];
      const network = new Network();
      const client = new Client(
        ordered.map((n) => ({ transport, endpoint: endpoint(n) })),
        { websocket: WebSocket, networkEvents: network, minReconnectDelay: 50, maxReconnectDelay: 500 },
      );
      const channel = uniqueChannel();
      const sub = client.newSubscription(channel, { recoverable: true });
      const pubs = collect(sub);
      sub.subscribe();
      client.connect();
      const subscribed = await next(sub, 'subscribed');
      assert.equal(subscribed.recoverable, true);
      // A publication through another node arrives live.
      await api(nodes[publishVia], 'publish', { channel, data: 1 });
      await pubs.wait(1);

      network.fire('offline');
      for (let n = 2; n <= 8; n++) await api(nodes[publishVia], 'publish', { channel, data: n });
      await nodes[first].stop();
      const recovered = next(sub, 'subscribed');
      network.fire('online');
      const ctx = await recovered;
      assert.equal(ctx.wasRecovering, true);
      assert.equal(ctx.recovered, true);
      assert.equal(client.transport, transport);
      await pubs.wait(8);
      await api(nodes[publishVia], 'publish', { channel, data: 9 });
      await pubs.wait(9);
      await delay(100);
      assert.deepEqual(pubs.map((p) => p.data), [1, 2, 3, 4, 5, 6, 7, 8, 9], 'each once, in order');
      assert.deepEqual(pubs.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
      client.disconnect();
    });
  }
});
