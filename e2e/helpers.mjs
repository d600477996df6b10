// Helpers for the end-to-end tests: run the real `switchboard` binary on a free loopback port and
// await events with deadlines (never sleep-and-hope).
//
// Environment:
//   SWITCHBOARD_BIN   path to the binary (default: ../target/release/switchboard from here)
//   E2E_SERVER_LOGS=1 copy every server's stdout/stderr to this process's stderr as it comes

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Path of the server binary under test. */
export const BIN = path.resolve(
  here,
  process.env.SWITCHBOARD_BIN || path.join('..', 'target', 'release', 'switchboard'),
);

const LOG_TAIL_BYTES = 64 * 1024;
const START_ATTEMPTS = 5;

/** A port that was free a moment ago (the OS picks it; we close the listener at once). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A running server. Use `startServer()`; always `await server.stop()` (in an `after` hook).
 */
export class Server {
  constructor(child, port, dir) {
    this.child = child;
    this.port = port;
    this.dir = dir;
    this.address = `127.0.0.1:${port}`;
    this.httpUrl = `http://127.0.0.1:${port}`;
    this.wsUrl = `ws://127.0.0.1:${port}/connection/websocket`;
    this._log = '';
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitCode = code;
        this.exitSignal = signal;
        resolve({ code, signal });
      });
    });
    const collect = (chunk) => {
      this._log += chunk.toString();
      if (this._log.length > LOG_TAIL_BYTES) this._log = this._log.slice(-LOG_TAIL_BYTES);
      if (process.env.E2E_SERVER_LOGS === '1') process.stderr.write(`[switchboard:${port}] ${chunk}`);
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
  }

  /** The last 64 KiB of the server's output (for failure messages). */
  logs() {
    return this._log;
  }

  get running() {
    return this.exitCode === undefined && this.exitSignal === undefined;
  }

  /** Sends SIGTERM (graceful shutdown) without waiting. */
  terminate() {
    if (this.running) this.child.kill('SIGTERM');
  }

  /**
   * SIGTERM, then SIGKILL if the process is still there after `graceMs`. Resolves with
   * `{ code, signal, killed }` once the process has exited; removes the temp dir.
   */
  async stop(graceMs = 5000) {
    let killed = false;
    if (this.running) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (this.running) {
          killed = true;
          this.child.kill('SIGKILL');
        }
      }, graceMs);
      await this.exited;
      clearTimeout(timer);
    }
    if (this.dir) {
      rmSync(this.dir, { recursive: true, force: true });
      this.dir = null;
    }
    return { code: this.exitCode, signal: this.exitSignal, killed };
  }
}

/**
 * Starts the binary on a free loopback port and waits until `GET /health` answers 200.
 *
 * @param {object} [opts]
 * @param {string} [opts.config] TOML text; written to a temp file and passed with `--config`.
 *   Without it the server runs bare (development mode).
 * @param {Record<string,string>} [opts.env] extra environment (e.g. SWITCHBOARD_CLIENT__PING_INTERVAL).
 * @param {string[]} [opts.args] extra command-line arguments.
 * @param {number} [opts.readyTimeoutMs] how long to wait for /health (default 15 s).
 * @returns {Promise<Server>}
 */
export async function startServer(opts = {}) {
  if (!existsSync(BIN)) {
    throw new Error(
      `switchboard binary not found at ${BIN}; run \`cargo build --release -p switchboard-server\` ` +
        'or set SWITCHBOARD_BIN',
    );
  }
  let lastError;
  for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
    const port = await freePort();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'switchboard-e2e-'));
    const args = [];
    if (opts.config !== undefined) {
      const file = path.join(dir, 'switchboard.toml');
      writeFileSync(file, opts.config);
      args.push('--config', file);
    }
    args.push('--address', `127.0.0.1:${port}`, ...(opts.args || []));
    // Keep the developer's SWITCHBOARD_* settings out of the server under test, except the
    // binary path, which the server ignores anyway.
    const env = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!k.startsWith('SWITCHBOARD_')) env[k] = v;
    }
    Object.assign(env, opts.env || {});
    // The temp dir is the working directory, so a stray ./switchboard.toml is never picked up.
    const child = spawn(BIN, args, { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const server = new Server(child, port, dir);
    const spawnError = new Promise((resolve) => child.once('error', resolve));
    try {
      await waitHealthy(server, spawnError, opts.readyTimeoutMs ?? 15000);
      return server;
    } catch (err) {
      lastError = err;
      await server.stop(1000);
      // Retry only when the port was taken between our check and the server's bind.
      if (!/address (already )?in use|AddrInUse|os error 98/i.test(server.logs())) throw err;
    }
  }
  throw lastError;
}

async function waitHealthy(server, spawnError, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer yet';
  while (Date.now() < deadline) {
    const early = await Promise.race([
      server.exited.then((e) => ({ exited: e })),
      spawnError.then((e) => ({ spawnError: e })),
      delay(50).then(() => null),
    ]);
    if (early?.spawnError) throw new Error(`cannot start ${BIN}: ${early.spawnError.message}`);
    if (early?.exited) {
      throw new Error(
        `switchboard exited before it was healthy (code ${early.exited.code}, signal ` +
          `${early.exited.signal}); output:\n${server.logs()}`,
      );
    }
    try {
      const res = await fetch(`${server.httpUrl}/health`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = err.cause?.code || err.message;
    }
  }
  throw new Error(
    `switchboard on ${server.address} not healthy after ${timeoutMs} ms (last: ${last}); ` +
      `output:\n${server.logs()}`,
  );
}

export function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Resolves with the arguments of the first `event` on `emitter` for which `predicate` holds
 * (the first argument is what resolves); rejects after `timeoutMs`. Works with Node's
 * EventEmitter, `events` (centrifuge) and `ws`.
 */
export function waitFor(emitter, event, timeoutMs = 5000, predicate = () => true) {
  return new Promise((resolve, reject) => {
    const listener = (...args) => {
      let ok;
      try {
        ok = predicate(...args);
      } catch (err) {
        cleanup();
        reject(err);
        return;
      }
      if (ok) {
        cleanup();
        resolve(args[0]);
      }
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for '${event}'`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      emitter.removeListener(event, listener);
    };
    emitter.on(event, listener);
  });
}

/** Rejects with `message` if `promise` has not settled within `timeoutMs`. */
export function withTimeout(promise, timeoutMs, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(message || `timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Records every event of the listed names, in order, as `{ event, ctx, at }`; `stop()` detaches.
 */
export function recordEvents(emitter, events) {
  const log = [];
  const listeners = events.map((event) => {
    const fn = (ctx) => log.push({ event, ctx, at: Date.now() });
    emitter.on(event, fn);
    return [event, fn];
  });
  Object.defineProperty(log, 'stop', {
    enumerable: false,
    value: () => {
      for (const [event, fn] of listeners) emitter.removeListener(event, fn);
    },
  });
  return log;
}

/** `recordEvents` entries as readable strings (`connecting 3001 shutdown`) for assertions. */
export function eventStrings(log) {
  return log.map(({ event, ctx }) => {
    const code = ctx?.code ?? ctx?.error?.code;
    const reason = ctx?.reason ?? ctx?.error?.message;
    return [event, code, reason].filter((x) => x !== undefined).join(' ');
  });
}

/**
 * `ws` with browser (WHATWG) event timing: one `message` event per event-loop turn.
 *
 * Since ws 8.17 several messages parsed from one TCP read are emitted synchronously in the same
 * tick. centrifuge-js 5.7.4 serialises reply dispatch with a promise chain that assumes a
 * microtask checkpoint between two message events (true in browsers): when three or more frames
 * arrive in one tick it dispatches them concurrently and publications interleave out of order
 * (seen here: 200 in-order publications, in-order on the wire, delivered as 159 160 178 161 179
 * ...). That is a client-side artefact, not server behaviour, so the SDK gets browser timing.
 */
export class BrowserLikeWebSocket extends WebSocket {
  constructor(address, protocols, options) {
    super(address, protocols, { allowSynchronousEvents: false, ...options });
  }
}

/**
 * A `centrifuge` client for `server` using `ws` as the WebSocket implementation. Not yet
 * connected. Short reconnect delays so that tests observing reconnects stay quick.
 */
export function newClient(server, options = {}) {
  return new Centrifuge(server.wsUrl, {
    websocket: BrowserLikeWebSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    timeout: 5000,
    ...options,
  });
}

/** Creates a client, connects it and waits for `connected` (rejects on timeout). */
export async function connectClient(server, options = {}, timeoutMs = 5000) {
  const client = newClient(server, options);
  const connected = waitFor(client, 'connected', timeoutMs);
  client.connect();
  try {
    await connected;
  } catch (err) {
    client.disconnect();
    throw new Error(`client did not connect to ${server.wsUrl}: ${err.message}`);
  }
  return client;
}

/**
 * Creates a subscription on `client`, subscribes and waits for `subscribed`; rejects with the
 * server's error (its `code`) if the subscription becomes `unsubscribed` or reports an error
 * instead.
 */
export async function subscribe(client, channel, options = {}, timeoutMs = 5000) {
  const sub = client.newSubscription(channel, options);
  await subscribeExisting(sub, timeoutMs);
  return sub;
}

/** Subscribes an existing subscription object; see `subscribe`. */
export function subscribeExisting(sub, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const done = (fn, value) => {
      clearTimeout(timer);
      sub.removeListener('subscribed', onSubscribed);
      sub.removeListener('unsubscribed', onUnsubscribed);
      sub.removeListener('error', onError);
      fn(value);
    };
    const onSubscribed = (ctx) => done(resolve, ctx);
    const onUnsubscribed = (ctx) => {
      const err = new Error(`subscribe to ${sub.channel} refused: ${ctx.code} ${ctx.reason}`);
      err.code = ctx.code;
      err.reason = ctx.reason;
      done(reject, err);
    };
    const onError = (ctx) => {
      const err = new Error(
        `subscription ${sub.channel} error (${ctx.type}): ${ctx.error?.code} ${ctx.error?.message}`,
      );
      err.code = ctx.error?.code;
      err.reason = ctx.error?.message;
      done(reject, err);
    };
    const timer = setTimeout(
      () => done(reject, new Error(`timed out after ${timeoutMs} ms subscribing to ${sub.channel}`)),
      timeoutMs,
    );
    sub.on('subscribed', onSubscribed);
    sub.on('unsubscribed', onUnsubscribed);
    sub.on('error', onError);
    sub.subscribe();
  });
}

/**
 * Collects publications of `sub` and lets tests await the n-th one.
 * `next(timeoutMs)` resolves with the next publication's context not yet taken.
 */
export function publicationQueue(sub) {
  const items = [];
  const waiters = [];
  sub.on('publication', (ctx) => {
    const w = waiters.shift();
    if (w) {
      clearTimeout(w.timer);
      w.resolve(ctx);
    } else {
      items.push(ctx);
    }
  });
  return {
    pending: () => items.length,
    next(timeoutMs = 5000) {
      if (items.length) return Promise.resolve(items.shift());
      return new Promise((resolve, reject) => {
        const w = { resolve };
        w.timer = setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) waiters.splice(i, 1);
          reject(new Error(`timed out after ${timeoutMs} ms waiting for a publication on ${sub.channel}`));
        }, timeoutMs);
        waiters.push(w);
      });
    },
  };
}

/**
 * A raw `ws` connection to the native endpoint. Resolves once open with
 * `{ ws, messages, closed }`: `messages` collects text frames, `closed` resolves with
 * `{ code, reason }` when the connection closes.
 */
export function rawSocket(server, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(server.wsUrl);
    const messages = [];
    const closed = new Promise((res) => {
      ws.on('close', (code, reason) => res({ code, reason: reason.toString() }));
    });
    ws.on('message', (data, isBinary) => messages.push(isBinary ? data : data.toString()));
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`raw WebSocket to ${server.wsUrl} did not open within ${timeoutMs} ms`));
    }, timeoutMs);
    ws.once('open', () => {
      clearTimeout(timer);
      resolve({ ws, messages, closed });
    });
    ws.on('error', (err) => {
      // Before open: a failed connect. After open: `closed` reports what happened.
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** A channel name unique to this process and call, under an optional namespace. */
let seq = 0;
export function uniqueChannel(namespace = '') {
  const name = `e2e-${process.pid}-${Date.now().toString(36)}-${++seq}`;
  return namespace ? `${namespace}:${name}` : name;
}

/**
 * An HS256 JWT signed with `secret`, made by hand with `node:crypto` (no JWT library), the way a
 * backend signs connection and subscription tokens. `ttlSeconds` sets `exp` (and `iat`) unless
 * `claims` has them; 0 or null means no `exp`.
 */
export function signJwt(claims, secret, ttlSeconds = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const payload = { iat: now, ...claims };
  if (ttlSeconds && payload.exp === undefined) payload.exp = now + ttlSeconds;
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const unsigned = `${b64({ typ: 'JWT', alg: 'HS256' })}.${b64(payload)}`;
  const sig = createHmac('sha256', secret).update(unsigned).digest('base64url');
  return `${unsigned}.${sig}`;
}

/**
 * Calls the server API: `POST /api/<method>` with `body` as JSON and the key in `X-API-Key`.
 * Resolves with `{ status, body }` (the parsed JSON answer, or the text when it is not JSON).
 */
export async function apiCall(server, method, body = {}, apiKey = undefined, timeoutMs = 5000) {
  const headers = { 'Content-Type': 'application/json' };
  if (apiKey !== undefined) headers['X-API-Key'] = apiKey;
  const res = await fetch(`${server.httpUrl}/api/${method}`, {
    method: 'POST',
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  return { status: res.status, body: parsed };
}

/**
 * `apiCall` that expects success: HTTP 200 and no `error` in the answer; resolves with `result`
 * (or `{}` when the answer has none).
 */
export async function api(server, method, body = {}, apiKey = undefined, timeoutMs = 5000) {
  const { status, body: answer } = await apiCall(server, method, body, apiKey, timeoutMs);
  if (status !== 200 || typeof answer !== 'object' || answer === null || answer.error) {
    throw new Error(
      `server API ${method} ${JSON.stringify(body)} failed: HTTP ${status} ${JSON.stringify(answer)}`,
    );
  }
  return answer.result ?? {};
}

/**
 * A round-robin HTTP load balancer on a free loopback port: every request goes to the next of
 * `backends` (anything with an `httpUrl`). `seen[k]` counts the requests backend `k` got. No
 * WebSocket upgrades.
 */
export async function roundRobin(backends) {
  let i = 0;
  const seen = backends.map(() => 0);
  const server = http.createServer((req, res) => {
    const k = i++ % backends.length;
    seen[k]++;
    const target = new URL(backends[k].httpUrl);
    const up = http.request(
      { host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers },
      (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    httpUrl: `http://127.0.0.1:${server.address().port}`,
    seen,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}

/** Where the library examples are (`EXAMPLES_DIR`, else ../target/release/examples). */
const EXAMPLES = process.env.EXAMPLES_DIR || path.join(here, '..', 'target', 'release', 'examples');

/**
 * Runs the library example `socketio_chat` (crates/switchboard/examples) on a free port, with
 * `env` added to its environment (`REDIS_PREFIX` puts it on the local Redis). Returns
 * `{ httpUrl, wsUrl, stop() }`.
 */
export async function startChatExample(env = {}) {
  const child = spawn(path.join(EXAMPLES, 'socketio_chat'), [], {
    env: { ...process.env, ADDR: '127.0.0.1:0', RUST_LOG: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (c) => (log += c));
  const address = await withTimeout(
    new Promise((resolve, reject) => {
      child.stdout.on('data', (c) => {
        log += c;
        const m = /listening on http:\/\/(\S+)/.exec(log);
        if (m) resolve(m[1]);
      });
      child.once('exit', (code) => reject(new Error(`socketio_chat exited (${code}): ${log}`)));
    }),
    15000,
    'socketio_chat did not start',
  );
  return {
    httpUrl: `http://${address}`,
    wsUrl: `ws://${address}/connection/websocket`,
    stop: () => {
      child.kill('SIGTERM');
      return new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', resolve)));
    },
  };
}
