// The publisher of a fault run, in a worker thread of the runner: its hundreds of HTTP requests
// in flight (and their bursts of answers after a fault) do not hold up the event loop that runs
// the SDK clients. Messages from the runner: 'start', 'snapshot', 'stop'; each is answered with
// the publisher's state ('stop' once every publication has its final outcome).

import { parentPort, workerData } from 'node:worker_threads';

import { Publisher } from './load.mjs';

const publisher = new Publisher(workerData.options);
const state = () => ({ records: publisher.records, errors: publisher.errors, skipped: publisher.skipped });

parentPort.on('message', async ({ id, type }) => {
  if (type === 'start') publisher.start();
  if (type === 'stop') await publisher.stop();
  parentPort.postMessage({ id, ...(type === 'start' ? {} : state()) });
});
