/**
 * Exponential backoff with full jitter: a random delay between 0 and
 * `min(max, min * 2^attempt)` milliseconds (attempt 0 is the first retry).
 */
export function backoff(attempt: number, min: number, max: number): number {
  return Math.floor(Math.random() * Math.min(max, min * 2 ** Math.min(attempt, 30)));
}

/** When to refresh a token that expires in `ttl` seconds: at 90 % of its life, in milliseconds. */
export function refreshDelay(ttl: number): number {
  return Math.max(0, ttl * 900);
}
