import { Emitter } from './emitter.js';
import { type ClientInfo, type ErrorContext, type HistoryOptions, type HistoryResult, type JoinLeave, type PresenceStats, type Publication, type StateContext, type StreamPosition, type SubscribedContext } from './types.js';
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
    getToken?: (ctx: {
        channel: string;
    }) => Promise<string>;
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
    state: {
        newState: SubscriptionState;
        oldState: SubscriptionState;
    };
    subscribing: StateContext & {
        channel: string;
    };
    subscribed: SubscribedContext;
    unsubscribed: StateContext & {
        channel: string;
    };
    publication: Publication;
    join: JoinLeave;
    leave: JoinLeave;
    error: ErrorContext;
}
/** A subscription to one channel; create it with {@link Client.newSubscription}. */
export declare class Subscription extends Emitter<SubscriptionEvents> {
    /** The subscription's state. */
    state: SubscriptionState;
    /** The channel. */
    readonly channel: string;
    private _c;
    private _o;
    private _token;
    private _needToken;
    private _pos;
    private _gen;
    private _attempts;
    private _timer;
    private _refreshTimer;
    private _waiters;
    /** The last position seen, when the subscription is recoverable. */
    get position(): StreamPosition | undefined;
    /** Starts subscribing (no-op unless unsubscribed); stays subscribed across reconnects. */
    subscribe(): void;
    /** Unsubscribes (no-op if unsubscribed). */
    unsubscribe(): void;
    /** Resolves once subscribed; rejects when unsubscribed or after `timeout` ms. */
    ready(timeout?: number): Promise<void>;
    /** Publishes into the channel once subscribed. */
    publish(data: unknown): Promise<void>;
    /** The channel's history (once subscribed). */
    history(options?: HistoryOptions): Promise<HistoryResult>;
    /** The channel's presence (once subscribed). */
    presence(): Promise<Record<string, ClientInfo>>;
    /** The channel's presence counts (once subscribed). */
    presenceStats(): Promise<PresenceStats>;
    private _subscribed;
    private _failed;
    private _pub;
    private _retry;
    private _refreshIn;
    private _refresh;
    private _stop;
    private _subscribing;
    /** Becomes unsubscribed; tells the server unless it was the server's idea (`tell` false). */
    private _unsubscribed;
}
