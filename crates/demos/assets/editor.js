// Collaborative editor demo: the text is a CRDT (crdt.js; the server keeps the same one,
// crates/demos/src/editor.rs). Local edits become operations sent with the RPC `editor.ops` (in
// order, one call at a time, resent after a reconnect: repeats are harmless); the server publishes
// what it applied, in its order, to `demo-editor:<doc>`. Carets go to `demo-editor-cursor:<doc>`;
// presence says who is here.
import { Client } from '/js/switchboard.js';
import { Doc } from '/demos/assets/crdt.js';
import { colorOf, param, showConnection } from '/demos/assets/common.js';

const $ = (id) => document.getElementById(id);
const site = Math.random().toString(36).slice(2, 10); // this page's id in the CRDT
let client, docSub, cursorSub, docName;
let doc = new Doc();
let ready = false; // the document's state has arrived
let buffered = []; // publications that came before it
let pending = []; // local operations the server has not confirmed
let sending = false;
const people = new Map(); // client id -> name
const carets = new Map(); // client id -> { name, after }
window.editorDoc = () => doc; // for curious readers (and the tests)

$('name').value = param('name', localStorage.getItem('demo-nick') || '');
$('doc').value = param('doc', 'notes');

$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  const name = $('name').value.trim();
  docName = $('doc').value.trim().toLowerCase();
  localStorage.setItem('demo-nick', name);
  client?.disconnect();
  client = new Client(location.origin, { name: 'demo-editor' });
  showConnection(client);
  docSub = client.newSubscription(`demo-editor:${docName}`, { data: { name }, joinLeave: true });
  cursorSub = client.newSubscription(`demo-editor-cursor:${docName}`, { data: { name } });
  docSub.on('subscribed', load);
  docSub.on('unsubscribed', () => { ready = false; });
  client.on('connecting', () => { ready = false; });
  docSub.on('publication', ({ data }) => (ready ? applyRemote(data.ops) : buffered.push(data.ops)));
  docSub.on('join', ({ info }) => { people.set(info.client, info.chanInfo.name); renderPeople(); });
  docSub.on('leave', ({ info }) => { people.delete(info.client); carets.delete(info.client); renderPeople(); renderCarets(); });
  docSub.on('error', ({ error }) => { $('join-error').textContent = error.message; });
  cursorSub.on('publication', ({ data, info }) => {
    if (info.client === client.id) return;
    carets.set(info.client, { name: info.chanInfo.name, after: data.after });
    renderCarets();
  });
  docSub.subscribe();
  cursorSub.subscribe();
  client.connect();
  $('doc-title').textContent = docName;
});

// (Re)start from the server's state, then our unconfirmed edits on top, then what arrived meanwhile.
async function load() {
  ready = false;
  buffered = [];
  const { data } = await client.rpc('editor.state', { doc: docName });
  const next = new Doc(data.elems);
  for (const op of pending) next.apply(op);
  const caret = caretIds();
  doc = next;
  for (const ops of buffered) for (const op of ops) doc.apply(op);
  buffered = [];
  ready = true;
  render(caret);
  $('editor').hidden = false;
  people.clear();
  for (const [id, info] of Object.entries(await docSub.presence())) people.set(id, info.chanInfo.name);
  renderPeople();
  sending = false;
  flush();
}

function applyRemote(ops) {
  const caret = caretIds();
  for (const op of ops) doc.apply(op);
  render(caret);
}

// Local edits: the difference between the document and the text area.
$('text').addEventListener('input', () => {
  pending.push(...doc.edit($('text').value, site));
  flush();
  sendCaret();
  renderCarets();
});

async function flush() {
  if (sending || !ready || !pending.length) return;
  sending = true;
  const batch = pending.slice();
  try {
    await client.rpc('editor.ops', { doc: docName, ops: batch });
    pending = pending.slice(batch.length);
    sending = false;
    flush();
  } catch {
    sending = false; // resent after the reconnect (load), or with the next edit
  }
}

// The caret as the ids of the characters before the selection's ends.
function caretIds() {
  const ids = doc.visible();
  const at = (pos) => (pos > 0 ? ids[pos - 1] : null);
  return [at($('text').selectionStart), at($('text').selectionEnd)];
}

function render([start, end]) {
  const focused = document.activeElement === $('text');
  $('text').value = doc.text();
  if (focused) $('text').setSelectionRange(doc.positionAfter(start), doc.positionAfter(end));
  renderCarets();
}

let caretTimer = null;
function sendCaret() {
  if (caretTimer) return;
  caretTimer = setTimeout(() => {
    caretTimer = null;
    if (ready && cursorSub.state === 'subscribed') cursorSub.publish({ after: caretIds()[1] }).catch(() => {});
  }, 100);
}
for (const ev of ['keyup', 'click', 'focus', 'select']) $('text').addEventListener(ev, sendCaret);
document.addEventListener('selectionchange', () => document.activeElement === $('text') && sendCaret());

// The others' carets, drawn in a copy of the text behind the (transparent) text area.
function renderCarets() {
  const text = doc.text();
  const marks = [...carets.values()]
    .map((c) => ({ ...c, pos: doc.positionAfter(c.after) }))
    .sort((a, b) => a.pos - b.pos);
  const parts = [];
  let at = 0;
  for (const m of marks) {
    parts.push(document.createTextNode(text.slice(at, m.pos)));
    const caret = document.createElement('span');
    caret.className = 'caret';
    caret.dataset.name = m.name;
    caret.style.setProperty('--c', colorOf(m.name));
    parts.push(caret);
    at = m.pos;
  }
  parts.push(document.createTextNode(text.slice(at) + '\n'));
  $('mirror').replaceChildren(...parts);
  $('mirror').scrollTop = $('text').scrollTop;
}
$('text').addEventListener('scroll', () => { $('mirror').scrollTop = $('text').scrollTop; });

function renderPeople() {
  $('count').textContent = people.size;
  $('people').replaceChildren(...[...people.values()].sort().map((n) => {
    const li = document.createElement('li');
    const dot = document.createElement('span');
    dot.className = 'dot';
    dot.style.background = colorOf(n);
    li.append(dot, n);
    return li;
  }));
}
