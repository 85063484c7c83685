/**
 * Reload with a config file: a real SIGHUP makes the running proxy read its
 * configuration again. Policy, limits and log level change for new statements
 * and connections while an open session goes on; an invalid file is refused
 * and the old configuration kept; settings a listener cannot change are kept
 * and reported.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { startCli } from '../helpers/cli-process.js';
import { testServer } from '../helpers/harness.js';

let dir: string;
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'pgro-reload-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('SIGHUP: a new policy, limit and log level apply to the open session and new connections; an invalid file keeps the old', async () => {
  const s = testServer();
  const config = path.join(dir, 'config.yaml');
  const write = (body: string): void => writeFileSync(config, `log:\n  level: info\n${body}`);
  write('');
  const cli = startCli(config);
  const client = (): pg.Client =>
    new pg.Client({ host: '127.0.0.1', port, user: s.user, password: s.password, database: 'postgres' });
  let port = 0;
  const open: pg.Client[] = [];
  try {
    const listening = await cli.line((l) => l.event === 'listening');
    port = Number(String(listening.listen).split(':').pop());
    const session = client();
    open.push(session);
    await session.connect();
    await assert.rejects(session.query('ANALYZE pg_class'), { code: '25006' });

    // A valid change: ANALYZE allowed, one connection at most, debug logging.
    write('policy:\n  allow_statements: [ANALYZE]\nlimits:\n  max_client_connections: 1\n');
    cli.child.kill('SIGHUP');
    await cli.line((l) => l.event === 'config_applied');
    await session.query('ANALYZE pg_class');
    const second = client();
    open.push(second);
    await assert.rejects(second.connect(), { code: '53300' });

    // An invalid file: refused, logged, the old configuration kept.
    write('policy:\n  alow_statements: []\n');
    cli.child.kill('SIGHUP');
    const failed = await cli.line((l) => l.event === 'reload_failed' && l.part === 'config');
    assert.match(String(failed.err), /policy\.alow_statements: unknown key/);
    await session.query('ANALYZE pg_class');
    assert.equal(cli.lines.filter((l) => l.event === 'config_applied').length, 1);

    // What a running listener cannot change is kept and reported.
    write('http:\n  listen: 127.0.0.1:1\npolicy:\n  allow_statements: [ANALYZE]\n');
    cli.child.kill('SIGHUP');
    const restart = await cli.line((l) => l.event === 'reload_needs_restart');
    assert.deepEqual(restart.settings, ['http']);
    assert.equal((await session.query('SELECT 1 AS x')).rows[0].x, 1);
  } finally {
    for (const c of open) await c.end().catch(() => undefined);
    cli.child.kill('SIGTERM');
    assert.equal(await cli.exited, 0, cli.stderr);
  }
});
