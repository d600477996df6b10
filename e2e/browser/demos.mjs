// Support for the demo tests (demos-*.browser.mjs): the binary in development mode serves the
// demos at `/`; each user is a browser context of its own (own storage, own network, so one can
// be cut off with `context.setOffline`).

import { mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { pageErrors } from './browser.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/**
 * Where the screenshots go: docs/img (shown in the README's tour) with `UPDATE_SCREENSHOTS=1`,
 * otherwise a temporary directory, so that a test run leaves the working tree as it was.
 */
export const IMG =
  process.env.UPDATE_SCREENSHOTS === '1'
    ? path.resolve(HERE, '..', '..', 'docs', 'img')
    : path.join(os.tmpdir(), 'switchboard-demo-screenshots');

/** A user: a fresh browser context with one page at `url`, and its console errors. */
export async function openUser(browser, url, viewport = { width: 1100, height: 760 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const errors = pageErrors(page);
  await page.goto(url);
  return { context, page, errors };
}

/** Saves `page` as <IMG>/<name>.png. */
export async function screenshot(page, name) {
  mkdirSync(IMG, { recursive: true });
  await page.screenshot({ path: path.join(IMG, `${name}.png`) });
}

/** A short random id for rooms, documents and user names of one test run. */
export function runId() {
  return Math.random().toString(36).slice(2, 8);
}
