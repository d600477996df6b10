// Unit tests of the fault harness's verdict (no server needed): what counts as silently lost,
// signalled as lost, duplicated, reordered, made twice.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { verdict } from './verdict.mjs';

const CH = 'faults:x';

/** Acknowledged publications seq 0..n-1 at offsets 1..n of epoch `e`, published at t = 100 + seq. */
function records(n, e = 'E1', first = 1) {
  return Array.from({ length: n }, (_, seq) => ({
    seq,
    channel: CH,
    t0: 100 + seq,
    tEnd: 101 + seq,
    acked: true,
    offset: first + seq,
    epoch: e,
    attempts: [],
  }));
}

const subscribed = (t, epoch, offset, extra = {}) => ({ ev: 'subscribed', t, epoch, offset, wasRecovering: false, recovered: false, ...extra });
const pub = (t, seq, offset) => ({ ev: 'pub', t, seq, offset });
const run = (recs, events, tHeal = 105) => verdict({ records: recs, subscriptions: [{ subscriber: 's1', channel: CH, events }], tHeal });

test('everything received once and in order passes', () => {
  const v = run(records(10), [subscribed(1, 'E1', 0), ...records(10).map((r) => pub(200 + r.seq, r.seq, r.offset))]);
  assert.equal(v.ok, true, v.failures.join('; '));
  assert.equal(v.totals.acknowledged, 10);
  assert.equal(v.totals.silently_lost, 0);
  assert.ok(v.totals.recover_ms > 0);
});

test('a hole without a signal is a silent loss, also after recovered: true', () => {
  const recs = records(10);
  const events = [
    subscribed(1, 'E1', 0),
    ...[0, 1, 2, 3].map((s) => pub(200 + s, s, s + 1)),
    { ev: 'subscribing', t: 210, code: 2500, reason: 'insufficient state' },
    subscribed(220, 'E1', 10, { wasRecovering: true, recovered: true }),
    ...[4, 5, 7, 8, 9].map((s) => pub(230 + s, s, s + 1)), // seq 6 (offset 7) missing
  ];
  const v = run(recs, events);
  assert.equal(v.totals.silently_lost, 1);
  assert.equal(v.ok, false);
  assert.equal(v.problems[0].examples[0].seq, 6);
});

test('what a recovered: false window covers is signalled, not silent', () => {
  const recs = records(10);
  const events = [
    subscribed(1, 'E1', 0),
    ...[0, 1, 2].map((s) => pub(200 + s, s, s + 1)),
    { ev: 'subscribing', t: 210, code: 2500, reason: 'insufficient state' },
    subscribed(220, 'E1', 6, { wasRecovering: true, recovered: false }),
    ...[6, 7, 8, 9].map((s) => pub(230 + s, s, s + 1)),
  ];
  const v = run(recs, events);
  assert.equal(v.ok, true, v.failures.join('; '));
  assert.equal(v.totals.signalled_lost, 3); // offsets 4, 5, 6
  assert.equal(v.totals.recovered_false, 1);
});

test('the same publication twice is a duplicate; an older offset after a newer one a reorder', () => {
  const recs = records(5);
  const dup = run(recs, [subscribed(1, 'E1', 0), pub(200, 0, 1), pub(201, 1, 2), pub(202, 1, 2), pub(203, 2, 3), pub(204, 3, 4), pub(205, 4, 5)]);
  assert.equal(dup.totals.duplicated, 1);
  assert.equal(dup.ok, false);
  const reord = run(recs, [subscribed(1, 'E1', 0), pub(200, 0, 1), pub(201, 2, 3), pub(202, 1, 2), pub(203, 3, 4), pub(204, 4, 5)]);
  assert.equal(reord.totals.reordered, 1);
  assert.equal(reord.totals.duplicated, 0);
  assert.equal(reord.ok, false);
  // A publication at the position a recovered: false subscribe reported, delivered after it.
  const below = run(recs, [
    subscribed(1, 'E1', 0),
    pub(200, 0, 1),
    { ev: 'subscribing', t: 201, code: 2500, reason: 'insufficient state' },
    subscribed(202, 'E1', 3, { wasRecovering: true, recovered: false }),
    pub(203, 2, 3),
    pub(204, 3, 4),
    pub(205, 4, 5),
  ]);
  assert.equal(below.totals.reordered, 1);
  assert.equal(below.problems[0].examples[0].kind, 'at or below the subscribed position');
});

test('a publication received at another offset than acknowledged was made twice', () => {
  const recs = records(3);
  const v = run(recs, [subscribed(1, 'E1', 0), pub(200, 0, 1), pub(201, 1, 2), pub(202, 2, 4)]);
  assert.equal(v.totals.made_twice, 1);
  assert.equal(v.ok, false);
});

test('a broker that lost its data: the old epoch is signalled, a retry republished under the new one is not a duplicate', () => {
  // seq 0..2 at E1:1..3. seq 3 is made at E1:4 but its acknowledgement is lost; the broker
  // restarts empty (epoch E2); the retry of seq 3 is published again, at E2:2, after seq 4 (E2:1).
  const rec = (seq, epoch, offset, t0) => ({ seq, channel: CH, t0, tEnd: t0 + 1, acked: true, offset, epoch, attempts: [] });
  const recs = [...records(3, 'E1'), rec(3, 'E2', 2, 103), rec(4, 'E2', 1, 104), rec(5, 'E2', 3, 150), rec(6, 'E2', 4, 151), rec(7, 'E2', 5, 152)];
  const events = [
    subscribed(1, 'E1', 0),
    pub(200, 0, 1),
    pub(201, 1, 2),
    pub(202, 2, 3),
    pub(203, 3, 4),
    { ev: 'subscribing', t: 210, code: 2500, reason: 'insufficient state' },
    subscribed(220, 'E2', 1, { wasRecovering: true, recovered: false }),
    pub(230, 3, 2),
    pub(231, 5, 3),
    pub(232, 6, 4),
  ];
  const v = run(recs, events, 150);
  assert.equal(v.totals.duplicated, 0);
  assert.equal(v.totals.republished_after_reset, 1);
  assert.equal(v.totals.signalled_lost, 1); // seq 4, E2:1, inside the recovered: false window
  assert.equal(v.totals.silently_lost, 1); // seq 7, E2:5, never came
});

test('a subscription that never receives again after the fault fails the run', () => {
  const recs = records(10);
  const events = [
    subscribed(1, 'E1', 0),
    ...[0, 1, 2].map((s) => pub(200 + s, s, s + 1)),
    { ev: 'subscribing', t: 210, code: 2500, reason: 'insufficient state' },
  ];
  const v = run(recs, events, 150);
  assert.equal(v.totals.unrecovered, 7);
  assert.equal(v.totals.silently_lost, 0);
  assert.equal(v.totals.recover_ms, null);
  assert.equal(v.ok, false);
});
