/** A listener of one event. */
export type Listener<T> = (ctx: T) => void;
/**
 * A small typed event emitter. `on` returns a function that removes the listener. A listener
 * that throws does not disturb the others or the client's state: its error is rethrown
 * asynchronously (reported like an uncaught exception).
 */
export declare class Emitter<E> {
    private _listeners;
    /** Calls `fn` on every `event`; returns a function that removes it. */
    on<K extends keyof E>(event: K, fn: Listener<E[K]>): () => void;
    /** Calls `fn` on the next `event` only. */
    once<K extends keyof E>(event: K, fn: Listener<E[K]>): () => void;
    /** Removes a listener added with `on`. */
    off<K extends keyof E>(event: K, fn: Listener<E[K]>): void;
    protected _emit<K extends keyof E>(event: K, ctx: E[K]): void;
}
