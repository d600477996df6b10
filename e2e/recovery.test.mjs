// History, recovery after reconnect, and presence (issue 5), driven by the real `centrifuge` SDK
// against the real `switchboard` binary.
//
// The reconnect is held back deterministically instead of by timing: the SDK calls `getData`
// before every connect attempt, so the subscriber's `getData` answers at once for the first
// connect and waits on a gate afterwards; the test opens the gate only once every publication
// made "while it was away" has been acknowledged by the server API.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import {
  api,
  connectClient,
  eventStrings,
  newClient,
  publicationQueue,
  recordEvents,
  signJwt,
  startServer,
  subscribe,
  uniqueChannel,
  waitFor,
} from './helpers.mjs';

const SECRET = 'e2e-recovery-secret';
const API_KEY = 'e2e-recovery-key';

const CONFIG = `
[client]
allow_anonymous = false

[client.token]
hmac_secret_key = "${SECRET}"

[api]
key = "${API_KEY}"

[[channel.namespaces]]
name = "room"
allow_subscribe_for_client = true
history_size = 100
history_ttl = "300s"
force_recovery = true
presence = true
join_leave = true
force_push_join_leave = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true

[[channel.namespaces]]
name = "small"
allow_subscribe_for_client = true
history_size = 5
history_ttl = "300s"
force_recovery = true

[[channel.namespaces]]
name = "lobby"
allow_subscribe_for_client = true
presence = true
join_leave = true
`;

const open = new Set();
function track(x) {
  open.add(x);
  return x;
}
afterEach(() => {
  for (const x of open) x.disconnect();
  open.clear();
});

const T = { timeout: 30000 };

function token(user) {
  return signJwt({ sub: user }, SECRET, 3600);
}

/** A gate: `wait()` resolves once `open()` was called. */
function gate() {
  let open;
  const opened = new Promise((resolve) => {
    open = resolve;
  });
  return { wait: () => opened, open };
}

/**
 * A client for `user` whose reconnects (every connect after the first) wait for `reconnectGate`.
 */
async function heldClient(server, user, reconnectGate) {
  let attempts = 0;
  return track(
    await connectClient(server, {
      token: token(user),
      getData: async () => {
        attempts++;
        if (attempts > 1) await reconnectGate.wait();
        return null;
      },
    }),
  );
}

/**
 * Subscribes `user` to `channel`, receives `before` publications, is disconnected by the server
 * API with reconnect advice (3011), misses `missed` publications, reconnects by itself and
 * resubscribes with recovery. Returns what happened after the reconnect.
 */
async function awayAndBack(server, user, channel, before, missed) {
  const reconnectGate = gate();
  const client = await heldClient(server, user, reconnectGate);
  const sub = client.newSubscription(channel);
  const subscribed = recordEvents(sub, ['subscribed', 'subscribing', 'unsubscribed', 'error']);
  const queue = publicationQueue(sub);
  sub.subscribe();
  await waitFor(sub, 'subscribed', 5000);

  for (let i = 1; i <= before; i++) {
    await api(server, 'publish', { channel, data: { phase: 'before', i } }, API_KEY);
  }
  const seenBefore = [];
  for (let i = 1; i <= before; i++) seenBefore.push(await queue.next(5000));
  assert.deepEqual(
    seenBefore.map((p) => p.data.i),
    Array.from({ length: before }, (_, k) => k + 1),
  );

  const connecting = waitFor(client, 'connecting', 5000);
  await api(
    server,
    'disconnect',
    { user, disconnect: { code: 3011, reason: 'force reconnect' } },
    API_KEY,
  );
  const away = await connecting;
  assert.equal(away.code, 3011);

  const offsets = [];
  for (let i = 1; i <= missed; i++) {
    const result = await api(server, 'publish', { channel, data: { phase: 'missed', i } }, API_KEY);
    offsets.push(result.offset);
  }
  // Nothing can have arrived: the client has no connection until the gate opens.
  assert.equal(queue.pending(), 0, 'publications arrived while the client was away');
  assert.equal(client.state, 'connecting');

  const resubscribed = waitFor(sub, 'subscribed', 10000);
  reconnectGate.open();
  await waitFor(client, 'connected', 10000);
  const ctx = await resubscribed;
  return { client, sub, queue, ctx, offsets, seenBefore, subscribed };
}

describe('history, recovery and presence (issue 5)', () => {
  let server;
  before(async () => {
    server = await startServer({ config: CONFIG });
  }, T);
  after(async () => {
    await server?.stop();
  });

  test('a subscriber disconnected by the API gets exactly the 20 publications it missed, recovered', T, async () => {
    const N = 20;
    const channel = uniqueChannel('room');
    const { client, queue, ctx, offsets, seenBefore, subscribed } = await awayAndBack(
      server,
      'rec-1',
      channel,
      3,
      N,
    );
    assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
    assert.equal(ctx.recovered, true, JSON.stringify(ctx));

    const got = [];
    for (let i = 0; i < N; i++) got.push(await queue.next(5000));
    assert.deepEqual(
      got.map((p) => p.data),
      Array.from({ length: N }, (_, k) => ({ phase: 'missed', i: k + 1 })),
      'exactly the missed publications, in order',
    );
    // Offsets grow by one, continue from the ones seen before, and match the API's answers.
    const lastBefore = seenBefore[seenBefore.length - 1].offset;
    assert.deepEqual(
      got.map((p) => p.offset),
      Array.from({ length: N }, (_, k) => lastBefore + 1 + k),
    );
    if (offsets.every((o) => o !== undefined)) {
      assert.deepEqual(got.map((p) => p.offset), offsets);
    }

    // No duplicates trailing: the next thing that arrives is a fresh marker.
    await api(server, 'publish', { channel, data: { marker: true } }, API_KEY);
    const marker = await queue.next(5000);
    assert.deepEqual(marker.data, { marker: true });
    assert.equal(marker.offset, lastBefore + N + 1);
    assert.equal(queue.pending(), 0, 'no duplicates');
    assert.equal(
      subscribed.filter((e) => e.event === 'subscribed').length,
      2,
      JSON.stringify(eventStrings(subscribed)),
    );
    assert.equal(client.state, 'connected');
  });

  test('a gap larger than history gives recovered: false', T, async () => {
    const channel = uniqueChannel('small');
    const { ctx, queue } = await awayAndBack(server, 'rec-2', channel, 2, 20);
    assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
    assert.equal(ctx.recovered, false, JSON.stringify(ctx));
    // The subscription is live again: a new publication arrives.
    await api(server, 'publish', { channel, data: { after: 'gap' } }, API_KEY);
    let pub = await queue.next(5000);
    // Whatever the server chose to replay (Centrifugo replays nothing when recovery fails),
    // the fresh publication comes, and nothing older than the gap's end does.
    const replayed = [];
    while (pub.data.after !== 'gap') {
      replayed.push(pub.data);
      pub = await queue.next(5000);
    }
    assert.deepEqual(replayed, [], 'publications replayed although recovery failed');
  });

  test('history through the SDK matches the server API', T, async () => {
    const channel = uniqueChannel('room');
    const client = track(await connectClient(server, { token: token('hist-1') }));
    const sub = await subscribe(client, channel);
    for (let i = 1; i <= 4; i++) {
      await api(server, 'publish', { channel, data: { i } }, API_KEY);
    }
    const viaSdk = await sub.history({ limit: 10 });
    const viaApi = await api(server, 'history', { channel, limit: 10 }, API_KEY);
    assert.deepEqual(
      viaSdk.publications.map((p) => p.data),
      [1, 2, 3, 4].map((i) => ({ i })),
    );
    assert.deepEqual(
      viaApi.publications.map((p) => p.data),
      [1, 2, 3, 4].map((i) => ({ i })),
    );
    assert.equal(viaSdk.offset, 4);
    assert.equal(viaSdk.epoch, viaApi.epoch);
  });

  test('presence shows two users; join and leave arrive at the first subscriber', T, async () => {
    const channel = uniqueChannel('room');
    const alice = track(await connectClient(server, { token: token('alice') }));
    const aliceSub = await subscribe(alice, channel);
    const events = recordEvents(aliceSub, ['join', 'leave']);

    const bob = track(await connectClient(server, { token: token('bob') }));
    const joined = waitFor(aliceSub, 'join', 5000, (ctx) => ctx.info.user === 'bob');
    const bobSub = await subscribe(bob, channel);
    const join = await joined;
    assert.equal(join.channel, channel);
    assert.ok(join.info.client, 'join info has the client id');

    const presence = await aliceSub.presence();
    const users = Object.values(presence.clients)
      .map((c) => c.user)
      .sort();
    assert.deepEqual(users, ['alice', 'bob'], JSON.stringify(presence));
    assert.ok(presence.clients[join.info.client], 'bob is listed under his client id');

    const stats = await aliceSub.presenceStats();
    assert.equal(stats.numClients, 2, JSON.stringify(stats));
    assert.equal(stats.numUsers, 2, JSON.stringify(stats));

    const viaApi = await api(server, 'presence_stats', { channel }, API_KEY);
    assert.equal(viaApi.num_clients, 2, JSON.stringify(viaApi));
    assert.equal(viaApi.num_users, 2, JSON.stringify(viaApi));

    const left = waitFor(aliceSub, 'leave', 5000, (ctx) => ctx.info.user === 'bob');
    bobSub.unsubscribe();
    const leave = await left;
    assert.equal(leave.info.client, join.info.client);

    const after = await aliceSub.presenceStats();
    assert.equal(after.numClients, 1, JSON.stringify(after));
    assert.equal(after.numUsers, 1, JSON.stringify(after));
    // Alice may also see her own join (Centrifugo sends the join to every subscriber, the new
    // one included); about bob she sees exactly one join and then one leave.
    assert.deepEqual(
      events.filter((e) => e.ctx.info.user === 'bob').map((e) => e.event),
      ['join', 'leave'],
      JSON.stringify(eventStrings(events)),
    );
    assert.ok(
      events.filter((e) => e.ctx.info.user === 'alice').length <= 1,
      JSON.stringify(events.map((e) => `${e.event} ${e.ctx.info.user}`)),
    );
  });

  test('join_leave without forcing: only a subscriber that asks (joinLeave) gets join/leave', T, async () => {
    const channel = uniqueChannel('lobby');
    const asking = track(await connectClient(server, { token: token('asker') }));
    const askingSub = await subscribe(asking, channel, { joinLeave: true });
    const quiet = track(await connectClient(server, { token: token('quiet') }));
    const quietSub = await subscribe(quiet, channel);
    const quietEvents = recordEvents(quietSub, ['join', 'leave']);

    const joined = waitFor(askingSub, 'join', 5000, (ctx) => ctx.info.user === 'carol');
    const carol = newClient(server, { token: token('carol') });
    track(carol);
    const carolConnected = waitFor(carol, 'connected', 5000);
    carol.connect();
    await carolConnected;
    const carolSub = await subscribe(carol, channel);
    await joined;
    const left = waitFor(askingSub, 'leave', 5000, (ctx) => ctx.info.user === 'carol');
    carolSub.unsubscribe();
    await left;
    // The quiet subscriber got neither; a publication after both proves its stream is current.
    const queue = publicationQueue(quietSub);
    await api(server, 'publish', { channel, data: { fence: true } }, API_KEY);
    assert.deepEqual((await queue.next(5000)).data, { fence: true });
    assert.deepEqual(eventStrings(quietEvents), []);
  });
});
