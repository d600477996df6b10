// Browser test support: Debian's Chromium driven by `playwright-core`, and a small static server
// for test pages (the pages are served from another origin than the switchboard under test, so
// every browser test also crosses CORS the way a real app on its own domain does).
//
// Chromium comes from Debian's package (`/usr/bin/chromium`; scripts/test installs it), never from
// `npx playwright install`.

import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const E2E = path.resolve(HERE, '..');

/** Where Debian installs Chromium; `CHROMIUM_BIN` overrides it. */
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** The flags every browser test runs Chromium with: no network of its own, no first-run UI. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/** Starts headless Chromium. Close it with `browser.close()`. */
export async function launchChromium() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
}

/** Scripts a test page may load by name: `/lib/<name>`. */
const LIBRARIES = {
  'centrifuge.js': path.join(E2E, 'node_modules/centrifuge/dist/centrifuge.js'),
  'socket.io.js': path.join(E2E, 'node_modules/socket.io-client/dist/socket.io.js'),
};

/**
 * A static HTTP server on a free loopback port for test pages.
 *
 * `pages` maps a path (`/chat.html`) to its HTML text; `/lib/centrifuge.js` serves the
 * `centrifuge` SDK's browser bundle from node_modules. Returns `{ url, close() }`.
 *
 * @param {Record<string, string>} pages
 */
export async function servePages(pages) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/favicon.ico') {
      // Browsers ask for it; a 404 would show up as a console error of the page.
      res.writeHead(204);
      res.end();
      return;
    }
    if (Object.hasOwn(pages, url.pathname)) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(pages[url.pathname]);
      return;
    }
    const lib = url.pathname.startsWith('/lib/') && LIBRARIES[url.pathname.slice(5)];
    if (lib) {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      res.end(readFileSync(lib));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}

/**
 * Collects a page's console errors and uncaught exceptions, so a test can assert there were none
 * and print them when it fails.
 *
 * @param {import('playwright-core').Page} page
 */
export function pageErrors(page) {
  const errors = [];
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console.error: ${msg.text()}`);
  });
  return errors;
}
