// Node socket.io peer for scripts/bench/compare. It implements the two built-in events of
// Switchboard's standalone Socket.IO semantics (docs/SOCKETIO.md) the same way, so that one
// client load (switchboard-bench --target socketio) drives both servers with byte-identical
// traffic:
//   emit('join', room, ack)                     -> socket.join(room); ack({})
//   emit('broadcast', room, event, ...args)     -> socket.to(room).emit(event, ...args)
// WebSocket transport only, no compression.
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
  socket.on('join', (room, ack) => {
    socket.join(String(room));
    if (typeof ack === 'function') ack({});
  });
  socket.on('broadcast', (room, event, ...args) => {
    socket.to(String(room)).emit(String(event), ...args);
  });
});
httpServer.listen(port, '127.0.0.1', () =>
  console.error(`socketio-broadcast listening on 127.0.0.1:${port}`),
);
