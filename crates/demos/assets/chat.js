// Chat demo: rooms, nickname, presence with join/leave, typing indicators, the last 50 messages
// from history, recovery after a reconnect. The server (crates/demos/src/chat.rs) checks the
// nickname and every message and stamps messages with the time.
import { Client } from '/js/switchboard.js';
import { colorOf, param, showConnection } from '/demos/assets/common.js';

const $ = (id) => document.getElementById(id);
const people = new Map(); // client id -> nickname
const shown = new Set(); // offsets of the messages on screen (history and live may overlap)
let client, room, typingSub, typingTimer;
const typers = new Map(); // nickname -> timer

$('nick').value = param('nick', localStorage.getItem('demo-nick') || '');
$('room').value = param('room', 'lobby');

$('join').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('join-error').textContent = '';
  client?.disconnect();
  const nick = $('nick').value.trim();
  const name = $('room').value.trim().toLowerCase();
  localStorage.setItem('demo-nick', nick);
  client = new Client(location.origin, { name: 'demo-chat' });
  showConnection(client);
  room = client.newSubscription(`demo-chat:${name}`, { data: { nick }, recoverable: true, joinLeave: true });
  typingSub = client.newSubscription(`demo-chat-typing:${name}`, { data: { nick } });
  room.on('subscribed', (ctx) => onSubscribed(ctx));
  room.on('publication', (p) => addMessage(p));
  room.on('join', ({ info }) => { setPerson(info, true); system(`${nickOf(info)} joined`); });
  room.on('leave', ({ info }) => { setPerson(info, false); system(`${nickOf(info)} left`); });
  room.on('error', ({ error }) => { $('join-error').textContent = error.message; });
  room.on('unsubscribed', ({ reason }) => { $('join-error').textContent = `Not joined: ${reason}`; $('chat').hidden = true; });
  typingSub.on('publication', (p) => showTyping(nickOf(p.info), p.data.typing));
  room.subscribe();
  typingSub.subscribe();
  client.connect();
  $('room-title').textContent = `#${name}`;
  $('log').replaceChildren();
  shown.clear();
});

async function onSubscribed(ctx) {
  $('chat').hidden = false;
  if (ctx.wasRecovering && ctx.recovered) {
    system('Reconnected: missed messages recovered.');
  } else {
    // First join, or too much was missed: load the last 50 messages.
    if (ctx.wasRecovering) system('Reconnected: reloading the last messages.');
    const { publications } = await room.history({ limit: 50, reverse: true });
    for (const p of publications.reverse()) addMessage(p);
  }
  // Who is here now (joins and leaves keep it current afterwards).
  people.clear();
  for (const [id, info] of Object.entries(await room.presence())) people.set(id, nickOf(info));
  renderPeople();
}

function addMessage(p) {
  if (p.offset && shown.has(p.offset)) return;
  if (p.offset) shown.add(p.offset);
  const li = document.createElement('li');
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = new Date(p.data.at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const nick = document.createElement('span');
  nick.className = 'nick';
  nick.textContent = nickOf(p.info);
  nick.style.color = colorOf(nick.textContent);
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = p.data.text;
  li.append(time, nick, text);
  // Keep messages in stream order: history and live publications may arrive interleaved.
  li.dataset.offset = p.offset || 0;
  const after = [...$('log').children].find((el) => Number(el.dataset.offset) > (p.offset || Infinity));
  $('log').insertBefore(li, after || null);
  showTyping(nick.textContent, false);
  scrollDown();
}

function system(text) {
  const li = document.createElement('li');
  li.className = 'system';
  li.textContent = text;
  li.dataset.offset = Math.max(0, ...shown) + 0.5;
  $('log').append(li);
  scrollDown();
}

const scrollDown = () => { $('log').scrollTop = $('log').scrollHeight; };
const nickOf = (info) => info?.chanInfo?.nick ?? 'someone';

function setPerson(info, here) {
  if (here) people.set(info.client, nickOf(info));
  else people.delete(info.client);
  renderPeople();
}

function renderPeople() {
  const names = [...new Set(people.values())].sort();
  $('count').textContent = names.length;
  $('people').replaceChildren(...names.map((n) => {
    const li = document.createElement('li');
    const dot = document.createElement('span');
    dot.className = 'dot';
    dot.style.background = colorOf(n);
    li.append(dot, n);
    return li;
  }));
}

function showTyping(nick, typing) {
  clearTimeout(typers.get(nick));
  typers.delete(nick);
  if (typing && nick !== $('nick').value.trim()) typers.set(nick, setTimeout(() => showTyping(nick, false), 4000));
  const names = [...typers.keys()];
  $('typing').textContent = names.length ? `${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} typing…` : '';
}

// Typing: tell the room at most every 2 s while keys are pressed, and when the input is cleared.
let lastTyping = 0;
$('text').addEventListener('input', () => {
  const now = Date.now();
  if ($('text').value && now - lastTyping > 2000) {
    lastTyping = now;
    typingSub.publish({ typing: true }).catch(() => {});
  }
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => { lastTyping = 0; typingSub.publish({ typing: false }).catch(() => {}); }, 3000);
});

$('send').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('send-error').textContent = '';
  try {
    // The server checks the text (not empty, at most 500 characters): its error is shown as is.
    await room.publish({ text: $('text').value });
    $('text').value = '';
    lastTyping = 0;
  } catch (err) {
    $('send-error').textContent = `Not sent: ${err.message}`;
  }
});
