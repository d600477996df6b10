// Network namespaces for the network fault scenarios: every host of a run (the broker, three
// nodes, and the clients: subscribers and publisher) is a namespace of its own, wired to a
// router namespace by a veth pair on a /24 of its own (10.77.<k>.0/24, the router is .1, the host
// .2). Nothing is added to the machine's own namespace: the addresses exist only inside the
// namespaces created here, and deleting the namespaces removes the veths, routes and qdiscs.
//
// Faults, applied in the router (the "network"), so that the hosts see what they would see on a
// real network:
//   partition(a, b)  policy rules `from A to B blackhole` both ways: packets between the two hosts
//                    are dropped silently (connections hang, connects time out), everything else
//                    flows;
//   degrade(host)    delay and loss on both directions of the host's link: `tc netem` when the
//                    kernel has it (`probeNetem()`), else a user-space emulator (netem.py) on a
//                    TUN device in the router.
// Everything uses iproute2 (`ip`, `tc`), plus python3 for the user-space emulator.

import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

const HOSTS = ['c', 'b', 'n1', 'n2', 'n3'];

function run(cmd, args, { allowFail = false } = {}) {
  const res = spawnSync(cmd, args, { encoding: 'utf8' });
  if (res.status !== 0 && !allowFail) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${res.status}): ${res.stderr || res.error}`);
  }
  return res;
}

/** Whether `ip netns` and veth pairs work here (root, iproute2, kernel support). */
export function probeNetns(prefix) {
  const ns = `${prefix}-probe`;
  try {
    run('ip', ['netns', 'add', ns]);
    try {
      run('ip', ['-n', ns, 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']);
    } finally {
      run('ip', ['netns', 'del', ns], { allowFail: true });
    }
    return { ok: true };
  } catch (err) {
    run('ip', ['netns', 'del', ns], { allowFail: true });
    return { ok: false, reason: String(err.message).split('\n')[0] };
  }
}

/** Whether `tc qdisc add ... netem` works (the kernel may lack sch_netem). */
export function probeNetem(prefix) {
  const ns = `${prefix}-probe`;
  try {
    run('ip', ['netns', 'add', ns]);
    try {
      run('ip', ['-n', ns, 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']);
      const res = run('tc', ['-n', ns, 'qdisc', 'add', 'dev', 'p0', 'root', 'netem', 'delay', '10ms'], {
        allowFail: true,
      });
      if (res.status !== 0) return { ok: false, reason: (res.stderr || '').trim() || `tc exit ${res.status}` };
      return { ok: true };
    } finally {
      run('ip', ['netns', 'del', ns], { allowFail: true });
    }
  } catch (err) {
    run('ip', ['netns', 'del', ns], { allowFail: true });
    return { ok: false, reason: String(err.message).split('\n')[0] };
  }
}

/**
 * Creates the namespaces of one run: `<prefix>-r` (router) and `<prefix>-<host>` for every host.
 * Returns the topology: `{ router, hosts: { c, b, n1, n2, n3: { ns, ip, link } } }` where `link`
 * is the host's veth end in the router.
 */
export function createTopology(prefix) {
  const router = `${prefix}-r`;
  const topo = { prefix, router, hosts: {} };
  try {
    run('ip', ['netns', 'add', router]);
    run('ip', ['-n', router, 'link', 'set', 'lo', 'up']);
    run('ip', ['netns', 'exec', router, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    HOSTS.forEach((h, i) => {
      const ns = `${prefix}-${h}`;
      const k = i + 1;
      const link = `v-${h}`;
      run('ip', ['netns', 'add', ns]);
      run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      run('ip', ['-n', router, 'link', 'add', link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      run('ip', ['-n', router, 'addr', 'add', `10.77.${k}.1/24`, 'dev', link]);
      run('ip', ['-n', router, 'link', 'set', link, 'up']);
      run('ip', ['-n', ns, 'addr', 'add', `10.77.${k}.2/24`, 'dev', 'eth0']);
      run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      run('ip', ['-n', ns, 'route', 'add', 'default', 'via', `10.77.${k}.1`]);
      topo.hosts[h] = { ns, ip: `10.77.${k}.2`, link };
    });
  } catch (err) {
    destroyTopology(prefix);
    throw err;
  }
  return topo;
}

/** Deletes every namespace whose name starts with `<prefix>-` (idempotent, synchronous). */
export function destroyTopology(prefix) {
  let names = [];
  try {
    names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
      .split('\n')
      .map((l) => l.split(' ')[0])
      .filter((n) => n.startsWith(`${prefix}-`));
  } catch {
    return;
  }
  for (const n of names) run('ip', ['netns', 'del', n], { allowFail: true });
}

let rulePrio = 100;

/** Drops every packet between hosts `a` and `b` (both directions); returns the heal function. */
export function partition(topo, a, b) {
  const A = topo.hosts[a].ip;
  const B = topo.hosts[b].ip;
  const prios = [rulePrio++, rulePrio++];
  run('ip', ['-n', topo.router, 'rule', 'add', 'from', A, 'to', B, 'blackhole', 'prio', String(prios[0])]);
  run('ip', ['-n', topo.router, 'rule', 'add', 'from', B, 'to', A, 'blackhole', 'prio', String(prios[1])]);
  return () => {
    for (const p of prios) run('ip', ['-n', topo.router, 'rule', 'del', 'prio', String(p)], { allowFail: true });
  };
}

/**
 * Adds `delayMs` and `lossPct` to both directions of `host`'s link; resolves with the (async)
 * heal function. `mode`:
 *   'tc'         netem on the host's eth0 and on the router's end of the link;
 *   'user-space' for kernels without netem: netem.py (next to this file) creates a TUN device in
 *                the router, and policy rules route the host's packets, both ways, through it;
 *                it drops and delays real IP packets (TCP retransmits, as with netem).
 * `spawnProc(name, cmd, args, netns)` starts a process and returns a `Proc` (procs.mjs).
 */
export async function degrade(topo, host, { delayMs, lossPct, mode, spawnProc }) {
  const h = topo.hosts[host];
  const R = topo.router;
  if (mode === 'tc') {
    const args = ['netem', 'delay', `${delayMs}ms`, 'loss', `${lossPct}%`];
    run('tc', ['-n', h.ns, 'qdisc', 'add', 'dev', 'eth0', 'root', ...args]);
    run('tc', ['-n', R, 'qdisc', 'add', 'dev', h.link, 'root', ...args]);
    return async () => {
      run('tc', ['-n', h.ns, 'qdisc', 'del', 'dev', 'eth0', 'root'], { allowFail: true });
      run('tc', ['-n', R, 'qdisc', 'del', 'dev', h.link, 'root'], { allowFail: true });
    };
  }
  const tun = `q-${host}`;
  const subnet = h.ip.replace(/\.2$/, '.0/24');
  // Packets written back by the emulator arrive on the TUN device with the host's (or its
  // peers') source address: no reverse-path filtering in the router.
  run('ip', ['netns', 'exec', R, 'sysctl', '-qw', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0']);
  const proc = spawnProc('netem', 'python3', [path.join(here, 'netem.py'), tun, String(delayMs), String(lossPct)], R);
  await proc.waitForOutput('ready', 5000);
  run('ip', ['-n', R, 'link', 'set', tun, 'up']);
  run('ip', ['-n', R, 'route', 'add', 'default', 'dev', tun, 'table', '100']);
  run('ip', ['-n', R, 'route', 'add', subnet, 'dev', tun, 'table', '101']);
  const rules = [['iif', h.link, 'lookup', '100']];
  for (const other of Object.values(topo.hosts)) {
    if (other !== h) rules.push(['iif', other.link, 'to', subnet, 'lookup', '101']);
  }
  for (const r of rules) run('ip', ['-n', R, 'rule', 'add', ...r, 'prio', '50']);
  return async () => {
    for (const r of rules) run('ip', ['-n', R, 'rule', 'del', ...r, 'prio', '50'], { allowFail: true });
    // Let what is in the emulator's queue go out, then stop it (its device goes with it).
    await new Promise((resolve) => setTimeout(resolve, delayMs + 100));
    await proc.stop(2000);
  };
}
