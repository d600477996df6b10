// The editor demo in Chromium: two people in one document see who is here, each other's text and
// caret; they type at the same time and end with the same text containing both edits; one of them
// types while offline and the edits merge when the network is back.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startServer } from '../helpers.mjs';
import { launchChromium } from './browser.mjs';
import { openUser, runId, screenshot } from './demos.mjs';

describe('editor demo (Chromium)', () => {
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

  async function open(name, doc) {
    const user = await openUser(browser, `${server.httpUrl}/demos/editor?doc=${doc}`);
    users.push(user);
    await user.page.getByLabel('Your name').fill(name);
    await user.page.getByRole('button', { name: 'Open' }).click();
    await user.page.locator('#editor').waitFor({ state: 'visible' });
    return user;
  }

  const text = (page) => page.locator('#text').inputValue();

  async function converged(pages, predicate = () => true) {
    let last = [];
    for (let i = 0; i < 100; i++) {
      last = await Promise.all(pages.map(text));
      if (last.every((t) => t === last[0]) && predicate(last[0])) return last[0];
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.fail(`not converged: ${JSON.stringify(last)}`);
  }

  test('two editors: presence, text, carets, concurrent typing, offline edits', async () => {
    const doc = `t-${runId()}`;
    const alice = await open('alice', doc);
    const bob = await open('bob', doc);
    for (const u of [alice, bob]) {
      await u.page.locator('#people li', { hasText: 'alice' }).waitFor();
      await u.page.locator('#people li', { hasText: 'bob' }).waitFor();
    }

    await alice.page.locator('#text').click();
    await alice.page.keyboard.type('Hello');
    assert.equal(await converged([alice.page, bob.page], (t) => t === 'Hello'), 'Hello');
    // Bob sees alice's caret after "Hello".
    await bob.page.locator('#mirror .caret[data-name="alice"]').waitFor();

    // Both type at once, at opposite ends.
    await bob.page.locator('#text').click();
    await bob.page.keyboard.press('Control+Home');
    await alice.page.keyboard.press('Control+End');
    await Promise.all([alice.page.keyboard.type(' world', { delay: 15 }), bob.page.keyboard.type('Say: ', { delay: 15 })]);
    const both = await converged([alice.page, bob.page], (t) => t.length === 16);
    assert.equal(both, 'Say: Hello world');

    // Bob offline types on; alice too; back online, both edits are in both pages.
    await bob.context.setOffline(true);
    await bob.page.locator('#banner').waitFor({ state: 'visible' });
    await bob.page.keyboard.press('Control+End');
    await bob.page.keyboard.type(' (bob offline)');
    await alice.page.keyboard.press('Control+End');
    await alice.page.keyboard.type('!');
    await bob.context.setOffline(false);
    await bob.page.locator('#banner').waitFor({ state: 'hidden', timeout: 15000 });
    const merged = await converged([alice.page, bob.page], (t) => t.includes('(bob offline)') && t.includes('!'));
    assert.ok(['Say: Hello world! (bob offline)', 'Say: Hello world (bob offline)!'].includes(merged), merged);

    await alice.page.keyboard.press('Control+End');
    await alice.page.keyboard.press('Enter');
    await alice.page.keyboard.type('Edited by two browsers at once.');
    await converged([alice.page, bob.page], (t) => t.endsWith('at once.'));
    await bob.page.locator('#text').click();
    await bob.page.keyboard.press('Control+End');
    await alice.page.locator('#mirror .caret[data-name="bob"]').waitFor();
    await screenshot(alice.page, 'editor');
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors.filter((e) => !/ERR_INTERNET_DISCONNECTED/.test(e)), []);
  });
});
