import { Emitter } from './emitter.js';
import { Subscription, type SubscriptionOptions } from './subscription.js';
import { type ClientInfo, type ErrorContext, type EventSourceConstructor, type HistoryOptions, type HistoryResult, type JoinLeave, type NetworkEvents, type PresenceStats, type Publication, type StateContext, type SubscribedContext, type TransportEndpoint, type TransportName, type WebSocketConstructor } from './types.js';
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
    state: {
        newState: ClientState;
        oldState: ClientState;
    };
    connecting: StateContext;
    connected: {
        client: string;
        transport: TransportName;
        data?: unknown;
    };
    disconnected: StateContext;
    error: ErrorContext;
    /** An asynchronous message sent to this client (outside channels). */
    message: {
        data: unknown;
    };
    /** Server-side subscriptions (from the token, the connect handler, the server API). */
    subscribed: SubscribedContext;
    unsubscribed: {
        channel: string;
        code: number;
        reason: string;
    };
    publication: Publication;
    join: JoinLeave;
    leave: JoinLeave;
}
/**
 * A connection to Switchboard. Create it, add subscriptions with {@link newSubscription}, then
 * {@link connect}: it stays connected (reconnecting with backoff, falling back to other
 * transports, resubscribing with recovery) until {@link disconnect}.
 */
export declare class Client extends Emitter<ClientEvents> {
    /** The connection's state. */
    state: ClientState;
    /** The client id the server gave this connection (while connected). */
    id: string;
    /** The transport in use (while connected). */
    transport: TransportName | '';
    private _endpoints;
    private _index;
    private _good;
    private _tried;
    private _t;
    private _gen;
    private _lastId;
    private _pending;
    private _out;
    private _session;
    private _node;
    private _token;
    private _needToken;
    private _attempts;
    private _reconnectTimer;
    private _pingTimer;
    private _refreshTimer;
    private _pingMs;
    private _pong;
    private _subs;
    private _serverSubs;
    private _waiters;
    private _offline;
    private _net;
    /**
     * @param endpoint `http(s)://host:port` (every transport, see `transports`), a `ws(s)://`
     *   WebSocket URL, or an explicit list of transports and their URLs, tried in order.
     */
    constructor(endpoint: string | TransportEndpoint[], options?: ClientOptions);
    /** Starts connecting (no-op unless disconnected). */
    connect(): void;
    /** Closes the connection for good (until `connect` is called again). */
    disconnect(): void;
    /** Resolves once connected; rejects when disconnected or after `timeout` ms. */
    ready(timeout?: number): Promise<void>;
    /** A new subscription to `channel` (throws if the client already has one). */
    newSubscription(channel: string, options?: SubscriptionOptions): Subscription;
    /** The subscription to `channel`, or null. */
    getSubscription(channel: string): Subscription | null;
    /** Unsubscribes `sub` and forgets it. */
    removeSubscription(sub: Subscription): void;
    /** Every subscription of this client, by channel. */
    subscriptions(): Record<string, Subscription>;
    /** Publishes `data` into `channel`; resolves once the server accepted it. */
    publish(channel: string, data: unknown): Promise<void>;
    /** Calls the server's RPC handler `method` with `data`. */
    rpc(method: string, data?: unknown): Promise<{
        data: unknown;
    }>;
    /** The channel's history (needs history in its namespace and permission). */
    history(channel: string, options?: HistoryOptions): Promise<HistoryResult>;
    /** Who is subscribed to `channel`, by client id. */
    presence(channel: string): Promise<Record<string, ClientInfo>>;
    /** How many clients and users are subscribed to `channel`. */
    presenceStats(channel: string): Promise<PresenceStats>;
    /** Sends `data` to the server's message handler (no reply). */
    send(data: unknown): Promise<void>;
    private _request;
    private _expect;
    private _queue;
    private _setState;
    private _open;
    private _receive;
    private _watchPing;
    private _connected;
    private _connectError;
    private _closed;
    private _schedule;
    private _disconnect;
    /** Closes the transport, fails the calls in flight and stops the timers. */
    private _drop;
    private _refreshIn;
    private _refresh;
    private _push;
    private _serverSubscribed;
    private _serverPub;
    private _listen;
    private _onOffline;
    private _onOnline;
}
