// Transport fallback in Debian Chromium: a cross-origin page whose WebSocket always fails (an init
// script replaces `window.WebSocket` with one that errors and closes with 1006, as a proxy that
// breaks WebSockets does) runs the `centrifuge` SDK with websocket, http_stream and sse configured.
// The SDK falls back to http_stream and everything works over it: subscribe, publish, RPC (answered
// by a small RPC proxy), history, presence and a server API publication. Then http_stream is
// blocked too (its requests are aborted by the page's network layer): a new client on the page
// falls back to sse and everything works again. Each test checks which transport the SDK
// connected with and that the server saw that transport (the RPC proxy gets its name).

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { api, signJwt, startServer, uniqueChannel } from '../helpers.mjs';
import { launchChromium, pageErrors, servePages } from './browser.mjs';

const SECRET = 'browser-fallback-secret';

/** The RPC proxy: answers every `rpc` with the method, the data and the transport it came over. */
async function startRpcProxy() {
  const calls = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const call = JSON.parse(body);
      calls.push(call);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          result: { data: { method: call.method, echo: call.data, transport: call.transport } },
        }),
      );
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/rpc`,
    calls,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}

/** Replaces the page's WebSocket with one that fails like a blocked one (error, then 1006). */
const BROKEN_WEBSOCKET = `
  window.webSocketAttempts = 0;
  window.WebSocket = class BrokenWebSocket extends EventTarget {
    static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
    constructor(url) {
      super();
      window.webSocketAttempts++;
      this.url = String(url);
      this.readyState = 0;
      this.binaryType = 'blob';
      setTimeout(() => {
        this.readyState = 3;
        const error = new Event('error');
        if (this.onerror) this.onerror(error);
        this.dispatchEvent(error);
        const close = new CloseEvent('close', { code: 1006, reason: '', wasClean: false });
        if (this.onclose) this.onclose(close);
        this.dispatchEvent(close);
      }, 10);
    }
    send() { throw new DOMException('not open', 'InvalidStateError'); }
    close() {}
  };
`;

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>fallback</title>
<script src="/lib/centrifuge.js"></script>
<script>
  window.received = [];
  // Connects with websocket, http_stream and sse (in this order) and subscribes to channel.
  window.start = (base, token, channel) => new Promise((resolve, reject) => {
    const client = new Centrifuge([
      { transport: 'websocket', endpoint: base.replace('http', 'ws') + '/connection/websocket' },
      { transport: 'http_stream', endpoint: base + '/connection/http_stream' },
      { transport: 'sse', endpoint: base + '/connection/sse' },
    ], { token, emulationEndpoint: base + '/emulation', timeout: 5000 });
    window.client = client;
    let transport = null;
    client.on('connected', (ctx) => (transport = ctx.transport));
    const sub = client.newSubscription(channel);
    window.sub = sub;
    sub.on('publication', (ctx) => window.received.push(ctx.data));
    sub.on('subscribed', () => resolve(transport));
    sub.on('error', (ctx) => reject(new Error(JSON.stringify(ctx.error))));
    sub.subscribe();
    client.connect();
  });
  // Publish, RPC, history and presence through the SDK; their results.
  window.exercise = async () => {
    await window.sub.publish({ from: 'page' });
    const rpc = await window.client.rpc('echo', { n: 7 });
    const history = await window.sub.history({ limit: 10 });
    const presence = await window.sub.presence();
    return {
      rpc: rpc.data,
      history: history.publications.map((p) => p.data),
      presenceUsers: Object.values(presence.clients).map((c) => c.user),
    };
  };
  window.stop = () => window.client.disconnect();
</script>`;

describe('transport fallback in the browser (Chromium)', () => {
  let server;
  let rpc;
  let pages;
  let browser;

  before(async () => {
    rpc = await startRpcProxy();
    server = await startServer({
      config: `
mode = "development"

[client.token]
hmac_secret_key = "${SECRET}"

[channel.default]
history_size = 20
history_ttl = "60s"
presence = true

[proxy]
rpc_endpoint = "${rpc.url}"
`,
    });
    pages = await servePages({ '/fallback.html': PAGE });
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await pages?.close();
    await server?.stop();
    await rpc?.close();
  });

  /**
   * Opens the page with a broken WebSocket (and `blocked` paths aborted), connects, and checks
   * that every feature works over `want`.
   */
  async function fallsBackTo(want, blocked) {
    const page = await browser.newPage();
    const errors = pageErrors(page);
    const aborted = [];
    try {
      await page.addInitScript(BROKEN_WEBSOCKET);
      for (const path of blocked) {
        await page.route(`**${path}`, (route) => {
          aborted.push(route.request().url());
          return route.abort('connectionrefused');
        });
      }
      await page.goto(`${pages.url}/fallback.html`);
      const channel = uniqueChannel();
      const user = `fallback-${want}`;
      const token = signJwt({ sub: user }, SECRET);
      const transport = await page.evaluate(
        ([base, t, c]) => window.start(base, t, c),
        [server.httpUrl, token, channel],
      );
      assert.equal(transport, want, 'the transport the SDK connected with');
      assert.ok((await page.evaluate(() => window.webSocketAttempts)) >= 1, 'WebSocket was tried');
      for (const path of blocked) {
        assert.ok(aborted.some((u) => u.includes(path)), `${path} was tried and blocked`);
      }

      const result = await page.evaluate(() => window.exercise());
      assert.deepEqual(result.rpc, { method: 'echo', echo: { n: 7 }, transport: want });
      assert.deepEqual(result.history, [{ from: 'page' }]);
      assert.deepEqual(result.presenceUsers, [user]);
      const call = rpc.calls.findLast((c) => c.method === 'echo');
      assert.equal(call.transport, want, 'the proxy sees the real transport name');
      assert.equal(call.user, user);

      await api(server, 'publish', { channel, data: { from: 'api' } });
      await page.waitForFunction(() => window.received.length === 2, null, { timeout: 5000 });
      assert.deepEqual(await page.evaluate(() => window.received), [{ from: 'page' }, { from: 'api' }]);
      // Still on the transport it fell back to (no reconnect in between).
      assert.equal(await page.evaluate(() => window.client._transport.subName()), want);
      await page.evaluate(() => window.stop());
      // Errors the page logs for the blocked transports are expected; nothing else is.
      const unexpected = errors.filter(
        (e) => !/ERR_CONNECTION_REFUSED|ERR_FAILED|Failed to load resource/.test(e),
      );
      assert.deepEqual(unexpected, []);
    } finally {
      await page.close();
    }
  }

  test('WebSocket fails: the SDK falls back to http_stream and keeps working', async () => {
    await fallsBackTo('http_stream', []);
  });

  test('WebSocket fails and http_stream is blocked: the SDK falls back to sse and keeps working', async () => {
    await fallsBackTo('sse', ['/connection/http_stream']);
  });
});
