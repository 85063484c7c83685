/**
 * A TCP relay in front of the shared test server, for tests that must see what
 * the proxy sends upstream: each connection is piped through, and `onConnection`
 * may watch both sockets.
 */
import { connect, createServer, type Socket } from 'node:net';
import { testServer } from './harness.js';

export interface Relay {
  port: number;
  close(): Promise<void>;
}

export async function startRelay(onConnection: (inbound: Socket, outbound: Socket) => void): Promise<Relay> {
  const s = testServer();
  const sockets = new Set<Socket>();
  const server = createServer((inbound) => {
    const outbound = connect({ host: s.host, port: s.port });
    for (const sock of [inbound, outbound]) {
      sockets.add(sock);
      sock.on('error', () => {
        inbound.destroy();
        outbound.destroy();
      });
      sock.on('close', () => sockets.delete(sock));
    }
    onConnection(inbound, outbound);
    inbound.pipe(outbound).pipe(inbound);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    close: async () => {
      for (const sock of sockets) sock.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
