// Node socket.io peer for scripts/bench/compare: re-broadcasts every `bench` event to every
// other connected socket (`socket.broadcast.emit`). WebSocket transport only, no compression.
//
//   node socketio-broadcast.mjs PORT
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const port = Number(process.argv[2] || 8500);
const httpServer = createServer();
const io = new Server(httpServer, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
});

io.on('connection', (socket) => {
  socket.on('bench', (data) => {
    socket.broadcast.emit('bench', data);
  });
});
httpServer.listen(port, '127.0.0.1', () =>
  console.error(`socketio-broadcast listening on 127.0.0.1:${port}`),
);
