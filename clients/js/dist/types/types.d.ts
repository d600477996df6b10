import type { SwitchboardError } from './errors.js';
/** The transports, in the default fallback order. */
export type TransportName = 'websocket' | 'http_stream' | 'sse';
/** One transport to try, with its full URL. */
export interface TransportEndpoint {
    transport: TransportName;
    endpoint: string;
}
/** A stream position: the offset of the last publication seen in an epoch. */
export interface StreamPosition {
    offset: number;
    epoch: string;
}
/** Who is behind a connection. */
export interface ClientInfo {
    user: string;
    client: string;
    connInfo?: unknown;
    chanInfo?: unknown;
}
/** A publication in a channel. */
export interface Publication {
    channel: string;
    data: unknown;
    /** The publisher, when the publication came from a client. */
    info?: ClientInfo;
    /** Its place in the channel's stream (channels with history). */
    offset?: number;
    tags?: Record<string, string>;
}
/** A join or leave in a channel with presence. */
export interface JoinLeave {
    channel: string;
    info: ClientInfo;
}
/** `subscribed`: a subscription is active. */
export interface SubscribedContext {
    channel: string;
    /** The server keeps history positions for this subscription. */
    recoverable: boolean;
    positioned: boolean;
    /** Where the stream stood when subscribed (or after recovery). */
    streamPosition?: StreamPosition;
    /** The client asked to recover from its last position. */
    wasRecovering: boolean;
    /**
     * Every missed publication was delivered (as `publication` events right after this event).
     * False with `wasRecovering`: some were lost, reload the state from your application.
     */
    recovered: boolean;
    data?: unknown;
}
/** `subscribing` / `connecting`: why the client (re)tries. */
export interface StateContext {
    code: number;
    reason: string;
}
/** `error` events: something failed that the client handles by itself (it retries). */
export interface ErrorContext {
    type: string;
    error: SwitchboardError;
    channel?: string;
}
/** Result of `history`. */
export interface HistoryResult {
    publications: Publication[];
    offset: number;
    epoch: string;
}
/** Options of `history`. */
export interface HistoryOptions {
    /** 0: only the stream position; N: up to N; negative: all kept. */
    limit?: number;
    since?: StreamPosition;
    reverse?: boolean;
}
/** Result of `presenceStats`. */
export interface PresenceStats {
    numClients: number;
    numUsers: number;
}
/** A WebSocket constructor (the browser's, or `ws` in Node); instances must behave as {@link WebSocketLike}. */
export type WebSocketConstructor = new (url: string) => object;
/** The part of the WebSocket API the client uses. */
export interface WebSocketLike {
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
    onerror: ((ev: unknown) => void) | null;
    send(data: string): void;
    close(code?: number, reason?: string): void;
}
/** An EventSource constructor (the browser's, or a Node package); instances must behave as {@link EventSourceLike}. */
export type EventSourceConstructor = new (url: string) => object;
/** The part of the EventSource API the client uses. */
export interface EventSourceLike {
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: string;
    }) => void) | null;
    onerror: ((ev: unknown) => void) | null;
    close(): void;
}
/** Where `online` and `offline` events come from (the browser's `window`). */
export interface NetworkEvents {
    addEventListener(type: 'online' | 'offline', fn: () => void): void;
    removeEventListener(type: 'online' | 'offline', fn: () => void): void;
}
