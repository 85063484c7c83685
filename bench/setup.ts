/**
 * What the benchmark needs before it measures anything: pgbench and pgbouncer
 * (found, or installed from Debian's packages), a current build of the proxy,
 * and a PostgreSQL with the pgbench tables and a table to stream.
 */
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import pg from 'pg';
import { startEmbedded, type EmbeddedServer } from '../src/embedded/embedded.js';
import type { Logger } from '../src/observability/logger.js';
import { run, runOk } from './exec.js';

export const ROOT = path.resolve(import.meta.dirname, '..');

export type Say = (line: string) => void;

/** The first executable `name` on PATH or in `dirs`. */
export function which(name: string, dirs: string[] = []): string | undefined {
  const pathDirs = (process.env.PATH ?? '').split(':').filter(Boolean);
  for (const dir of [...pathDirs, ...dirs]) {
    const file = path.join(dir, name);
    try {
      if (statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

const isRoot = process.getuid?.() === 0;
const APT_ENV = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };

/** The directories .ci/run unpacks PostgreSQL's server package into. */
function ciPgbenchDirs(): string[] {
  const base = '/opt/pg-readonly-proxy-ci';
  const out: string[] = [];
  if (!existsSync(base)) return out;
  for (const pkg of readdirSync(base)) {
    const lib = path.join(base, pkg, 'usr/lib/postgresql');
    if (!existsSync(lib)) continue;
    for (const major of readdirSync(lib)) out.push(path.join(lib, major, 'bin'));
  }
  return out;
}

/**
 * pgbench: on PATH, or where .ci/run unpacks it; missing, it is unpacked the
 * same way (Debian's postgresql-<major> package, extracted, not installed, so
 * no cluster is created or started).
 */
export async function findPgbench(say: Say): Promise<string> {
  const found = which('pgbench', ciPgbenchDirs());
  if (found) return found;
  if (!isRoot) throw new Error('pgbench is not installed (Debian: postgresql-client and postgresql-<major>)');
  if (!which('psql')) {
    say('installing postgresql-client (for pgbench)');
    await runOk('apt-get', ['update', '-qq'], { env: APT_ENV });
    await runOk('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'postgresql-client'], {
      env: APT_ENV,
    });
  }
  const version = await runOk('psql', ['--version']);
  const major = /(\d+)/.exec(version)?.[1];
  if (!major) throw new Error(`cannot tell psql's major version from "${version.trim()}"`);
  const dir = `/opt/pg-readonly-proxy-ci/postgresql-${major}`;
  say(`unpacking pgbench from postgresql-${major} into ${dir}`);
  await runOk(
    'sh',
    [
      '-c',
      `mkdir -p "${dir}" && cd /tmp && apt-get download -qq "postgresql-${major}" && dpkg -x postgresql-"${major}"_*.deb "${dir}" && rm -f postgresql-"${major}"_*.deb`,
    ],
    { env: APT_ENV },
  );
  const bin = path.join(dir, 'usr/lib/postgresql', major, 'bin', 'pgbench');
  if (!existsSync(bin)) throw new Error(`pgbench not found in ${dir} after unpacking`);
  return bin;
}

/**
 * pgbouncer: on PATH (or /usr/sbin), or installed with apt-get. The package's
 * own service must not start (it would listen on 6432): while it installs, a
 * policy-rc.d that refuses every service start is put in place, if the system
 * has none already (Docker images usually do), and removed afterwards.
 */
export async function findPgbouncer(say: Say): Promise<string> {
  const found = which('pgbouncer', ['/usr/sbin', '/usr/local/sbin']);
  if (found) return found;
  if (!isRoot) throw new Error('pgbouncer is not installed (Debian: apt-get install pgbouncer)');
  say('installing pgbouncer (apt-get), with service starts disabled');
  const policy = '/usr/sbin/policy-rc.d';
  const ours = !existsSync(policy);
  if (ours)
    writeFileSync(policy, '#!/bin/sh\n# pg-readonly-proxy bench: no service starts\nexit 101\n', {
      mode: 0o755,
    });
  try {
    await runOk('apt-get', ['update', '-qq'], { env: APT_ENV });
    await runOk('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'pgbouncer'], {
      env: APT_ENV,
    });
  } finally {
    if (ours) rmSync(policy, { force: true });
  }
  const installed = which('pgbouncer', ['/usr/sbin']);
  if (!installed) throw new Error('pgbouncer is still missing after apt-get install');
  return installed;
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const m = statSync(path.join(entry.parentPath, entry.name)).mtimeMs;
    if (m > newest) newest = m;
  }
  return newest;
}

/** Builds dist/ when it is missing or older than src/ (or the build's config). */
export async function ensureBuild(build: boolean, say: Say): Promise<void> {
  const cli = path.join(ROOT, 'dist', 'cli.js');
  const built = existsSync(cli) ? statSync(cli).mtimeMs : 0;
  const sources = Math.max(
    newestMtime(path.join(ROOT, 'src')),
    statSync(path.join(ROOT, 'package.json')).mtimeMs,
    statSync(path.join(ROOT, 'tsconfig.build.json')).mtimeMs,
  );
  if (built >= sources) return;
  if (!build) {
    if (!built) throw new Error('dist/cli.js is missing: run npm run build (or leave out --no-build)');
    say('dist/ is older than src/; using it anyway (--no-build)');
    return;
  }
  say(built ? 'dist/ is older than src/: npm run build' : 'dist/ is missing: npm run build');
  await runOk('npm', ['run', 'build', '--silent'], { cwd: ROOT });
}

export interface Database {
  server: EmbeddedServer;
  host: string;
  port: number;
  /** The role every target logs in as (pgbench and the stream client). */
  user: string;
  password: string;
  database: string;
  /** The role's SCRAM verifier, from pg_authid (for pgbouncer's auth_file). */
  verifier: string;
  version: string;
  streamTable: string;
}

export const STREAM_TABLE = 'bench_stream';

/**
 * An embedded PostgreSQL 18 (SCRAM logins) in `dir`, with a role and database
 * of their own, pgbench's tables at `scale` and a table of `rows` rows to stream.
 */
export async function startDatabase(opts: {
  dir: string;
  logger: Logger;
  scale: number;
  rows: number;
  pgbench: string;
  say: Say;
}): Promise<Database> {
  const { say } = opts;
  say('starting PostgreSQL 18 (embedded)');
  const server = await startEmbedded({
    dataDir: path.join(opts.dir, 'data'),
    port: 0,
    logger: opts.logger,
    major: 18,
    postgresFlags: [
      '-c',
      'max_connections=300',
      '-c',
      'shared_buffers=512MB',
      // Nothing is written after the setup: fsync only slows the setup down.
      '-c',
      'fsync=off',
      '-c',
      'synchronous_commit=off',
    ],
  });
  const user = 'bench';
  const database = 'bench';
  const password = randomBytes(18).toString('base64url');
  const admin = new pg.Client({
    host: server.host,
    port: server.port,
    user: server.superuser.user,
    password: server.superuser.password,
    database: 'postgres',
  });
  let verifier: string;
  let version: string;
  try {
    await admin.connect();
    await admin.query(`CREATE ROLE ${user} LOGIN PASSWORD '${password}'`);
    await admin.query(`CREATE DATABASE ${database} OWNER ${user}`);
    const r = await admin.query<{ rolpassword: string }>(
      'SELECT rolpassword FROM pg_authid WHERE rolname = $1',
      [user],
    );
    verifier = r.rows[0]!.rolpassword;
    if (!verifier.startsWith('SCRAM-SHA-256$')) throw new Error('the role has no SCRAM verifier');
    version = (await admin.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v;
  } finally {
    await admin.end();
  }

  say(`pgbench -i -s ${opts.scale}`);
  const started = Date.now();
  await runOk(
    opts.pgbench,
    [
      '-i',
      '-q',
      '-s',
      String(opts.scale),
      '-I',
      'dtGvp',
      '-h',
      server.host,
      '-p',
      String(server.port),
      '-U',
      user,
      database,
    ],
    { env: { ...process.env, PGPASSWORD: password, PGSSLMODE: 'disable' } },
  );
  say(`  ${((Date.now() - started) / 1000).toFixed(1)} s`);

  say(`${STREAM_TABLE}: ${opts.rows} rows`);
  const c = new pg.Client({ host: server.host, port: server.port, user, password, database });
  await c.connect();
  try {
    // A mix of types, about 90 bytes per row in text.
    await c.query(`DROP TABLE IF EXISTS ${STREAM_TABLE}`);
    await c.query(
      `CREATE TABLE ${STREAM_TABLE} AS
         SELECT g AS id, md5(g::text) AS digest, (g * 1.25)::numeric(12, 2) AS amount,
                timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS at,
                'row ' || g AS label
           FROM generate_series(1, ${opts.rows}) AS g`,
    );
    await c.query(`VACUUM ANALYZE ${STREAM_TABLE}`);
    // Read it once so every target starts from the same cache.
    await c.query(`SELECT count(*) FROM ${STREAM_TABLE}`);
  } finally {
    await c.end();
  }
  return {
    server,
    host: server.host,
    port: server.port,
    user,
    password,
    database,
    verifier,
    version,
    streamTable: STREAM_TABLE,
  };
}

/**
 * The Node.js flags `npm start` runs the proxy with (package.json's start
 * script, `node <flags> dist/cli.js`), so the benchmark runs it the same way.
 */
export function startNodeFlags(): string[] {
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
    scripts?: Record<string, string>;
  };
  const m = /^node\s+(.*?)\s*dist\/cli\.js\b/.exec(pkg.scripts?.start ?? '');
  return m ? m[1]!.split(/\s+/).filter((a) => a.startsWith('-')) : [];
}

/** The program's version line (pgbench --version, pgbouncer --version). */
export async function versionOf(program: string): Promise<string> {
  const r = await run(program, ['--version']);
  return (r.stdout || r.stderr).split('\n')[0]!.trim();
}
