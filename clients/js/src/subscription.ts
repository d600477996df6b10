// A subscription's state machine: unsubscribed -> subscribing -> subscribed, resubscribing with
// recovery from its last position, subscription tokens and their refresh.

import { backoff, refreshDelay } from './backoff.js';
import type { Client } from './client.js';
import { Emitter } from './emitter.js';
import {
  ConnectingCode,
  ErrorCode,
  SubscribingCode,
  SwitchboardError,
  UnsubscribedCode,
} from './errors.js';
import {
  clientInfo,
  publication,
  subscribedContext,
  type ClientInfo,
  type ErrorContext,
  type HistoryOptions,
  type HistoryResult,
  type JoinLeave,
  type PresenceStats,
  type Publication,
  type RawPublication,
  type RawPush,
  type RawSubscribeResult,
  type StateContext,
  type StreamPosition,
  type SubscribedContext,
} from './types.js';

/** A subscription's state. */
export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

/** Options of {@link Client.newSubscription}. Every one is optional. */
export interface SubscriptionOptions {
  /** Subscription token (JWT), for private channels. */
  token?: string;
  /**
   * Fetches a subscription token: before the first subscribe when `token` is empty, when the
   * server says it expired, and before it expires. Resolve with `''` to give up: the
   * subscription becomes unsubscribed.
   */
  getToken?: (ctx: { channel: string }) => Promise<string>;
  /** Sent with every subscribe (the server's subscribe handler or proxy sees it). */
  data?: unknown;
  /** Ask for a recoverable subscription: after a reconnect, missed publications are recovered. */
  recoverable?: boolean;
  /** Ask for a positioned subscription (the server tells when it may have missed publications). */
  positioned?: boolean;
  /** Receive `join` and `leave` events. */
  joinLeave?: boolean;
  /** Start from this position: the first subscribe recovers what was published after it. */
  since?: StreamPosition;
}

/** The events of a {@link Subscription}. */
export interface SubscriptionEvents {
  state: { newState: SubscriptionState; oldState: SubscriptionState };
  subscribing: StateContext & { channel: string };
  subscribed: SubscribedContext;
  unsubscribed: StateContext & { channel: string };
  publication: Publication;
  join: JoinLeave;
  leave: JoinLeave;
  error: ErrorContext;
}

type Timer = ReturnType<typeof setTimeout> | undefined;

/** A subscription to one channel; create it with {@link Client.newSubscription}. */
export class Subscription extends Emitter<SubscriptionEvents> {
  /** The subscription's state. */
  state: SubscriptionState = 'unsubscribed';
  /** The channel. */
  readonly channel: string;

  private _c: Client;
  private _o: SubscriptionOptions;
  private _token: string;
  private _needToken = false;
  private _pos: StreamPosition | undefined;
  private _gen = 0;
  private _attempts = 0;
  private _timer: Timer;
  private _refreshTimer: Timer;
  private _waiters: [() => void, (e: SwitchboardError) => void][] = [];

  /** @internal */
  constructor(client: Client, channel: string, options: SubscriptionOptions) {
    super();
    this._c = client;
    this.channel = channel;
    this._o = options;
    this._token = options.token || '';
    this._pos = options.since && { ...options.since };
  }

  /** The last position seen, when the subscription is recoverable. */
  get position(): StreamPosition | undefined {
    return this._pos && { ...this._pos };
  }

  /** Starts subscribing (no-op unless unsubscribed); stays subscribed across reconnects. */
  subscribe(): void {
    if (this.state !== 'unsubscribed') return;
    this._subscribing(SubscribingCode.SubscribeCalled, 'subscribe called');
    if (this._c.state === 'connected') this._send();
  }

  /** Unsubscribes (no-op if unsubscribed). */
  unsubscribe(): void {
    if (this.state === 'unsubscribed') return;
    this._unsubscribed(UnsubscribedCode.UnsubscribeCalled, 'unsubscribe called');
  }

  /** Resolves once subscribed; rejects when unsubscribed or after `timeout` ms. */
  ready(timeout = this._c._o.timeout): Promise<void> {
    return this.state === 'subscribed'
      ? Promise.resolve()
      : new Promise((resolve, reject) => {
          if (this.state === 'unsubscribed') return reject(unsubscribedError());
          const timer = setTimeout(() => {
            this._waiters = this._waiters.filter((w) => w !== entry);
            reject(new SwitchboardError(ErrorCode.Timeout, 'timeout', true));
          }, timeout);
          const entry: [() => void, (e: SwitchboardError) => void] = [
            () => {
              clearTimeout(timer);
              resolve();
            },
            (e) => {
              clearTimeout(timer);
              reject(e);
            },
          ];
          this._waiters.push(entry);
        });
  }

  /** Publishes into the channel once subscribed. */
  async publish(data: unknown): Promise<void> {
    await this.ready();
    return this._c.publish(this.channel, data);
  }

  /** The channel's history (once subscribed). */
  async history(options?: HistoryOptions): Promise<HistoryResult> {
    await this.ready();
    return this._c.history(this.channel, options);
  }

  /** The channel's presence (once subscribed). */
  async presence(): Promise<Record<string, ClientInfo>> {
    await this.ready();
    return this._c.presence(this.channel);
  }

  /** The channel's presence counts (once subscribed). */
  async presenceStats(): Promise<PresenceStats> {
    await this.ready();
    return this._c.presenceStats(this.channel);
  }

  // ---- internals (called by the client) ----

  /** @internal Sends the subscribe command (the client is connected). */
  async _send(): Promise<void> {
    const gen = ++this._gen;
    const o = this._o;
    const get = o.getToken;
    if (this._needToken || (!this._token && get)) {
      if (!get) return this._unsubscribed(UnsubscribedCode.Unauthorized, 'token expired');
      let token: string;
      try {
        token = await get({ channel: this.channel });
      } catch (e) {
        if (gen === this._gen) {
          this._c._error('subscribeToken', e, this.channel);
          this._retry();
        }
        return;
      }
      if (gen !== this._gen) return;
      if (!token) return this._unsubscribed(UnsubscribedCode.Unauthorized, 'unauthorized');
      this._token = token;
      this._needToken = false;
    }
    const pos = this._pos;
    this._c._cmd(
      'subscribe',
      {
        channel: this.channel,
        token: this._token || undefined,
        data: o.data,
        recoverable: o.recoverable || undefined,
        positioned: o.positioned || undefined,
        join_leave: o.joinLeave || undefined,
        recover: pos ? true : undefined,
        offset: pos?.offset,
        epoch: pos?.epoch,
      },
      (r) => gen === this._gen && this._subscribed(r as RawSubscribeResult),
      (e) => gen === this._gen && this._failed(e),
    );
  }

  /** @internal The client lost its connection: wait for the next one. */
  _clientLost(): void {
    this._stop();
    if (this.state === 'subscribed') this._subscribing(SubscribingCode.TransportClosed, 'transport closed');
  }

  /** @internal A push for this channel. */
  _push(p: RawPush): void {
    const channel = this.channel;
    if (p.pub) this._pub(p.pub);
    else if (p.join) this._emit('join', { channel, info: clientInfo(p.join.info)! });
    else if (p.leave) this._emit('leave', { channel, info: clientInfo(p.leave.info)! });
    else if (p.unsubscribe && this.state !== 'unsubscribed') {
      const { code = 0, reason = '' } = p.unsubscribe;
      if (code < 2500) return this._unsubscribed(code, reason, false);
      // 2500 and up: resubscribe (2501: the subscription token expired).
      this._stop();
      this._needToken = code === 2501;
      this._subscribing(code, reason);
      this._retry();
    }
  }

  private _subscribed(r: RawSubscribeResult): void {
    this._attempts = 0;
    if (!r.recoverable) this._pos = undefined;
    this.state = 'subscribed';
    this._emit('state', { newState: 'subscribed', oldState: 'subscribing' });
    this._emit('subscribed', subscribedContext(this.channel, r));
    const waiters = this._waiters;
    this._waiters = [];
    for (const [resolve] of waiters) resolve();
    if (r.expires) this._refreshIn(r.ttl || 0);
    for (const p of r.publications || []) this._pub(p);
    if (r.recoverable && this.state === 'subscribed') {
      this._pos = { offset: r.offset || 0, epoch: r.epoch || '' };
    }
  }

  private _failed(err: SwitchboardError): void {
    if (err.code === ErrorCode.TransportClosed) return;
    if (err.code === ErrorCode.Timeout) {
      // The server may have subscribed us anyway: start the connection over to be sure.
      return this._c._lost(ConnectingCode.SubscribeTimeout, 'subscribe timeout');
    }
    this._c._error('subscribe', err, this.channel);
    if (err.code === ErrorCode.TokenExpired) {
      this._needToken = true;
      this._retry();
    } else if (err.temporary) {
      this._retry();
    } else {
      this._unsubscribed(err.code, err.message, false);
    }
  }

  private _pub(raw: RawPublication): void {
    if (this.state !== 'subscribed') return;
    if (this._pos && raw.offset) this._pos.offset = raw.offset;
    this._emit('publication', publication(this.channel, raw));
  }

  private _retry(): void {
    const o = this._c._o;
    this._timer = setTimeout(
      () => this._c.state === 'connected' && this._send(),
      backoff(this._attempts++, o.minReconnectDelay, o.maxReconnectDelay),
    );
  }

  private _refreshIn(ttl: number): void {
    this._refreshTimer = setTimeout(() => this._refresh(), refreshDelay(ttl));
  }

  private async _refresh(): Promise<void> {
    const gen = this._gen;
    const get = this._o.getToken;
    if (!get) return;
    try {
      const token = await get({ channel: this.channel });
      if (gen !== this._gen) return;
      if (!token) return this._unsubscribed(UnsubscribedCode.Unauthorized, 'unauthorized');
      this._token = token;
      const r = (await this._c._call('sub_refresh', { channel: this.channel, token })) as {
        expires?: boolean;
        ttl?: number;
      };
      if (gen === this._gen && r.expires) this._refreshIn(r.ttl || 0);
    } catch (e) {
      if (gen !== this._gen) return;
      this._c._error('subscriptionRefresh', e, this.channel);
      const o = this._c._o;
      this._refreshTimer = setTimeout(() => this._refresh(), backoff(1, o.minReconnectDelay, o.maxReconnectDelay));
    }
  }

  private _stop(): void {
    this._gen++;
    clearTimeout(this._timer);
    clearTimeout(this._refreshTimer);
  }

  private _subscribing(code: number, reason: string): void {
    const old = this.state;
    this.state = 'subscribing';
    if (old !== 'subscribing') this._emit('state', { newState: 'subscribing', oldState: old });
    this._emit('subscribing', { channel: this.channel, code, reason });
  }

  /** Becomes unsubscribed; tells the server unless it was the server's idea (`tell` false). */
  private _unsubscribed(code: number, reason: string, tell = true): void {
    const old = this.state;
    this._stop();
    this.state = 'unsubscribed';
    if (tell && this._c.state === 'connected') {
      this._c._call('unsubscribe', { channel: this.channel }).catch(() => {});
    }
    const waiters = this._waiters;
    this._waiters = [];
    for (const [, reject] of waiters) reject(unsubscribedError());
    this._emit('state', { newState: 'unsubscribed', oldState: old });
    this._emit('unsubscribed', { channel: this.channel, code, reason });
  }
}

function unsubscribedError(): SwitchboardError {
  return new SwitchboardError(ErrorCode.Unsubscribed, 'subscription unsubscribed');
}
