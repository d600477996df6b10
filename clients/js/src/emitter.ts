/** A listener of one event. */
export type Listener<T> = (ctx: T) => void;

/**
 * A small typed event emitter. `on` returns a function that removes the listener. A listener
 * that throws does not disturb the others or the client's state: its error is rethrown
 * asynchronously (reported like an uncaught exception).
 */
export class Emitter<E> {
  private _listeners: { [K in keyof E]?: Listener<E[K]>[] } = {};

  /** Calls `fn` on every `event`; returns a function that removes it. */
  on<K extends keyof E>(event: K, fn: Listener<E[K]>): () => void {
    (this._listeners[event] ||= []).push(fn);
    return () => this.off(event, fn);
  }

  /** Calls `fn` on the next `event` only. */
  once<K extends keyof E>(event: K, fn: Listener<E[K]>): () => void {
    const off = this.on(event, (ctx) => {
      off();
      fn(ctx);
    });
    return off;
  }

  /** Removes a listener added with `on`. */
  off<K extends keyof E>(event: K, fn: Listener<E[K]>): void {
    const list = this._listeners[event];
    const i = list ? list.indexOf(fn) : -1;
    if (i >= 0) list!.splice(i, 1);
  }

  protected _emit<K extends keyof E>(event: K, ctx: E[K]): void {
    for (const fn of (this._listeners[event] || []).slice()) {
      try {
        fn(ctx);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
  }
}
