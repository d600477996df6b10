// The documentation's examples, run against the real binary: every `$ curl` of docs/API.md in
// page order (the page is one story, set up as its "Setup for the examples" says), the frame
// exchange of docs/PROTOCOL.md over a raw WebSocket, and the configuration files of
// docs/DEPLOY.md and docs/CONFIG.md through `switchboard checkconfig`. The examples are read from
// the markdown at run time; nothing of them is copied here.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { isDeepStrictEqual } from 'node:util';

import {
  BIN,
  connectClient,
  rawSocket,
  startServer,
  subscribe,
  waitFor,
  withTimeout,
} from './helpers.mjs';
import {
  Examples,
  canonical,
  codeBlocks,
  compareJson,
  dollarCommands,
  readDoc,
  splitShellWords,
  tableAfter,
  unquoteCell,
} from './docs-snippets.mjs';

const DOC_ADDRESS = '127.0.0.1:8000';
const EFFECT_TIMEOUT_MS = 5000;

/** Environment for the binary's subcommands: no SWITCHBOARD_* of the developer's. */
function cleanEnv() {
  return Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('SWITCHBOARD_')),
  );
}

/** Runs a program; resolves with `{ code, stdout, stderr }` (never rejects on exit status). */
function runProgram(file, args, options = {}) {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: 20000, maxBuffer: 16 << 20, ...options }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(new Error(`${file} ${args.join(' ')}: ${err.message}\n${stderr}`));
        return;
      }
      resolve({ code: err ? err.code : 0, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

function tempDir(t) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'switchboard-docs-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function parseJson(text, where) {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${where}: not JSON (${err.message}): ${text}`);
  }
}

/** `args` as a shell command line, quoted where needed (for messages). */
function shellLine(args) {
  return args
    .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`))
    .join(' ');
}

/** A readable failure for a documented answer that differs from the real one. */
function mismatch({ where, command, docLine, expected, actual, diff }) {
  return new Error(
    [
      `${where}: the server's answer differs from the one documented on line ${docLine}`,
      `  first difference at ${diff.path}: ${diff.reason}`,
      `  command:    ${command}`,
      `  documented: ${canonical(expected)}`,
      `  actual:     ${canonical(actual)}`,
    ].join('\n'),
  );
}

// ---------------------------------------------------------------------------------------------
// docs/API.md

/** The setup of docs/API.md: the config file and the clients it says are connected. */
function apiSetup(doc) {
  const blocks = codeBlocks(doc);
  const setup = blocks.find(
    (b) => b.info === 'toml' && b.headings.at(-1) === 'Setup for the examples',
  );
  assert.ok(setup, `${doc.file}: no toml block under "Setup for the examples"`);
  const rows = tableAfter(doc, setup.line + setup.lines.length);
  assert.ok(rows.length > 0, `${doc.file}: no table of clients after the setup's config`);
  const users = rows.map((row) => {
    for (const col of ['user', 'connection token', 'subscribed to']) {
      assert.ok(col in row, `${doc.file}:${row.line}: the clients table has no "${col}" column`);
    }
    return {
      line: row.line,
      user: unquoteCell(row.user),
      tokenCommand: unquoteCell(row['connection token']),
      channels: row['subscribed to']
        .split(',')
        .map((c) => unquoteCell(c.trim()))
        .filter((c) => c !== '' && c !== '-'),
    };
  });
  const commands = blocks
    .filter((b) => b.lines.some((l) => l.startsWith('$ ')))
    .flatMap((b) => dollarCommands(b).map((c) => ({ ...c, section: b.headings.at(-1) })));
  return { config: setup.lines.join('\n'), configLine: setup.line, users, commands };
}

/** Runs a documented `switchboard gentoken ...` command in `dir` (which holds the config). */
async function gentoken(words, dir, where) {
  assert.equal(words[0], 'switchboard', `${where}: the token command should run switchboard`);
  assert.equal(words[1], 'gentoken', `${where}: the token command should be gentoken`);
  const { code, stdout, stderr } = await runProgram(BIN, words.slice(1), { cwd: dir, env: cleanEnv() });
  assert.equal(code, 0, `${where}: \`${words.join(' ')}\` failed: ${stderr}`);
  const token = stdout.trim();
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, `${where}: gentoken printed no JWT: ${stdout}`);
  return token;
}

/**
 * A connected user of the story: its `centrifuge` client, its client-side subscriptions, and the
 * channels the server subscribed it to.
 */
class StoryUser {
  constructor(user, client) {
    this.user = user;
    this.client = client;
    this.subs = new Map();
    this.serverSubs = new Set();
    client.on('subscribed', (ctx) => this.serverSubs.add(ctx.channel));
    client.on('unsubscribed', (ctx) => this.serverSubs.delete(ctx.channel));
  }

  inChannel(channel) {
    return this.subs.get(channel)?.state === 'subscribed' || this.serverSubs.has(channel);
  }

  /** Resolves with the next publication in `channel` whose data equals `data`. */
  publication(channel, data) {
    const sub = this.subs.get(channel);
    if (sub?.state === 'subscribed') {
      return waitFor(sub, 'publication', EFFECT_TIMEOUT_MS, (ctx) => isDeepStrictEqual(ctx.data, data));
    }
    return waitFor(
      this.client,
      'publication',
      EFFECT_TIMEOUT_MS,
      (ctx) => ctx.channel === channel && isDeepStrictEqual(ctx.data, data),
    );
  }
}

function decodeB64Json(b64) {
  try {
    return JSON.parse(Buffer.from(b64, 'base64').toString('utf8'));
  } catch {
    return undefined;
  }
}

/**
 * What the connected clients must observe after a server API call, as `{ what, promise }` with
 * the listeners attached now (before the call), so that nothing can be missed. Actions the API
 * performs asynchronously (subscribe, unsubscribe, disconnect) are awaited this way before the
 * next example runs; publications are checked to reach the subscribers.
 */
function expectedEffects(method, body, users) {
  if (!body || typeof body !== 'object') return [];
  const targets = () => {
    // The story acts on whole users; a `client` (one connection) would need its id here.
    if (body.client) throw new Error('examples with "client" are not supported by this test yet');
    return users.filter((u) => u.user === body.user);
  };
  const effects = [];
  const add = (what, promise) => {
    promise.catch(() => {}); // awaited later; keep an early timeout from being "unhandled"
    effects.push({ what, promise });
  };
  switch (method) {
    case 'batch':
      for (const command of Array.isArray(body.commands) ? body.commands : []) {
        const keys = command && typeof command === 'object' ? Object.keys(command) : [];
        if (keys.length === 1) effects.push(...expectedEffects(keys[0], command[keys[0]], users));
      }
      break;
    case 'publish':
    case 'broadcast': {
      const channels = method === 'publish' ? [body.channel] : body.channels || [];
      const data = body.data !== undefined ? body.data : decodeB64Json(body.b64data || '');
      for (const channel of channels) {
        for (const u of users.filter((x) => x.inChannel(channel))) {
          add(`${u.user} receives ${JSON.stringify(data)} in ${channel}`, u.publication(channel, data));
        }
      }
      break;
    }
    case 'subscribe':
      for (const u of targets()) {
        add(
          `${u.user} is subscribed to ${body.channel} by the server`,
          waitFor(u.client, 'subscribed', EFFECT_TIMEOUT_MS, (ctx) => ctx.channel === body.channel),
        );
      }
      break;
    case 'unsubscribe':
      for (const u of targets().filter((x) => x.inChannel(body.channel))) {
        const sub = u.subs.get(body.channel);
        const promise =
          sub?.state === 'subscribed'
            ? waitFor(sub, 'unsubscribed', EFFECT_TIMEOUT_MS)
            : waitFor(u.client, 'unsubscribed', EFFECT_TIMEOUT_MS, (ctx) => ctx.channel === body.channel);
        add(
          `${u.user} is unsubscribed from ${body.channel} with 2000 "server unsubscribe"`,
          promise.then((ctx) => {
            assert.equal(ctx.code, 2000, `${u.user}'s unsubscribe code`);
            assert.equal(ctx.reason, 'server unsubscribe', `${u.user}'s unsubscribe reason`);
          }),
        );
      }
      break;
    case 'disconnect': {
      const code = body.disconnect?.code ?? 3503;
      const custom = code >= 4000 && code <= 4999;
      for (const u of targets()) {
        add(
          `${u.user} is disconnected with ${code}`,
          waitFor(u.client, 'disconnected', EFFECT_TIMEOUT_MS).then((ctx) => {
            assert.equal(ctx.code, code, `${u.user}'s close code`);
            if (custom) assert.equal(ctx.reason, body.disconnect.reason, `${u.user}'s close reason`);
            // 3500-3999 and 4500-4999 tell the client not to reconnect.
            if ((code >= 3500 && code < 4000) || code >= 4500) {
              assert.equal(u.client.state, 'disconnected', `${u.user} should not reconnect`);
            }
          }),
        );
      }
      break;
    }
    default:
      // refresh (a new expiry is not observable until it passes) and the read-only methods.
      break;
  }
  return effects;
}

/** The method name and JSON body of a curl command line (`-d`/`--data` argument). */
function curlRequest(argv) {
  const url = argv.find((a) => /^https?:\/\//.test(a)) || '';
  const method = (url.match(/\/api\/([A-Za-z_]+)/) || [])[1];
  let body;
  for (let i = 0; i < argv.length; i++) {
    if (['-d', '--data', '--data-raw', '--data-binary'].includes(argv[i])) body = argv[i + 1];
  }
  let parsed;
  if (body !== undefined) {
    try {
      parsed = JSON.parse(body);
    } catch {
      parsed = undefined;
    }
  }
  return { url, method, body: parsed };
}

// ---------------------------------------------------------------------------------------------
// docs/PROTOCOL.md

/** Server messages of a raw socket one JSON text at a time (frames split at `\n`). */
function messageReader(sock) {
  let seen = 0;
  const queue = [];
  const closed = sock.closed.then((c) => {
    throw new Error(`the server closed the connection (${c.code} ${c.reason})`);
  });
  closed.catch(() => {});
  const pull = () => {
    while (seen < sock.messages.length) {
      const frame = sock.messages[seen++];
      for (const part of String(frame).split('\n')) if (part.trim() !== '') queue.push(part);
    }
  };
  return {
    async next(timeoutMs, what) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        pull();
        if (queue.length) return queue.shift();
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no message from the server within ${timeoutMs} ms (waiting for ${what})`);
        await Promise.race([waitFor(sock.ws, 'message', left).catch(() => {}), closed]);
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------

describe('documentation examples', { concurrency: true }, () => {
  test('docs/API.md: every curl example, in page order, answers what the page shows', async (t) => {
    const doc = readDoc('docs/API.md');
    const { config, configLine, users: setupUsers, commands } = apiSetup(doc);
    assert.ok(commands.length > 0, `${doc.file}: no $ curl examples found`);
    // Every `$ ` line of the page is one of them (none skipped by the parser).
    const dollarLines = doc.lines.filter((l) => l.startsWith('$ ')).length;
    assert.equal(commands.length, dollarLines, `${doc.file}: ${dollarLines} "$ " lines, ${commands.length} parsed`);

    const dir = tempDir(t);
    writeFileSync(path.join(dir, 'switchboard.toml'), config);
    const checked = await runProgram(BIN, ['checkconfig', 'switchboard.toml'], { cwd: dir, env: cleanEnv() });
    assert.equal(checked.code, 0, `${doc.file}:${configLine}: the setup config is invalid:\n${checked.stderr}`);

    const server = await startServer({ config });
    const users = [];
    t.after(async () => {
      for (const u of users) u.client.disconnect();
      await server.stop();
    });

    // The state the setup describes: each user connected with its token, subscribed.
    for (const row of setupUsers) {
      const where = `${doc.file}:${row.line}`;
      const token = await gentoken(splitShellWords(row.tokenCommand).words, dir, where);
      const client = await connectClient(server, { token });
      const u = new StoryUser(row.user, client);
      users.push(u);
      for (const channel of row.channels) u.subs.set(channel, await subscribe(client, channel));
    }

    const examples = new Examples();
    for (const cmd of commands) {
      const where = `${doc.file}:${cmd.line} (${cmd.section})`;
      await t.test(where, async () => {
        assert.equal(cmd.argv[0], 'curl', `${where}: only curl examples are expected here`);
        const args = cmd.argv
          .slice(1)
          .map((a) => examples.substitute(a.split(DOC_ADDRESS).join(server.address)));
        const { method, body } = curlRequest(args);
        assert.ok(method, `${where}: no /api/<method> URL in the command`);
        const effects = expectedEffects(method, body, users);
        const shown = shellLine(['curl', ...args]);
        const res = await runProgram('curl', ['--max-time', '10', ...args]);
        assert.equal(res.code, 0, `${where}: ${shown} exited with ${res.code}: ${res.stderr}`);
        assert.ok(cmd.output !== '', `${where}: the doc shows no answer for this command`);
        const expected = parseJson(cmd.output, `${doc.file}:${cmd.outputLine} (documented answer)`);
        const actual = parseJson(res.stdout, `${where}: the server's answer`);
        const diff = compareJson(expected, actual, examples);
        if (diff) {
          throw mismatch({ where, command: shown, docLine: cmd.outputLine, expected, actual, diff });
        }
        for (const e of effects) {
          await withTimeout(e.promise, EFFECT_TIMEOUT_MS + 1000, `${where}: ${e.what}: timed out`).catch(
            (err) => {
              throw new Error(`${where}: after this call, expected: ${e.what}; ${err.message}`);
            },
          );
        }
      });
    }
  });

  test('docs/PROTOCOL.md: the example session, message by message', async (t) => {
    const doc = readDoc('docs/PROTOCOL.md');
    const block = codeBlocks(doc).find((b) => b.lines.some((l) => l.startsWith('> ')));
    assert.ok(block, `${doc.file}: no example session (lines starting with "> ")`);

    // The example speaks anonymously and publishes into chat:lobby: a bare server (development
    // mode), with the default ping interval the connect reply shows.
    const server = await startServer();
    const sock = await rawSocket(server);
    t.after(async () => {
      sock.ws.terminate();
      await server.stop();
    });
    const reader = messageReader(sock);
    const examples = new Examples();
    let steps = 0;
    for (let i = 0; i < block.lines.length; ) {
      const line = block.lines[i];
      const docLine = block.line + i;
      if (line.startsWith('> ')) {
        // Consecutive client lines go out together, in one frame (as the JS SDK batches them).
        const frame = [];
        while (i < block.lines.length && block.lines[i].startsWith('> ')) {
          const text = examples.substitute(block.lines[i].slice(2));
          parseJson(text, `${doc.file}:${block.line + i}`);
          frame.push(text);
          i++;
        }
        sock.ws.send(frame.join('\n'));
        steps++;
      } else if (line.startsWith('< ')) {
        const expected = parseJson(line.slice(2), `${doc.file}:${docLine}`);
        // A ping (`{}`) comes after the ping interval (25 s by default); the rest at once.
        const timeout = Object.keys(expected).length === 0 ? 40000 : 5000;
        const text = await reader.next(timeout, `${doc.file}:${docLine} ${line}`);
        const actual = parseJson(text, `${doc.file}:${docLine}: the server's message`);
        const diff = compareJson(expected, actual, examples);
        if (diff) {
          throw mismatch({
            where: `${doc.file}:${docLine}`,
            command: 'the example session so far',
            docLine,
            expected,
            actual,
            diff,
          });
        }
        steps++;
        i++;
      } else if (line.trim() === '') {
        i++;
      } else {
        throw new Error(`${doc.file}:${docLine}: neither "> " nor "< ": ${line}`);
      }
    }
    assert.ok(steps > 0);
    assert.equal(sock.ws.readyState, sock.ws.OPEN, 'the session should still be open at the end');
  });

  const configDocs = [
    ['docs/DEPLOY.md', 'toml'],
    ['docs/CONFIG.md', 'toml'],
  ];
  for (const [file, lang] of configDocs) {
    test(`${file}: every ${lang} example passes switchboard checkconfig`, async (t) => {
      const doc = readDoc(file);
      const blocks = codeBlocks(doc).filter((b) => b.info === lang);
      assert.ok(blocks.length > 0, `${file}: no ${lang} blocks`);
      const dir = tempDir(t);
      for (const b of blocks) {
        const name = `example-${b.line}.toml`;
        writeFileSync(path.join(dir, name), `${b.lines.join('\n')}\n`);
        const res = await runProgram(BIN, ['checkconfig', name], { cwd: dir, env: cleanEnv() });
        assert.equal(
          res.code,
          0,
          `${file}:${b.line} (${b.headings.at(-1)}): checkconfig refuses the example:\n${res.stderr}`,
        );
        assert.match(res.stdout, /: OK \(/, `${file}:${b.line}: checkconfig said: ${res.stdout}`);
      }
    });
  }
});
