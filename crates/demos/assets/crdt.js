// The collaborative editor's sequence CRDT (RGA), the page's copy of crates/demos/src/crdt.rs:
// every character (a UTF-16 code unit) has an id [counter, site] and is inserted after the id of
// the character it followed; deletes leave tombstones. Replicas that applied the same operations
// (in causal order) have the same text; applying an operation twice changes nothing.

/** Orders ids: counter, then site. */
export function compare(a, b) {
  return a[0] - b[0] || (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0);
}
const same = (a, b) => a[0] === b[0] && a[1] === b[1];

export class Doc {
  /** @param {{id: [number, string], ch: number, deleted: boolean}[]} elems from `editor.state` */
  constructor(elems = []) {
    this.elems = elems.map((e) => ({ id: e.id, ch: e.ch, deleted: e.deleted }));
    this.clock = Math.max(0, ...this.elems.map((e) => e.id[0]));
  }

  index(id) {
    return this.elems.findIndex((e) => same(e.id, id));
  }

  /** Applies `op`; returns whether it changed anything; throws if it refers to an unknown id. */
  apply(op) {
    if (op.t === 'ins') {
      if (this.index(op.id) >= 0) return false;
      let i = 0;
      if (op.after) {
        i = this.index(op.after) + 1;
        if (i === 0) throw new Error('unknown character');
      }
      while (i < this.elems.length && compare(this.elems[i].id, op.id) > 0) i++;
      this.elems.splice(i, 0, { id: op.id, ch: op.ch, deleted: false });
      this.clock = Math.max(this.clock, op.id[0]);
      return true;
    }
    const i = this.index(op.id);
    if (i < 0) throw new Error('unknown character');
    const changed = !this.elems[i].deleted;
    this.elems[i].deleted = true;
    return changed;
  }

  text() {
    let out = '';
    for (const e of this.elems) if (!e.deleted) out += String.fromCharCode(e.ch);
    return out;
  }

  /** Ids of the visible characters, in order. */
  visible() {
    return this.elems.filter((e) => !e.deleted).map((e) => e.id);
  }

  /** The text position just after character `id` (null: 0), even if it was deleted since. */
  positionAfter(id) {
    if (!id) return 0;
    let pos = 0;
    for (const e of this.elems) {
      if (!e.deleted) pos++;
      if (same(e.id, id)) return e.deleted ? pos : pos;
    }
    return 0;
  }

  /**
   * The operations that turn this document's text into `next` (one replaced range), applied
   * here; `site` names this replica.
   */
  edit(next, site) {
    const prev = this.text();
    let start = 0;
    while (start < prev.length && start < next.length && prev[start] === next[start]) start++;
    let end = 0;
    while (end < prev.length - start && end < next.length - start &&
      prev[prev.length - 1 - end] === next[next.length - 1 - end]) end++;
    const ids = this.visible();
    const ops = [];
    for (const id of ids.slice(start, prev.length - end)) ops.push({ t: 'del', id });
    let after = start > 0 ? ids[start - 1] : null;
    for (let k = start; k < next.length - end; k++) {
      const id = [++this.clock, site];
      ops.push({ t: 'ins', id, after, ch: next.charCodeAt(k) });
      after = id;
    }
    for (const op of ops) this.apply(op);
    return ops;
  }
}
