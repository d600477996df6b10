// Notifications demo: each tab subscribes to the user's channel and to `everyone`; sending goes
// through the RPC `notify.send` (checked and published by crates/demos/src/notify.rs) or the
// server API. The unread count is per tab; the title shows it too.
import { Client } from '/js/switchboard.js';
import { param, showConnection } from '/demos/assets/common.js';

const $ = (id) => document.getElementById(id);
let client, unread = 0;

$('user').value = param('user', localStorage.getItem('demo-user') || '');

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  const user = $('user').value.trim();
  localStorage.setItem('demo-user', user);
  client?.disconnect();
  client = new Client(location.origin, { name: 'demo-notifications' });
  showConnection(client);
  for (const channel of [`demo-notify:${user}`, 'demo-notify:everyone']) {
    const sub = client.newSubscription(channel, { recoverable: true });
    sub.on('publication', ({ data }) => add(data, channel.endsWith(':everyone'), true));
    sub.on('error', ({ error }) => { $('send-error').textContent = error.message; });
    sub.subscribe();
  }
  client.connect();
  $('me').textContent = user;
  $('to').value = $('to').value || user;
  $('inbox').replaceChildren();
  setUnread(0);
  $('app').hidden = false;
  showCurl();
});

function add(n, everyone, isNew) {
  const li = document.createElement('li');
  li.textContent = n.text;
  const meta = document.createElement('span');
  meta.className = 'meta';
  meta.textContent = `from ${n.from}${everyone ? ' to everyone' : ''} · ${new Date(n.at).toLocaleTimeString()}`;
  li.append(meta);
  if (isNew) li.className = 'unread';
  $('inbox').prepend(li);
  $('empty').hidden = true;
  if (isNew) setUnread(unread + 1);
}

function setUnread(n) {
  unread = n;
  $('unread').textContent = n;
  $('unread').classList.toggle('zero', n === 0);
  document.title = `${n ? `(${n}) ` : ''}Notifications · Switchboard demos`;
}

$('read').addEventListener('click', () => {
  for (const li of $('inbox').querySelectorAll('.unread')) li.classList.remove('unread');
  setUnread(0);
});

$('send').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('send-error').textContent = '';
  try {
    await client.rpc('notify.send', { to: $('to').value, text: $('text').value, from: $('me').textContent });
    $('text').value = '';
  } catch (err) {
    $('send-error').textContent = `Not sent: ${err.message}`;
  }
});

function showCurl() {
  const to = $('to').value.trim() || 'everyone';
  const body = JSON.stringify({ channel: `demo-notify:${to}`, data: { text: 'Deploy finished', from: 'ci', at: Date.now() } });
  $('curl').textContent = `curl -X POST ${location.origin}/api/publish \\\n  -d '${body}'`;
}
$('to').addEventListener('input', showCurl);
