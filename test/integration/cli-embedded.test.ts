/**
 * The README's contract: with no upstream configured, the proxy starts the
 * embedded PostgreSQL with demo data, prints how to connect, serves reads,
 * refuses writes, and Ctrl-C (SIGINT) stops both.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';

test('npm start with no upstream: embedded PostgreSQL, demo data, banner, reads ok, writes refused, SIGINT stops both', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'pgro-embedded-'));
  chmodSync(dir, 0o755);
  const config = path.join(dir, 'config.yaml');
  writeFileSync(
    config,
    `listen: 127.0.0.1:0\nembedded:\n  data_dir: ${path.join(dir, 'data')}\nlog:\n  level: warn\n`,
  );
  const env = { ...process.env };
  delete env.PGHOST;
  delete env.PGPORT;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', '--config', config], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  child.stdout.resume();
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no banner within 60 s; stderr: ${stderr}`)), 60000);
      const onData = (): void => {
        const m = /psql "(postgresql:\/\/[^"]+)"/.exec(stderr);
        if (m) {
          clearTimeout(timer);
          child.stderr.off('data', onData);
          resolve(m[1]!);
        }
      };
      child.stderr.on('data', onData);
      child.on('exit', () => reject(new Error(`exited early; stderr: ${stderr}`)));
    });
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    const r = await client.query('SELECT count(*)::int AS n FROM customers');
    assert.equal(r.rows[0].n, 200);
    await assert.rejects(client.query('DELETE FROM orders'), (err: Error & { code?: string }) => {
      assert.equal(err.code, '25006');
      assert.match(err.message, /^pg-readonly-proxy: DELETE is not allowed/);
      return true;
    });
    const orders = await client.query('SELECT count(*)::int AS n FROM orders');
    assert.equal(orders.rows[0].n, 1000);
    await client.end();

    const pidFile = path.join(dir, 'data', 'postmaster.pid');
    assert.ok(existsSync(pidFile), 'the embedded postmaster is running');
    const postmaster = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
    child.kill('SIGINT');
    const code = await exited;
    assert.equal(code, 0, stderr);
    assert.throws(() => process.kill(postmaster, 0), 'the embedded postmaster stopped with the proxy');
  } finally {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
