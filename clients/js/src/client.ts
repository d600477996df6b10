// The client core: connection state machine, commands and replies, reconnect with backoff,
// transport fallback, ping watchdog, token refresh, server-side subscriptions.

import { backoff, refreshDelay } from './backoff.js';
import { Emitter } from './emitter.js';
import {
  asError,
  ConnectingCode,
  DisconnectedCode,
  ErrorCode,
  SwitchboardError,
} from './errors.js';
import { Subscription, type SubscriptionOptions } from './subscription.js';
import { endpointsFor, LOST, openTransport, type Transport } from './transport.js';
import {
  clientInfo,
  publication,
  subscribedContext,
  type ClientInfo,
  type ErrorContext,
  type EventSourceConstructor,
  type HistoryOptions,
  type HistoryResult,
  type JoinLeave,
  type NetworkEvents,
  type PresenceStats,
  type Publication,
  type RawClientInfo,
  type RawConnectResult,
  type RawMessage,
  type RawPublication,
  type RawPush,
  type RawSubscribeResult,
  type StateContext,
  type StreamPosition,
  type SubscribedContext,
  type TransportEndpoint,
  type TransportName,
  type WebSocketConstructor,
} from './types.js';

declare const SDK_VERSION: string;

/** The connection's state. */
export type ClientState = 'disconnected' | 'connecting' | 'connected';

/** Options of {@link Client}. Every one is optional. */
export interface ClientOptions {
  /** Connection token (JWT). */
  token?: string;
  /**
   * Fetches a connection token: called before the first connect when `token` is empty, when
   * the server says the token expired, and before the token expires (to refresh it). Resolve
   * with `''` to say "this user may not connect": the client then disconnects.
   */
  getToken?: () => Promise<string>;
  /** Sent with every connect (the server's connect handler or proxy sees it). */
  data?: unknown;
  /** Client name sent in connect (default `switchboard-js`). */
  name?: string;
  /** When a string endpoint is an http(s) address: the transports to try, in order. */
  transports?: TransportName[];
  /** Where the emulated transports post commands (default: `/emulation` beside the endpoint). */
  emulationEndpoint?: string;
  /** Milliseconds to wait for a reply, and for a connection when a call is made while connecting (default 5000). */
  timeout?: number;
  /** Backoff bounds in milliseconds (defaults 500 and 20000). */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** Extra milliseconds to wait for the server's ping before reconnecting (default 10000). */
  maxServerPingDelay?: number;
  /** WebSocket constructor (default the global one; in Node 20 pass `ws`'s `WebSocket`). */
  websocket?: WebSocketConstructor;
  /** fetch for http_stream and sse (default the global one). */
  fetch?: typeof fetch;
  /** EventSource constructor for sse (default the global one). */
  eventsource?: EventSourceConstructor;
  /** Source of `online`/`offline` events (default `window` in browsers; `null` turns it off). */
  networkEvents?: NetworkEvents | null;
}

/** The events of a {@link Client}. */
export interface ClientEvents {
  state: { newState: ClientState; oldState: ClientState };
  connecting: StateContext;
  connected: { client: string; transport: TransportName; data?: unknown };
  disconnected: StateContext;
  error: ErrorContext;
  /** An asynchronous message sent to this client (outside channels). */
  message: { data: unknown };
  /** Server-side subscriptions (from the token, the connect handler, the server API). */
  subscribed: SubscribedContext;
  unsubscribed: { channel: string; code: number; reason: string };
  publication: Publication;
  join: JoinLeave;
  leave: JoinLeave;
}

interface Pending {
  resolve(result: unknown): void;
  reject(err: SwitchboardError): void;
}

type Options = ClientOptions & {
  timeout: number;
  minReconnectDelay: number;
  maxReconnectDelay: number;
  maxServerPingDelay: number;
};

type Timer = ReturnType<typeof setTimeout> | undefined;

/**
 * A connection to Switchboard. Create it, add subscriptions with {@link newSubscription}, then
 * {@link connect}: it stays connected (reconnecting with backoff, falling back to other
 * transports, resubscribing with recovery) until {@link disconnect}.
 */
export class Client extends Emitter<ClientEvents> {
  /** The connection's state. */
  state: ClientState = 'disconnected';
  /** The client id the server gave this connection (while connected). */
  id = '';
  /** The transport in use (while connected). */
  transport: TransportName | '' = '';

  /** @internal */
  _o: Options;
  private _endpoints: TransportEndpoint[];
  private _index = 0;
  private _good = 0;
  private _tried = 0;
  private _t: Transport | null = null;
  private _gen = 0;
  private _lastId = 0;
  private _pending = new Map<number, Pending>();
  private _out: string[] = [];
  private _session = '';
  private _node = '';
  private _token: string;
  private _needToken = false;
  private _attempts = 0;
  private _reconnectTimer: Timer;
  private _pingTimer: Timer;
  private _refreshTimer: Timer;
  private _pingMs = 0;
  private _pong = false;
  private _subs = new Map<string, Subscription>();
  private _serverSubs = new Map<string, StreamPosition | null>();
  private _waiters: Pending[] = [];
  private _offline = false;
  private _net: NetworkEvents | null;

  /**
   * @param endpoint `http(s)://host:port` (every transport, see `transports`), a `ws(s)://`
   *   WebSocket URL, or an explicit list of transports and their URLs, tried in order.
   */
  constructor(endpoint: string | TransportEndpoint[], options: ClientOptions = {}) {
    super();
    const g = globalThis as unknown as { WebSocket?: unknown; EventSource?: unknown; window?: NetworkEvents };
    this._o = {
      timeout: 5000,
      minReconnectDelay: 500,
      maxReconnectDelay: 20000,
      maxServerPingDelay: 10000,
      websocket: g.WebSocket as WebSocketConstructor | undefined,
      fetch: typeof fetch === 'function' ? (i, init) => fetch(i, init) : undefined,
      eventsource: g.EventSource as EventSourceConstructor | undefined,
      ...options,
    } as Options;
    this._endpoints = typeof endpoint === 'string' ? endpointsFor(endpoint, options.transports) : endpoint;
    if (!this._endpoints.length) throw new SwitchboardError(ErrorCode.BadConfiguration, 'no endpoint');
    this._token = options.token || '';
    this._net = options.networkEvents !== undefined ? options.networkEvents : g.window || null;
  }

  /** Starts connecting (no-op unless disconnected). */
  connect(): void {
    if (this.state !== 'disconnected') return;
    this._listen('addEventListener');
    this._attempts = this._tried = 0;
    this._setState('connecting');
    this._emit('connecting', { code: ConnectingCode.ConnectCalled, reason: 'connect called' });
    this._open();
  }

  /** Closes the connection for good (until `connect` is called again). */
  disconnect(): void {
    this._disconnect(DisconnectedCode.DisconnectCalled, 'disconnect called');
  }

  /** Resolves once connected; rejects when disconnected or after `timeout` ms. */
  ready(timeout = this._o.timeout): Promise<void> {
    return this.state === 'connected'
      ? Promise.resolve()
      : new Promise((resolve, reject) => {
          if (this.state === 'disconnected') return reject(disconnectedError());
          const w: Pending = {
            resolve: () => {
              clearTimeout(timer);
              resolve();
            },
            reject: (e) => {
              clearTimeout(timer);
              this._waiters = this._waiters.filter((x) => x !== w);
              reject(e);
            },
          };
          const timer = setTimeout(() => w.reject(new SwitchboardError(ErrorCode.Timeout, 'timeout', true)), timeout);
          this._waiters.push(w);
        });
  }

  /** A new subscription to `channel` (throws if the client already has one). */
  newSubscription(channel: string, options: SubscriptionOptions = {}): Subscription {
    if (this._subs.has(channel)) {
      throw new SwitchboardError(ErrorCode.AlreadySubscribed, `already subscribed: ${channel}`);
    }
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    return sub;
  }

  /** The subscription to `channel`, or null. */
  getSubscription(channel: string): Subscription | null {
    return this._subs.get(channel) || null;
  }

  /** Unsubscribes `sub` and forgets it. */
  removeSubscription(sub: Subscription): void {
    sub.unsubscribe();
    this._subs.delete(sub.channel);
  }

  /** Every subscription of this client, by channel. */
  subscriptions(): Record<string, Subscription> {
    return Object.fromEntries(this._subs);
  }

  /** Publishes `data` into `channel`; resolves once the server accepted it. */
  async publish(channel: string, data: unknown): Promise<void> {
    await this._request('publish', { channel, data });
  }

  /** Calls the server's RPC handler `method` with `data`. */
  async rpc(method: string, data?: unknown): Promise<{ data: unknown }> {
    const r = (await this._request('rpc', { method, data })) as { data?: unknown };
    return { data: r.data };
  }

  /** The channel's history (needs history in its namespace and permission). */
  async history(channel: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    const r = (await this._request('history', { channel, ...options })) as {
      publications?: RawPublication[];
      offset?: number;
      epoch?: string;
    };
    return {
      publications: (r.publications || []).map((p) => publication(channel, p)),
      offset: r.offset || 0,
      epoch: r.epoch || '',
    };
  }

  /** Who is subscribed to `channel`, by client id. */
  async presence(channel: string): Promise<Record<string, ClientInfo>> {
    const r = (await this._request('presence', { channel })) as { presence?: Record<string, RawClientInfo> };
    const out: Record<string, ClientInfo> = {};
    for (const [k, v] of Object.entries(r.presence || {})) out[k] = clientInfo(v)!;
    return out;
  }

  /** How many clients and users are subscribed to `channel`. */
  async presenceStats(channel: string): Promise<PresenceStats> {
    const r = (await this._request('presence_stats', { channel })) as { num_clients?: number; num_users?: number };
    return { numClients: r.num_clients || 0, numUsers: r.num_users || 0 };
  }

  /** Sends `data` to the server's message handler (no reply). */
  async send(data: unknown): Promise<void> {
    await this.ready();
    this._queue(JSON.stringify({ send: { data } }));
  }

  // ---- internals ----

  private async _request(method: string, params: object): Promise<unknown> {
    await this.ready();
    return this._call(method, params);
  }

  /** @internal Sends a command now (connected only); resolves with its result. */
  _call(method: string, params: object): Promise<unknown> {
    return new Promise((resolve, reject) => this._cmd(method, params, resolve, reject));
  }

  /**
   * @internal Sends a command now (connected only). The callbacks run while the reply is read,
   * before the messages that follow it in the same frame.
   */
  _cmd(method: string, params: object, resolve: (r: unknown) => void, reject: (e: SwitchboardError) => void): void {
    if (this.state !== 'connected') return reject(disconnectedError());
    const id = this._expect(resolve, reject);
    this._queue(JSON.stringify({ id, [method]: params }));
  }

  private _expect(resolve: (r: unknown) => void, reject: (e: SwitchboardError) => void): number {
    const id = ++this._lastId;
    const timer = setTimeout(() => {
      this._pending.delete(id);
      reject(new SwitchboardError(ErrorCode.Timeout, 'timeout', true));
    }, this._o.timeout);
    this._pending.set(id, {
      resolve(r) {
        clearTimeout(timer);
        resolve(r);
      },
      reject(e) {
        clearTimeout(timer);
        reject(e);
      },
    });
    return id;
  }

  private _queue(command: string): void {
    if (this._out.push(command) === 1) {
      queueMicrotask(() => {
        const t = this._t;
        if (t && this._out.length) t.send(this._out.join('\n'), this._session, this._node);
        this._out = [];
      });
    }
  }

  private _setState(state: ClientState): void {
    const old = this.state;
    if (old !== state) {
      this.state = state;
      this._emit('state', { newState: state, oldState: old });
    }
  }

  /** @internal */
  _error(type: string, err: unknown, channel?: string): void {
    this._emit('error', { type, error: asError(err), channel });
  }

  private async _open(): Promise<void> {
    const gen = ++this._gen;
    if (this._offline) return;
    const get = this._o.getToken;
    if (this._needToken || (!this._token && get)) {
      if (!get) return this._disconnect(DisconnectedCode.Unauthorized, 'token expired');
      let token: string;
      try {
        token = await get();
      } catch (e) {
        if (gen === this._gen) {
          this._error('connectToken', e);
          this._schedule();
        }
        return;
      }
      if (gen !== this._gen) return;
      if (!token) return this._disconnect(DisconnectedCode.Unauthorized, 'unauthorized');
      this._token = token;
      this._needToken = false;
    }
    const subs: Record<string, object> = {};
    for (const [channel, pos] of this._serverSubs) if (pos) subs[channel] = { recover: true, ...pos };
    const id = this._expect(
      (r) => gen === this._gen && this._connected(r as RawConnectResult),
      (e) => gen === this._gen && this._connectError(e),
    );
    const first = JSON.stringify({
      id,
      connect: {
        token: this._token || undefined,
        data: this._o.data,
        name: this._o.name || 'switchboard-js',
        version: SDK_VERSION,
        subs: this._serverSubs.size ? subs : undefined,
      },
    });
    const ep = this._endpoints[this._index]!;
    this._t = openTransport(ep, this._o, first, {
      message: (text) => gen === this._gen && this._receive(text),
      closed: (code, reason) => gen === this._gen && this._closed(code, reason),
    });
    if (!this._t) this._closed(LOST, `${ep.transport} not available`);
  }

  private _receive(text: string): void {
    const gen = this._gen;
    for (const line of text.split('\n')) {
      if (gen !== this._gen) return;
      if (!line.trim()) continue;
      let msg: RawMessage;
      try {
        msg = JSON.parse(line) as RawMessage;
      } catch {
        return this._disconnect(DisconnectedCode.BadProtocol, 'bad protocol');
      }
      this._watchPing();
      if (msg.id) {
        const p = this._pending.get(msg.id);
        this._pending.delete(msg.id);
        const { id, error, ...rest } = msg;
        if (error) p?.reject(new SwitchboardError(error.code, error.message, !!error.temporary));
        else p?.resolve(Object.values(rest)[0] || {});
      } else if (msg.push) {
        this._push(msg.push);
      } else if (this._pong) {
        this._queue('{}');
      }
    }
  }

  private _watchPing(): void {
    clearTimeout(this._pingTimer);
    if (this._pingMs) {
      this._pingTimer = setTimeout(
        () => this._lost(ConnectingCode.NoPing, 'no ping'),
        this._pingMs + this._o.maxServerPingDelay,
      );
    }
  }

  private _connected(r: RawConnectResult): void {
    const gen = this._gen;
    this._good = this._index;
    this._attempts = this._tried = 0;
    this.id = r.client;
    this.transport = this._endpoints[this._index]!.transport;
    this._session = r.session || '';
    this._node = r.node || '';
    this._pingMs = (r.ping || 0) * 1000;
    this._pong = !!r.pong;
    this._watchPing();
    if (r.expires) this._refreshIn(r.ttl || 0);
    this._setState('connected');
    const subs = r.subs || {};
    for (const channel of this._serverSubs.keys()) if (!(channel in subs)) this._serverSubs.delete(channel);
    this._emit('connected', { client: r.client, transport: this.transport, data: r.data });
    for (const [channel, res] of Object.entries(subs)) this._serverSubscribed(channel, res);
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) w.resolve(undefined);
    if (gen !== this._gen) return;
    for (const sub of this._subs.values()) if (sub.state === 'subscribing') sub._send();
  }

  private _connectError(err: SwitchboardError): void {
    this._error('connect', err);
    if (err.code === ErrorCode.TokenExpired) {
      this._needToken = true;
      this._lost(ConnectingCode.TransportClosed, 'token expired', 0);
    } else if (err.code === ErrorCode.Timeout) {
      this._closed(LOST, 'connect timeout');
    } else if (err.temporary || err.code < 100) {
      this._lost(ConnectingCode.TransportClosed, err.message);
    } else {
      this._disconnect(err.code, err.message);
    }
  }

  private _closed(code: number, reason: string, reconnect = true): void {
    if (!reconnect || (code >= 3500 && code < 4000) || (code >= 4500 && code < 5000) || code === 1009) {
      return this._disconnect(code === 1009 ? DisconnectedCode.MessageSizeLimit : code, reason);
    }
    if (this.state === 'connected') return this._lost(code || ConnectingCode.TransportClosed, reason);
    // The attempt failed before connecting: try the next transport at once; after a whole
    // round, wait and start over from the one that worked last.
    this._error('transport', new SwitchboardError(ErrorCode.TransportClosed, reason, true));
    this._drop();
    this._index = (this._index + 1) % this._endpoints.length;
    if (++this._tried < this._endpoints.length) return void this._open();
    this._tried = 0;
    this._index = this._good;
    this._schedule();
  }

  /** @internal The connection is gone; connect again after a backoff delay (or `delay`). */
  _lost(code: number, reason: string, delay?: number): void {
    this._drop();
    this._tried = 0;
    if (this.state !== 'connecting') {
      this._setState('connecting');
      this._emit('connecting', { code, reason });
    }
    this._schedule(delay);
  }

  private _schedule(delay?: number): void {
    const o = this._o;
    this._reconnectTimer = setTimeout(
      () => this._open(),
      delay ?? backoff(this._attempts++, o.minReconnectDelay, o.maxReconnectDelay),
    );
  }

  private _disconnect(code: number, reason: string): void {
    if (this.state === 'disconnected') return;
    this._drop(ErrorCode.ClientDisconnected);
    this._listen('removeEventListener');
    this._setState('disconnected');
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) w.reject(disconnectedError());
    this._emit('disconnected', { code, reason });
  }

  /** Closes the transport, fails the calls in flight and stops the timers. */
  private _drop(code: number = ErrorCode.TransportClosed): void {
    this._gen++;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._pingTimer);
    clearTimeout(this._refreshTimer);
    this._t?.close();
    this._t = null;
    this._out = [];
    this.id = '';
    this.transport = '';
    const pending = this._pending;
    this._pending = new Map();
    for (const p of pending.values()) p.reject(new SwitchboardError(code, 'transport closed', true));
    for (const sub of this._subs.values()) sub._clientLost();
  }

  private _refreshIn(ttl: number): void {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = setTimeout(() => this._refresh(), refreshDelay(ttl));
  }

  private async _refresh(): Promise<void> {
    const gen = this._gen;
    const get = this._o.getToken;
    if (!get) return;
    try {
      const token = await get();
      if (gen !== this._gen) return;
      if (!token) return this._disconnect(DisconnectedCode.Unauthorized, 'unauthorized');
      this._token = token;
      const r = (await this._call('refresh', { token })) as { expires?: boolean; ttl?: number };
      if (gen === this._gen && r.expires) this._refreshIn(r.ttl || 0);
    } catch (e) {
      if (gen !== this._gen) return;
      this._error('refresh', e);
      const o = this._o;
      this._refreshTimer = setTimeout(() => this._refresh(), backoff(1, o.minReconnectDelay, o.maxReconnectDelay));
    }
  }

  private _push(p: RawPush): void {
    const channel = p.channel || '';
    const d = p.disconnect;
    if (d) return this._closed(d.code, d.reason, d.reconnect !== false);
    if (p.message) return this._emit('message', { data: p.message.data });
    const sub = this._subs.get(channel);
    if (sub) return sub._push(p);
    if (p.subscribe) this._serverSubscribed(channel, p.subscribe);
    else if (p.unsubscribe) {
      this._serverSubs.delete(channel);
      this._emit('unsubscribed', { channel, code: p.unsubscribe.code || 0, reason: p.unsubscribe.reason || '' });
    } else if (p.pub) this._serverPub(channel, p.pub);
    else if (p.join) this._emit('join', { channel, info: clientInfo(p.join.info)! });
    else if (p.leave) this._emit('leave', { channel, info: clientInfo(p.leave.info)! });
  }

  private _serverSubscribed(channel: string, r: RawSubscribeResult): void {
    this._serverSubs.set(channel, null);
    this._emit('subscribed', subscribedContext(channel, r));
    for (const p of r.publications || []) this._serverPub(channel, p);
    if (r.recoverable) this._serverSubs.set(channel, { offset: r.offset || 0, epoch: r.epoch || '' });
  }

  private _serverPub(channel: string, raw: RawPublication): void {
    const pos = this._serverSubs.get(channel);
    if (pos && raw.offset) pos.offset = raw.offset;
    this._emit('publication', publication(channel, raw));
  }

  private _listen(method: 'addEventListener' | 'removeEventListener'): void {
    this._net?.[method]('offline', this._onOffline);
    this._net?.[method]('online', this._onOnline);
  }

  private _onOffline = (): void => {
    this._offline = true;
    if (this.state !== 'disconnected') this._lost(ConnectingCode.Offline, 'offline');
  };

  private _onOnline = (): void => {
    this._offline = false;
    if (this.state === 'connecting' && !this._t) {
      clearTimeout(this._reconnectTimer);
      this._attempts = 0;
      this._open();
    }
  };
}

function disconnectedError(): SwitchboardError {
  return new SwitchboardError(ErrorCode.ClientDisconnected, 'client disconnected');
}
