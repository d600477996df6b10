/**
 * Error codes. 1-9 come from this client; 100-112 are the server's reply codes
 * (docs/PROTOCOL.md, "Error codes").
 */
export const ErrorCode = {
  /** No reply within the `timeout` option. */
  Timeout: 1,
  /** The transport closed before the reply came; the client reconnects. */
  TransportClosed: 2,
  /** The client is disconnected (or was disconnected while the call waited). */
  ClientDisconnected: 3,
  /** The subscription is unsubscribed (or became so while the call waited). */
  Unsubscribed: 4,
  /** The options cannot work (no usable transport, no token callback, ...). */
  BadConfiguration: 5,
  Internal: 100,
  Unauthorized: 101,
  UnknownChannel: 102,
  PermissionDenied: 103,
  MethodNotFound: 104,
  AlreadySubscribed: 105,
  LimitExceeded: 106,
  BadRequest: 107,
  NotAvailable: 108,
  TokenExpired: 109,
  Expired: 110,
  TooManyRequests: 111,
  UnrecoverablePosition: 112,
} as const;

/** Codes of the `connecting` event (3000 and up are the server's disconnect codes). */
export const ConnectingCode = {
  ConnectCalled: 0,
  TransportClosed: 1,
  NoPing: 2,
  SubscribeTimeout: 3,
  Offline: 4,
} as const;

/** Codes of the `disconnected` event (3000 and up are the server's disconnect codes). */
export const DisconnectedCode = {
  DisconnectCalled: 0,
  Unauthorized: 1,
  BadProtocol: 2,
  MessageSizeLimit: 3,
} as const;

/** Codes of a subscription's `subscribing` event (2500 and up come from the server). */
export const SubscribingCode = {
  SubscribeCalled: 0,
  TransportClosed: 1,
} as const;

/** Codes of a subscription's `unsubscribed` event (100-112 and below 2500 come from the server). */
export const UnsubscribedCode = {
  UnsubscribeCalled: 0,
  Unauthorized: 1,
  ClientClosed: 2,
} as const;

/** The one error type of this client: a code from {@link ErrorCode} and the server's message. */
export class SwitchboardError extends Error {
  /** A code from {@link ErrorCode}. */
  readonly code: number;
  /** True when the same call may succeed if tried again later. */
  readonly temporary: boolean;

  constructor(code: number, message: string, temporary = false) {
    super(message);
    this.name = 'SwitchboardError';
    this.code = code;
    this.temporary = temporary;
  }
}

/** `err` as a SwitchboardError (a token callback may throw anything). */
export function asError(err: unknown): SwitchboardError {
  return err instanceof SwitchboardError
    ? err
    : new SwitchboardError(ErrorCode.Internal, err instanceof Error ? err.message : String(err));
}
