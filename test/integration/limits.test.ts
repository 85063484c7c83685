/**
 * Limits: sessions per user, and the idle-client timeout (PostgreSQL's
 * idle_session_timeout, 57P05), each reported with a clear error.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { direct, eventually, startProxy } from '../helpers/harness.js';

const OTHER = 'limits_other_user';
const OTHER_PASSWORD = 'limits-Other-7';

before(async () => {
  const d = await direct();
  await d.query(`DROP ROLE IF EXISTS ${OTHER}`);
  await d.query(`CREATE ROLE ${OTHER} LOGIN PASSWORD '${OTHER_PASSWORD}'`);
  await d.end();
});
after(async () => {
  const d = await direct();
  await d.query(`DROP ROLE IF EXISTS ${OTHER}`);
  await d.end();
});

test('max_connections_per_user: the next session of that user gets 53300; other users and later sessions are fine', async () => {
  const proxy = await startProxy({ config: { maxConnectionsPerUser: 1 } });
  const open: pg.Client[] = [];
  try {
    const first = await proxy.client();
    open.push(first);
    await assert.rejects(proxy.client(), (err: pg.DatabaseError) => {
      assert.equal(err.code, '53300');
      assert.match(err.message, /too many connections for role/);
      return true;
    });
    const other = await proxy.client({ user: OTHER, password: OTHER_PASSWORD });
    open.push(other);
    assert.equal((await other.query('SELECT 1 AS n')).rows[0].n, 1);
    assert.equal((await first.query('SELECT 2 AS n')).rows[0].n, 2, 'the first session is untouched');
    await first.end();
    open.shift();
    await eventually(() => proxy.server.activeSessions === 1, 5000, 'the first session to close');
    const again = await proxy.client();
    open.push(again);
    assert.equal((await again.query('SELECT 3 AS n')).rows[0].n, 3);
    assert.ok(proxy.logs.some((l) => l.event === 'connection_limit' && l.limit === 1));
  } finally {
    for (const c of open) await c.end().catch(() => undefined);
    await proxy.close();
  }
});

test('idle_client_timeout_ms: an idle session is ended with 57P05; one inside a transaction is not', async () => {
  const proxy = await startProxy({ config: { idleClientTimeoutMs: 300 } });
  try {
    const idle = await proxy.client();
    const ended = new Promise<Error>((resolve) => idle.on('error', resolve));
    await idle.query('SELECT 1');
    const err = (await ended) as pg.DatabaseError;
    assert.equal(err.code, '57P05');
    assert.match(err.message, /idle-session timeout/);

    const busy = await proxy.client();
    await busy.query('BEGIN');
    await new Promise((r) => setTimeout(r, 700));
    assert.equal((await busy.query('SELECT 4 AS n')).rows[0].n, 4, 'a session in a transaction is not cut');
    await busy.query('COMMIT');
    await busy.end();
  } finally {
    await proxy.close();
  }
});
