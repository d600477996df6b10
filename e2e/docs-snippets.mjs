// Reading the documentation's examples so that docs.test.mjs can run them: fenced code blocks of a
// markdown file, `$ command` lines with their documented output, a small shell-word splitter, and
// a JSON comparison in which the values the docs call examples only need the right type.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..');

/** A markdown file of the repository: `{ file, text, lines }` (`file` relative, for messages). */
export function readDoc(relPath) {
  const text = readFileSync(path.join(REPO, relPath), 'utf8');
  return { file: relPath, text, lines: text.split('\n') };
}

/**
 * The fenced code blocks of `doc`, in order: `{ info, line, lines, headings }`, where `line` is
 * the 1-based line of the block's first content line, `lines` its content (the fence's indent
 * removed) and `headings` the section headings it is under (`['Methods', 'publish']`).
 */
export function codeBlocks(doc) {
  const blocks = [];
  const headings = [];
  let open = null;
  doc.lines.forEach((raw, i) => {
    if (open) {
      const close = raw.match(/^(\s*)(`{3,}|~{3,})\s*$/);
      if (close && close[2][0] === open.fence[0] && close[2].length >= open.fence.length) {
        blocks.push(open.block);
        open = null;
        return;
      }
      const strip = Math.min(open.indent, raw.length - raw.trimStart().length);
      open.block.lines.push(raw.slice(strip));
      return;
    }
    const fence = raw.match(/^(\s*)(`{3,}|~{3,})\s*([^`\s]*)/);
    if (fence) {
      open = {
        fence: fence[2],
        indent: fence[1].length,
        block: { info: fence[3], line: i + 2, lines: [], headings: [...headings] },
      };
      return;
    }
    const heading = raw.match(/^(#{1,6})\s+(.*?)\s*$/);
    if (heading) {
      headings.length = heading[1].length - 1;
      headings[heading[1].length - 1] = heading[2];
      for (let k = 0; k < headings.length; k++) if (headings[k] === undefined) headings[k] = '';
    }
  });
  if (open) throw new Error(`${doc.file}:${open.block.line - 1}: code block never closed`);
  return blocks;
}

/** The rows of the first markdown table after `afterLine` (1-based) as objects keyed by header. */
export function tableAfter(doc, afterLine) {
  const rows = [];
  let header = null;
  for (let i = afterLine; i < doc.lines.length; i++) {
    const l = doc.lines[i].trim();
    if (!l.startsWith('|')) {
      if (header) break;
      continue;
    }
    const cells = l
      .replace(/^\||\|$/g, '')
      .split('|')
      .map((c) => c.trim());
    if (!header) header = cells;
    else if (!cells.every((c) => /^:?-+:?$/.test(c))) {
      rows.push({ line: i + 1, ...Object.fromEntries(header.map((h, k) => [h, cells[k] ?? ''])) });
    }
  }
  return rows;
}

/** The text of `cell` without surrounding backticks (`` `x` `` -> `x`). */
export function unquoteCell(cell) {
  const m = cell.match(/^`(.*)`$/);
  return m ? m[1] : cell;
}

/**
 * Splits `src` into words the way a POSIX shell would for a simple command: single and double
 * quotes, backslash escapes, backslash-newline continuations. Returns `{ words, incomplete }`;
 * `incomplete` is true when `src` ends inside quotes or after a continuation backslash.
 * Anything a simple command cannot contain (pipes, redirections, `$`, backquotes, `;`, `&`)
 * throws, so a doc example that needs a real shell is noticed instead of being run wrongly.
 */
export function splitShellWords(src) {
  const words = [];
  let word = null;
  let i = 0;
  const push = (s) => {
    word = (word ?? '') + s;
  };
  const unsupported = (c) => {
    throw new Error(`shell syntax not supported by the doc test: ${JSON.stringify(c)} in ${src}`);
  };
  while (i < src.length) {
    const c = src[i];
    if (c === '\\') {
      if (i + 1 >= src.length) return { words, incomplete: true };
      if (src[i + 1] !== '\n') push(src[i + 1]);
      i += 2;
    } else if (c === "'") {
      const end = src.indexOf("'", i + 1);
      if (end < 0) return { words, incomplete: true };
      push(src.slice(i + 1, end));
      i = end + 1;
    } else if (c === '"') {
      let j = i + 1;
      let s = '';
      for (;;) {
        if (j >= src.length) return { words, incomplete: true };
        const d = src[j];
        if (d === '"') break;
        if (d === '$' || d === '`') unsupported(d);
        if (d === '\\' && j + 1 < src.length && '"\\$`\n'.includes(src[j + 1])) {
          if (src[j + 1] !== '\n') s += src[j + 1];
          j += 2;
          continue;
        }
        s += d;
        j++;
      }
      push(s);
      i = j + 1;
    } else if (c === ' ' || c === '\t' || c === '\n') {
      if (word !== null) words.push(word);
      word = null;
      i++;
    } else if ('|&;<>()$`'.includes(c) || (c === '#' && word === null)) {
      unsupported(c);
    } else {
      push(c);
      i++;
    }
  }
  if (word !== null) words.push(word);
  return { words, incomplete: false };
}

/**
 * The `$ command` examples of a code block with the output shown after each:
 * `{ line, source, argv, output, outputLine }` (`line`, `outputLine` 1-based in the doc).
 * A command continues over the following lines while it is incomplete (continuation backslash,
 * open quote); its output is every line up to the next `$ ` line.
 */
export function dollarCommands(block) {
  const out = [];
  const { lines } = block;
  let i = 0;
  while (i < lines.length) {
    if (!lines[i].startsWith('$ ')) {
      if (lines[i].trim() !== '' && out.length === 0) {
        throw new Error(`line ${block.line + i}: text before the first $ command: ${lines[i]}`);
      }
      i++;
      continue;
    }
    const line = block.line + i;
    let source = lines[i].slice(2);
    let split = splitShellWords(source);
    while (split.incomplete) {
      i++;
      if (i >= lines.length) throw new Error(`line ${line}: command never ends`);
      source += `\n${lines[i]}`;
      split = splitShellWords(source);
    }
    i++;
    const outputStart = i;
    const output = [];
    while (i < lines.length && !lines[i].startsWith('$ ')) output.push(lines[i++]);
    out.push({
      line,
      source,
      argv: split.words,
      output: output.join('\n').trim(),
      outputLine: block.line + outputStart,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Comparing a documented JSON answer with the real one.

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * What the docs call examples. `bound` values stand for one real value each: every occurrence
 * of the same documented value must be the same real value, and two different documented values
 * must be different real values (client ids, epochs, node ids). `typed` values only need the
 * documented type (node name, uptime, version, server time).
 */
export const DEFAULT_EXAMPLES = {
  boundKeys: new Set(['epoch', 'uid', 'client', 'node']),
  typedKeys: new Set(['name', 'uptime', 'version', 'time']),
  isBoundValue: (v) => typeof v === 'string' && (UUID.test(v) || v.includes('…')),
  isBoundKey: (k) => UUID.test(k) || k.includes('…'),
};

/**
 * Example bindings shared by a sequence of comparisons: documented value -> real value.
 * `substitute(s)` replaces every bound documented value in `s` by its real value (for the next
 * commands of a story, such as an epoch the doc repeats in a later request).
 */
export class Examples {
  constructor(rules = DEFAULT_EXAMPLES) {
    this.rules = rules;
    this.doc = new Map();
    this.real = new Map();
  }

  substitute(s) {
    let r = s;
    // Longest first, so that a value containing another is replaced whole.
    const keys = [...this.doc.keys()].filter((k) => typeof k === 'string' && k !== '');
    keys.sort((a, b) => b.length - a.length);
    for (const k of keys) r = r.split(k).join(String(this.doc.get(k)));
    return r;
  }

  snapshot() {
    return { doc: new Map(this.doc), real: new Map(this.real) };
  }

  restore(s) {
    this.doc = s.doc;
    this.real = s.real;
  }

  bind(docValue, realValue) {
    if (this.doc.has(docValue)) {
      return this.doc.get(docValue) === realValue
        ? null
        : `the doc's example ${JSON.stringify(docValue)} stands for ${JSON.stringify(
            this.doc.get(docValue),
          )} elsewhere, but here it is ${JSON.stringify(realValue)}`;
    }
    if (this.real.has(realValue)) {
      return `${JSON.stringify(realValue)} is already the doc's ${JSON.stringify(
        this.real.get(realValue),
      )}, but the doc shows ${JSON.stringify(docValue)} here`;
    }
    this.doc.set(docValue, realValue);
    this.real.set(realValue, docValue);
    return null;
  }
}

function typeName(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

function pathJoin(p, key) {
  if (typeof key === 'number') return `${p}[${key}]`;
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `${p}.${key}` : `${p}[${JSON.stringify(key)}]`;
}

/**
 * Compares `expected` (from the doc) with `actual`; returns null when they match, else
 * `{ path, reason }` for the first difference. Binds example values in `examples` (on failure
 * the bindings made by this call are undone).
 */
export function compareJson(expected, actual, examples) {
  const saved = examples.snapshot();
  const diff = walk(expected, actual, '$', undefined, examples);
  if (diff) examples.restore(saved);
  return diff;
}

function walk(exp, act, p, key, ex) {
  const { rules } = ex;
  if (key !== undefined && rules.typedKeys.has(key) && exp !== null && typeof exp !== 'object') {
    if (typeName(exp) !== typeName(act)) {
      return { path: p, reason: `expected a ${typeName(exp)} (example ${JSON.stringify(exp)}), got ${JSON.stringify(act)}` };
    }
    return null;
  }
  const bound =
    typeof exp === 'string' &&
    (rules.isBoundValue(exp) || (key !== undefined && rules.boundKeys.has(key) && exp !== ''));
  if (bound) {
    if (typeof act !== 'string' || act === '') {
      return { path: p, reason: `expected a string like ${JSON.stringify(exp)}, got ${JSON.stringify(act)}` };
    }
    if (UUID.test(exp) && !UUID.test(act)) {
      return { path: p, reason: `expected a UUID (example ${exp}), got ${JSON.stringify(act)}` };
    }
    const err = ex.bind(exp, act);
    return err ? { path: p, reason: err } : null;
  }
  if (typeName(exp) !== typeName(act)) {
    return { path: p, reason: `expected ${JSON.stringify(exp)}, got ${JSON.stringify(act)}` };
  }
  if (Array.isArray(exp)) {
    if (exp.length !== act.length) {
      return { path: p, reason: `expected ${exp.length} element(s), got ${act.length}` };
    }
    for (let i = 0; i < exp.length; i++) {
      const d = walk(exp[i], act[i], pathJoin(p, i), undefined, ex);
      if (d) return d;
    }
    return null;
  }
  if (exp !== null && typeof exp === 'object') return walkObject(exp, act, p, ex);
  if (exp !== act) return { path: p, reason: `expected ${JSON.stringify(exp)}, got ${JSON.stringify(act)}` };
  return null;
}

function walkObject(exp, act, p, ex) {
  const fixed = Object.keys(exp).filter((k) => !ex.rules.isBoundKey(k) || ex.doc.has(k));
  const open = Object.keys(exp).filter((k) => ex.rules.isBoundKey(k) && !ex.doc.has(k));
  const used = new Set();
  for (const k of fixed) {
    const realKey = ex.rules.isBoundKey(k) ? ex.doc.get(k) : k;
    if (!Object.hasOwn(act, realKey)) return { path: pathJoin(p, k), reason: 'missing in the answer' };
    used.add(realKey);
    const d = walk(exp[k], act[realKey], pathJoin(p, k), k, ex);
    if (d) return d;
  }
  const rest = Object.keys(act).filter((k) => !used.has(k));
  if (open.length === 0 && rest.length > 0) {
    return { path: pathJoin(p, rest[0]), reason: `not in the doc: ${JSON.stringify(act[rest[0]])}` };
  }
  if (rest.length !== open.length) {
    return { path: p, reason: `expected ${open.length} more key(s) like ${open.join(', ')}, got ${rest.length}: ${rest.join(', ')}` };
  }
  // Example keys (client ids): find a one-to-one pairing under which every entry matches.
  let firstFailure = null;
  const assign = (i, remaining) => {
    if (i === open.length) return true;
    for (const realKey of remaining) {
      const saved = ex.snapshot();
      let d = ex.bind(open[i], realKey) ? { path: pathJoin(p, open[i]), reason: 'key taken' } : null;
      if (!d) d = walk(exp[open[i]], act[realKey], pathJoin(p, open[i]), undefined, ex);
      if (!d && assign(i + 1, remaining.filter((k) => k !== realKey))) return true;
      if (d && !firstFailure) firstFailure = d;
      ex.restore(saved);
    }
    return false;
  };
  if (assign(0, rest)) return null;
  return firstFailure ?? { path: p, reason: 'no pairing of the example keys matches' };
}

/** `value` as JSON with sorted keys, for messages. */
export function canonical(value, indent = 0) {
  const sort = (v) => {
    if (Array.isArray(v)) return v.map(sort);
    if (v && typeof v === 'object') {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sort(v[k])]));
    }
    return v;
  };
  return JSON.stringify(sort(value), null, indent || undefined);
}
