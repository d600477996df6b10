// The fault harness (GitHub issue #12, items 7 and 8): runs fault scenarios against three real
// switchboard nodes on a private Redis or NATS, with real `centrifuge` SDK subscribers on every
// node and a publisher that records which publications were acknowledged, and reports per
// scenario: acknowledged, silently lost (must be 0), duplicated, reordered, signalled as lost,
// and the time to recover. Run it with `scripts/faults` (which builds what it needs); see
// docs/DEPLOY.md, "What happens when something fails".
//
//   node e2e/faults/main.mjs [--broker redis|nats|both] [--scenario a,b] [--repeat N] [--short]
//                            [--keep] [--verbose] [--tap] [--log-level FILTER] [--netem auto|tc]
//                            [--ns-prefix P]
//
// Scenarios (each run starts from scratch: a new broker process, new nodes, new channels):
//   baseline      no fault
//   broker-kill   the broker is SIGKILLed and restarted (Redis without persistence: empty;
//                 NATS: same JetStream store directory)
//   broker-stop   the broker is SIGSTOPped for 5 s, then SIGCONTed
//   node-kill     node n1 is SIGKILLed; its subscribers reconnect to another node
//   partition     n1 cannot reach the broker (packets dropped both ways) for a while (namespaces)
//   slow-link     n1's link gets 200 ms more round trip and 5% loss each way (namespaces, netem)
// The last two run every host (broker, nodes, clients) in its own network namespace and need root
// and `ip netns`; when missing they are skipped, with a message saying why. slow-link uses
// `tc netem` when the kernel has it; otherwise (e.g. a kernel built without sch_netem) it says so
// and uses netem.py, a user-space emulator on a TUN device (python3, /dev/net/tun), or is skipped
// when that is not possible either (`--netem tc` insists on the kernel's).
//
// Output: one JSON line per run on stdout (`"kind":"run"`), then one per scenario and broker over
// its repeats (`"kind":"scenario"`); progress and a summary table on stderr. Exit status 1 when a
// run failed: a publication acknowledged and neither received nor signalled as lost, a duplicate
// or out-of-order delivery, a publication made twice, a subscription that never received again,
// or a run that could not complete.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, createWriteStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { createTopology, destroyTopology, probeNetem, probeNetns } from './netns.mjs';
import { BIN, NATS_SERVER, REDIS_SERVER } from './procs.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const ALL = ['baseline', 'broker-kill', 'broker-stop', 'node-kill', 'partition', 'slow-link'];
const NET = new Set(['partition', 'slow-link']);

// Durations (ms). `--short` is the scripts/test version: every scenario once, about 2-3 minutes
// for both brokers.
const TIMINGS = {
  short: { warmup: 1500, window: 1500, down: 1500, stop: 5000, partition: 4000, slow: 6000, tail: 1500, postMax: 25000, drain: 8000 },
  full: { warmup: 3000, window: 3000, down: 3000, stop: 5000, partition: 8000, slow: 10000, tail: 3000, postMax: 40000, drain: 15000 },
};
const RUN_TIMEOUT_MS = 150000;

function usage(msg) {
  if (msg) process.stderr.write(`faults: ${msg}\n`);
  process.stderr.write(
    'usage: scripts/faults [--broker redis|nats|both] [--scenario NAME,...] [--repeat N] [--short] [--keep] [--verbose]\n' +
      '                     [--tap] [--log-level FILTER] [--netem auto|tc]\n' +
      `scenarios: ${ALL.join(', ')}\n`,
  );
  process.exit(2);
}

function parseArgs(argv) {
  const o = { brokers: ['redis', 'nats'], scenarios: ALL, repeat: null, short: false, keep: false, verbose: false, tap: false, logLevel: 'info', netem: 'auto', nsPrefix: `sbf-${process.pid}` };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--broker') {
      const b = val();
      if (b === 'both') o.brokers = ['redis', 'nats'];
      else if (b === 'redis' || b === 'nats') o.brokers = [b];
      else usage(`unknown broker ${b}`);
    } else if (a === '--scenario') {
      o.scenarios = val().split(',').filter(Boolean);
      for (const s of o.scenarios) if (!ALL.includes(s)) usage(`unknown scenario ${s}`);
    } else if (a === '--repeat') {
      o.repeat = Number(val());
      if (!Number.isInteger(o.repeat) || o.repeat < 1) usage('--repeat needs a positive integer');
    } else if (a === '--short') o.short = true;
    else if (a === '--keep') o.keep = true;
    else if (a === '--verbose') o.verbose = true;
    else if (a === '--tap') o.tap = true;
    else if (a === '--netem') {
      o.netem = val();
      if (!['auto', 'tc'].includes(o.netem)) usage('--netem takes auto or tc');
    }
    else if (a === '--log-level') o.logLevel = val();
    else if (a === '--ns-prefix') o.nsPrefix = val();
    else if (a === '-h' || a === '--help') usage();
    else usage(`unknown argument ${a}`);
  }
  // A race seen in 1 of 6 runs is caught by 6 repeats with probability 1 - (5/6)^6 = 67%; 12
  // would make it 89%. The default is 6 per scenario and broker (about 15 minutes per broker).
  if (o.repeat === null) o.repeat = o.short ? 1 : 6;
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const err = (s) => process.stderr.write(`${s}\n`);

for (const [what, file] of [['switchboard', BIN], ['redis-server', REDIS_SERVER], ['nats-server', NATS_SERVER]]) {
  const needed = what === 'switchboard' || opts.brokers.includes(what.split('-')[0]);
  if (needed && !existsSync(file)) {
    err(`faults: ${what} not found at ${file}`);
    process.exit(2);
  }
}

// What this machine can do.
let netSkip = null;
let netemSkip = null;
let netemMode = 'tc';
if (opts.scenarios.some((s) => NET.has(s))) {
  if (process.getuid?.() !== 0) netSkip = 'network namespaces need root';
  else {
    const p = probeNetns(opts.nsPrefix);
    if (!p.ok) netSkip = `ip netns / veth do not work here: ${p.reason}`;
  }
  if (!netSkip && opts.scenarios.includes('slow-link')) {
    const p = probeNetem(opts.nsPrefix);
    if (!p.ok) {
      const why = `tc netem is not available here (tc: "${p.reason}"; the kernel lacks sch_netem, CONFIG_NET_SCH_NETEM)`;
      const python = spawnSync('python3', ['--version']).status === 0;
      if (opts.netem === 'tc' || !python || !existsSync('/dev/net/tun')) {
        netemSkip = `${why}${opts.netem === 'tc' ? '' : ' and the user-space emulator needs python3 and /dev/net/tun'}`;
      } else {
        netemMode = 'user-space';
        err(`faults: ${why}; slow-link uses the user-space emulator instead (e2e/faults/netem.py: real packets delayed and dropped through a TUN device)`);
      }
    }
  }
}
function skipReason(scenario) {
  if (NET.has(scenario) && netSkip) return netSkip;
  if (scenario === 'slow-link' && netemSkip) return netemSkip;
  return null;
}

// Cleanup on every way out: the current runner's process group, the namespaces of this run.
const workRoot = mkdtempSync(path.join(os.tmpdir(), 'sbf-faults-'));
let current = null; // { pid }
function cleanupSync() {
  if (current?.pid) {
    try {
      process.kill(-current.pid, 'SIGCONT');
      process.kill(-current.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  destroyTopology(opts.nsPrefix);
}
process.on('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    err(`faults: ${sig}, cleaning up (logs so far: ${workRoot})`);
    cleanupSync();
    process.exit(130);
  });
}

function runOne(broker, scenario, repeat, index) {
  const runId = `${broker[0]}${scenario.replace(/[^a-z]/g, '').slice(0, 8)}${repeat}`;
  const dir = path.join(workRoot, `${broker}-${scenario}-${repeat}`);
  mkdirSync(dir, { recursive: true });
  const nsPrefix = `${opts.nsPrefix}-${index}`;
  const topology = NET.has(scenario) ? createTopology(nsPrefix) : null;
  const spec = {
    broker,
    scenario,
    repeat,
    runId,
    dir,
    topology,
    timings: opts.short ? TIMINGS.short : TIMINGS.full,
    rate: opts.short ? 100 : 150,
    subsPerNode: 2,
    channels: 2,
    tap: opts.tap,
    logLevel: opts.logLevel,
    netem: netemMode,
  };
  const runner = path.join(here, 'runner.mjs');
  const [cmd, args] = topology
    ? ['ip', ['netns', 'exec', topology.hosts.c.ns, process.execPath, runner, JSON.stringify(spec)]]
    : [process.execPath, [runner, JSON.stringify(spec)]];
  const child = spawn(cmd, args, { detached: true, stdio: ['pipe', 'pipe', 'pipe'], cwd: path.join(here, '..') });
  current = { pid: child.pid };
  const logStream = createWriteStream(path.join(dir, 'runner.log'));
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => {
    logStream.write(d);
    if (opts.verbose) process.stderr.write(d);
  });
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      err(`faults: ${broker}/${scenario}#${repeat} did not finish within ${RUN_TIMEOUT_MS / 1000} s; killing it`);
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }, RUN_TIMEOUT_MS);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      // Whatever the runner left behind (it kills its processes itself; this is the safety net).
      try {
        process.kill(-child.pid, 'SIGCONT');
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // nothing left
      }
      current = null;
      if (topology) destroyTopology(nsPrefix);
      logStream.end();
      const line = out.trim().split('\n').filter(Boolean).pop();
      let result;
      try {
        result = JSON.parse(line);
      } catch {
        result = { broker, scenario, repeat, ok: false, error: `runner exited (${signal || code}) without a result` };
      }
      if (!result.ok && !result.error && code !== 0 && code !== 1) result.error = `runner exited ${signal || code}`;
      result.dir = dir;
      resolve(result);
    });
  });
}

function fmtRun(r) {
  if (r.error) return `${r.broker}/${r.scenario}#${r.repeat}: ERROR ${r.error}`;
  return (
    `${r.ok ? 'ok  ' : 'FAIL'} ${r.broker}/${r.scenario}#${r.repeat}: acked ${r.acknowledged} ` +
    `(unacked ${r.unacknowledged}, of which delivered ${r.unacked_delivered}), silently lost ${r.silently_lost}, ` +
    `dup ${r.duplicated}, reordered ${r.reordered}, made twice ${r.made_twice}, signalled lost ${r.signalled_lost} ` +
    `(recovered:false ${r.recovered_false}, recovered:true ${r.recovered_true}), recover ${r.recover_ms ?? 'never'} ms` +
    (r.client_loop_delay_ms?.max > 250 ? ` [client event loop lagged up to ${r.client_loop_delay_ms.max} ms]` : '')
  );
}

const results = [];
const t0 = Date.now();
let index = 0;
for (const broker of opts.brokers) {
  for (const scenario of opts.scenarios) {
    const why = skipReason(scenario);
    if (why) {
      err(`skip ${broker}/${scenario}: ${why}`);
      results.push({ kind: 'run', broker, scenario, skipped: why });
      continue;
    }
    for (let repeat = 1; repeat <= opts.repeat; repeat++) {
      index++;
      const r = await runOne(broker, scenario, repeat, index);
      err(fmtRun(r));
      if (!r.ok) {
        for (const f of r.failures || []) err(`     ${f}`);
        const logFile = path.join(r.dir, 'runner.log');
        if (!opts.verbose && existsSync(logFile)) {
          const text = readFileSync(logFile, 'utf8').trim().split('\n').slice(-25).join('\n');
          err(text.replace(/^/gm, '     | '));
        }
        err(`     logs, events and result kept in ${r.dir}`);
      } else if (!opts.keep) {
        rmSync(r.dir, { recursive: true, force: true });
        delete r.dir;
      }
      process.stdout.write(`${JSON.stringify({ kind: 'run', ...r })}\n`);
      results.push({ kind: 'run', ...r });
    }
  }
}

// Per scenario and broker, over its repeats.
const rows = [];
for (const broker of opts.brokers) {
  for (const scenario of opts.scenarios) {
    const runs = results.filter((r) => r.broker === broker && r.scenario === scenario);
    if (!runs.length) continue;
    if (runs[0].skipped) {
      rows.push({ kind: 'scenario', broker, scenario, skipped: runs[0].skipped });
      continue;
    }
    const done = runs.filter((r) => !r.error);
    const sum = (k) => done.reduce((n, r) => n + (r[k] || 0), 0);
    const rec = done.map((r) => r.recover_ms);
    const recOk = rec.filter((x) => x !== null && x !== undefined).sort((a, b) => a - b);
    rows.push({
      kind: 'scenario',
      broker,
      scenario,
      runs: runs.length,
      failed: runs.filter((r) => !r.ok).length,
      acknowledged: sum('acknowledged'),
      unacknowledged: sum('unacknowledged'),
      unacked_delivered: sum('unacked_delivered'),
      silently_lost: sum('silently_lost'),
      duplicated: sum('duplicated'),
      reordered: sum('reordered'),
      made_twice: sum('made_twice'),
      signalled_lost: sum('signalled_lost'),
      recovered_false: sum('recovered_false'),
      recover_ms_median: recOk.length ? recOk[Math.floor((recOk.length - 1) / 2)] : null,
      recover_ms_max: rec.some((x) => x === null || x === undefined) || !recOk.length ? null : recOk[recOk.length - 1],
    });
  }
}
for (const row of rows) process.stdout.write(`${JSON.stringify(row)}\n`);

const head = ['broker', 'scenario', 'runs', 'failed', 'acked', 'silent lost', 'dup', 'reord', 'twice', 'signalled lost', 'rec:false', 'recover ms (median/max)'];
const table = rows.map((r) =>
  r.skipped
    ? [r.broker, r.scenario, 'skipped', '', '', '', '', '', '', '', '', r.skipped.slice(0, 60)]
    : [r.broker, r.scenario, r.runs, r.failed, r.acknowledged, r.silently_lost, r.duplicated, r.reordered, r.made_twice, r.signalled_lost, r.recovered_false, `${r.recover_ms_median ?? '-'} / ${r.recover_ms_max ?? 'never'}`],
);
const widths = head.map((h, i) => Math.max(h.length, ...table.map((row) => String(row[i]).length)));
const line = (cells) => cells.map((c, i) => String(c).padEnd(widths[i])).join('  ').trimEnd();
err(`\n==== faults summary (${Math.round((Date.now() - t0) / 1000)} s${opts.short ? ', short' : ''}) ====`);
err(line(head));
for (const row of table) err(line(row));
const failed = results.filter((r) => !r.skipped && !r.ok);
if (failed.length) err(`\n${failed.length} run(s) failed; their logs are kept under ${workRoot}`);
else if (!opts.keep) rmSync(workRoot, { recursive: true, force: true });
else err(`\nlogs kept under ${workRoot}`);
process.exit(failed.length ? 1 : 0);
