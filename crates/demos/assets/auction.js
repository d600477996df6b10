// Live auction demo: the lot's state comes with the subscription (the server's subscribe reply
// data, again after each reconnect); bids are RPC calls checked on the server (too low, too late,
// closed: crates/demos/src/auction.rs), which publishes every accepted bid and the result.
import { Client } from '/js/switchboard.js';
import { param, showConnection } from '/demos/assets/common.js';

const $ = (id) => document.getElementById(id);
const lotId = param('lot', 'main');
let lot = null;
let offset = 0; // server clock minus ours, in ms

$('nick').value = param('nick', localStorage.getItem('demo-nick') || '');

const client = new Client(location.origin, { name: 'demo-auction' });
showConnection(client);
// A new lot's first round lasts ?seconds= (default 60).
const sub = client.newSubscription(`demo-auction:${lotId}`, { data: { seconds: Number(param('seconds', '60')) } });
sub.on('subscribed', (ctx) => { show(ctx.data); refreshWatching(); });
sub.on('publication', ({ data }) => {
  show(data.lot);
  if (data.type === 'bid') logBid(data.lot);
  if (data.type === 'started') $('bids').replaceChildren();
});
sub.subscribe();
client.connect();

function show(next) {
  lot = next;
  offset = lot.now - Date.now();
  $('round').textContent = `Lot “${lotId}”, round ${lot.round + 1}`;
  $('item').textContent = lot.item;
  $('price').textContent = `$${lot.price}`;
  $('leader').textContent = lot.leader || 'no bids yet';
  // No `min` on the field: the server is the judge (and says why).
  $('amount').placeholder = `${lot.price + 5} or more`;
  if (!$('amount').value || Number($('amount').value) <= lot.price) $('amount').value = lot.price + 5;
  $('result').textContent = lot.closed
    ? (lot.leader ? `Sold to ${lot.leader} for $${lot.price}!` : 'Closed without bids.')
    : '';
  $('restart').hidden = !lot.closed;
  tick();
}

function tick() {
  if (!lot) return;
  const left = Math.max(0, lot.ends_at - (Date.now() + offset));
  const s = Math.ceil(left / 1000);
  $('countdown').textContent = lot.closed || left === 0 ? 'ended' : `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
  $('countdown').classList.toggle('ending', !lot.closed && left < 10000);
}
setInterval(tick, 250);

function logBid(l) {
  const li = document.createElement('li');
  li.textContent = `$${l.price} by ${l.leader}`;
  $('bids').prepend(li);
  while ($('bids').children.length > 20) $('bids').lastChild.remove();
}

async function refreshWatching() {
  try {
    $('watching').textContent = (await sub.presenceStats()).numClients;
  } catch { /* presence is a nicety */ }
}
setInterval(refreshWatching, 5000);

$('bid').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('bid-error').textContent = '';
  const nick = $('nick').value.trim();
  localStorage.setItem('demo-nick', nick);
  try {
    // The server decides: too low, too late or closed come back as errors with a reason.
    await client.rpc('auction.bid', { lot: lotId, nick, amount: Number($('amount').value) });
  } catch (err) {
    $('bid-error').textContent = `Bid refused: ${err.message}`;
  }
});

$('restart').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('bid-error').textContent = '';
  try {
    await client.rpc('auction.start', { lot: lotId, seconds: Number($('seconds').value) });
  } catch (err) {
    $('bid-error').textContent = err.message;
  }
});
