/**
 * Switchboard's client: connections and subscriptions over WebSocket, HTTP-streaming or SSE,
 * speaking the Centrifugo client protocol v2 (JSON). No dependencies; browsers and Node 20+.
 *
 * ```js
 * import { Client } from '/js/switchboard.js';
 * const client = new Client('http://localhost:8000');
 * const sub = client.newSubscription('chat:lobby');
 * sub.on('publication', (p) => console.log(p.data));
 * sub.subscribe();
 * client.connect();
 * ```
 *
 * @packageDocumentation
 */

export { Client } from './client.js';
export type { ClientEvents, ClientOptions, ClientState } from './client.js';
export { Subscription } from './subscription.js';
export type { SubscriptionEvents, SubscriptionOptions, SubscriptionState } from './subscription.js';
export {
  ConnectingCode,
  DisconnectedCode,
  ErrorCode,
  SubscribingCode,
  SwitchboardError,
  UnsubscribedCode,
} from './errors.js';
export { Emitter, type Listener } from './emitter.js';
export { backoff } from './backoff.js';
export { endpointsFor } from './transport.js';
export type {
  ClientInfo,
  ErrorContext,
  EventSourceConstructor,
  EventSourceLike,
  HistoryOptions,
  HistoryResult,
  JoinLeave,
  NetworkEvents,
  PresenceStats,
  Publication,
  StateContext,
  StreamPosition,
  SubscribedContext,
  TransportEndpoint,
  TransportName,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';

/** This client's version. */
export const VERSION: string = SDK_VERSION;

declare const SDK_VERSION: string;
