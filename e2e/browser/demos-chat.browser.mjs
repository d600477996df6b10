// The chat demo in Chromium: two users in one room see each other in presence, each other's
// messages and typing; a later user gets the history; a user whose network drops sees the
// reconnecting banner and gets the messages sent meanwhile; the server refuses bad messages.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startServer } from '../helpers.mjs';
import { launchChromium } from './browser.mjs';
import { openUser, runId, screenshot } from './demos.mjs';

describe('chat demo (Chromium)', () => {
  let server;
  let browser;
  const users = [];

  before(async () => {
    server = await startServer(); // development mode: demos.enabled
    browser = await launchChromium();
  });

  after(async () => {
    for (const u of users) await u.context.close().catch(() => {});
    await browser?.close();
    await server?.stop();
  });

  async function join(nick, room) {
    const user = await openUser(browser, `${server.httpUrl}/demos/chat`);
    users.push(user);
    const { page } = user;
    await page.getByLabel('Nickname').fill(nick);
    await page.getByRole('combobox', { name: 'Room' }).fill(room);
    await page.getByRole('button', { name: 'Join' }).click();
    await page.locator('#chat').waitFor({ state: 'visible' });
    return user;
  }

  async function send(page, text) {
    await page.getByRole('textbox', { name: 'Message' }).fill(text);
    await page.getByRole('button', { name: 'Send' }).click();
  }

  test('the landing page links every demo', async () => {
    const user = await openUser(browser, `${server.httpUrl}/`);
    users.push(user);
    await user.page.getByRole('link', { name: /Chat/ }).click();
    await user.page.waitForURL(/\/demos\/chat$/);
    assert.deepEqual(user.errors, []);
  });

  test('two users: presence, messages, typing, history, validation, recovery', async () => {
    const room = `t-${runId()}`;
    const alice = await join('alice', room);
    const bob = await join('bob', room);

    // Presence: each sees both; alice saw bob join.
    for (const u of [alice, bob]) {
      await u.page.locator('#people li', { hasText: 'bob' }).waitFor();
      await u.page.locator('#people li', { hasText: 'alice' }).waitFor();
    }
    await alice.page.locator('#log li.system', { hasText: 'bob joined' }).waitFor();

    // Typing, then a message, seen by the other one with the sender's nickname.
    await alice.page.getByRole('textbox', { name: 'Message' }).pressSequentially('hel');
    await bob.page.locator('#typing', { hasText: 'alice is typing' }).waitFor();
    await send(alice.page, 'hello bob');
    const line = bob.page.locator('#log li', { hasText: 'hello bob' });
    await line.waitFor();
    assert.equal(await line.locator('.nick').textContent(), 'alice');
    await send(bob.page, 'hi alice');
    await alice.page.locator('#log li', { hasText: 'hi alice' }).waitFor();

    // The server checks messages: empty and too long are refused with its reason.
    await send(bob.page, '   ');
    await bob.page.locator('#send-error', { hasText: 'message is empty' }).waitFor();
    await send(bob.page, 'x'.repeat(501));
    await bob.page.locator('#send-error', { hasText: 'too long' }).waitFor();
    assert.equal(await alice.page.locator('#log li', { hasText: 'xxxxx' }).count(), 0);

    // A later user gets the history.
    const carol = await join('carol', room);
    await carol.page.locator('#log li', { hasText: 'hello bob' }).waitFor();
    await carol.page.locator('#log li', { hasText: 'hi alice' }).waitFor();
    await carol.page.close();
    await alice.page.locator('#log li.system', { hasText: 'carol left' }).waitFor();
    await alice.page.locator('#people li', { hasText: 'carol' }).waitFor({ state: 'detached' });

    // Bob's network drops: he sees the banner; alice's messages meanwhile reach him afterwards.
    await bob.context.setOffline(true);
    await bob.page.locator('#banner').waitFor({ state: 'visible' });
    await send(alice.page, 'while you were away 1');
    await send(alice.page, 'while you were away 2');
    await bob.context.setOffline(false);
    await bob.page.locator('#banner').waitFor({ state: 'hidden', timeout: 15000 });
    await bob.page.locator('#log li', { hasText: 'while you were away 2' }).waitFor({ timeout: 15000 });
    await bob.page.locator('#log li.system', { hasText: 'missed messages recovered' }).waitFor();
    const texts = await bob.page.locator('#log li .text').allTextContents();
    assert.deepEqual(texts, ['hello bob', 'hi alice', 'while you were away 1', 'while you were away 2']);

    await send(bob.page, 'back again');
    await alice.page.locator('#log li', { hasText: 'back again' }).waitFor();
    await screenshot(alice.page, 'chat');
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors.filter((e) => !/ERR_INTERNET_DISCONNECTED/.test(e)), []);
  });
});
