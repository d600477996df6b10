/**
 * Exponential backoff with full jitter: a random delay between 0 and
 * `min(max, min * 2^attempt)` milliseconds (attempt 0 is the first retry).
 */
export declare function backoff(attempt: number, min: number, max: number): number;
/** When to refresh a token that expires in `ttl` seconds: at 90 % of its life, in milliseconds. */
export declare function refreshDelay(ttl: number): number;
