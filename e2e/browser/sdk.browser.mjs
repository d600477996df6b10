// Our browser SDK (clients/js) in Debian Chromium, loaded from the binary itself: a page on
// another origin imports the ES module from `/js/switchboard.js`, another one loads the classic
// script `/js/switchboard.iife.js`. They talk to each other; the page survives a server restart on
// the same port and recovers exactly what was published meanwhile (history on the local Redis,
// under a key prefix of this run); with WebSocket blocked it falls back to HTTP-streaming, and
// with that blocked too to SSE.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { api, BIN, delay, Server, startServer, uniqueChannel } from '../helpers.mjs';
import { launchChromium, pageErrors, servePages } from './browser.mjs';

const PREFIX = `sdk-browser-${process.pid}-${Date.now().toString(36)}`;
const REDIS = '127.0.0.1:6379';

const CONFIG = `
mode = "development"

[broker]
type = "redis"

[broker.redis]
addresses = ["redis://${REDIS}"]
prefix = "${PREFIX}"

[channel.default]
history_size = 100
history_ttl = "300s"
presence = true
`;

/** Starts the binary on `port` (a restart on the address clients know) and waits for /health. */
async function startOnPort(port, config) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'switchboard-sdk-browser-'));
  const file = path.join(dir, 'switchboard.toml');
  writeFileSync(file, config);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SWITCHBOARD_')));
  const deadline = Date.now() + 15000;
  for (;;) {
    const child = spawn(BIN, ['--config', file, '--address', `127.0.0.1:${port}`], {
      cwd: dir,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const server = new Server(child, port, null);
    while (Date.now() < deadline && server.running) {
      try {
        const res = await fetch(`${server.httpUrl}/health`, { signal: AbortSignal.timeout(500) });
        await res.arrayBuffer();
        if (res.ok) return server;
      } catch {
        // not up yet
      }
      await delay(50);
    }
    await server.stop(1000);
    // The port may still be held by the old process for a moment: try again.
    if (Date.now() >= deadline) throw new Error(`cannot restart on ${port}: ${server.logs()}`);
    await delay(200);
  }
}

/** Runs in the page: imports the SDK from the server, connects, subscribes; resolves with the transport. */
async function startClient([sdkUrl, base, channel, transports]) {
  const { Client } = await import(sdkUrl);
  window.received = [];
  window.log = [];
  const client = new Client(base, { transports, minReconnectDelay: 100, maxReconnectDelay: 1000 });
  client.on('state', (s) => window.log.push(`client ${s.newState}`));
  const sub = client.newSubscription(channel, { recoverable: true });
  sub.on('publication', (p) => window.received.push(p.data));
  sub.on('subscribed', (c) => window.log.push(`subscribed wasRecovering=${c.wasRecovering} recovered=${c.recovered}`));
  sub.subscribe();
  client.connect();
  await sub.ready(10000);
  window.client = client;
  return client.transport;
}

describe('browser SDK served by the binary (Chromium)', () => {
  let server;
  let pages;
  let browser;

  before(async () => {
    server = await startServer({ config: CONFIG });
    const iife = `<!doctype html>
<meta charset="utf-8">
<title>classic</title>
<script src="${server.httpUrl}/js/switchboard.iife.js"></script>
<script>
  window.publish = async (base, channel, data) => {
    const client = new Switchboard.Client(base);
    client.connect();
    await client.publish(channel, data);
    client.disconnect();
    return Switchboard.VERSION;
  };
</script>`;
    pages = await servePages({ '/blank.html': '<!doctype html><meta charset="utf-8"><title>sdk</title>', '/iife.html': iife });
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await pages?.close();
    await server?.stop();
    const keys = execFileSync('redis-cli', ['--scan', '--pattern', `${PREFIX}*`], { encoding: 'utf8' }).split('\n').filter(Boolean);
    if (keys.length) execFileSync('redis-cli', ['del', ...keys]);
  });

  test('a page importing /js/switchboard.js gets what a page with /js/switchboard.iife.js publishes', async () => {
    const a = await browser.newPage();
    const b = await browser.newPage();
    const errors = [...pageErrors(a), ...pageErrors(b)];
    try {
      await a.goto(`${pages.url}/blank.html`);
      await b.goto(`${pages.url}/iife.html`);
      const channel = uniqueChannel();
      const transport = await a.evaluate(startClient, [`${server.httpUrl}/js/switchboard.js`, server.httpUrl, channel]);
      assert.equal(transport, 'websocket');
      const version = await b.evaluate(([base, c]) => window.publish(base, c, { text: 'from page b' }), [server.httpUrl, channel]);
      assert.match(version, /^\d+\.\d+\.\d+/);
      await a.waitForFunction(() => window.received.length === 1, null, { timeout: 5000 });
      assert.deepEqual(await a.evaluate(() => window.received), [{ text: 'from page b' }]);
      await a.evaluate(() => window.client.disconnect());
      assert.deepEqual(errors, []);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test('after a server restart on the same port the page recovers exactly the publications it missed', async () => {
    const page = await browser.newPage();
    try {
      await page.goto(`${pages.url}/blank.html`);
      const channel = uniqueChannel();
      await page.evaluate(startClient, [`${server.httpUrl}/js/switchboard.js`, server.httpUrl, channel]);
      await api(server, 'publish', { channel, data: 1 });
      await page.waitForFunction(() => window.received.length === 1, null, { timeout: 5000 });

      const port = server.port;
      await server.stop();
      await page.waitForFunction(() => window.client.state === 'connecting', null, { timeout: 5000 });
      // While the page's server is down, another node on the same Redis takes publications.
      const other = await startServer({ config: CONFIG });
      try {
        for (let n = 2; n <= 5; n++) await api(other, 'publish', { channel, data: n });
      } finally {
        await other.stop();
      }
      server = await startOnPort(port, CONFIG);
      await page.waitForFunction(() => window.received.length >= 5, null, { timeout: 10000 });
      await api(server, 'publish', { channel, data: 6 });
      await page.waitForFunction(() => window.received.length >= 6, null, { timeout: 5000 });
      await delay(100);
      assert.deepEqual(await page.evaluate(() => window.received), [1, 2, 3, 4, 5, 6]);
      const log = await page.evaluate(() => window.log);
      assert.equal(log.at(-1), 'subscribed wasRecovering=true recovered=true', log.join('\n'));
      await page.evaluate(() => window.client.disconnect());
    } finally {
      await page.close();
    }
  });

  test('WebSocket blocked: falls back to HTTP-streaming; that blocked too: to SSE', async () => {
    const page = await browser.newPage();
    const errors = pageErrors(page);
    let wsAttempts = 0;
    let streamAttempts = 0;
    try {
      await page.routeWebSocket(/\/connection\/websocket/, (ws) => {
        wsAttempts++;
        ws.close({ code: 1011, reason: 'blocked' });
      });
      await page.goto(`${pages.url}/blank.html`);
      const sdk = `${server.httpUrl}/js/switchboard.js`;
      const c1 = uniqueChannel();
      assert.equal(await page.evaluate(startClient, [sdk, server.httpUrl, c1]), 'http_stream');
      assert.ok(wsAttempts >= 1);
      await api(server, 'publish', { channel: c1, data: 'over http_stream' });
      await page.waitForFunction(() => window.received.length === 1, null, { timeout: 5000 });
      assert.deepEqual(await page.evaluate(() => window.received), ['over http_stream']);
      await page.evaluate(() => window.client.disconnect());

      await page.route(/\/connection\/http_stream/, (route) => {
        streamAttempts++;
        return route.abort('connectionrefused');
      });
      const c2 = uniqueChannel();
      assert.equal(await page.evaluate(startClient, [sdk, server.httpUrl, c2]), 'sse');
      assert.ok(streamAttempts >= 1);
      await api(server, 'publish', { channel: c2, data: 'over sse' });
      await page.waitForFunction(() => window.received.length === 1, null, { timeout: 5000 });
      assert.deepEqual(await page.evaluate(() => window.received), ['over sse']);
      // Publishing goes over /emulation.
      await page.evaluate((c) => window.client.publish(c, 'from the page'), c2);
      await page.waitForFunction(() => window.received.length === 2, null, { timeout: 5000 });
      await page.evaluate(() => window.client.disconnect());
      // A blocked request is logged by Chromium as a failed resource load: only those are expected.
      assert.deepEqual(errors.filter((e) => !/net::ERR_CONNECTION_REFUSED|Failed to load resource/.test(e)), []);
    } finally {
      await page.close();
    }
  });
});
