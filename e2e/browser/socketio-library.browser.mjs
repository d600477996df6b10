// socket.io-client in Debian Chromium against the library example `socketio_chat` (typed Rust
// handlers, crates/switchboard/examples): acks both ways with binary attachments, and
// namespace-wide emits (`io.emitter`, `socket.broadcast()`) reaching pages on two nodes of a
// Redis cluster.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { io } from 'socket.io-client';

import { startChatExample, withTimeout } from '../helpers.mjs';
import { launchChromium, pageErrors, servePages } from './browser.mjs';
import { eventsNamed, SIO_PAGE } from './sio-page.mjs';

/** Bytes of a binary value a Node socket.io-client got. */
const bytes = (b) => [...new Uint8Array(b)];

describe('socket.io-client in Chromium: library semantics (socketio_chat)', () => {
  let browser;
  let pages;
  before(async () => {
    pages = await servePages({ '/sio.html': SIO_PAGE });
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    await pages?.close();
  });

  /** A fresh page of SIO_PAGE with its error log. */
  async function openPage() {
    const page = await browser.newPage();
    const errors = pageErrors(page);
    await page.goto(`${pages.url}/sio.html`);
    return { page, errors };
  }

  describe('one node', () => {
    let chat;
    before(async () => {
      chat = await startChatExample();
    });
    after(async () => {
      await chat?.stop();
    });

    for (const transports of [['polling', 'websocket'], ['websocket']]) {
      test(`acks both ways, with binary (${transports.join(' then ')})`, async () => {
        const { page, errors } = await openPage();
        try {
          const opened = await page.evaluate(([u, t]) => window.connect(u, { transports: t }), [chat.httpUrl, transports]);
          assert.equal(opened, transports[0]);
          if (transports.length > 1) {
            await page.waitForFunction(() => window.transport() === 'websocket', null, { timeout: 5000 });
          }
          // The client's ack request: the server acks with the arguments, binary included.
          const reply = await page.evaluate(() => window.call('echo', 'x', { bytes: [1, 2, 3, 255] }, { n: 1 }));
          assert.deepEqual(reply, ['x', { bytes: [1, 2, 3, 255] }, { n: 1 }]);
          // Binary only, several attachments.
          const two = await page.evaluate(() => window.call('echo', { bytes: [0] }, { bytes: [] }));
          assert.deepEqual(two, [{ bytes: [0] }, { bytes: [] }]);
          // The server's ack request: `ask` makes the server ask the page (`question`), the page
          // acks, and the server emits the page's answer back.
          await page.evaluate(() => window.emit('ask', 'life'));
          assert.deepEqual(await eventsNamed(page, 'answer', 1), [['answer', 'answer to life']]);
          assert.deepEqual(await eventsNamed(page, 'question', 1), [['question', 'life']]);
          assert.deepEqual(errors, []);
        } finally {
          await page.close();
        }
      });
    }
  });

  describe('two nodes on Redis', () => {
    const prefix = `sb-e2e-sio-lib-${process.pid}-${Date.now()}`;
    let a;
    let b;
    const sockets = [];
    before(async () => {
      [a, b] = await Promise.all([startChatExample({ REDIS_PREFIX: prefix }), startChatExample({ REDIS_PREFIX: prefix })]);
    });
    after(async () => {
      for (const s of sockets) s.close();
      await Promise.all([a?.stop(), b?.stop()]);
    });

    test('namespace-wide emits reach a page on node A, a page on node B and a Node client', async () => {
      const pa = await openPage();
      const pb = await openPage();
      try {
        await pa.page.evaluate((u) => window.connect(u, { transports: ['websocket'] }), a.httpUrl);
        await pb.page.evaluate((u) => window.connect(u, { transports: ['polling', 'websocket'] }), b.httpUrl);
        const node = io(b.httpUrl, { transports: ['websocket'], reconnection: false, forceNew: true });
        sockets.push(node);
        await withTimeout(new Promise((res) => node.once('connect', res)), 5000, 'node client did not connect');
        const atNode = [];
        node.onAny((event, ...args) => atNode.push([event, ...args]));

        // Both nodes hear each other's broadcasts before the test counts them: page A announces
        // until page B got one.
        for (let k = 0; ; k++) {
          await pa.page.evaluate(() => window.emit('announce', 'warm'));
          try {
            await eventsNamed(pb.page, 'announced', 1, 200);
            break;
          } catch (err) {
            if (k > 50) throw err;
          }
        }
        const warm = (list) => list.filter((e) => e[1] !== 'warm');

        // `announce` on A (io.emitter): everyone, the sender included, once, in order, with binary.
        await pa.page.evaluate(() => {
          window.emit('announce', 'one', { bytes: [9, 8, 7] });
          window.emit('announce', 'two');
          window.emit('announce', 'three');
        });
        // `shout` on B (socket.broadcast()): everyone but the sender.
        await pb.page.evaluate(() => window.emit('shout', 'from b'));
        const wanted = [['announced', 'one', { bytes: [9, 8, 7] }], ['announced', 'two'], ['announced', 'three']];
        for (const p of [pa.page, pb.page]) {
          await p.waitForFunction(() => window.named('announced').filter((e) => e[1] !== 'warm').length >= 3, null, { timeout: 5000 });
        }
        await pa.page.waitForFunction(() => window.named('shouted').length >= 1, null, { timeout: 5000 });
        const deadline = Date.now() + 5000;
        while ((warm(atNode.filter((e) => e[0] === 'announced')).length < 3 || !atNode.some((e) => e[0] === 'shouted')) && Date.now() < deadline) {
          await new Promise((res) => setTimeout(res, 20));
        }
        // Let duplicates, if any, arrive before looking.
        await new Promise((res) => setTimeout(res, 300));
        for (const p of [pa.page, pb.page]) {
          assert.deepEqual(warm(await p.evaluate(() => window.named('announced'))), wanted);
        }
        const nodeAnnounced = warm(atNode.filter((e) => e[0] === 'announced'));
        assert.deepEqual(nodeAnnounced.map((e) => e.slice(0, 2)), wanted.map((e) => e.slice(0, 2)));
        assert.deepEqual(bytes(nodeAnnounced[0][2]), [9, 8, 7]);
        assert.deepEqual(await pa.page.evaluate(() => window.named('shouted')), [['shouted', 'from b']]);
        assert.deepEqual(atNode.filter((e) => e[0] === 'shouted'), [['shouted', 'from b']]);
        assert.deepEqual(await pb.page.evaluate(() => window.named('shouted')), []);
        assert.deepEqual(pa.errors, []);
        assert.deepEqual(pb.errors, []);
      } finally {
        await pa.page.close();
        await pb.page.close();
      }
    });
  });
});
