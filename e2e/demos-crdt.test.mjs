// The editor demo's CRDT as the pages run it (crates/demos/assets/crdt.js; the server's copy is
// crates/demos/src/crdt.rs, with its own tests): replicas editing concurrently converge whatever
// order they receive each other's edits in; repeats change nothing.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Doc } from '../crates/demos/assets/crdt.js';

/** A deterministic pseudo-random sequence. */
function rng(seed) {
  let s = seed >>> 0 || 1;
  return (n) => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s % n;
  };
}

/** Applies `ops`, retrying those that refer to what has not arrived yet (causal delivery). */
function deliver(doc, ops) {
  let waiting = ops.slice();
  while (waiting.length) {
    const before = waiting.length;
    waiting = waiting.filter((op) => {
      try { doc.apply(op); return false; } catch { return true; }
    });
    assert.ok(waiting.length < before, 'stuck');
  }
}

test('concurrent typing at the same place keeps each run together and converges', () => {
  const a = new Doc(), b = new Doc();
  deliver(b, a.edit('x', 'a'));
  const oa = a.edit('x12', 'a');
  const ob = b.edit('x34', 'b');
  deliver(a, ob);
  deliver(b, oa);
  assert.equal(a.text(), b.text());
  assert.match(a.text(), /^x(1234|3412)$/);
});

test('random concurrent edits of three replicas converge in any delivery order', () => {
  for (let seed = 1; seed < 200; seed++) {
    const r = rng(seed * 2654435761);
    const sites = ['a', 'b', 'c'].map((name) => ({ name, doc: new Doc() }));
    const all = [];
    for (let round = 0; round < 4; round++) {
      const made = sites.map(({ name, doc }) => {
        const ops = [];
        for (let k = 0; k <= r(4); k++) {
          const text = doc.text();
          const at = r(text.length + 1);
          const cut = r(3) === 0 ? Math.min(text.length - at, 1 + r(3)) : 0;
          const typed = 'abcdefghij'.slice(0, r(4));
          ops.push(...doc.edit(text.slice(0, at) + typed + text.slice(at + cut), name));
        }
        return ops;
      });
      sites.forEach((site, i) => {
        const order = made.map((_, j) => j).filter((j) => j !== i);
        if (r(2)) order.reverse();
        for (const j of order) deliver(site.doc, made[j]);
      });
      all.push(...made.flat());
    }
    const text = sites[0].doc.text();
    for (const { doc } of sites) assert.equal(doc.text(), text, `seed ${seed}`);
    const fresh = new Doc();
    deliver(fresh, all);
    assert.equal(fresh.text(), text, `seed ${seed}`);
    // Every op again: nothing changes.
    for (const op of all) assert.equal(fresh.apply(op), false);
  }
});
