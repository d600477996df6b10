// The test page of the socket.io-client browser tests: it loads the library's browser bundle and
// exposes a few functions the tests call through `page.evaluate`. Binary values cross the
// page boundary as `{ bytes: [...] }`.

/** The page's HTML (serve it with `servePages`). */
export const SIO_PAGE = `<!doctype html>
<meta charset="utf-8">
<title>socket.io</title>
<script src="/lib/socket.io.js"></script>
<script>
  // Every event the socket got, in order: [name, ...args] (binary as {bytes}, acks left out).
  window.events = [];
  const show = (a) =>
    a instanceof ArrayBuffer ? { bytes: [...new Uint8Array(a)] }
    : ArrayBuffer.isView(a) ? { bytes: [...new Uint8Array(a.buffer, a.byteOffset, a.byteLength)] }
    : a;
  const unshow = (a) => (a && Array.isArray(a.bytes) ? new Uint8Array(a.bytes) : a);

  // Connects to url with opts (socket.io-client options); resolves once connected, with the
  // transport the session opened with.
  window.connect = (url, opts) => new Promise((resolve, reject) => {
    const socket = io(url, { reconnection: false, ...opts });
    window.socket = socket;
    let opened;
    socket.io.on('open', () => (opened = socket.io.engine.transport.name));
    socket.onAny((event, ...args) =>
      window.events.push([event, ...args.filter((a) => typeof a !== 'function').map(show)]));
    socket.on('question', (q, ack) => ack('answer to ' + q));
    socket.once('connect_error', (err) => reject(new Error(err.message)));
    socket.once('connect', () => resolve(opened));
  });
  // Emits and waits for the ack; resolves with its arguments.
  window.call = (event, ...args) => new Promise((resolve, reject) =>
    window.socket.timeout(5000).emit(event, ...args.map(unshow), (err, ...reply) =>
      err ? reject(err) : resolve(reply.map(show))));
  window.emit = (event, ...args) => { window.socket.emit(event, ...args.map(unshow)); };
  window.named = (name) => window.events.filter((e) => e[0] === name);
  window.transport = () => window.socket.io.engine.transport.name;
</script>`;

/**
 * Waits until the page's socket got `n` events named `name`; resolves with them (each
 * `[name, ...args]`).
 *
 * @param {import('playwright-core').Page} page
 */
export async function eventsNamed(page, name, n, timeout = 5000) {
  await page.waitForFunction(([name, n]) => window.named(name).length >= n, [name, n], { timeout });
  return page.evaluate((name) => window.named(name), name);
}
