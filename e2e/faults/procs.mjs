// Processes of one fault run: private brokers (redis-server, nats-server) and switchboard nodes,
// each optionally inside a network namespace (`ip netns exec`), with output in log files of the
// run's directory, readiness checks with deadlines, and signals (SIGKILL, SIGSTOP, SIGCONT).
//
// Every process is registered in `children`; `killAll()` (called on every exit path of the runner)
// SIGCONTs and SIGKILLs what is left. The runner is also the leader of its own process group, and
// the controller kills that group once the runner has exited, so nothing outlives a run.

import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Path of the server binary under test. */
export const BIN = path.resolve(
  here,
  '..',
  process.env.SWITCHBOARD_BIN || path.join('..', 'target', 'release', 'switchboard'),
);
export const REDIS_SERVER = process.env.FAULTS_REDIS_SERVER || '/usr/bin/redis-server';
export const NATS_SERVER = process.env.FAULTS_NATS_SERVER || '/usr/sbin/nats-server';

/** Every process started by this runner that may still run. */
const children = new Set();

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A port that was free a moment ago on `host` (loopback runs only). */
export function freePort(host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * One child process with its output appended to `logFile`. `netns` (a namespace name) runs it
 * with `ip netns exec`, which execs in place: the pid is the program's own, so signals reach it.
 */
export class Proc {
  constructor(name, cmd, args, { logFile, netns = null, env = process.env, cwd } = {}) {
    this.name = name;
    this.cmd = cmd;
    this.args = args;
    this.logFile = logFile;
    this.netns = netns;
    this.env = env;
    this.cwd = cwd;
    this.child = null;
    this.exited = null;
    this.stopped = false;
  }

  start() {
    const fd = openSync(this.logFile, 'a');
    writeFileSync(fd, `\n==== ${new Date().toISOString()} start ${this.cmd} ${this.args.join(' ')}\n`);
    const [cmd, args] = this.netns
      ? ['ip', ['netns', 'exec', this.netns, this.cmd, ...this.args]]
      : [this.cmd, this.args];
    const child = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: this.env, cwd: this.cwd });
    closeSync(fd);
    this.child = child;
    this.stopped = false;
    children.add(this);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        children.delete(this);
        this.exitCode = code;
        this.exitSignal = signal;
        resolve({ code, signal });
      });
      child.once('error', (err) => {
        children.delete(this);
        this.exitError = err;
        resolve({ code: null, signal: null, error: err });
      });
    });
    return this;
  }

  get pid() {
    return this.child?.pid;
  }

  get running() {
    return this.child !== null && children.has(this);
  }

  signal(sig) {
    if (!this.running) return false;
    try {
      process.kill(this.child.pid, sig);
    } catch {
      return false;
    }
    if (sig === 'SIGSTOP') this.stopped = true;
    if (sig === 'SIGCONT') this.stopped = false;
    return true;
  }

  /** SIGKILL and wait for the exit (a stopped process dies too). */
  async kill() {
    if (!this.running) return;
    this.signal('SIGKILL');
    await this.exited;
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 3000) {
    if (!this.running) return;
    if (this.stopped) this.signal('SIGCONT');
    this.signal('SIGTERM');
    const timer = setTimeout(() => this.signal('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** Resolves once the log file contains `text`; rejects after `timeoutMs` or on exit. */
  async waitForOutput(text, timeoutMs) {
    await waitUntil(
      () => {
        if (!this.running) throw new Error(`${this.name} exited: ${this.tail(600)}`);
        return this.tail(100000).includes(text);
      },
      timeoutMs,
      `${this.name} output "${text}"`,
      20,
    );
  }

  /** The last `bytes` of the log file. */
  tail(bytes = 4000) {
    try {
      const text = readFileSync(this.logFile, 'utf8');
      return text.slice(-bytes);
    } catch {
      return '';
    }
  }
}

/** SIGCONT + SIGKILL every process still running (synchronous, safe in an exit handler). */
export function killAllSync() {
  for (const p of children) {
    try {
      process.kill(p.child.pid, 'SIGCONT');
      process.kill(p.child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Waits until `check()` resolves truthy, polling every `everyMs`; throws after `timeoutMs`. */
export async function waitUntil(check, timeoutMs, what, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (err) {
      last = err.cause?.code || err.message;
    }
    await sleep(everyMs);
  }
  throw new Error(`${what}: not ready after ${timeoutMs} ms${last ? ` (last: ${last})` : ''}`);
}

/**
 * Opens a TCP connection to host:port, writes `send` (if any) and resolves with the first bytes
 * received as text, or rejects after `timeoutMs`.
 */
export function tcpProbe(host, port, send, timeoutMs = 1000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('probe timeout'));
    }, timeoutMs);
    sock.once('connect', () => {
      if (send) sock.write(send);
    });
    sock.once('data', (buf) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(buf.toString());
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * A private broker: `redis` (no persistence) or `nats` (JetStream, file store in its own dir,
 * kept across restarts so that a restarted NATS still has the stream). `restart()` starts the
 * same command again on the same address.
 */
export class Broker {
  constructor(kind, { host, port, dir, netns }) {
    this.kind = kind;
    this.host = host;
    this.port = port;
    this.dir = dir;
    this.netns = netns;
    const logFile = path.join(dir, `${kind}.log`);
    if (kind === 'redis') {
      this.proc = new Proc('redis', REDIS_SERVER, [
        '--bind', host, '--port', String(port), '--save', '', '--appendonly', 'no',
        '--protected-mode', 'no', '--daemonize', 'no',
      ], { logFile, netns, cwd: dir });
      this.url = `redis://${host}:${port}`;
    } else {
      const store = path.join(dir, 'nats-js');
      this.proc = new Proc('nats', NATS_SERVER, [
        '-js', '-a', host, '-p', String(port), '-sd', store,
      ], { logFile, netns, cwd: dir });
      this.url = `nats://${host}:${port}`;
    }
  }

  async start(timeoutMs = 10000) {
    this.proc.start();
    await this.ready(timeoutMs);
  }

  async ready(timeoutMs = 10000) {
    const probe = async () => {
      if (!this.proc.running) throw new Error(`${this.kind} exited: ${this.proc.tail(600)}`);
      if (this.kind === 'redis') {
        return (await tcpProbe(this.host, this.port, 'PING\r\n')).startsWith('+PONG');
      }
      return (await tcpProbe(this.host, this.port, null)).startsWith('INFO');
    };
    await waitUntil(probe, timeoutMs, `${this.kind} on ${this.host}:${this.port}`, 50);
  }

  async restart(timeoutMs = 15000) {
    await this.proc.kill();
    this.proc.start();
    await this.ready(timeoutMs);
  }
}

/** The configuration of one node. */
export function nodeToml({ name, address, broker, prefix, apiKey, logLevel = 'info' }) {
  const brokerToml =
    broker.kind === 'redis'
      ? `[broker]\ntype = "redis"\n[broker.redis]\naddresses = ["${broker.url}"]\nprefix = "${prefix}"\n`
      : `[broker]\ntype = "nats"\n[broker.nats]\nurl = "${broker.url}"\nprefix = "${prefix}"\n`;
  return `# written by e2e/faults for one run
mode = "production"
node_name = "${name}"
address = "${address}"

[log]
level = "${logLevel}"

[api]
key = "${apiKey}"

[client]
allow_anonymous = true

[shutdown]
drain_timeout = "1s"

${brokerToml}
# The channels under test: history large enough for every publication of a run, every
# subscription recoverable and positioned (told to resubscribe when its node may have missed
# publications).
[[channel.namespaces]]
name = "faults"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
history_size = 50000
history_ttl = "900s"
force_recovery = true
force_positioning = true
`;
}

/** One switchboard node. */
export class Node {
  constructor({ name, host, port, dir, netns, broker, prefix, apiKey, logLevel }) {
    this.name = name;
    this.host = host;
    this.port = port;
    this.httpUrl = `http://${host}:${port}`;
    this.wsUrl = `ws://${host}:${port}/connection/websocket`;
    const config = path.join(dir, `${name}.toml`);
    writeFileSync(config, nodeToml({ name, address: `${host}:${port}`, broker, prefix, apiKey, logLevel }));
    const env = { NO_COLOR: '1' };
    for (const [k, v] of Object.entries(process.env)) {
      if (!k.startsWith('SWITCHBOARD_') && k !== 'RUST_LOG') env[k] = v;
    }
    if (!existsSync(BIN)) {
      throw new Error(`switchboard binary not found at ${BIN} (cargo build --release -p switchboard-server)`);
    }
    this.proc = new Proc(name, BIN, ['--config', config], {
      logFile: path.join(dir, `${name}.log`),
      netns,
      env,
      cwd: dir,
    });
  }

  async start(timeoutMs = 15000) {
    this.proc.start();
    await this.healthy(timeoutMs);
  }

  async healthy(timeoutMs = 15000) {
    await waitUntil(
      async () => {
        if (!this.proc.running) throw new Error(`${this.name} exited: ${this.proc.tail(1500)}`);
        const res = await fetch(`${this.httpUrl}/health`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        return res.status === 200;
      },
      timeoutMs,
      `node ${this.name} /health`,
    );
  }
}
