// One clock for the runner and its publisher thread: milliseconds since the runner started
// (performance.now() of the runner's main thread), also inside a worker thread, whose own
// performance.now() starts when the worker does.

import { performance } from 'node:perf_hooks';
import { isMainThread, workerData } from 'node:worker_threads';

const base = isMainThread ? performance.timeOrigin : workerData.clockBase;

/** The runner's clock (ms). */
export const now = () => performance.timeOrigin + performance.now() - base;

/** What a worker thread needs in its `workerData.clockBase`. */
export const clockBase = () => base;
