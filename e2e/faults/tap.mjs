// A wiretap on the broker, for investigating a failed run (`--tap`): what the nodes wrote, in
// the order the broker saw it, with the runner's clock.
//   redis: `MONITOR` (every command the server executes);
//   nats:  core subscriptions to the channel and history subjects and to the meta and
//          idempotency buckets' subjects: every publication, history append and key-value write
//          attempt (an attempt the stream refused, e.g. a failed compare-and-set, shows too), with
//          its headers.
// Reconnects while the broker is down. Lines: `<ms since the runner started> <text>`.

import { createWriteStream } from 'node:fs';
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export class Tap {
  constructor(kind, host, port, file, prefix) {
    this.kind = kind;
    this.prefix = prefix;
    this.host = host;
    this.port = port;
    this.out = createWriteStream(file);
    this.closed = false;
    this.connect();
  }

  write(text) {
    this.out.write(`${performance.now().toFixed(1)} ${text}\n`);
  }

  connect() {
    if (this.closed) return;
    const sock = net.connect({ host: this.host, port: this.port });
    this.sock = sock;
    let buf = Buffer.alloc(0);
    sock.on('connect', () => {
      this.write(`-- tap connected`);
      if (this.kind === 'redis') sock.write('MONITOR\r\n');
      else {
        const p = this.prefix;
        const subjects = [`${p}.c.>`, `${p}.h.>`, `$KV.${p}-meta.>`, `$KV.${p}-idem.>`];
        sock.write(
          'CONNECT {"verbose":false,"pedantic":false,"headers":true,"name":"faults-tap"}\r\n' +
            subjects.map((s, i) => `SUB ${s} ${i + 1}\r\n`).join(''),
        );
      }
    });
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      buf = this.kind === 'redis' ? this.redisLines(buf) : this.natsFrames(buf, sock);
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      if (this.closed) return;
      this.write('-- tap disconnected');
      setTimeout(() => this.connect(), 100);
    });
  }

  redisLines(buf) {
    let i;
    while ((i = buf.indexOf('\r\n')) >= 0) {
      const line = buf.subarray(0, i).toString();
      buf = buf.subarray(i + 2);
      if (line !== '+OK') this.write(line.startsWith('+') ? line.slice(1) : line);
    }
    return buf;
  }

  natsFrames(buf, sock) {
    for (;;) {
      const i = buf.indexOf('\r\n');
      if (i < 0) return buf;
      const head = buf.subarray(0, i).toString();
      if (head.startsWith('MSG ') || head.startsWith('HMSG ')) {
        const parts = head.split(' ');
        const size = Number(parts[parts.length - 1]);
        const hsize = head.startsWith('HMSG ') ? Number(parts[parts.length - 2]) : 0;
        if (buf.length < i + 2 + size + 2) return buf;
        const headers = buf
          .subarray(i + 2, i + 2 + hsize)
          .toString()
          .split('\r\n')
          .slice(1)
          .filter(Boolean)
          .join('; ');
        const payload = buf.subarray(i + 2 + hsize, i + 2 + size).toString();
        buf = buf.subarray(i + 2 + size + 2);
        const text = payload.length > 600 ? `${payload.slice(0, 600)}...` : payload;
        this.write(`${parts[1]}${headers ? ` [${headers}]` : ''} ${text}`);
        continue;
      }
      buf = buf.subarray(i + 2);
      if (head === 'PING') sock.write('PONG\r\n');
      else if (head.startsWith('-ERR')) this.write(head);
    }
  }

  close() {
    this.closed = true;
    this.sock?.destroy();
    this.out.end();
  }
}
