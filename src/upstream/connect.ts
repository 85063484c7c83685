/**
 * Opening a socket to the upstream PostgreSQL: TCP, or a Unix socket when the
 * host is a directory (as libpq reads PGHOST). Bounded by a connect timeout.
 */
import { connect, type Socket } from 'node:net';
import type { UpstreamTarget } from '../config/config.js';

export class UpstreamConnectError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = 'UpstreamConnectError';
  }
}

export function describeTarget(t: UpstreamTarget): string {
  return t.host.startsWith('/') ? `${t.host}/.s.PGSQL.${t.port}` : `${t.host}:${t.port}`;
}

export function connectUpstream(target: UpstreamTarget, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = target.host.startsWith('/')
      ? connect({ path: `${target.host}/.s.PGSQL.${target.port}` })
      : connect({ host: target.host, port: target.port });
    socket.setNoDelay(true);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        new UpstreamConnectError(
          `timed out after ${timeoutMs} ms connecting to ${describeTarget(target)}`,
          'ETIMEDOUT',
        ),
      );
    }, timeoutMs);
    const onError = (err: NodeJS.ErrnoException): void => {
      clearTimeout(timer);
      reject(
        new UpstreamConnectError(
          `${err.code ?? 'error'} connecting to ${describeTarget(target)}`,
          err.code ?? 'EUNKNOWN',
        ),
      );
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      resolve(socket);
    });
  });
}
