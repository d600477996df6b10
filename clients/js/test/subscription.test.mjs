// Unit tests of the subscription state machine: subscribe, resubscribe with recovery, tokens,
// server unsubscribes, errors. Fake WebSocket and fake timers as in client.test.mjs.

import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, mock, test } from 'node:test';

import { ConnectingCode, ErrorCode, SubscribingCode, UnsubscribedCode } from '../dist/switchboard.js';
import { flush, handshake, record, setup } from './fake.mjs';

beforeEach(() => mock.timers.enable({ apis: ['setTimeout'] }));
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

const SUB_EVENTS = ['state', 'subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave', 'error'];

async function connected(options) {
  const h = setup(options);
  h.client.connect();
  await handshake(h.last());
  return h;
}

describe('subscription', () => {
  test('unsubscribed -> subscribing -> subscribed; subscribes made before connect go out after the connect reply, in one frame', async () => {
    const { client, last } = setup();
    const a = client.newSubscription('a', { data: { x: 1 }, joinLeave: true });
    const b = client.newSubscription('b', { recoverable: true, positioned: true });
    const log = record(a, SUB_EVENTS);
    a.subscribe();
    b.subscribe();
    assert.equal(a.state, 'subscribing');
    client.connect();
    await handshake(last());
    const ws = last();
    assert.equal(ws.sent.length, 2, 'connect, then both subscribes in one frame');
    assert.deepEqual(ws.pending('subscribe').subscribe, { channel: 'a', data: { x: 1 }, join_leave: true });
    ws.answer('subscribe', {});
    assert.deepEqual(ws.pending('subscribe').subscribe, { channel: 'b', recoverable: true, positioned: true });
    ws.answer('subscribe', { recoverable: true, positioned: true, epoch: 'e', offset: 7 });
    assert.equal(a.state, 'subscribed');
    assert.deepEqual(b.position, { offset: 7, epoch: 'e' });
    assert.deepEqual(log.map(([e, c]) => (e === 'state' ? `${c.oldState}->${c.newState}` : e)), [
      'unsubscribed->subscribing',
      'subscribing',
      'subscribing->subscribed',
      'subscribed',
    ]);
    assert.equal(log[1][1].code, SubscribingCode.SubscribeCalled);
    ws.receive(
      { push: { channel: 'a', pub: { data: 1, info: { user: 'u', client: 'c' } } } },
      { push: { channel: 'a', join: { info: { user: 'u2', client: 'c2' } } } },
      { push: { channel: 'a', leave: { info: { user: 'u2', client: 'c2' } } } },
    );
    assert.deepEqual(log.slice(4).map(([e]) => e), ['publication', 'join', 'leave']);
    assert.deepEqual(log[4][1], { channel: 'a', data: 1, info: { user: 'u', client: 'c', connInfo: undefined, chanInfo: undefined }, offset: undefined, tags: undefined });
    a.unsubscribe();
    assert.equal(a.state, 'unsubscribed');
    await flush();
    assert.deepEqual(ws.pending('unsubscribe').unsubscribe, { channel: 'a' });
    assert.deepEqual(log.at(-1), ['unsubscribed', { channel: 'a', code: UnsubscribedCode.UnsubscribeCalled, reason: 'unsubscribe called' }]);
    ws.receive({ push: { channel: 'a', pub: { data: 'late' } } });
    assert.equal(log.filter(([e]) => e === 'publication').length, 1, 'no publication after unsubscribe');
    assert.throws(() => client.newSubscription('a'), (e) => e.code === ErrorCode.AlreadySubscribed);
    client.removeSubscription(a);
    assert.equal(client.getSubscription('a'), null);
    assert.deepEqual(Object.keys(client.subscriptions()), ['b']);
    client.disconnect();
  });

  test('after a reconnect it resubscribes from its last position and reports recovered, then the missed publications in order', async () => {
    const { client, last } = await connected();
    const sub = client.newSubscription('feed', { recoverable: true });
    const log = record(sub, SUB_EVENTS);
    sub.subscribe();
    await flush();
    last().answer('subscribe', { recoverable: true, epoch: 'ep', offset: 10 });
    last().receive({ push: { channel: 'feed', pub: { data: 'p11', offset: 11 } } });
    assert.deepEqual(sub.position, { offset: 11, epoch: 'ep' });
    last().serverClose(1006);
    assert.equal(sub.state, 'subscribing');
    assert.deepEqual(log.at(-1), ['subscribing', { channel: 'feed', code: SubscribingCode.TransportClosed, reason: 'transport closed' }]);
    mock.timers.tick(1000);
    await handshake(last());
    const cmd = last().pending('subscribe').subscribe;
    assert.deepEqual(cmd, { channel: 'feed', recoverable: true, recover: true, offset: 11, epoch: 'ep' });
    last().answer('subscribe', {
      recoverable: true,
      epoch: 'ep',
      offset: 13,
      was_recovering: true,
      recovered: true,
      publications: [{ data: 'p12', offset: 12 }, { data: 'p13', offset: 13 }],
    });
    const tail = log.slice(log.findLastIndex(([e]) => e === 'subscribed'));
    assert.deepEqual(tail.map(([e, c]) => (e === 'publication' ? c.data : e)), ['subscribed', 'p12', 'p13']);
    assert.equal(tail[0][1].wasRecovering, true);
    assert.equal(tail[0][1].recovered, true);
    assert.deepEqual(tail[0][1].streamPosition, { offset: 13, epoch: 'ep' });
    assert.deepEqual(sub.position, { offset: 13, epoch: 'ep' });

    // Recovery that fails is told as recovered: false; the position moves to the new stream.
    last().serverClose(1006);
    mock.timers.tick(1000);
    await handshake(last());
    last().answer('subscribe', { recoverable: true, epoch: 'new', offset: 2, was_recovering: true, recovered: false });
    const ctx = log.findLast(([e]) => e === 'subscribed')[1];
    assert.equal(ctx.wasRecovering, true);
    assert.equal(ctx.recovered, false);
    assert.deepEqual(sub.position, { offset: 2, epoch: 'new' });
    client.disconnect();
    assert.equal(sub.state, 'subscribing', 'a disconnected client keeps its subscriptions wanted');
  });

  test('since: the first subscribe recovers from a position the app kept', async () => {
    const { client, last } = await connected();
    const sub = client.newSubscription('feed', { since: { offset: 5, epoch: 'x' } });
    sub.subscribe();
    await flush();
    assert.deepEqual(last().pending('subscribe').subscribe, { channel: 'feed', recover: true, offset: 5, epoch: 'x' });
    client.disconnect();
  });

  test('unsubscribe push: below 2500 stays unsubscribed, 2500 and up resubscribes with recovery', async () => {
    mock.method(Math, 'random', () => 0.5);
    const { client, last } = await connected();
    const sub = client.newSubscription('ch', { recoverable: true });
    const log = record(sub, SUB_EVENTS);
    sub.subscribe();
    await flush();
    last().answer('subscribe', { recoverable: true, epoch: 'e', offset: 3 });
    last().receive({ push: { channel: 'ch', unsubscribe: { code: 2500, reason: 'insufficient state' } } });
    assert.equal(sub.state, 'subscribing');
    assert.deepEqual(log.at(-1), ['subscribing', { channel: 'ch', code: 2500, reason: 'insufficient state' }]);
    mock.timers.tick(50);
    await flush();
    assert.deepEqual(last().pending('subscribe').subscribe, { channel: 'ch', recoverable: true, recover: true, offset: 3, epoch: 'e' });
    last().answer('subscribe', { recoverable: true, epoch: 'e', offset: 3, was_recovering: true, recovered: true });
    assert.equal(sub.state, 'subscribed');
    last().receive({ push: { channel: 'ch', unsubscribe: { code: 2000, reason: 'server unsubscribe' } } });
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(log.at(-1), ['unsubscribed', { channel: 'ch', code: 2000, reason: 'server unsubscribe' }]);
    await flush();
    assert.equal(last().pending('unsubscribe'), null, 'the server ended it: no unsubscribe command');
    client.disconnect();
  });

  test('subscribe errors: temporary retries with backoff, 109 fetches a token, others end in unsubscribed with the code', async () => {
    mock.method(Math, 'random', () => 0.5);
    let n = 0;
    const { client, last, events } = await connected();
    const sub = client.newSubscription('$private', { getToken: async ({ channel }) => `${channel}-token-${++n}` });
    const log = record(sub, SUB_EVENTS);
    sub.subscribe();
    await flush();
    assert.equal(last().pending('subscribe').subscribe.token, '$private-token-1');
    last().answer('subscribe', { error: { code: 111, message: 'too many requests', temporary: true } });
    assert.equal(sub.state, 'subscribing');
    mock.timers.tick(50);
    await flush();
    assert.equal(last().pending('subscribe').subscribe.token, '$private-token-1', 'same token on a temporary error');
    last().answer('subscribe', { error: { code: 109, message: 'token expired' } });
    mock.timers.tick(100);
    await flush();
    assert.equal(last().pending('subscribe').subscribe.token, '$private-token-2');
    last().answer('subscribe', { error: { code: 103, message: 'permission denied' } });
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(log.at(-1), ['unsubscribed', { channel: '$private', code: 103, reason: 'permission denied' }]);
    assert.deepEqual(
      events.filter(([e]) => e === 'error').map(([, c]) => `${c.type} ${c.channel} ${c.error.code}`),
      ['subscribe $private 111', 'subscribe $private 109', 'subscribe $private 103'],
    );
    await assert.rejects(sub.ready(), (e) => e.code === ErrorCode.Unsubscribed);
    client.disconnect();
  });

  test('a subscription token is refreshed with sub_refresh before it expires', async () => {
    let n = 0;
    const getToken = mock.fn(async () => `t${++n}`);
    const { client, last } = await connected();
    const sub = client.newSubscription('$p', { getToken });
    sub.subscribe();
    await flush();
    last().answer('subscribe', { expires: true, ttl: 20 });
    mock.timers.tick(17999);
    await flush();
    assert.equal(getToken.mock.callCount(), 1);
    mock.timers.tick(1);
    await flush();
    assert.deepEqual(last().pending('sub_refresh').sub_refresh, { channel: '$p', token: 't2' });
    last().answer('sub_refresh', { expires: true, ttl: 10 });
    await flush();
    mock.timers.tick(9000);
    await flush();
    assert.equal(getToken.mock.callCount(), 3);
    client.disconnect();
  });

  test('a subscribe without a reply in time restarts the connection', async () => {
    const { client, sockets, last, events } = await connected({ timeout: 1000 });
    client.newSubscription('slow').subscribe();
    await flush();
    mock.timers.tick(1000);
    assert.equal(client.state, 'connecting');
    assert.deepEqual(events.at(-1), ['connecting', { code: ConnectingCode.SubscribeTimeout, reason: 'subscribe timeout' }]);
    mock.timers.tick(1000);
    assert.equal(sockets.length, 2);
    await handshake(last());
    assert.ok(last().pending('subscribe'), 'subscribes again on the new connection');
    client.disconnect();
  });

  test('ready() and sub.publish wait for subscribed', async () => {
    const { client, last } = await connected();
    const sub = client.newSubscription('ch');
    await assert.rejects(sub.ready(), (e) => e.code === ErrorCode.Unsubscribed);
    sub.subscribe();
    const published = sub.publish({ n: 1 });
    await flush();
    assert.equal(last().pending('publish'), null, 'not before subscribed');
    last().answer('subscribe', {});
    await flush();
    await flush();
    assert.deepEqual(last().pending('publish').publish, { channel: 'ch', data: { n: 1 } });
    last().answer('publish');
    await published;
    const timeout = client.newSubscription('never');
    timeout.subscribe();
    const r = timeout.ready(500);
    mock.timers.tick(500);
    await assert.rejects(r, (e) => e.code === ErrorCode.Timeout);
    client.disconnect();
  });
});
