// Shared by the demo pages: the connection status in the header and the reconnecting banner.
//
//   import { showConnection } from '/demos/assets/common.js';
//   showConnection(client);   // client: a Client of /js/switchboard.js

/** Shows `client`'s state in `#status` and the `#banner` while it reconnects. */
export function showConnection(client) {
  const status = document.getElementById('status');
  const banner = document.getElementById('banner');
  let wasConnected = false;
  client.on('state', ({ newState }) => {
    if (status) status.textContent = newState === 'connected' ? `connected (${client.transport})` : newState;
    if (newState === 'connected') wasConnected = true;
    // The banner only after a connection was lost, not during the first connect.
    banner?.classList.toggle('show', newState === 'connecting' && wasConnected);
  });
}

/** Escapes text for innerHTML (the demos prefer textContent; this is for templates). */
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A stable colour for a name (for avatars, cursors, players). */
export function colorOf(name) {
  let h = 0;
  for (const c of String(name)) h = (h * 31 + c.codePointAt(0)) % 360;
  return `hsl(${h} 65% 40%)`;
}

/** `?key=value` from the page's address, or `fallback`. */
export function param(key, fallback = '') {
  return new URLSearchParams(location.search).get(key) || fallback;
}
