/**
 * The operations HTTP listener (node:http, off unless configured):
 *
 *   GET  /metrics        Prometheus text exposition
 *   GET  /healthz        200 "ok" while the process serves (liveness)
 *   GET  /readyz         200 / 503 with the readiness checks as JSON (readiness)
 *   POST /admin/reload   only when enabled, and only from a loopback address
 *
 * HEAD works wherever GET does. Any other path is 404, any other method 405.
 * Nothing here reads a request body, and nothing it answers holds a secret.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect as netConnect, isIPv4 } from 'node:net';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';

export interface ReadinessResult {
  ok: boolean;
  /** One entry per check: `true` passes; `false` or a string (why) fails. */
  checks: Record<string, boolean | string>;
}

export interface ReloadResult {
  ok: boolean;
  errors?: string[];
}

export interface HttpServerOptions {
  listen: { host: string; port: number };
  metrics: Pick<Metrics, 'metricsText' | 'contentType'>;
  ready: () => Promise<ReadinessResult>;
  /** POST /admin/reload: off unless enabled, and refused (403) from anything but a loopback address. */
  admin?: { enabled: boolean; reload: () => ReloadResult | Promise<ReloadResult> };
  logger: Logger;
  /** A readiness check slower than this answers 503. Default 5000 ms. */
  readyTimeoutMs?: number;
}

export interface HttpServerHandle {
  /** The bound address (port 0 resolved). */
  address: { host: string; port: number };
  /** Stops accepting, ends idle keep-alive connections, and the rest after a second. */
  close(): Promise<void>;
}

const GET_HEAD = 'GET, HEAD';

export async function startHttpServer(opts: HttpServerOptions): Promise<HttpServerHandle> {
  const log = opts.logger.child({ component: 'http' });
  const readyTimeoutMs = opts.readyTimeoutMs ?? 5000;

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      log.error({ event: 'http_error', path: pathOf(req), err: errorMessage(err) }, 'HTTP handler failed');
      if (!res.headersSent) send(res, req, 500, 'text/plain; charset=utf-8', 'internal error\n');
      else res.destroy();
    });
  });
  // An operations port: small, quick requests only.
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  server.keepAliveTimeout = 5_000;
  server.maxConnections = 64;
  server.on('clientError', (_err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Nothing here takes a body: drop whatever comes.
    req.resume();
    const path = pathOf(req);
    switch (path) {
      case '/metrics': {
        if (!allowMethod(req, res, GET_HEAD)) return;
        const text = await opts.metrics.metricsText();
        return send(res, req, 200, opts.metrics.contentType, text);
      }
      case '/healthz':
        if (!allowMethod(req, res, GET_HEAD)) return;
        return send(res, req, 200, 'text/plain; charset=utf-8', 'ok\n');
      case '/readyz': {
        if (!allowMethod(req, res, GET_HEAD)) return;
        const result = await readiness(opts.ready, readyTimeoutMs);
        const failing = Object.keys(result.checks).filter((k) => result.checks[k] !== true);
        const ok = result.ok && failing.length === 0;
        if (!ok) log.debug({ event: 'not_ready', failing }, 'readiness check failed');
        return sendJson(res, req, ok ? 200 : 503, {
          status: ok ? 'ready' : 'not_ready',
          checks: result.checks,
          ...(ok ? {} : { failing }),
        });
      }
      case '/admin/reload':
        return adminReload(req, res);
      default:
        return send(res, req, 404, 'text/plain; charset=utf-8', 'not found\n');
    }
  }

  async function adminReload(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const admin = opts.admin;
    if (!admin?.enabled) return send(res, req, 404, 'text/plain; charset=utf-8', 'not found\n');
    const remote = req.socket.remoteAddress;
    // Browsers send Origin (and Sec-Fetch-Site) with every POST: a web page
    // the operator has open must not reach this through localhost.
    if (
      !isLoopback(remote) ||
      req.headers.origin !== undefined ||
      req.headers['sec-fetch-site'] !== undefined
    ) {
      log.warn({ event: 'admin_refused', remote, origin: req.headers.origin }, 'admin request refused');
      return sendJson(res, req, 403, {
        ok: false,
        errors: ['the admin endpoint answers local requests only'],
      });
    }
    if (!allowMethod(req, res, 'POST')) return;
    log.info({ event: 'admin_reload', remote }, 'reload requested over HTTP');
    let result: ReloadResult;
    try {
      result = await admin.reload();
    } catch (err) {
      result = { ok: false, errors: [errorMessage(err)] };
    }
    return sendJson(res, req, result.ok ? 200 : 500, result);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.listen.port, opts.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ event: 'http_error', err: err.message }, 'HTTP listener error'));
  const addr = server.address();
  const address =
    typeof addr === 'object' && addr !== null
      ? { host: addr.address, port: addr.port }
      : { host: opts.listen.host, port: opts.listen.port };
  log.info(
    { event: 'http_listening', host: address.host, port: address.port, admin: opts.admin?.enabled ?? false },
    'serving /metrics, /healthz and /readyz',
  );

  let closing: Promise<void> | undefined;
  return {
    address,
    close() {
      closing ??= new Promise<void>((resolve) => {
        const force = setTimeout(() => server.closeAllConnections(), 1000);
        force.unref();
        server.close(() => {
          clearTimeout(force);
          resolve();
        });
        server.closeIdleConnections();
      });
      return closing;
    },
  };
}

/** The ready callback, bounded in time; a throw or a timeout is a failed check. */
async function readiness(ready: () => Promise<ReadinessResult>, timeoutMs: number): Promise<ReadinessResult> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<ReadinessResult>((resolve) => {
    timer = setTimeout(
      () => resolve({ ok: false, checks: { readiness: `no answer within ${timeoutMs} ms` } }),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([
      ready().catch((err: unknown) => ({ ok: false, checks: { readiness: errorMessage(err) } })),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function allowMethod(req: IncomingMessage, res: ServerResponse, allow: string): boolean {
  const method = req.method ?? '';
  if (allow.split(', ').includes(method)) return true;
  res.setHeader('Allow', allow);
  send(res, req, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
  return false;
}

function send(res: ServerResponse, req: IncomingMessage, status: number, type: string, body: string): void {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.end(req.method === 'HEAD' ? undefined : body);
}

function sendJson(res: ServerResponse, req: IncomingMessage, status: number, value: unknown): void {
  send(res, req, status, 'application/json; charset=utf-8', `${JSON.stringify(value)}\n`);
}

/** The request path without the query string. */
function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

/** 127.0.0.0/8, ::1, and IPv4-mapped 127.x addresses. */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice('::ffff:'.length) : address;
  if (isIPv4(v4)) return v4.startsWith('127.');
  return address === '::1';
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/* ------------------------------------------------------- helpers for ready() */

/**
 * Whether a TCP connection (or a Unix socket) opens within timeoutMs: `true`,
 * or why not. The connection is closed at once, before anything is sent
 * (PostgreSQL logs nothing for a connection that sends no bytes).
 */
export function probeTcp(
  target: { host: string; port: number } | { path: string },
  timeoutMs: number,
): Promise<true | string> {
  return new Promise((resolve) => {
    const socket = 'path' in target ? netConnect(target.path) : netConnect(target.port, target.host);
    const done = (result: true | string): void => {
      clearTimeout(timer);
      socket.removeAllListeners();
      socket.on('error', () => undefined);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => done(`no connection within ${timeoutMs} ms`), timeoutMs);
    socket.once('connect', () => done(true));
    socket.once('error', (err) => done(err.message));
  });
}

/**
 * Wraps a readiness function so probes share one answer for ttlMs (and
 * concurrent probes share one call): a probe every second from several
 * kubelets opens at most one upstream connection per ttlMs.
 */
export function cacheReadiness(
  ready: () => Promise<ReadinessResult>,
  ttlMs: number,
): () => Promise<ReadinessResult> {
  let last: { at: number; result: Promise<ReadinessResult> } | undefined;
  return () => {
    const now = Date.now();
    if (last === undefined || now - last.at >= ttlMs) {
      const result = ready().catch((err: unknown): ReadinessResult => ({
        ok: false,
        checks: { readiness: errorMessage(err) },
      }));
      last = { at: now, result };
    }
    return last.result;
  };
}
