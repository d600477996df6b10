/**
 * Error codes. 1-9 come from this client; 100-112 are the server's reply codes
 * (docs/PROTOCOL.md, "Error codes").
 */
export declare const ErrorCode: {
    /** No reply within the `timeout` option. */
    readonly Timeout: 1;
    /** The transport closed before the reply came; the client reconnects. */
    readonly TransportClosed: 2;
    /** The client is disconnected (or was disconnected while the call waited). */
    readonly ClientDisconnected: 3;
    /** The subscription is unsubscribed (or became so while the call waited). */
    readonly Unsubscribed: 4;
    /** The options cannot work (no usable transport, no token callback, ...). */
    readonly BadConfiguration: 5;
    readonly Internal: 100;
    readonly Unauthorized: 101;
    readonly UnknownChannel: 102;
    readonly PermissionDenied: 103;
    readonly MethodNotFound: 104;
    readonly AlreadySubscribed: 105;
    readonly LimitExceeded: 106;
    readonly BadRequest: 107;
    readonly NotAvailable: 108;
    readonly TokenExpired: 109;
    readonly Expired: 110;
    readonly TooManyRequests: 111;
    readonly UnrecoverablePosition: 112;
};
/** Codes of the `connecting` event (3000 and up are the server's disconnect codes). */
export declare const ConnectingCode: {
    readonly ConnectCalled: 0;
    readonly TransportClosed: 1;
    readonly NoPing: 2;
    readonly SubscribeTimeout: 3;
    readonly Offline: 4;
};
/** Codes of the `disconnected` event (3000 and up are the server's disconnect codes). */
export declare const DisconnectedCode: {
    readonly DisconnectCalled: 0;
    readonly Unauthorized: 1;
    readonly BadProtocol: 2;
    readonly MessageSizeLimit: 3;
};
/** Codes of a subscription's `subscribing` event (2500 and up come from the server). */
export declare const SubscribingCode: {
    readonly SubscribeCalled: 0;
    readonly TransportClosed: 1;
};
/** Codes of a subscription's `unsubscribed` event (100-112 and below 2500 come from the server). */
export declare const UnsubscribedCode: {
    readonly UnsubscribeCalled: 0;
    readonly Unauthorized: 1;
    readonly ClientClosed: 2;
};
/** The one error type of this client: a code from {@link ErrorCode} and the server's message. */
export declare class SwitchboardError extends Error {
    /** A code from {@link ErrorCode}. */
    readonly code: number;
    /** True when the same call may succeed if tried again later. */
    readonly temporary: boolean;
    constructor(code: number, message: string, temporary?: boolean);
}
/** `err` as a SwitchboardError (a token callback may throw anything). */
export declare function asError(err: unknown): SwitchboardError;
