// The notifications demo in Chromium: alice (two tabs) and bob; a notification from the form
// reaches both of alice's tabs and not bob, one to everyone reaches all, one from the server API
// (what the page's curl line does) reaches alice; unread counts; the server refuses an empty one;
// a tab offline meanwhile gets what was sent when it is back.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { api, startServer } from '../helpers.mjs';
import { launchChromium } from './browser.mjs';
import { openUser, runId, screenshot } from './demos.mjs';

describe('notifications demo (Chromium)', () => {
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

  async function login(page, name) {
    await page.getByLabel('You are (user name)').fill(name);
    await page.getByRole('button', { name: 'Open my inbox' }).click();
    await page.locator('#status', { hasText: 'connected (' }).waitFor();
  }

  async function send(page, to, text) {
    await page.getByLabel('To (a user name, or everyone)').fill(to);
    await page.getByLabel('Text').fill(text);
    await page.getByRole('button', { name: 'Send', exact: true }).click();
  }

  const unread = (page) => page.locator('#unread').textContent();

  test('per-user inbox, everyone, other tabs, server API, unread count, recovery', async () => {
    const id = runId();
    const [a, b] = [`alice-${id}`, `bob-${id}`];
    const alice = await openUser(browser, `${server.httpUrl}/demos/notifications`);
    users.push(alice);
    await login(alice.page, a);
    const aliceTab2 = await alice.context.newPage();
    await aliceTab2.goto(`${server.httpUrl}/demos/notifications`);
    await login(aliceTab2, a);
    const bob = await openUser(browser, `${server.httpUrl}/demos/notifications`);
    users.push(bob);
    await login(bob.page, b);

    await send(bob.page, a, 'lunch at noon?');
    for (const page of [alice.page, aliceTab2]) {
      await page.locator('#inbox li', { hasText: 'lunch at noon?' }).waitFor();
      await page.locator('#inbox li', { hasText: `from ${b}` }).waitFor();
      assert.equal(await unread(page), '1');
    }
    assert.equal(await bob.page.locator('#inbox li').count(), 0);
    assert.equal(await unread(bob.page), '0');

    await send(alice.page, 'everyone', 'standup in 5');
    for (const page of [alice.page, aliceTab2, bob.page]) {
      await page.locator('#inbox li', { hasText: 'standup in 5' }).waitFor();
    }
    assert.equal(await unread(aliceTab2), '2');
    assert.equal(await unread(bob.page), '1');
    assert.match(await aliceTab2.title(), /^\(2\) /);

    // The server API, as the page's curl line shows it.
    assert.match(await alice.page.locator('#curl').textContent(), /curl -X POST http:\/\/127\.0\.0\.1:\d+\/api\/publish/);
    await api(server, 'publish', { channel: `demo-notify:${a}`, data: { text: 'deploy finished', from: 'ci', at: Date.now() } });
    await aliceTab2.locator('#inbox li', { hasText: 'deploy finished' }).waitFor();

    // Checked on the server.
    await send(bob.page, a, '   ');
    await bob.page.locator('#send-error', { hasText: 'the notification is empty' }).waitFor();

    // Mark read in one tab.
    await alice.page.getByRole('button', { name: 'Mark all read' }).click();
    assert.equal(await unread(alice.page), '0');

    // Bob offline: what alice sends him meanwhile arrives when he is back.
    await bob.context.setOffline(true);
    await bob.page.locator('#banner').waitFor({ state: 'visible' });
    await send(alice.page, b, 'sent while you were offline');
    await alice.page.locator('#send-error').filter({ hasText: /^$/ }).waitFor();
    await bob.context.setOffline(false);
    await bob.page.locator('#inbox li', { hasText: 'sent while you were offline' }).waitFor({ timeout: 15000 });
    assert.equal(await unread(bob.page), '2');

    await screenshot(aliceTab2, 'notifications');
    for (const errors of [alice.errors]) assert.deepEqual(errors, []);
    assert.deepEqual(bob.errors.filter((e) => !/ERR_INTERNET_DISCONNECTED/.test(e)), []);
  });
});
