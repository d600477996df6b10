// One fault run, in a process of its own (started by main.mjs, inside the clients' namespace for
// the network scenarios): a private broker, three switchboard nodes, subscribers on every node, a
// publisher, one fault, then the verdict. Prints the result as one JSON line on stdout; progress
// goes to stderr. Every process it started is killed on every way out, and it exits when its
// parent goes away (stdin closes).
//
//   node runner.mjs '<spec as JSON>'   (see main.mjs for the spec)

import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';

import { clockBase, now } from './clock.mjs';
import { Subscriber } from './load.mjs';
import { degrade, partition } from './netns.mjs';
import { Broker, Node, Proc, freePort, killAllSync, sleep } from './procs.mjs';
import { Tap } from './tap.mjs';
import { verdict } from './verdict.mjs';

const spec = JSON.parse(process.argv[2]);
const T0 = now();
const API_KEY = 'faults-api-key';
// This process runs every SDK client and the publisher: if its event loop lags, what the SDK
// reports is late (and its timeouts fire) for reasons that are not the server's. Reported.
const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();

function log(msg) {
  process.stderr.write(`[${((now() - T0) / 1000).toFixed(2).padStart(6)}s ${spec.broker}/${spec.scenario}#${spec.repeat}] ${msg}\n`);
}

let exiting = false;
function bail(code, why) {
  if (exiting) return;
  exiting = true;
  if (why) log(why);
  killAllSync();
  process.exit(code);
}
process.on('exit', killAllSync);
process.on('SIGTERM', () => bail(143, 'SIGTERM'));
process.on('SIGINT', () => bail(130, 'SIGINT'));
process.on('uncaughtException', (err) => bail(70, `uncaught: ${err.stack || err}`));
process.on('unhandledRejection', (err) => bail(70, `unhandled rejection: ${err?.stack || err}`));
// The controller holds our stdin open; when it goes away, so do we (and our processes).
process.stdin.on('end', () => bail(1, 'controller gone'));
process.stdin.on('error', () => bail(1, 'controller gone'));
process.stdin.resume();

/**
 * The publisher (load.mjs) in a worker thread; `records`, `errors` and `skipped` are its state as
 * of the last answer (`snapshot()`, and `stop()` once every publication has its outcome).
 */
class PublisherThread {
  constructor(options) {
    this.records = [];
    this.errors = {};
    this.skipped = 0;
    this.replies = new Map();
    this.nextId = 0;
    this.worker = new Worker(new URL('./publisher-worker.mjs', import.meta.url), {
      workerData: { options, clockBase: clockBase() },
    });
    this.worker.on('message', (m) => {
      this.replies.get(m.id)?.(m);
      this.replies.delete(m.id);
    });
    this.worker.on('error', (err) => bail(70, `publisher thread: ${err.stack || err}`));
  }

  async call(type) {
    const id = ++this.nextId;
    const m = await new Promise((resolve) => {
      this.replies.set(id, resolve);
      this.worker.postMessage({ id, type });
    });
    if (m.records) ({ records: this.records, errors: this.errors, skipped: this.skipped } = m);
    return m;
  }

  start() {
    return this.call('start');
  }

  snapshot() {
    return this.call('snapshot');
  }

  async stop() {
    await this.call('stop');
    await this.worker.terminate();
  }
}

/** Median and maximum publish time per node (acknowledged attempts started in [from, to]). */
function latencies(publisher, from, to) {
  const by = {};
  for (const r of publisher.records) {
    for (const a of r.attempts) {
      if (a.outcome === 'ok' && a.t >= from && a.t <= to) (by[a.node] ||= []).push(a.dt);
    }
  }
  return Object.entries(by)
    .sort()
    .map(([n, v]) => {
      v.sort((a, b) => a - b);
      return `${n} publish ms median ${v[Math.floor(v.length / 2)]} max ${v[v.length - 1]}`;
    })
    .join(', ');
}

/** The fault of each scenario: does it, returns when it is over with `{ tFault, tHeal }`. */
const SCENARIOS = {
  async baseline(ctx) {
    const tFault = now();
    await sleep(ctx.t.window);
    return { tFault, tHeal: now() };
  },
  async 'broker-kill'(ctx) {
    const tFault = now();
    await ctx.broker.proc.kill();
    log(`${ctx.broker.kind} SIGKILLed; restarting in ${ctx.t.down} ms`);
    await sleep(ctx.t.down);
    await ctx.broker.restart();
    log(`${ctx.broker.kind} restarted and answering`);
    return { tFault, tHeal: now() };
  },
  async 'broker-stop'(ctx) {
    const tFault = now();
    ctx.broker.proc.signal('SIGSTOP');
    log(`${ctx.broker.kind} SIGSTOPped for ${ctx.t.stop} ms`);
    await sleep(ctx.t.stop);
    ctx.broker.proc.signal('SIGCONT');
    log(`${ctx.broker.kind} SIGCONTed`);
    return { tFault, tHeal: now() };
  },
  async 'node-kill'(ctx) {
    const tFault = now();
    await ctx.nodes[0].proc.kill();
    log(`node ${ctx.nodes[0].name} SIGKILLed (its subscribers move to the next node)`);
    await sleep(ctx.t.window);
    return { tFault, tHeal: tFault };
  },
  async partition(ctx) {
    const tFault = now();
    const heal = partition(ctx.topo, 'n1', 'b');
    log(`n1 <-> broker partitioned for ${ctx.t.partition} ms`);
    await sleep(ctx.t.partition);
    heal();
    const tHeal = now();
    await ctx.publisher.snapshot();
    log(`partition healed; ${latencies(ctx.publisher, tFault, tHeal)}`);
    return { tFault, tHeal };
  },
  async 'slow-link'(ctx) {
    const heal = await degrade(ctx.topo, 'n1', {
      delayMs: 100,
      lossPct: 5,
      mode: spec.netem,
      spawnProc: (name, cmd, args, netns) =>
        new Proc(name, cmd, args, { logFile: path.join(spec.dir, `${name}.log`), netns }).start(),
    });
    const tFault = now();
    log(`n1's link: +100 ms each way (200 ms round trip), 5% loss each way (${spec.netem === 'tc' ? 'tc netem' : 'user-space emulator, netem.py'}), for ${ctx.t.slow} ms`);
    await sleep(ctx.t.slow);
    await heal();
    const tHeal = now();
    await ctx.publisher.snapshot();
    log(`link healed; ${latencies(ctx.publisher, tFault, tHeal)}`);
    return { tFault, tHeal };
  },
};

async function main() {
  const t = spec.timings;
  const dir = spec.dir;
  const topo = spec.topology;
  const prefix = `sbf${process.pid}${spec.runId.replace(/[^A-Za-z0-9]/g, '')}`;

  // The broker.
  const brokerHost = topo ? topo.hosts.b.ip : '127.0.0.1';
  const brokerPort = topo ? (spec.broker === 'redis' ? 6379 : 4222) : await freePort();
  const broker = new Broker(spec.broker, { host: brokerHost, port: brokerPort, dir, netns: topo?.hosts.b.ns });
  await broker.start();
  log(`${spec.broker} on ${brokerHost}:${brokerPort}; wall clock at 0 ms: ${new Date(Date.now() - now()).toISOString()}`);
  const tap = spec.tap ? new Tap(spec.broker, brokerHost, brokerPort, path.join(dir, 'tap.log'), prefix) : null;

  // Three nodes.
  const nodes = [];
  for (const name of ['n1', 'n2', 'n3']) {
    const host = topo ? topo.hosts[name].ip : '127.0.0.1';
    const port = topo ? 8000 : await freePort();
    nodes.push(new Node({ name, host, port, dir, netns: topo?.hosts[name].ns, broker, prefix, apiKey: API_KEY, logLevel: spec.logLevel }));
  }
  await Promise.all(nodes.map((n) => n.start()));
  log(`nodes up: ${nodes.map((n) => `${n.name}=${n.host}:${n.port}`).join(' ')}`);

  // Subscribers on every node, all subscribed before the first publication.
  const channels = Array.from({ length: spec.channels }, (_, i) => `faults:${spec.runId}-${i}`);
  const subscribers = [];
  for (let i = 0; i < nodes.length * spec.subsPerNode; i++) {
    const s = new Subscriber({ id: `s${i + 1}`, nodes, home: i % nodes.length, channels });
    subscribers.push(s);
    s.start();
  }
  const subDeadline = now() + 15000;
  while (!subscribers.every((s) => s.allSubscribed())) {
    if (now() > subDeadline) throw new Error('subscribers not all subscribed within 15 s');
    await sleep(50);
  }
  log(`${subscribers.length} subscribers x ${channels.length} channels subscribed`);

  const publisher = new PublisherThread({
    nodes: nodes.map((n) => ({ name: n.name, httpUrl: n.httpUrl })),
    channels,
    rate: spec.rate,
    apiKey: API_KEY,
    runId: `${spec.runId}-${process.pid}`,
  });
  await publisher.start();
  await sleep(t.warmup);

  // The fault.
  log(`fault: ${spec.scenario}`);
  const { tFault, tHeal } = await SCENARIOS[spec.scenario]({ broker, nodes, topo, t, publisher });

  // Until every subscription receives publications made after the fault, then a tail.
  const subscriptions = () =>
    subscribers.flatMap((s) =>
      [...s.subs.entries()].map(([channel, { events }]) => ({ subscriber: s.id, channel, events })),
    );
  const recoveredAll = () =>
    subscriptions().every((s) =>
      s.events.some((e) => e.ev === 'pub' && e.t > tHeal && (e.t0 ?? -1) >= tHeal),
    );
  const postDeadline = now() + t.postMax;
  while (!recoveredAll() && now() < postDeadline) await sleep(100);
  log(recoveredAll() ? `every subscription receives again (${Math.round(now() - tHeal)} ms after the fault ended)` : 'NOT every subscription receives again');
  await sleep(t.tail);
  await publisher.stop();
  log(`publisher stopped: ${publisher.records.length} published, errors ${JSON.stringify(publisher.errors)}`);

  // Drain: until nothing acknowledged is missing without a signal, or the deadline.
  const drainDeadline = now() + t.drain;
  let v;
  for (;;) {
    v = verdict({ records: publisher.records, subscriptions: subscriptions(), tHeal });
    if ((v.totals.silently_lost === 0 && v.totals.unrecovered === 0) || now() > drainDeadline) break;
    await sleep(250);
  }
  for (const s of subscribers) s.close();

  const sdk = { subscribing: {}, unsubscribed: {}, sub_errors: {}, connecting: {} };
  const bump = (o, k) => (o[k] = (o[k] || 0) + 1);
  for (const s of subscriptions()) {
    for (const e of s.events) {
      if (e.ev === 'subscribing') bump(sdk.subscribing, `${e.code} ${e.reason}`);
      if (e.ev === 'unsubscribed') bump(sdk.unsubscribed, `${e.code} ${e.reason}`);
      if (e.ev === 'error') bump(sdk.sub_errors, `${e.code} ${e.reason}`);
    }
  }
  for (const s of subscribers) {
    for (const e of s.clientEvents) if (e.ev === 'connecting') bump(sdk.connecting, `${e.code} ${e.reason}`);
  }
  const result = {
    broker: spec.broker,
    scenario: spec.scenario,
    repeat: spec.repeat,
    ok: v.ok,
    ...v.totals,
    fault_ms: Math.round(tHeal - tFault),
    api_errors: publisher.errors,
    skipped_publishes: publisher.skipped,
    client_loop_delay_ms: { p99: Math.round(loopDelay.percentile(99) / 1e6), max: Math.round(loopDelay.max / 1e6) },
    client_dropped_after_close: subscribers.reduce((n, s) => n + s.droppedAfterClose, 0),
    sdk,
    failures: v.failures,
  };
  // Everything a failed run needs to be investigated.
  writeFileSync(
    path.join(dir, 'events.json'),
    JSON.stringify({
      spec,
      wallAtZero: Date.now() - now(),
      tFault,
      tHeal,
      nodes: nodes.map((n) => ({ name: n.name, url: n.httpUrl, pid: n.proc.pid })),
      records: publisher.records,
      subscribers: subscribers.map((s) => ({
        id: s.id,
        home: nodes[s.home].name,
        clientEvents: s.clientEvents,
        connectAttempts: s.connectAttempts,
        subscriptions: [...s.subs.entries()].map(([channel, { events }]) => ({ channel, events })),
      })),
      problems: v.problems,
    }),
  );
  writeFileSync(path.join(dir, 'result.json'), JSON.stringify(result, null, 2));
  process.stdout.write(`${JSON.stringify(result)}\n`);
  for (const f of v.failures) log(`FAIL ${f}`);
  for (const p of v.problems.slice(0, 6)) {
    log(`  ${p.subscriber}/${p.channel}: lost ${p.silentlyLost} dup ${p.duplicated} reord ${p.reordered} twice ${p.mismatched} recover ${p.recoverMs}; ${JSON.stringify(p.examples.slice(0, 3))}`);
  }
  tap?.close();
  await Promise.all([...nodes.map((n) => n.proc.kill()), broker.proc.kill()]);
}

main().then(
  () => bail(0),
  (err) => {
    process.stdout.write(
      `${JSON.stringify({ broker: spec.broker, scenario: spec.scenario, repeat: spec.repeat, ok: false, error: String(err.message || err) })}\n`,
    );
    bail(1, `error: ${err.stack || err}`);
  },
);
