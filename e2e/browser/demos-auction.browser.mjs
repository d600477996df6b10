// The auction demo in Chromium: two bidders on one lot see each other's bids, the server refuses
// a bid too low, too late and on a closed lot, both see the countdown end and the same winner; a
// bidder whose network drops gets the current price back when it returns; a new round starts.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { delay, startServer } from '../helpers.mjs';
import { launchChromium } from './browser.mjs';
import { openUser, runId, screenshot } from './demos.mjs';

describe('auction demo (Chromium)', () => {
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

  async function bidder(nick, lot, seconds) {
    const user = await openUser(browser, `${server.httpUrl}/demos/auction?lot=${lot}&seconds=${seconds}`);
    users.push(user);
    await user.page.getByLabel('Your nickname').fill(nick);
    await user.page.locator('#status', { hasText: 'connected (' }).waitFor();
    return user;
  }

  async function bid(page, amount) {
    await page.getByLabel('Your bid').fill(String(amount));
    await page.getByRole('button', { name: 'Bid' }).click();
  }

  test('two bidders: bids, refusals, reconnect, countdown and winner', async () => {
    const lot = `t-${runId()}`;
    const alice = await bidder('alice', lot, 12);
    const bob = await bidder('bob', lot, 12);
    for (const u of [alice, bob]) await u.page.locator('#price', { hasText: '$100' }).waitFor();
    assert.match(await bob.page.locator('#countdown').textContent(), /^0:1\d$/);

    await bid(alice.page, 120);
    for (const u of [alice, bob]) {
      await u.page.locator('#price', { hasText: '$120' }).waitFor();
      await u.page.locator('#leader', { hasText: 'alice' }).waitFor();
    }
    // Too low: the server's reason is shown, the price stays.
    await bid(bob.page, 122);
    await bob.page.locator('#bid-error', { hasText: 'too low: the minimum bid is 125' }).waitFor();

    // Bob's network drops; alice bids meanwhile; back online, bob has the current price.
    await bob.context.setOffline(true);
    await bob.page.locator('#banner').waitFor({ state: 'visible' });
    await bid(alice.page, 150);
    await alice.page.locator('#price', { hasText: '$150' }).waitFor();
    await bob.context.setOffline(false);
    await bob.page.locator('#banner').waitFor({ state: 'hidden', timeout: 15000 });
    await bob.page.locator('#price', { hasText: '$150' }).waitFor();

    await bid(bob.page, 200);
    for (const u of [alice, bob]) await u.page.locator('#leader', { hasText: 'bob' }).waitFor();
    await alice.page.locator('#bids li', { hasText: '$200 by bob' }).waitFor();

    // The countdown ends: both see the same winner.
    for (const u of [alice, bob]) {
      await u.page.locator('#result', { hasText: 'Sold to bob for $200!' }).waitFor({ timeout: 20000 });
      assert.equal(await u.page.locator('#countdown').textContent(), 'ended');
    }
    await screenshot(alice.page, 'auction');
    // Right after the end: too late; a few seconds on: closed.
    await bid(alice.page, 300);
    await alice.page.locator('#bid-error', { hasText: 'too late: bidding ended' }).waitFor();
    await delay(5500);
    await bid(alice.page, 300);
    await alice.page.locator('#bid-error', { hasText: 'the auction is closed' }).waitFor();
    assert.equal(await bob.page.locator('#price').textContent(), '$200');

    // A new round, seen by both.
    await alice.page.getByLabel('Round length (seconds)').fill('30');
    await alice.page.getByRole('button', { name: 'Start a new round' }).click();
    for (const u of [alice, bob]) {
      await u.page.locator('#price', { hasText: '$100' }).waitFor();
      await u.page.locator('#round', { hasText: 'round 2' }).waitFor();
      assert.equal(await u.page.locator('#result').textContent(), '');
    }
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors.filter((e) => !/ERR_INTERNET_DISCONNECTED/.test(e)), []);
  });
});
