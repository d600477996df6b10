// socket.io-client in Debian Chromium against the binary's Socket.IO front door: a page on another
// origin connects over polling and upgrades to WebSocket (CORS on the polling requests), joins a
// room (a hub channel), gets a broadcast from a socket.io-client in Node and a server API
// publication, and broadcasts back.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { io } from 'socket.io-client';

import { api, startServer, withTimeout } from '../helpers.mjs';
import { launchChromium, pageErrors, servePages } from './browser.mjs';

const CONFIG = `
mode = "development"

[socketio]
ping_interval = "2s"
ping_timeout = "2s"
`;

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>socket.io</title>
<script src="/lib/socket.io.js"></script>
<script>
  window.received = [];
  window.start = (url, room, transports) => new Promise((resolve, reject) => {
    const socket = io(url, { transports, reconnection: false });
    window.socket = socket;
    let opened;
    socket.io.once('open', () => (opened = socket.io.engine.transport.name));
    socket.on('chat', (...args) => window.received.push(args));
    socket.on('connect_error', (err) => reject(new Error(err.message)));
    socket.on('connect', () => {
      socket.timeout(5000).emit('join', room, (err, reply) => {
        if (err) return reject(err);
        resolve({ opened, reply });
      });
    });
  });
  window.transport = () => window.socket.io.engine.transport.name;
  window.broadcast = (room, text) => new Promise((resolve, reject) =>
    window.socket.timeout(5000).emit('broadcast', room, 'chat', text, (err, reply) => err ? reject(err) : resolve(reply)));
</script>`;

let seq = 0;
const room = () => `sio-browser-${process.pid}-${Date.now().toString(36)}-${++seq}`;

describe('socket.io-client in Chromium', () => {
  let server;
  let pages;
  let browser;
  const sockets = [];

  before(async () => {
    server = await startServer({ config: CONFIG });
    pages = await servePages({ '/sio.html': PAGE });
    browser = await launchChromium();
  });

  after(async () => {
    for (const s of sockets) s.close();
    await browser?.close();
    await pages?.close();
    await server?.stop();
  });

  for (const transports of [['polling', 'websocket'], ['websocket']]) {
    test(`a cross-origin page (${transports.join(' then ')}) meets a Node client and the server API in a room`, async () => {
      const page = await browser.newPage();
      const errors = pageErrors(page);
      try {
        await page.goto(`${pages.url}/sio.html`);
        const r = room();
        const started = await page.evaluate(([u, r, t]) => window.start(u, r, t), [server.httpUrl, r, transports]);
        assert.deepEqual(started, { opened: transports[0], reply: {} });
        if (transports.length > 1) {
          await page.waitForFunction(() => window.transport() === 'websocket', null, { timeout: 5000 });
        }

        const node = io(server.httpUrl, { transports: ['websocket'], reconnection: false, forceNew: true });
        sockets.push(node);
        await withTimeout(new Promise((res) => node.once('connect', res)), 5000, 'node client did not connect');
        assert.deepEqual(await node.timeout(5000).emitWithAck('join', r), {});
        const atNode = [];
        node.on('chat', (...a) => atNode.push(a));

        assert.deepEqual(await node.timeout(5000).emitWithAck('broadcast', r, 'chat', 'from node'), {});
        await api(server, 'publish', { channel: r, data: { event: 'chat', args: ['from api'] } });
        await page.waitForFunction(() => window.received.length >= 2, null, { timeout: 5000 });
        assert.deepEqual(await page.evaluate(() => window.received), [['from node'], ['from api']]);

        assert.deepEqual(await page.evaluate((r) => window.broadcast(r, 'from page'), r), {});
        const deadline = Date.now() + 5000;
        while (atNode.length < 2 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
        // Not its own broadcast: the API publication, then the page's.
        assert.deepEqual(atNode, [['from api'], ['from page']]);
        assert.deepEqual(errors, []);
      } finally {
        await page.close();
      }
    });
  }
});
