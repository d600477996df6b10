// Live dashboard demo: readings published by the server at a configurable rate, drawn on canvas;
// messages per second and end-to-end latency (server send time to this page) as seen here.
import { Client } from '/js/switchboard.js';
import { showConnection } from '/demos/assets/common.js';

const $ = (id) => document.getElementById(id);
const SERIES = {
  temperature: { color: '#c2410c', unit: ' °C', min: 15, max: 30 },
  humidity: { color: '#1d4ed8', unit: ' %', min: 20, max: 80 },
  load: { color: '#15803d', unit: '', min: 0, max: 1 },
};
const POINTS = 200;
const data = Object.fromEntries(Object.keys(SERIES).map((k) => [k, []]));
const latencies = [];
const arrivals = []; // arrival times within the last second
let received = 0;

const client = new Client(location.origin, { name: 'demo-dashboard' });
showConnection(client);
const sub = client.newSubscription('demo-dashboard:sensors');
sub.on('subscribed', (ctx) => { $('rate').textContent = ctx.data?.rate ?? '?'; });
sub.on('publication', ({ data: r }) => {
  const now = Date.now();
  received += 1;
  arrivals.push(now);
  latencies.push(Math.max(0, now - r.t));
  if (latencies.length > 100) latencies.shift();
  for (const k of Object.keys(SERIES)) {
    data[k].push(r[k]);
    if (data[k].length > POINTS) data[k].shift();
  }
});
sub.subscribe();
client.connect();

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

function draw(key) {
  const { color, unit, min, max } = SERIES[key];
  const canvas = $(`c-${key}`);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  g.strokeStyle = '#e3e6ee';
  g.lineWidth = 1;
  for (let i = 1; i < 4; i++) { g.beginPath(); g.moveTo(0, (h * i) / 4); g.lineTo(w, (h * i) / 4); g.stroke(); }
  const values = data[key];
  if (values.length < 2) return;
  g.strokeStyle = color;
  g.lineWidth = 2;
  g.beginPath();
  values.forEach((v, i) => {
    const x = (i / (POINTS - 1)) * w;
    const y = h - ((v - min) / (max - min)) * (h - 8) - 4;
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
  $(`v-${key}`).textContent = `${values[values.length - 1]}${unit}`;
}

function frame() {
  const now = Date.now();
  while (arrivals.length && arrivals[0] <= now - 1000) arrivals.shift();
  $('mps').textContent = arrivals.length;
  $('received').textContent = received;
  const p50 = percentile(latencies, 0.5), p95 = percentile(latencies, 0.95);
  $('latency').textContent = p50 === null ? '–' : `${p50} ms`;
  $('p95').textContent = p95 === null ? '–' : `${p95} ms`;
  for (const k of Object.keys(SERIES)) draw(k);
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);
