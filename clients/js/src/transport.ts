// The three transports behind one interface. Each opens with the client's first batch of
// commands (its `connect`) and reports text and the close; the client core does the protocol.

import type {
  EventSourceConstructor,
  EventSourceLike,
  WebSocketLike,
  TransportEndpoint,
  TransportName,
  WebSocketConstructor,
} from './types.js';

/** What a transport reports to the client. */
export interface TransportCallbacks {
  /** Text from the server: one or more JSON objects separated by `\n`. */
  message(text: string): void;
  /** The transport is gone; called at most once, never after `close()`. */
  closed(code: number, reason: string): void;
}

/** An open (or opening) transport. */
export interface Transport {
  readonly name: TransportName;
  /** Sends a batch of commands (`\n`-separated); `session`/`node` are for the emulated ones. */
  send(data: string, session: string, node: string): void;
  /** Closes without calling `closed`. */
  close(): void;
}

/** What the transports need from the environment. */
export interface TransportEnv {
  websocket?: WebSocketConstructor;
  fetch?: typeof fetch;
  eventsource?: EventSourceConstructor;
  emulationEndpoint?: string;
}

/** The close code the client sees when a transport ended without a server code. */
export const LOST = 0;

/** Opens `ep`, sending `first` (the connect command) as its first batch; null when unsupported here. */
export function openTransport(
  ep: TransportEndpoint,
  env: TransportEnv,
  first: string,
  cb: TransportCallbacks,
): Transport | null {
  let done = false;
  const closed = (code: number, reason: string) => {
    if (!done) {
      done = true;
      cb.closed(code, reason);
    }
  };
  const message = (text: string) => {
    if (!done) cb.message(text);
  };
  if (ep.transport === 'websocket') {
    if (!env.websocket) return null;
    const ws = new env.websocket(ep.endpoint) as WebSocketLike;
    ws.onopen = () => ws.send(first);
    ws.onmessage = (e) => {
      if (typeof e.data === 'string') message(e.data);
      else {
        ws.close(3501);
        closed(3501, 'binary message');
      }
    };
    ws.onclose = (e) => closed(e.code, e.reason);
    ws.onerror = () => {};
    return {
      name: 'websocket',
      send: (data) => ws.send(data),
      close() {
        done = true;
        ws.close();
      },
    };
  }
  const fetchFn = env.fetch;
  if (!fetchFn) return null;
  const emulation =
    env.emulationEndpoint || resolve(ep.endpoint).replace(/\/connection\/\w+(\?.*)?$/, '/emulation');
  const abort = new AbortController();
  let chain: Promise<unknown> = Promise.resolve();
  const lost = () => closed(LOST, 'connection lost');
  const transport: Transport = {
    name: ep.transport,
    // Batches are posted one after another, so they arrive in order.
    send(data, session, node) {
      chain = chain.then(() =>
        fetchFn(emulation, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ session, node, data }),
        }).then((res) => {
          if (!res.ok) lost();
        }, lost),
      );
    },
    close() {
      done = true;
      abort.abort();
      es?.close();
    },
  };
  let es: { close(): void } | undefined;
  if (ep.transport === 'sse') {
    if (!env.eventsource) return null;
    const url = new URL(resolve(ep.endpoint));
    url.searchParams.set('cf_connect', first);
    const source = new env.eventsource(url.toString()) as EventSourceLike;
    es = source;
    source.onmessage = (e) => message(e.data);
    source.onerror = () => {
      source.close();
      lost();
    };
    return transport;
  }
  fetchFn(resolve(ep.endpoint), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: first,
    signal: abort.signal,
  })
    .then(async (res) => {
      if (!res.ok || !res.body) return closed(LOST, `HTTP ${res.status}`);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { done: end, value } = await reader.read();
        if (end) break;
        buf += decoder.decode(value, { stream: true });
        const lines = buf.split('\n');
        buf = lines.pop()!;
        for (const line of lines) if (line) message(line);
      }
      lost();
    })
    .catch(lost);
  return transport;
}

/** `url` resolved against `base` or, in a browser, the page. */
export function resolve(url: string, base?: string): string {
  return new URL(url, base || (typeof location !== 'undefined' ? location.href : undefined)).toString();
}

/**
 * The endpoints for a server address. `http(s)://host[:port][/prefix]` gives every transport (in
 * `order`); a `ws(s)://` URL is a WebSocket endpoint alone.
 */
export function endpointsFor(
  address: string,
  order: TransportName[] = ['websocket', 'http_stream', 'sse'],
): TransportEndpoint[] {
  if (/^wss?:/.test(address)) return [{ transport: 'websocket', endpoint: address }];
  const base = resolve(address).replace(/\/$/, '');
  return order.map((transport) => ({
    transport,
    endpoint:
      (transport === 'websocket' ? base.replace(/^http/, 'ws') : base) + '/connection/' + transport,
  }));
}
