// socket.io-client in Debian Chromium against two nodes of the binary on the local Redis (a
// unique key prefix per run): a page on node A and a page on node B meet in a room; the polling
// requests of one page's session alternate between the nodes (a round-robin balancer in front,
// no sticky sessions); and a page whose network drops (Chromium offline) comes back, to the same
// node or to the other one, with `socket.recovered` and the room events it missed, in order.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { io } from 'socket.io-client';

import { api, roundRobin, startServer, withTimeout } from '../helpers.mjs';
import { launchChromium, pageErrors, servePages } from './browser.mjs';
import { eventsNamed, SIO_PAGE } from './sio-page.mjs';

const prefix = `sb-e2e-sio-browser-${process.pid}-${Date.now()}`;

const CONFIG = `
mode = "development"

[channel.default]
history_size = 100
history_ttl = "300s"

[socketio]
ping_interval = "2s"
ping_timeout = "2s"
recovery = true

[broker]
type = "redis"

[broker.redis]
addresses = ["redis://127.0.0.1:6379"]
prefix = "${prefix}"
`;

let seq = 0;
const room = () => `sio-cluster-${process.pid}-${Date.now().toString(36)}-${++seq}`;

/** The first argument of each event (recovery adds the offset as a last argument). */
const firsts = (events) => events.map((e) => e[1]);

describe('socket.io-client in Chromium on two nodes (local Redis)', () => {
  let nodes = [];
  let pages;
  let browser;
  const sockets = [];

  before(async () => {
    nodes = await Promise.all([startServer({ config: CONFIG }), startServer({ config: CONFIG })]);
    pages = await servePages({ '/sio.html': SIO_PAGE });
    browser = await launchChromium();
  });

  after(async () => {
    for (const s of sockets) s.close();
    await browser?.close();
    await pages?.close();
    await Promise.all(nodes.map((n) => n.stop()));
  });

  /** A page in its own browser context (so its network can be cut alone). */
  async function openPage() {
    const context = await browser.newContext();
    const page = await context.newPage();
    const errors = pageErrors(page);
    await page.goto(`${pages.url}/sio.html`);
    return { context, page, errors };
  }

  /** A connected socket.io-client in Node. */
  async function nodeClient(server) {
    const s = io(server.httpUrl, { transports: ['websocket'], reconnection: false, forceNew: true });
    sockets.push(s);
    await withTimeout(new Promise((res) => s.once('connect', res)), 5000, 'node client did not connect');
    return s;
  }

  test('a page on node A and a page on node B meet in a room', async () => {
    const [a, b] = nodes;
    const pa = await openPage();
    const pb = await openPage();
    try {
      const r = room();
      assert.equal(await pa.page.evaluate((u) => window.connect(u, { transports: ['websocket'] }), a.httpUrl), 'websocket');
      assert.equal(await pb.page.evaluate((u) => window.connect(u, { transports: ['polling', 'websocket'] }), b.httpUrl), 'polling');
      await pb.page.waitForFunction(() => window.transport() === 'websocket', null, { timeout: 5000 });
      for (const p of [pa.page, pb.page]) assert.deepEqual(await p.evaluate((r) => window.call('join', r), r), [{}]);

      assert.deepEqual(await pa.page.evaluate((r) => window.call('broadcast', r, 'chat', 'from A', { n: 1 }), r), [{}]);
      assert.deepEqual(firsts(await eventsNamed(pb.page, 'chat', 1)), ['from A']);
      assert.deepEqual(await pb.page.evaluate((r) => window.call('broadcast', r, 'chat', 'from B'), r), [{}]);
      assert.deepEqual(firsts(await eventsNamed(pa.page, 'chat', 1)), ['from B']);
      // A server API publication on either node reaches both pages.
      await api(a, 'publish', { channel: r, data: { event: 'chat', args: ['from the API'] } });
      for (const p of [pa.page, pb.page]) assert.deepEqual(firsts(await eventsNamed(p, 'chat', 2)).slice(1), ['from the API']);
      // Nobody got its own broadcast.
      assert.deepEqual(firsts(await pa.page.evaluate(() => window.named('chat'))), ['from B', 'from the API']);
      assert.deepEqual(firsts(await pb.page.evaluate(() => window.named('chat'))), ['from A', 'from the API']);
      assert.deepEqual([...pa.errors, ...pb.errors], []);
    } finally {
      await pa.context.close();
      await pb.context.close();
    }
  });

  test("the polling requests of one page's session alternate between the two nodes", async () => {
    const lb = await roundRobin(nodes);
    const p = await openPage();
    try {
      const r = room();
      assert.equal(await p.page.evaluate((u) => window.connect(u, { transports: ['polling'], upgrade: false }), lb.httpUrl), 'polling');
      assert.deepEqual(await p.page.evaluate((r) => window.call('join', r), r), [{}]);
      const peer = await nodeClient(nodes[1]);
      assert.deepEqual(await peer.timeout(5000).emitWithAck('join', r), {});
      const atPeer = [];
      peer.on('chat', (...args) => atPeer.push(args[0]));

      // Both ways, several times: every exchange is several polling requests.
      for (let k = 0; k < 4; k++) {
        assert.deepEqual(await peer.timeout(5000).emitWithAck('broadcast', r, 'chat', `to page ${k}`), {});
        await eventsNamed(p.page, 'chat', k + 1);
        assert.deepEqual(await p.page.evaluate(([r, k]) => window.call('broadcast', r, 'chat', `to peer ${k}`), [r, k]), [{}]);
      }
      await api(nodes[0], 'publish', { channel: r, data: { event: 'chat', args: ['from the API'] } });
      assert.deepEqual(firsts(await eventsNamed(p.page, 'chat', 5)), ['to page 0', 'to page 1', 'to page 2', 'to page 3', 'from the API']);
      const deadline = Date.now() + 5000;
      while (atPeer.length < 5 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
      assert.deepEqual(atPeer, ['to peer 0', 'to peer 1', 'to peer 2', 'to peer 3', 'from the API']);
      assert.equal(await p.page.evaluate(() => window.transport()), 'polling');
      assert.ok(lb.seen.every((n) => n > 4), `requests per node: ${lb.seen}`);
      assert.deepEqual(p.errors, []);
    } finally {
      await p.context.close();
      await lb.close();
    }
  });

  const cuts = [
    { transports: ['polling', 'websocket'], otherNode: false },
    { transports: ['polling'], otherNode: false },
    { transports: ['polling'], otherNode: true },
  ];
  for (const { transports, otherNode } of cuts) {
    const where = otherNode ? ', back on the other node' : '';
    test(`a page back from a network cut recovers its room and what it missed (${transports.join(' then ')}${where})`, async () => {
      const [a, b] = nodes;
      // With otherNode, the page goes through a balancer whose one backend is node A until the
      // cut, node B after it.
      const backends = [a];
      const lb = otherNode ? await roundRobin(backends) : null;
      const p = await openPage();
      try {
        const r = room();
        const opts = { transports, upgrade: transports.length > 1, reconnection: true, reconnectionDelay: 200, reconnectionDelayMax: 500 };
        await p.page.evaluate(([u, o]) => window.connect(u, o), [(lb ?? a).httpUrl, opts]);
        assert.equal(await p.page.evaluate(() => window.socket.recovered), false);
        assert.deepEqual(await p.page.evaluate((r) => window.call('join', r), r), [{}]);
        await eventsNamed(p.page, 'sb:offset', 1);
        await api(b, 'publish', { channel: r, data: { event: 'news', args: [1] } });
        const [first] = await eventsNamed(p.page, 'news', 1);
        assert.equal(first[1], 1);
        assert.equal(typeof first[2], 'string', 'the offset comes last');
        if (transports.length > 1) {
          await p.page.waitForFunction(() => window.transport() === 'websocket', null, { timeout: 5000 });
        }

        // The network drops; two publications go out meanwhile.
        await p.context.setOffline(true);
        await p.page.waitForFunction(() => !window.socket.connected, null, { timeout: 5000 });
        if (otherNode) backends[0] = b;
        await api(b, 'publish', { channel: r, data: { event: 'news', args: [2] } });
        await api(a, 'publish', { channel: r, data: { event: 'news', args: [3] } });
        await p.context.setOffline(false);
        await p.page.waitForFunction(() => window.socket.connected, null, { timeout: 15000 });
        assert.equal(await p.page.evaluate(() => window.socket.recovered), true);
        assert.deepEqual(firsts(await eventsNamed(p.page, 'news', 3)), [1, 2, 3]);

        // The room is back: new publications arrive too, once each.
        await api(a, 'publish', { channel: r, data: { event: 'news', args: [4] } });
        assert.deepEqual(firsts(await eventsNamed(p.page, 'news', 4)), [1, 2, 3, 4]);
        await new Promise((res) => setTimeout(res, 200));
        assert.deepEqual(firsts(await p.page.evaluate(() => window.named('news'))), [1, 2, 3, 4]);
        // Chromium logs the requests that failed while offline.
        assert.deepEqual(p.errors.filter((e) => !/ERR_INTERNET_DISCONNECTED/.test(e)), []);
      } finally {
        await p.context.close();
        await lb?.close();
      }
    });
  }
});
