// The verdict of a fault run, from what the publisher recorded and what every subscription saw.
// Pure functions (no I/O), unit-tested in verdict.test.mjs.
//
// Positions: a publication's place in its channel's stream is (epoch, offset). Epochs are ordered
// by when they were first seen (an acknowledgement or a `subscribed` event), offsets within one.
//
// For one subscription (one subscriber, one channel), walking its events in order:
//   - the first `subscribed` sets the start position (publishing starts after every subscriber is
//     subscribed, so every acknowledged publication is expected);
//   - `subscribed` with `recovered: true` continues from where the subscription was: the missed
//     publications follow it;
//   - `subscribed` with `recovered: false`, or without recovery (a new subscribe after
//     `unsubscribed`), is a signal: the SDK told the application that publications between its
//     last position and the new one may be missing ("signalled as lost"); the position jumps;
//   - a publication whose seq was already received is a duplicate; one whose offset is not after
//     the last position, a reorder.
// Then every acknowledged publication of the channel not received is either inside a signalled
// window, or lost silently. A publication received with another offset than the one its publish
// acknowledged (same epoch) was made twice (an idempotency failure). The same seq received twice
// with a change of epoch signalled in between (the broker lost its data, with the idempotency
// keys, and a retry published again) is reported apart and is not a failure.

/** Orders epochs by first appearance: returns `epoch -> rank`. */
export function epochRanks(records, subscriptions) {
  const seen = [];
  for (const r of records) if (r.acked) seen.push({ t: r.tEnd, epoch: r.epoch });
  for (const s of subscriptions) {
    for (const e of s.events) if (e.ev === 'subscribed' && e.epoch !== null) seen.push({ t: e.t, epoch: e.epoch });
  }
  seen.sort((a, b) => a.t - b.t);
  const ranks = new Map();
  for (const { epoch } of seen) if (!ranks.has(epoch)) ranks.set(epoch, ranks.size);
  return ranks;
}

function cmp(ranks, a, b) {
  const ra = ranks.get(a.epoch) ?? -1;
  const rb = ranks.get(b.epoch) ?? -1;
  if (ra !== rb) return ra - rb;
  return a.offset - b.offset;
}

/**
 * Analyses one subscription. `acked`: Map seq -> record of this channel's acknowledged
 * publications; `bySeq`: every record by seq. `tHeal`: when the fault ended.
 */
export function analyseSubscription(sub, { acked, bySeq, ranks, tHeal }) {
  const out = {
    subscriber: sub.subscriber,
    channel: sub.channel,
    received: 0,
    duplicated: 0,
    reordered: 0,
    republishedAfterReset: 0,
    mismatched: 0,
    signalledLost: 0,
    silentlyLost: 0,
    unrecovered: 0,
    recoverMs: null,
    recoveredTrue: 0,
    recoveredFalse: 0,
    anomalies: [],
    examples: [],
  };
  let started = false;
  let epoch = null;
  let last = null; // offset within `epoch`
  let lastFrom = 'position'; // whether `last` is a received publication or a subscribe position
  const signals = [];
  const received = new Map(); // seq -> [{ epoch, offset, t }]
  let subscribedNow = false;
  for (const e of sub.events) {
    if (e.ev === 'subscribed') {
      subscribedNow = true;
      if (!started) {
        started = true;
        epoch = e.epoch;
        last = e.offset;
        lastFrom = 'position';
        continue;
      }
      if (e.wasRecovering && e.recovered) {
        out.recoveredTrue++;
        if (e.epoch !== epoch) {
          out.anomalies.push(`recovered: true with epoch ${e.epoch} while the subscription was in ${epoch} (t=${Math.round(e.t)})`);
          epoch = e.epoch;
        }
        continue;
      }
      out.recoveredFalse++;
      signals.push({
        from: { epoch, offset: last },
        to: { epoch: e.epoch, offset: e.offset },
        t: e.t,
        kind: e.wasRecovering ? 'recovered:false' : 'new subscribe',
      });
      epoch = e.epoch;
      last = e.offset;
      lastFrom = 'position';
      continue;
    }
    if (e.ev === 'subscribing' || e.ev === 'unsubscribed') {
      subscribedNow = false;
      continue;
    }
    if (e.ev !== 'pub') continue;
    out.received++;
    if (e.seq === null || e.offset === null) {
      out.anomalies.push(`publication without seq or offset (offset ${e.offset}, seq ${e.seq})`);
      continue;
    }
    const prev = received.get(e.seq);
    const entry = { epoch, offset: e.offset, t: e.t };
    if (prev) {
      const sameEpoch = prev.some((p) => p.epoch === epoch);
      if (!sameEpoch && signals.some((s) => s.t > prev[prev.length - 1].t && s.t <= e.t && s.to.epoch !== s.from.epoch)) {
        out.republishedAfterReset++;
      } else {
        out.duplicated++;
        if (out.examples.length < 5) {
          out.examples.push({
            kind: 'duplicate',
            seq: e.seq,
            first: prev.map((p) => `${p.epoch}:${p.offset}@${Math.round(p.t)}`),
            again: `${epoch}:${e.offset}@${Math.round(e.t)}`,
          });
        }
      }
      prev.push(entry);
    } else {
      received.set(e.seq, [entry]);
      if (last !== null && e.offset <= last) {
        // Out of order: after a later publication, or at or below the position a `subscribed`
        // reported (which the application takes as already covered).
        out.reordered++;
        if (out.examples.length < 5) {
          const kind = lastFrom === 'pub' ? 'reorder' : 'at or below the subscribed position';
          out.examples.push({ kind, seq: e.seq, offset: e.offset, after: last, epoch, t: Math.round(e.t) });
        }
      }
    }
    if (last === null || e.offset > last) {
      last = e.offset;
      lastFrom = 'pub';
    }
    const ack = acked.get(e.seq);
    if (ack && ack.epoch === epoch && ack.offset !== e.offset) {
      out.mismatched++;
      if (out.examples.length < 5) {
        out.examples.push({ kind: 'made twice', seq: e.seq, acked: `${ack.epoch}:${ack.offset}`, received: `${epoch}:${e.offset}` });
      }
    }
    if (out.recoverMs === null && e.t > tHeal) {
      const rec = bySeq[e.seq];
      if (rec && rec.t0 >= tHeal) out.recoverMs = e.t - tHeal;
    }
  }
  const lastPos = { epoch, offset: last };
  for (const [seq, rec] of acked) {
    if (received.has(seq)) continue;
    const p = { epoch: rec.epoch, offset: rec.offset };
    const covered = signals.find((s) => cmp(ranks, p, s.from) > 0 && cmp(ranks, p, s.to) <= 0);
    if (covered) {
      out.signalledLost++;
      continue;
    }
    if (!subscribedNow && last !== null && cmp(ranks, p, lastPos) > 0) {
      // After the last position of a subscription that is not subscribed at the end: the SDK
      // says it is (re)subscribing; it never came back (reported as not recovered).
      out.unrecovered++;
      continue;
    }
    out.silentlyLost++;
    if (out.examples.filter((x) => x.kind === 'silent loss').length < 5) {
      out.examples.push({
        kind: 'silent loss',
        seq,
        position: `${rec.epoch}:${rec.offset}`,
        ackedAt: Math.round(rec.tEnd),
        attempts: rec.attempts.map((a) => `${a.node}:${a.outcome}@${Math.round(a.t)}+${a.dt}`).join(' '),
        lastPosition: `${epoch}:${last}`,
      });
    }
  }
  if (!started) out.anomalies.push('never subscribed');
  return out;
}

/**
 * The verdict of one run: totals over every subscription, plus the per-subscription details of
 * those with a problem.
 */
export function verdict({ records, subscriptions, tHeal }) {
  const bySeq = records;
  const ackedByChannel = new Map();
  for (const r of records) {
    if (!r.acked) continue;
    if (!ackedByChannel.has(r.channel)) ackedByChannel.set(r.channel, new Map());
    ackedByChannel.get(r.channel).set(r.seq, r);
  }
  const ranks = epochRanks(records, subscriptions);
  const per = subscriptions.map((s) =>
    analyseSubscription(s, { acked: ackedByChannel.get(s.channel) || new Map(), bySeq, ranks, tHeal }),
  );
  const sum = (k) => per.reduce((n, p) => n + p[k], 0);
  const deliveredSeqs = new Set();
  for (const s of subscriptions) for (const e of s.events) if (e.ev === 'pub' && e.seq !== null) deliveredSeqs.add(e.seq);
  const unacked = records.filter((r) => !r.acked);
  const recover = per.map((p) => p.recoverMs);
  const totals = {
    published: records.length,
    acknowledged: records.length - unacked.length,
    unacknowledged: unacked.length,
    unacked_delivered: unacked.filter((r) => deliveredSeqs.has(r.seq)).length,
    deliveries: sum('received'),
    silently_lost: sum('silentlyLost'),
    duplicated: sum('duplicated'),
    reordered: sum('reordered'),
    made_twice: sum('mismatched'),
    signalled_lost: sum('signalledLost'),
    republished_after_reset: sum('republishedAfterReset'),
    unrecovered: sum('unrecovered'),
    recovered_true: sum('recoveredTrue'),
    recovered_false: sum('recoveredFalse'),
    recover_ms: recover.some((r) => r === null) ? null : Math.round(Math.max(0, ...recover)),
    not_recovered: recover.filter((r) => r === null).length,
    // Epochs per channel: 1 unless the stream restarted (broker data lost).
    epochs: Math.max(0, ...[...ackedByChannel.values()].map((m) => new Set([...m.values()].map((r) => r.epoch)).size)),
  };
  const anomalies = per.flatMap((p) => p.anomalies.map((a) => `${p.subscriber}/${p.channel}: ${a}`));
  const failures = [];
  if (totals.acknowledged === 0) failures.push('no publication was acknowledged');
  if (totals.silently_lost) failures.push(`${totals.silently_lost} silently lost`);
  if (totals.duplicated) failures.push(`${totals.duplicated} duplicated`);
  if (totals.reordered) failures.push(`${totals.reordered} reordered`);
  if (totals.made_twice) failures.push(`${totals.made_twice} deliveries of a publication made twice (idempotency)`);
  if (totals.not_recovered) failures.push(`${totals.not_recovered} subscriptions received nothing new after the fault`);
  if (anomalies.length) failures.push(...anomalies);
  const problems = per.filter(
    (p) => p.silentlyLost || p.duplicated || p.reordered || p.mismatched || p.unrecovered || p.recoverMs === null || p.anomalies.length,
  );
  return { totals, failures, ok: failures.length === 0, problems };
}
