// The dashboard demo in Chromium: with `demos.dashboard_rate = 20`, two viewers both receive the
// server's feed at about that rate, see a latency and charts drawn on canvas; a viewer whose
// network drops sees the banner and the feed again once back.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { delay, startServer } from '../helpers.mjs';
import { launchChromium } from './browser.mjs';
import { openUser, screenshot } from './demos.mjs';

const CONFIG = `
mode = "development"

[demos]
dashboard_rate = 20
`;

describe('dashboard demo (Chromium)', () => {
  let server;
  let browser;
  const users = [];

  before(async () => {
    server = await startServer({ config: CONFIG });
    browser = await launchChromium();
  });

  after(async () => {
    for (const u of users) await u.context.close().catch(() => {});
    await browser?.close();
    await server?.stop();
  });

  const number = async (page, id) => Number.parseInt(await page.locator(`#${id}`).textContent(), 10);

  test('two viewers get the feed at the configured rate, with latency and charts; reconnect', async () => {
    const viewers = [];
    for (let i = 0; i < 2; i++) {
      const user = await openUser(browser, `${server.httpUrl}/demos/dashboard`);
      users.push(user);
      viewers.push(user);
    }
    for (const { page } of viewers) {
      await page.locator('#rate', { hasText: '20' }).waitFor();
      await page.waitForFunction(() => Number(document.getElementById('received').textContent) >= 40, null, { timeout: 10000 });
      const mps = await number(page, 'mps');
      assert.ok(mps >= 10 && mps <= 30, `messages per second ${mps}`);
      assert.match(await page.locator('#latency').textContent(), /^\d+ ms$/);
      // Something was drawn on each chart.
      const drawn = await page.evaluate(() => ['temperature', 'humidity', 'load'].every((k) => {
        const c = document.getElementById(`c-${k}`);
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < px.length; i += 4) if (px[i] !== 0) return true;
        return false;
      }));
      assert.ok(drawn, 'charts drawn');
    }
    await screenshot(viewers[0].page, 'dashboard');

    const [, second] = viewers;
    await second.context.setOffline(true);
    await second.page.locator('#banner').waitFor({ state: 'visible' });
    await delay(500);
    const before = await number(second.page, 'received');
    await delay(1000);
    assert.ok((await number(second.page, 'received')) - before <= 2, 'nothing arrives while offline');
    await second.context.setOffline(false);
    await second.page.locator('#banner').waitFor({ state: 'hidden', timeout: 15000 });
    await second.page.waitForFunction((n) => Number(document.getElementById('received').textContent) >= n + 20, before, { timeout: 10000 });
    for (const u of viewers) assert.deepEqual(u.errors.filter((e) => !/ERR_INTERNET_DISCONNECTED/.test(e)), []);
  });
});
