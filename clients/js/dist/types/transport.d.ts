import type { EventSourceConstructor, TransportEndpoint, TransportName, WebSocketConstructor } from './types.js';
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
export declare const LOST = 0;
/** Opens `ep`, sending `first` (the connect command) as its first batch; null when unsupported here. */
export declare function openTransport(ep: TransportEndpoint, env: TransportEnv, first: string, cb: TransportCallbacks): Transport | null;
/** `url` resolved against `base` or, in a browser, the page. */
export declare function resolve(url: string, base?: string): string;
/**
 * The endpoints for a server address. `http(s)://host[:port][/prefix]` gives every transport (in
 * `order`); a `ws(s)://` URL is a WebSocket endpoint alone.
 */
export declare function endpointsFor(address: string, order?: TransportName[]): TransportEndpoint[];
