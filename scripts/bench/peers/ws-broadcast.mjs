// Node `ws` peer for scripts/bench/compare: broadcasts every text frame it receives to every
// other connected client (the `ws` README's "broadcast to everyone else" example).
//
//   node ws-broadcast.mjs PORT
import { WebSocketServer, WebSocket } from 'ws';

const port = Number(process.argv[2] || 8400);
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, clientTracking: true });

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    }
  });
});
wss.on('listening', () => console.error(`ws-broadcast listening on 127.0.0.1:${port}`));
