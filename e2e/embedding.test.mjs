// The library's examples (crates/switchboard/examples) driven by the real `centrifuge` SDK: Rust
// handlers decide connect, subscribe, publish and RPC for it, and a background task publishes.
//
// The example binaries are built in `before` (`cargo build --release -p switchboard --examples`,
// a no-op when they are fresh); EXAMPLES_DIR points elsewhere.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { connectClient, newClient, publicationQueue, subscribe, waitFor, withTimeout } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, '..');
const EXAMPLES = process.env.EXAMPLES_DIR || path.join(REPO, 'target', 'release', 'examples');

/** Runs an example on a free port; resolves once it says where it listens. */
function startExample(name, env = {}) {
  const child = spawn(path.join(EXAMPLES, name), [], {
    env: { ...process.env, ADDR: '127.0.0.1:0', RUST_LOG: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (chunk) => (log += chunk));
  const ready = new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      log += chunk;
      const m = /listening on http:\/\/(\S+)/.exec(log);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`example ${name} exited (${code}): ${log}`)));
  });
  return withTimeout(ready, 15000, `example ${name} did not start: ${log}`).then((address) => ({
    address,
    wsUrl: (prefix = '') => `ws://${address}${prefix}/connection/websocket`,
    stop: () => {
      child.kill('SIGTERM');
      return new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', resolve)));
    },
  }));
}

before(() => {
  if (!process.env.EXAMPLES_DIR) {
    execFileSync('cargo', ['build', '--release', '-q', '-p', 'switchboard', '--examples'], {
      cwd: REPO,
      stdio: 'inherit',
    });
  }
});

describe('chat example (handlers in an axum app)', () => {
  let chat;
  const clients = [];
  before(async () => {
    chat = await startExample('chat');
  });
  after(async () => {
    for (const c of clients) c.disconnect();
    await chat?.stop();
  });
  const server = () => ({ wsUrl: chat.wsUrl('/realtime') });

  test('the connect handler refuses a missing or bad nickname with its codes', async () => {
    for (const [data, code] of [
      [undefined, 101],
      [{ nick: 'not valid!' }, 4000],
    ]) {
      const client = newClient(server(), data ? { data } : {});
      clients.push(client);
      const disconnected = waitFor(client, 'disconnected');
      client.connect();
      assert.equal((await disconnected).code, code);
    }
  });

  test('subscribe and publish are decided (and stamped) by the handlers', async () => {
    const alice = await connectClient(server(), { data: { nick: 'alice' } });
    const bob = await connectClient(server(), { data: { nick: 'bob' } });
    clients.push(alice, bob);
    await assert.rejects(subscribe(alice, 'news'), (err) => err.code === 103);
    const room = publicationQueue(await subscribe(alice, 'room:lobby'));
    await assert.rejects(bob.publish('room:lobby', { text: '' }), (err) => err.code === 4001);
    await bob.publish('room:lobby', { text: ' hello alice ' });
    const publication = await room.next();
    assert.deepEqual(publication.data, { nick: 'bob', text: 'hello alice' });
    const rooms = await (await fetch(`http://${chat.address}/rooms`)).json();
    assert.deepEqual(rooms, [['room:lobby', 1]]);
  });
});

describe('rpc example', () => {
  let rpc;
  let client;
  before(async () => {
    rpc = await startExample('rpc');
    client = await connectClient({ wsUrl: rpc.wsUrl() });
  });
  after(async () => {
    client?.disconnect();
    await rpc?.stop();
  });

  test('methods answered in Rust', async () => {
    assert.deepEqual((await client.rpc('add', { a: 2, b: 40 })).data, { sum: 42 });
    assert.equal((await client.rpc('whoami', {})).data.user, '');
    await assert.rejects(client.rpc('nope', {}), (err) => err.code === 104);
    await assert.rejects(client.rpc('add', { a: 'x' }), (err) => err.code === 107);
  });
});

describe('ticker example (publishing from a background task)', () => {
  let ticker;
  let client;
  before(async () => {
    ticker = await startExample('ticker', { TICK_MS: '100' });
    client = await connectClient({ wsUrl: ticker.wsUrl() });
  });
  after(async () => {
    client?.disconnect();
    await ticker?.stop();
  });

  test('ticks arrive in order', async () => {
    const ticks = publicationQueue(await subscribe(client, 'ticker'));
    const first = (await ticks.next()).data.tick;
    assert.equal((await ticks.next()).data.tick, first + 1);
  });
});
