// Browser basics in Debian Chromium: a page on another origin connects with the `centrifuge` SDK
// over WebSocket and gets a server API publication; a plain `EventSource` on `uni_sse` (no SDK)
// gets the connect push and then the publications of its token's channels.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { api, signJwt, startServer, uniqueChannel } from '../helpers.mjs';
import { launchChromium, pageErrors, servePages } from './browser.mjs';

const SECRET = 'browser-basics-secret';
const CONFIG = `
mode = "development"

[client.token]
hmac_secret_key = "${SECRET}"

[channel.default]
history_size = 20
history_ttl = "60s"
`;

const SDK_PAGE = `<!doctype html>
<meta charset="utf-8">
<title>sdk</title>
<script src="/lib/centrifuge.js"></script>
<script>
  window.received = [];
  window.start = (endpoint, token, channel) => new Promise((resolve, reject) => {
    const client = new Centrifuge(endpoint, { token });
    const sub = client.newSubscription(channel);
    sub.on('publication', (ctx) => window.received.push(ctx.data));
    sub.on('subscribed', () => resolve(client.state));
    sub.on('error', (ctx) => reject(new Error(JSON.stringify(ctx.error))));
    sub.subscribe();
    client.connect();
    window.client = client;
  });
</script>`;

const UNI_PAGE = `<!doctype html>
<meta charset="utf-8">
<title>uni_sse</title>
<script>
  window.messages = [];
  window.open_uni = (url) => new Promise((resolve, reject) => {
    const es = new EventSource(url);
    es.onmessage = (e) => {
      const m = JSON.parse(e.data);
      window.messages.push(m);
      if (m.connect) resolve(m.connect);
    };
    es.onerror = () => reject(new Error('EventSource error, readyState ' + es.readyState));
    window.es = es;
  });
</script>`;

describe('browser basics (Chromium)', () => {
  let server;
  let pages;
  let browser;

  before(async () => {
    server = await startServer({ config: CONFIG });
    pages = await servePages({ '/sdk.html': SDK_PAGE, '/uni.html': UNI_PAGE });
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await pages?.close();
    await server?.stop();
  });

  test('the centrifuge SDK on a cross-origin page subscribes over WebSocket and gets an API publication', async () => {
    const page = await browser.newPage();
    const errors = pageErrors(page);
    try {
      await page.goto(`${pages.url}/sdk.html`);
      const channel = uniqueChannel();
      const token = signJwt({ sub: 'browser-user' }, SECRET);
      const state = await page.evaluate(
        ([endpoint, t, c]) => window.start(endpoint, t, c),
        [server.wsUrl, token, channel],
      );
      assert.equal(state, 'connected');
      await api(server, 'publish', { channel, data: { text: 'hello browser', n: 1 } });
      await page.waitForFunction(() => window.received.length === 1, null, { timeout: 5000 });
      assert.deepEqual(await page.evaluate(() => window.received), [{ text: 'hello browser', n: 1 }]);
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
    }
  });

  test('a plain EventSource on uni_sse gets the connect push, then its channel publications in order', async () => {
    const page = await browser.newPage();
    const errors = pageErrors(page);
    try {
      await page.goto(`${pages.url}/uni.html`);
      const channel = uniqueChannel();
      const token = signJwt({ sub: 'uni-browser', channels: [channel] }, SECRET);
      const url = `${server.httpUrl}/connection/uni_sse?cf_connect=${encodeURIComponent(JSON.stringify({ token }))}`;
      const connect = await page.evaluate((u) => window.open_uni(u), url);
      assert.ok(connect.client, JSON.stringify(connect));
      assert.ok(channel in connect.subs, JSON.stringify(connect));
      for (let n = 1; n <= 3; n++) {
        await api(server, 'publish', { channel, data: { n } });
      }
      await page.waitForFunction(() => window.messages.filter((m) => m.pub).length === 3, null, {
        timeout: 5000,
      });
      const pubs = await page.evaluate(() => window.messages.filter((m) => m.pub));
      assert.deepEqual(
        pubs.map((m) => [m.channel, m.pub.data.n]),
        [[channel, 1], [channel, 2], [channel, 3]],
      );
      await page.evaluate(() => window.es.close());
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
    }
  });
});
