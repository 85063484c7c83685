/**
 * Test helpers: the real PostgreSQL started by scripts/run-tests.ts, and a proxy
 * started in-process in front of it, with its log lines captured for assertions.
 */
import { Writable } from 'node:stream';
import pg from 'pg';
import { resolveConfig, type ProxyConfig } from '../../src/config/config.js';
import { createLogger } from '../../src/observability/logger.js';
import { createPolicy, loadParser, type PolicyOptions } from '../../src/policy/index.js';
import { ProxyServer } from '../../src/server.js';

export interface TestServer {
  host: string;
  port: number;
  user: string;
  password: string;
}

export function testServer(): TestServer {
  const { TEST_PG_HOST, TEST_PG_PORT, TEST_PG_USER, TEST_PG_PASSWORD } = process.env;
  if (!TEST_PG_HOST || !TEST_PG_PORT || !TEST_PG_USER || TEST_PG_PASSWORD === undefined) {
    throw new Error('integration tests run through scripts/run-tests.ts (npm run test:integration)');
  }
  return { host: TEST_PG_HOST, port: Number(TEST_PG_PORT), user: TEST_PG_USER, password: TEST_PG_PASSWORD };
}

/** A client straight to the server, as the superuser unless told otherwise. */
export async function direct(opts: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  const s = testServer();
  const c = new pg.Client({
    host: s.host,
    port: s.port,
    user: s.user,
    password: s.password,
    database: 'postgres',
    ...opts,
  });
  await c.connect();
  return c;
}

export interface RunningProxy {
  host: string;
  port: number;
  server: ProxyServer;
  /** Every log line the proxy wrote, parsed. */
  logs: Array<Record<string, unknown>>;
  /** A node-postgres client through the proxy (superuser credentials unless told otherwise). */
  client(opts?: Partial<pg.ClientConfig>): Promise<pg.Client>;
  /** libpq-style connection URL through the proxy, for psql. */
  url(opts?: { user?: string; password?: string; database?: string; params?: string }): string;
  close(): Promise<void>;
}

export async function startProxy(
  opts: { policy?: Partial<PolicyOptions>; config?: Partial<ProxyConfig>; upstreamPort?: number } = {},
): Promise<RunningProxy> {
  await loadParser();
  const s = testServer();
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n'))
        if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const logger = createLogger('debug', sink);
  const config: ProxyConfig = {
    ...resolveConfig(
      {},
      { listen: '127.0.0.1:0', upstream: `postgres://${s.host}:${opts.upstreamPort ?? s.port}` },
      {},
    ),
    ...opts.config,
  };
  const server = new ProxyServer({
    config,
    upstream: config.upstream!,
    policy: createPolicy(opts.policy),
    logger,
  });
  const addr = await server.listen();
  return {
    host: addr.host,
    port: addr.port,
    server,
    logs,
    async client(c = {}) {
      const client = new pg.Client({
        host: addr.host,
        port: addr.port,
        user: s.user,
        password: s.password,
        database: 'postgres',
        ...c,
      });
      await client.connect();
      return client;
    },
    url(u = {}) {
      const user = encodeURIComponent(u.user ?? s.user);
      const password = encodeURIComponent(u.password ?? s.password);
      return `postgresql://${user}:${password}@${addr.host}:${addr.port}/${u.database ?? 'postgres'}${u.params ? `?${u.params}` : ''}`;
    },
    close: () => server.shutdown(500),
  };
}

/** Resolves once `predicate` holds, polling; rejects after timeoutMs. */
export async function eventually(
  predicate: () => boolean,
  timeoutMs = 5000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves once a query with exactly this text is running upstream (so a cancel has something to hit). */
export async function whenRunning(text: string): Promise<void> {
  const d = await direct();
  try {
    const deadline = Date.now() + 5000;
    for (;;) {
      const r = await d.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
        [text],
      );
      if ((r.rows[0] as { n: number }).n > 0) return;
      if (Date.now() > deadline) throw new Error(`"${text}" never started`);
      await new Promise((r) => setTimeout(r, 10));
    }
  } finally {
    await d.end();
  }
}

/** Runs `fn` with a superuser client straight to `database`, closing it after. */
export async function withDb<T>(database: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = await direct({ database });
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Drops and creates an empty database of this name (a test file's own). */
export async function freshDatabase(name: string): Promise<void> {
  await withDb('postgres', async (c) => {
    await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await c.query(`CREATE DATABASE ${name}`);
  });
}
