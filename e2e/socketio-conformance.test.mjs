// Our own tests of every behaviour the official Engine.IO and Socket.IO protocol suites check
// (docs/SOCKETIO.md#conformance), against the conformance example
// (crates/socketio/examples/socketio_conformance.rs), with raw HTTP requests and WebSockets.
//
// The example is built in `before` (`cargo build --release -p switchboard-socketio --example
// socketio_conformance`, a no-op when fresh); SOCKETIO_EXAMPLE points at another binary.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import WebSocket from 'ws';

import { delay, freePort, withTimeout } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, '..');
const TARGET = process.env.CARGO_TARGET_DIR || path.join(REPO, 'target');
const EXAMPLE = process.env.SOCKETIO_EXAMPLE || path.join(TARGET, 'release', 'examples', 'socketio_conformance');

const PING_INTERVAL = 300;
const PING_TIMEOUT = 200;

let child;
let URL;
let WS_URL;

before(async () => {
  if (!process.env.SOCKETIO_EXAMPLE) {
    execFileSync(
      'cargo',
      ['build', '--release', '-q', '-p', 'switchboard-socketio', '--example', 'socketio_conformance'],
      { cwd: REPO, stdio: 'inherit' },
    );
  }
  const port = await freePort();
  child = spawn(EXAMPLE, ['--port', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const ready = new Promise((resolve, reject) => {
    const onData = (chunk) => {
      log += chunk;
      if (log.includes('listening')) resolve();
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => reject(new Error(`example exited (${code}): ${log}`)));
  });
  await withTimeout(ready, 15000, `example did not start: ${log}`);
  URL = `http://127.0.0.1:${port}`;
  WS_URL = `ws://127.0.0.1:${port}`;
});

after(() => child?.kill('SIGTERM'));

/** A WebSocket whose messages are queued, so none is lost between two awaits. */
function socket(pathAndQuery) {
  const ws = new WebSocket(`${WS_URL}${pathAndQuery}`);
  ws.binaryType = 'arraybuffer';
  const queue = [];
  const waiters = [];
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    const m = isBinary ? new Uint8Array(data) : data.toString();
    const w = waiters.shift();
    if (w) w(m);
    else queue.push(m);
  });
  ws.closed = new Promise((resolve) => ws.once('close', resolve));
  ws.next = (timeoutMs = 2000) =>
    withTimeout(
      queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r)),
      timeoutMs,
      'no message',
    );
  /** The next message that is not a ping. */
  ws.nextData = async () => {
    for (;;) {
      const m = await ws.next();
      if (m !== '2') return m;
    }
  };
  ws.opened = new Promise((resolve) => ws.once('open', resolve));
  return ws;
}

async function poll(base, sid) {
  const res = await fetch(`${URL}/${base}/?EIO=4&transport=polling&sid=${sid}`);
  return { status: res.status, body: await res.text() };
}

async function post(base, sid, body) {
  const res = await fetch(`${URL}/${base}/?EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body });
  return { status: res.status, body: await res.text() };
}

async function open(base) {
  const res = await fetch(`${URL}/${base}/?EIO=4&transport=polling`);
  assert.equal(res.status, 200);
  const text = await res.text();
  assert.equal(text[0], '0');
  return JSON.parse(text.slice(1));
}

for (const base of ['engine.io', 'socket.io']) {
  describe(`Engine.IO at /${base}/`, () => {
    test('polling handshake: exact keys and values', async () => {
      const h = await open(base);
      assert.deepEqual(Object.keys(h).sort(), ['maxPayload', 'pingInterval', 'pingTimeout', 'sid', 'upgrades']);
      assert.deepEqual(h.upgrades, ['websocket']);
      assert.equal(h.pingInterval, PING_INTERVAL);
      assert.equal(h.pingTimeout, PING_TIMEOUT);
      assert.equal(h.maxPayload, 1000000);
    });

    test('bad requests get 400', async () => {
      for (const q of ['transport=polling', 'EIO=abc&transport=polling', 'EIO=3&transport=polling', 'EIO=4', 'EIO=4&transport=abc']) {
        const res = await fetch(`${URL}/${base}/?${q}`);
        assert.equal(res.status, 400, q);
        const body = await res.json();
        assert.equal(typeof body.code, 'number');
      }
      for (const method of ['POST', 'PUT']) {
        const res = await fetch(`${URL}/${base}/?EIO=4&transport=polling`, { method });
        assert.equal(res.status, 400, method);
      }
      assert.equal((await poll(base, 'unknown')).status, 400);
    });

    test('WebSocket handshake: upgrades empty', async () => {
      const ws = socket(`/${base}/?EIO=4&transport=websocket`);
      const m = await ws.next();
      assert.equal(m[0], '0');
      const h = JSON.parse(m.slice(1));
      assert.deepEqual(h.upgrades, []);
      assert.equal(h.maxPayload, 1000000);
      ws.close();
    });

    test('heartbeat over polling, and the session closes without pong', async () => {
      const { sid } = await open(base);
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(await poll(base, sid), { status: 200, body: '2' });
        assert.equal((await post(base, sid, '3')).status, 200);
      }
      const second = await open(base);
      await delay(PING_INTERVAL + PING_TIMEOUT);
      assert.equal((await poll(base, second.sid)).status, 400);
    });

    test('heartbeat over WebSocket, and the close without pong', async () => {
      const ws = socket(`/${base}/?EIO=4&transport=websocket`);
      await ws.next();
      for (let i = 0; i < 3; i++) {
        assert.equal(await ws.next(), '2');
        ws.send('3');
      }
      const silent = socket(`/${base}/?EIO=4&transport=websocket`);
      await withTimeout(silent.closed, 2000, 'not closed on ping timeout');
      ws.close();
    });

    test('client close: a pending poll gets 6, then the sid is unknown', async () => {
      const { sid } = await open(base);
      const [p] = await Promise.all([poll(base, sid), post(base, sid, '1')]);
      assert.deepEqual(p, { status: 200, body: '6' });
      assert.equal((await poll(base, sid)).status, 400);
      const ws = socket(`/${base}/?EIO=4&transport=websocket`);
      await ws.next();
      ws.send('1');
      await withTimeout(ws.closed, 2000, 'not closed');
    });

    test('concurrent polls close the session', async () => {
      const { sid } = await open(base);
      const [a, b] = await Promise.all([poll(base, sid), delay(5).then(() => poll(base, sid))]);
      assert.deepEqual(a, { status: 200, body: '1' });
      assert.ok([400, 500].includes(b.status));
      assert.equal((await poll(base, sid)).status, 400);
    });

    test('upgrade: probe, noop for the pending poll, then WebSocket only', async () => {
      const { sid } = await open(base);
      const ws = socket(`/${base}/?EIO=4&transport=websocket&sid=${sid}`);
      await ws.opened;
      ws.send('2probe');
      assert.equal(await ws.next(), '3probe');
      assert.deepEqual(await poll(base, sid), { status: 200, body: '6' });
      ws.send('5');
      await delay(50);
      assert.equal((await poll(base, sid)).status, 400);
      const again = socket(`/${base}/?EIO=4&transport=websocket&sid=${sid}`);
      await withTimeout(again.closed, 2000, 'second WebSocket not closed');
      if (base === 'engine.io') {
        ws.send('4hello');
        assert.equal(await ws.nextData(), '4hello');
      }
      ws.close();
    });
  });
}

describe('Engine.IO echo at /engine.io/', () => {
  test('polling: text, several packets, binary', async () => {
    for (const body of ['4hello', '4test1\x1e4test2\x1e4test3', '4hello\x1ebAQIDBA==']) {
      const { sid } = await open('engine.io');
      assert.deepEqual(await post('engine.io', sid, body), { status: 200, body: 'ok' });
      assert.deepEqual(await poll('engine.io', sid), { status: 200, body });
    }
  });

  test('polling: an undecodable packet closes the session', async () => {
    const { sid } = await open('engine.io');
    const res = await post('engine.io', sid, 'abc');
    assert.equal(res.status, 400);
    assert.equal((await poll('engine.io', sid)).status, 400);
  });

  test('polling: a body over maxPayload gets 413 and closes the session', async () => {
    const { sid } = await open('engine.io');
    const res = await post('engine.io', sid, '4' + 'x'.repeat(1_000_001));
    assert.equal(res.status, 413);
    assert.equal((await poll('engine.io', sid)).status, 400);
  });

  test('WebSocket: text and binary echo, bad packet closes', async () => {
    const ws = socket('/engine.io/?EIO=4&transport=websocket');
    await ws.next();
    ws.send('4hello');
    assert.equal(await ws.nextData(), '4hello');
    ws.send(Uint8Array.from([1, 2, 3, 4]));
    assert.deepEqual(await ws.nextData(), Uint8Array.from([1, 2, 3, 4]));
    ws.send('abc');
    await withTimeout(ws.closed, 2000, 'not closed');
  });

  test('CORS: the origin is allowed, preflights answered', async () => {
    const res = await fetch(`${URL}/engine.io/?EIO=4&transport=polling`, { headers: { Origin: 'http://app.example' } });
    assert.equal(res.headers.get('access-control-allow-origin'), 'http://app.example');
    assert.equal(res.headers.get('access-control-allow-credentials'), 'true');
    const pre = await fetch(`${URL}/engine.io/?EIO=4&transport=polling`, {
      method: 'OPTIONS',
      headers: { Origin: 'http://app.example', 'Access-Control-Request-Method': 'POST' },
    });
    assert.equal(pre.status, 204);
  });
});

/** A WebSocket Socket.IO connection to `/`, past the CONNECT reply and the `auth` event. */
async function sio() {
  const ws = socket('/socket.io/?EIO=4&transport=websocket');
  await ws.next();
  ws.send('40');
  assert.match(await ws.nextData(), /^40\{"sid":"[^"]+"\}$/);
  assert.equal(await ws.nextData(), '42["auth",{}]');
  return ws;
}

describe('Socket.IO at /socket.io/', () => {
  test('CONNECT to /, with and without auth; the reply holds only sid', async () => {
    for (const [packet, auth] of [['40', '{}'], ['40{"token":"123"}', '{"token":"123"}']]) {
      const ws = socket('/socket.io/?EIO=4&transport=websocket');
      await ws.next();
      ws.send(packet);
      const reply = await ws.nextData();
      assert.deepEqual(Object.keys(JSON.parse(reply.slice(2))), ['sid']);
      assert.equal(await ws.nextData(), `42["auth",${auth}]`);
      ws.close();
    }
  });

  test('CONNECT to /custom with and without the comma, with auth', async () => {
    for (const [packet, auth] of [['40/custom,', '{}'], ['40/custom', '{}'], ['40/custom,{"token":"abc"}', '{"token":"abc"}']]) {
      const ws = socket('/socket.io/?EIO=4&transport=websocket');
      await ws.next();
      ws.send(packet);
      const reply = await ws.nextData();
      assert.ok(reply.startsWith('40/custom,'), reply);
      assert.deepEqual(Object.keys(JSON.parse(reply.slice(10))), ['sid']);
      assert.equal(await ws.nextData(), `42/custom,["auth",${auth}]`);
      ws.close();
    }
  });

  test('an unknown namespace gets CONNECT_ERROR', async () => {
    const ws = socket('/socket.io/?EIO=4&transport=websocket');
    await ws.next();
    ws.send('40/random');
    assert.equal(await ws.nextData(), '44/random,{"message":"Invalid namespace"}');
    ws.close();
  });

  test('an invalid first packet, or none in time, closes the connection', async () => {
    const ws = socket('/socket.io/?EIO=4&transport=websocket');
    await ws.next();
    ws.send('4abc');
    await withTimeout(ws.closed, 2000, 'not closed');
    const idle = socket('/socket.io/?EIO=4&transport=websocket');
    await withTimeout(idle.closed, 2000, 'not closed without CONNECT');
  });

  test('DISCONNECT from / keeps the Engine.IO session; from /custom keeps /', async () => {
    const ws = await sio();
    ws.send('41');
    assert.equal(await ws.next(), '2');
    ws.close();
    const ws2 = await sio();
    ws2.send('40/custom');
    assert.ok((await ws2.nextData()).startsWith('40/custom,'));
    assert.equal(await ws2.nextData(), '42/custom,["auth",{}]');
    ws2.send('41/custom');
    ws2.send('42["message","to main"]');
    assert.equal(await ws2.nextData(), '42["message-back","to main"]');
    ws2.close();
  });

  test('events, acks, binary events and binary acks', async () => {
    const ws = await sio();
    ws.send('42["message",1,"2",{"3":[true]}]');
    assert.equal(await ws.nextData(), '42["message-back",1,"2",{"3":[true]}]');
    ws.send('42456["message-with-ack",1,"2",{"3":[false]}]');
    assert.equal(await ws.nextData(), '43456[1,"2",{"3":[false]}]');
    const ph = '{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}';
    ws.send(`452-["message",${ph}]`);
    ws.send(Uint8Array.from([1, 2, 3]));
    ws.send(Uint8Array.from([4, 5, 6]));
    assert.equal(await ws.nextData(), `452-["message-back",${ph}]`);
    assert.deepEqual(await ws.nextData(), Uint8Array.from([1, 2, 3]));
    assert.deepEqual(await ws.nextData(), Uint8Array.from([4, 5, 6]));
    ws.send(`452-789["message-with-ack",${ph}]`);
    ws.send(Uint8Array.from([1, 2, 3]));
    ws.send(Uint8Array.from([4, 5, 6]));
    assert.equal(await ws.nextData(), `462-789[${ph}]`);
    assert.deepEqual(await ws.nextData(), Uint8Array.from([1, 2, 3]));
    assert.deepEqual(await ws.nextData(), Uint8Array.from([4, 5, 6]));
    ws.close();
  });

  test('emit-with-ack: the server asks, the client acks, the server emits the answer', async () => {
    const ws = await sio();
    ws.send('42["emit-with-ack",1,"2"]');
    const ask = await ws.nextData();
    const m = /^42(\d+)\["emit-with-ack",1,"2"\]$/.exec(ask);
    assert.ok(m, ask);
    ws.send(`43${m[1]}["answer"]`);
    assert.equal(await ws.nextData(), '42["emit-with-ack","answer"]');
    ws.close();
  });

  test('malformed packets close the connection', async () => {
    for (const bad of ['4abc', '42{}', '42abc["message-with-ack",1]', '452-["message",{"_placeholder":true,"num":5}]']) {
      const ws = await sio();
      ws.send(bad);
      if (bad.startsWith('452')) {
        ws.send(Uint8Array.from([1]));
        ws.send(Uint8Array.from([2]));
      }
      await withTimeout(ws.closed, 2000, `not closed after ${bad}`);
    }
  });

  test('Socket.IO over polling: connect, event, ack', async () => {
    const { sid } = await open('socket.io');
    await post('socket.io', sid, '40');
    const first = await poll('socket.io', sid);
    const packets = first.body.split('\x1e');
    assert.match(packets[0], /^40\{"sid":"[^"]+"\}$/);
    let rest = packets.slice(1);
    if (rest.length === 0) rest = (await poll('socket.io', sid)).body.split('\x1e');
    assert.deepEqual(rest, ['42["auth",{}]']);
    await post('socket.io', sid, '421["message-with-ack","x"]');
    assert.deepEqual(await poll('socket.io', sid), { status: 200, body: '431["x"]' });
    await post('socket.io', sid, '451-["message",{"_placeholder":true,"num":0}]\x1ebAQI=');
    assert.deepEqual(await poll('socket.io', sid), {
      status: 200,
      body: '451-["message-back",{"_placeholder":true,"num":0}]\x1ebAQI=',
    });
  });
});
