/**
 * Limits: sessions per user, and the idle-client timeout (PostgreSQL's
 * idle_session_timeout, 57P05), each reported with a clear error.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { direct, eventually, startProxy, testServer } from '../helpers/harness.js';
import { WireClient, errorFields, fe, label, type BackendMessage } from '../helpers/wire.js';

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

/** A raw protocol client through the proxy, logged in as the test superuser. */
function wireTo(proxy: { host: string; port: number }): Promise<WireClient> {
  const s = testServer();
  return WireClient.connect({ host: proxy.host, port: proxy.port, user: s.user, password: s.password });
}

/** Every message up to ReadyForQuery for one simple query, over a raw connection. */
async function simpleQuery(proxy: { host: string; port: number }, sql: string): Promise<BackendMessage[]> {
  const c = await wireTo(proxy);
  try {
    c.write(fe.query(sql));
    const out: BackendMessage[] = [];
    for (;;) {
      const m = await c.next();
      if (m.code === 'closed') return out;
      out.push(m);
      if (label(m).startsWith('ReadyForQuery')) {
        // The same connection still answers.
        c.write(fe.query('SELECT 1'));
        for (;;) {
          const n = await c.next();
          if (n.code === 'closed' || label(n).startsWith('ReadyForQuery')) break;
          if (label(n) === 'DataRow') out.push({ ...n, code: 'after' } as BackendMessage);
        }
        return out;
      }
    }
  } finally {
    c.destroy();
  }
}

test('max_result_rows / max_result_bytes: the query is cancelled, the client gets at most the limit and 54000 naming it', async () => {
  const proxy = await startProxy({ config: { maxResultRows: 5, maxResultBytes: 20_000 } });
  try {
    const cases: Array<[string, string, RegExp, number]> = [
      ['rows', 'SELECT g FROM generate_series(1, 1000000) g', /max_result_rows \(5\)/, 5],
      ['bytes', "SELECT repeat('x', 6000) FROM generate_series(1, 5)", /max_result_bytes \(20000 bytes\)/, 3],
      [
        'COPY rows',
        'COPY (SELECT g FROM generate_series(1, 1000000) g) TO STDOUT',
        /max_result_rows \(5\)/,
        5,
      ],
    ];
    for (const [name, sql, why, most] of cases) {
      const got = await simpleQuery(proxy, sql);
      const rows = got.filter((m) => label(m) === 'DataRow' || label(m) === 'CopyData').length;
      assert.ok(rows <= most, `${name}: ${rows} rows reached the client`);
      const err = got.find((m) => label(m).startsWith('ErrorResponse'));
      assert.ok(err, `${name}: ${got.map(label).join(', ')}`);
      assert.equal(errorFields(err).C, '54000');
      assert.match(errorFields(err).M ?? '', why);
      assert.equal(got.filter((m) => label(m).startsWith('ErrorResponse')).length, 1, `${name}: one error`);
      assert.ok(
        got.some((m) => (m.code as string) === 'after'),
        `${name}: the session still answers`,
      );
    }
    // Counted as an error of its own kind, once per cancelled query.
    const text = await proxy.server.metrics.metricsText();
    assert.match(text, /^pgro_errors_total\{kind="result_limit"\} 3$/m);
    // A result within the limits is untouched.
    const small = await simpleQuery(proxy, 'SELECT g FROM generate_series(1, 5) g');
    assert.equal(small.filter((m) => label(m) === 'DataRow').length, 5);
    assert.ok(!small.some((m) => label(m).startsWith('ErrorResponse')));
  } finally {
    await proxy.close();
  }
});

test('the idle timer does not fire while a pipelined query runs', async () => {
  const proxy = await startProxy({ config: { idleClientTimeoutMs: 400 } });
  const c = await wireTo(proxy);
  try {
    c.write(fe.query('SELECT 1'), fe.query('SELECT pg_sleep(1.2)'));
    const got: string[] = [];
    while (got.filter((l) => l.startsWith('ReadyForQuery')).length < 2) {
      const m = await c.next();
      if (m.code === 'closed') break;
      got.push(label(m));
    }
    assert.ok(!got.some((l) => l.startsWith('ErrorResponse')), got.join(', '));
    assert.equal(got.filter((l) => l.startsWith('ReadyForQuery')).length, 2, got.join(', '));
  } finally {
    c.destroy();
    await proxy.close();
  }
});

test('a result limit hit by an Execute answered before any Sync (a cursor with Flush) gets its 54000 at once', async () => {
  const proxy = await startProxy({ config: { maxResultRows: 5 } });
  const c = await wireTo(proxy);
  try {
    c.write(
      fe.parse('', 'SELECT g FROM generate_series(1, 100) g'),
      fe.bind('', ''),
      fe.execute('', 10),
      fe.flush(),
    );
    const got: BackendMessage[] = [];
    for (;;) {
      const m = await c.next();
      if (m.code === 'closed') break;
      got.push(m);
      if (label(m).startsWith('ErrorResponse')) break;
    }
    const err = got.at(-1)!;
    assert.equal(errorFields(err).C, '54000', got.map(label).join(', '));
    assert.ok(got.filter((m) => label(m) === 'DataRow').length <= 5);
    c.write(fe.sync());
    const rest: string[] = [];
    for (;;) {
      const m = await c.next();
      if (m.code === 'closed') break;
      rest.push(label(m));
      if (label(m).startsWith('ReadyForQuery')) break;
    }
    assert.deepEqual(rest, ['ReadyForQuery I'], 'one error only');
  } finally {
    c.destroy();
    await proxy.close();
  }
});
