// Support for the integration tests: our SDK (the built dist/) against the real binary, over
// each transport. Servers are started with e2e/helpers.mjs (SWITCHBOARD_BIN picks the binary).

import http from 'node:http';

import { EventSource } from 'eventsource';
import WebSocket from 'ws';

import { Client } from '../../dist/switchboard.js';

export { api, delay, signJwt, startServer, uniqueChannel } from '../../../../e2e/helpers.mjs';

export const TRANSPORTS = ['websocket', 'http_stream', 'sse'];

/** A client of `server` over `transport` only (or `transports`), with short delays for tests. */
export function newClient(server, transport, options = {}) {
  return new Client(server.httpUrl, {
    websocket: WebSocket,
    eventsource: EventSource,
    transports: Array.isArray(transport) ? transport : [transport],
    minReconnectDelay: 50,
    maxReconnectDelay: 500,
    timeout: 5000,
    networkEvents: null,
    ...options,
  });
}

/** Resolves with the first `event` of `emitter` (our SDK's `on`) passing `predicate`. */
export function next(emitter, event, predicate = () => true, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for '${event}'`));
    }, timeoutMs);
    const off = emitter.on(event, (ctx) => {
      if (!predicate(ctx)) return;
      clearTimeout(timer);
      off();
      resolve(ctx);
    });
  });
}

/** Collects `publication` events of `sub`; `wait(n)` resolves once n arrived. */
export function collect(sub, event = 'publication') {
  const items = [];
  const waiters = [];
  sub.on(event, (ctx) => {
    items.push(ctx);
    for (const w of waiters.slice()) if (items.length >= w.n) w.resolve(items);
  });
  items.wait = (n, timeoutMs = 5000) =>
    items.length >= n
      ? Promise.resolve(items)
      : new Promise((resolve, reject) => {
          const w = { n, resolve };
          waiters.push(w);
          setTimeout(() => reject(new Error(`got ${items.length} of ${n} ${event}s`)), timeoutMs);
        });
  return items;
}

/** A stand-in for `window` online/offline events. */
export class Network extends EventTarget {
  fire(type) {
    this.dispatchEvent(new Event(type));
  }
}

/**
 * The application backend for the RPC proxy: `echo` answers its data, `fail` a custom error.
 * Returns `{ url, calls, close() }`.
 */
export async function rpcBackend() {
  const calls = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const r = JSON.parse(body);
      calls.push(r);
      const answer =
        r.method === 'fail'
          ? { error: { code: 4000, message: 'custom failure' } }
          : { result: { data: { method: r.method, echo: r.data, transport: r.transport } } };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/rpc`,
    calls,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
