// The game demo in Chromium: two players in one room both see both players, get 15+ state
// updates per second from the server, see each player's latency; a held key moves the player in
// what the other one sees (the server moves it); after a network cut the player is back in.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startServer } from '../helpers.mjs';
import { launchChromium } from './browser.mjs';
import { openUser, runId, screenshot } from './demos.mjs';

describe('game demo (Chromium)', () => {
  let server;
  let browser;
  const users = [];

  before(async () => {
    server = await startServer();
    browser = await launchChromium();
  });

  after(async () => {
    for (const u of users) await u.context.close().catch(() => {});
    await browser?.close();
    await server?.stop();
  });

  async function play(name, room) {
    const user = await openUser(browser, `${server.httpUrl}/demos/game?room=${room}`);
    users.push(user);
    await user.page.getByLabel('Player name').fill(name);
    await user.page.getByRole('button', { name: 'Play' }).click();
    await user.page.locator('#game').waitFor({ state: 'visible' });
    return user;
  }

  const position = (page, name) =>
    page.evaluate((n) => window.gameState?.players.find((p) => p.name === n), name);

  test('two players: shared state at 20/s, latency, movement, reconnect', async () => {
    const room = `t-${runId()}`;
    const alice = await play('alice', room);
    const bob = await play('bob', room);
    for (const u of [alice, bob]) {
      await u.page.locator('#scores tbody tr', { hasText: 'alice' }).waitFor();
      await u.page.locator('#scores tbody tr', { hasText: 'bob' }).waitFor();
      await u.page.waitForFunction(() => Number(document.getElementById('ups').textContent) >= 15, null, { timeout: 10000 });
      // Every player's latency, measured by its own page, shown to everyone.
      for (const name of ['alice', 'bob']) {
        await u.page.locator('#scores tbody tr', { hasText: name }).filter({ hasText: / ms$/ }).waitFor({ timeout: 10000 });
      }
    }

    // Alice holds "right" (or "left" if she is near the right edge): bob sees her move.
    const start = await position(bob.page, 'alice');
    const key = start.x < 320 ? 'ArrowRight' : 'ArrowLeft';
    await alice.page.locator('#board').focus();
    await alice.page.keyboard.down(key);
    await bob.page.waitForFunction(
      ([x, right]) => {
        const p = window.gameState.players.find((q) => q.name === 'alice');
        return right ? p.x > x + 60 : p.x < x - 60;
      },
      [start.x, key === 'ArrowRight'],
      { timeout: 5000 },
    );
    await alice.page.keyboard.up(key);
    const moved = await position(bob.page, 'alice');
    assert.ok(Math.abs(moved.y - start.y) < 1, 'moved along x only');
    await screenshot(alice.page, 'game');

    // Bob's network drops: his updates stop, then he rejoins and gets updates again.
    await bob.context.setOffline(true);
    await bob.page.locator('#banner').waitFor({ state: 'visible' });
    await bob.context.setOffline(false);
    await bob.page.locator('#banner').waitFor({ state: 'hidden', timeout: 15000 });
    await bob.page.waitForFunction(() => Number(document.getElementById('ups').textContent) >= 15, null, { timeout: 10000 });
    await alice.page.waitForFunction(() => window.gameState.players.some((p) => p.name === 'bob'));
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors.filter((e) => !/ERR_INTERNET_DISCONNECTED/.test(e)), []);
  });
});
