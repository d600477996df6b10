// Compiled (not run) by `npm run typecheck`: the published declarations type an application's
// code, strictly, as documented in docs/SDK.md.
import { Client, ErrorCode, SwitchboardError, type Publication, type SubscribedContext } from '../dist/switchboard.js';

const client = new Client('http://localhost:8000', {
  getToken: async () => 'token',
  transports: ['websocket', 'sse'],
  timeout: 3000,
});
const sub = client.newSubscription('chat:lobby', { recoverable: true, joinLeave: true });
const off: () => void = sub.on('publication', (p: Publication) => console.log(p.channel, p.data, p.offset));
sub.on('subscribed', (ctx: SubscribedContext) => {
  if (ctx.wasRecovering && !ctx.recovered) console.log('reload');
});
sub.on('join', (j) => console.log(j.info.user));
client.on('state', ({ newState }) => console.log(newState satisfies 'disconnected' | 'connecting' | 'connected'));
client.on('disconnected', ({ code, reason }) => console.log(code + 1, reason.length));
sub.subscribe();
client.connect();
async function main(): Promise<void> {
  try {
    const { data } = await client.rpc('sum', [1, 2]);
    const history = await sub.history({ limit: 10, reverse: true });
    const stats = await client.presenceStats('chat:lobby');
    console.log(data, history.publications.length, history.epoch, stats.numClients);
  } catch (e) {
    if (e instanceof SwitchboardError && e.code === ErrorCode.Timeout) console.log(e.temporary);
  }
  off();
}
void main();
