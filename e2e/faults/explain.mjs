// Explains a failed run from the directory the harness kept (events.json): for every problem
// (silent loss, duplicate, reorder, publication made twice), what the subscriber's SDK reported
// around it and what the publisher recorded for the publications involved.
//
//   node e2e/faults/explain.mjs /tmp/sbf-faults-XXXX/nats-broker-kill-2 [max problems]
//
// Times are milliseconds of the runner's clock (events.json has `wallAtZero`, the wall clock at
// 0, to find the same moment in the node logs).

import { readFileSync } from 'node:fs';
import path from 'node:path';

const dir = process.argv[2];
const max = Number(process.argv[3] || 6);
if (!dir) {
  process.stderr.write('usage: node e2e/faults/explain.mjs RUN_DIR [MAX_PROBLEMS]\n');
  process.exit(2);
}
const d = JSON.parse(readFileSync(path.join(dir, 'events.json'), 'utf8'));
const at = (t) => `${Math.round(t)}`;
const wall = (t) => new Date(d.wallAtZero + t).toISOString().slice(11, 23);
console.log(
  `${d.spec.broker}/${d.spec.scenario}#${d.spec.repeat}: fault ${at(d.tFault)} (${wall(d.tFault)}) .. ${at(d.tHeal)} (${wall(d.tHeal)})`,
);
const bySeq = d.records;
const describe = (seq) => {
  const r = bySeq[seq];
  if (!r) return `seq ${seq}: not published by the publisher`;
  const attempts = r.attempts.map((a) => `${a.node}:${a.outcome}@${at(a.t)}+${a.dt}`).join(' ');
  return `seq ${seq}: ${r.acked ? `acked ${r.epoch}:${r.offset}` : 'not acknowledged'}; attempts ${attempts}`;
};

let shown = 0;
for (const p of d.problems) {
  const sub = d.subscribers.find((s) => s.id === p.subscriber);
  const events = sub.subscriptions.find((s) => s.channel === p.channel).events;
  for (const ex of p.examples) {
    if (shown++ >= max) break;
    console.log(`\n== ${p.subscriber} (home ${sub.home}) ${p.channel}: ${ex.kind} ${JSON.stringify(ex)}`);
    const seqs = new Set([ex.seq]);
    // The offset around which to show the subscriber's events.
    const center = Number(String(ex.position || ex.again || ex.received || `:${ex.offset}`).split(':')[1]?.split('@')[0]);
    let i0 = events.findIndex((e) => e.ev === 'pub' && e.offset >= center - 3);
    if (i0 < 0) i0 = events.length - 1;
    const lo = Math.max(0, i0 - 8);
    // Non-publication events (subscribe, 2500, errors) near the window are always worth seeing.
    const window = events.filter((e, i) => (i >= lo && i <= i0 + 12) || (e.ev !== 'pub' && i < i0 + 12 && i >= lo - 40));
    for (const e of window) {
      if (e.ev === 'pub') {
        seqs.add(e.seq);
        console.log(`  ${at(e.t)} ${e.node} pub offset ${e.offset} seq ${e.seq}`);
      } else {
        const rest = { ...e };
        delete rest.ev;
        delete rest.t;
        delete rest.node;
        console.log(`  ${at(e.t)} ${e.node} ${e.ev} ${JSON.stringify(rest)}`);
      }
    }
    console.log('  publisher:');
    for (const s of [...seqs].sort((a, b) => (bySeq[a]?.offset ?? 0) - (bySeq[b]?.offset ?? 0)).slice(0, 20)) {
      console.log(`    ${describe(s)}`);
    }
  }
}
if (!d.problems.length) console.log('no problem recorded');
