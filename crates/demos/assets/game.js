// Multiplayer game demo: the server (crates/demos/src/game.rs) owns the game; this page sends the
// direction held (RPC game.input), measures its round trip (RPC game.ping, shown to everyone) and
// draws the state the server publishes 20 times per second.
import { Client } from '/js/switchboard.js';
import { colorOf, param, showConnection } from '/demos/assets/common.js';

const $ = (id) => document.getElementById(id);
const room = param('room', 'arena');
const channel = `demo-game:${room}`;
let client, sub, me = '', latency = 0;
const updates = []; // arrival times within the last second
window.gameState = null; // the last state, for curious readers (and the tests)

$('name').value = param('name', localStorage.getItem('demo-nick') || '');

$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  $('join-error').textContent = '';
  const name = $('name').value.trim();
  localStorage.setItem('demo-nick', name);
  client?.disconnect();
  client = new Client(location.origin, { name: 'demo-game' });
  showConnection(client);
  sub = client.newSubscription(channel, { data: { name } });
  sub.on('subscribed', (ctx) => { me = ctx.data.you; $('game').hidden = false; $('board').focus(); sendInput(); });
  sub.on('publication', ({ data }) => { updates.push(Date.now()); window.gameState = data; render(data); });
  sub.on('error', ({ error }) => { $('join-error').textContent = error.message; });
  sub.subscribe();
  client.connect();
});

// Input: the keys held become a direction; only changes are sent.
const held = new Set();
const KEYS = { ArrowUp: [0, -1], KeyW: [0, -1], ArrowDown: [0, 1], KeyS: [0, 1], ArrowLeft: [-1, 0], KeyA: [-1, 0], ArrowRight: [1, 0], KeyD: [1, 0] };
let sent = '0,0';
function sendInput() {
  let dx = 0, dy = 0;
  for (const k of held) { dx += KEYS[k]?.[0] ?? 0; dy += KEYS[k]?.[1] ?? 0; }
  const dir = `${Math.sign(dx)},${Math.sign(dy)}`;
  if (dir === sent || sub?.state !== 'subscribed') return;
  sent = dir;
  client.rpc('game.input', { room, dx: Math.sign(dx), dy: Math.sign(dy) }).catch(() => { sent = ''; });
}
$('board').addEventListener('keydown', (e) => { if (KEYS[e.code]) { e.preventDefault(); held.add(e.code); sendInput(); } });
$('board').addEventListener('keyup', (e) => { held.delete(e.code); sendInput(); });
$('board').addEventListener('blur', () => { held.clear(); sendInput(); });
for (const b of document.querySelectorAll('.pad button')) {
  const code = { '0,-1': 'ArrowUp', '0,1': 'ArrowDown', '-1,0': 'ArrowLeft', '1,0': 'ArrowRight' }[b.dataset.dir];
  b.addEventListener('pointerdown', () => { held.add(code); sendInput(); });
  for (const ev of ['pointerup', 'pointerleave']) b.addEventListener(ev, () => { held.delete(code); sendInput(); });
}

// Latency: one round trip per second; the last one goes to the server with the next ping.
setInterval(async () => {
  if (sub?.state !== 'subscribed') return;
  const start = performance.now();
  try {
    await client.rpc('game.ping', { room, latency });
    latency = Math.round(performance.now() - start);
  } catch { /* reconnecting */ }
}, 1000);

function render(state) {
  const g = $('board').getContext('2d');
  g.clearRect(0, 0, 640, 400);
  g.fillStyle = '#facc15';
  g.beginPath(); g.arc(state.coin.x, state.coin.y, 9, 0, 2 * Math.PI); g.fill();
  for (const p of state.players) {
    g.fillStyle = colorOf(p.name);
    g.beginPath(); g.arc(p.x, p.y, 14, 0, 2 * Math.PI); g.fill();
    if (p.id === me) { g.strokeStyle = '#fff'; g.lineWidth = 3; g.stroke(); }
    g.fillStyle = '#fff';
    g.font = '13px system-ui';
    g.textAlign = 'center';
    g.fillText(p.name, p.x, p.y - 20);
  }
  const rows = [...state.players].sort((a, b) => b.score - a.score).map((p) => {
    const tr = document.createElement('tr');
    if (p.id === me) tr.className = 'me';
    for (const text of [p.name, p.score, p.latency ? `${p.latency} ms` : '–']) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  });
  $('scores').tBodies[0].replaceChildren(...rows);
}

setInterval(() => {
  const now = Date.now();
  while (updates.length && updates[0] <= now - 1000) updates.shift();
  $('ups').textContent = updates.length;
}, 250);
