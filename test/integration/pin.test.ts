/**
 * The read-only pin: functions the proxy cannot see into (created through a
 * direct connection, as an attacker with a writable role could) flip settings
 * from inside the server. PostgreSQL reports default_transaction_read_only,
 * standard_conforming_strings and client_encoding in ParameterStatus; the
 * proxy must end the session the moment one of them reports a looser value.
 *
 * transaction_read_only is not reported. What stops a function that turns it
 * off is the server itself: inside a statement a snapshot is already taken, and
 * PostgreSQL refuses "transaction read-write mode must be set before any query"
 * (25001), so the write after it never runs. The tests below check that the
 * server really does this rather than assuming it.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { direct, eventually, startProxy, testServer, type RunningProxy } from '../helpers/harness.js';
import { errorFields, fe, label, WireClient } from '../helpers/wire.js';

let proxy: RunningProxy;
let d: pg.Client;

before(async () => {
  proxy = await startProxy();
  d = await direct();
  await d.query(`
    DROP TABLE IF EXISTS pin_t;
    CREATE TABLE pin_t (id int);
    CREATE OR REPLACE FUNCTION pin_flip() RETURNS void LANGUAGE plpgsql AS $$
      BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); END $$;
    CREATE OR REPLACE FUNCTION pin_flip_scs() RETURNS void LANGUAGE plpgsql AS $$
      BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END $$;
    CREATE OR REPLACE FUNCTION pin_flip_encoding() RETURNS void LANGUAGE plpgsql AS $$
      BEGIN PERFORM set_config('client_encoding', 'SJIS', false); END $$;
    CREATE OR REPLACE FUNCTION pin_tro_write() RETURNS void LANGUAGE plpgsql AS $$
      BEGIN PERFORM set_config('transaction_read_only', 'off', true); INSERT INTO pin_t VALUES (1); END $$;
    CREATE OR REPLACE FUNCTION pin_write() RETURNS int LANGUAGE plpgsql AS $$
      BEGIN INSERT INTO pin_t VALUES (2); RETURN 1; END $$;
    CREATE OR REPLACE FUNCTION pin_secdef_write() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
      BEGIN INSERT INTO pin_t VALUES (3); RETURN 1; END $$;
  `);
});
after(async () => {
  await d.end();
  await proxy.close();
});

async function rowCount(): Promise<number> {
  const r = await d.query('SELECT count(*)::int AS n FROM pin_t');
  return r.rows[0].n as number;
}

async function backendGone(pid: number): Promise<void> {
  const deadline = Date.now() + 3000;
  for (;;) {
    const r = await d.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1', [pid]);
    if (r.rows[0].n === 0) return;
    if (Date.now() > deadline) throw new Error(`upstream backend ${pid} still alive`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** Runs `sql` through a fresh proxy session and checks the proxy ended it for `why`. */
async function expectSessionEnded(sql: string, why: RegExp, appName: string): Promise<void> {
  const c = await proxy.client({ application_name: appName });
  const ended = new Promise<void>((resolve) => c.once('end', () => resolve()));
  c.on('error', () => undefined);
  const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  await assert.rejects(c.query(sql), (err: pg.DatabaseError) => {
    assert.equal(err.code, '25006', err.message);
    assert.equal(err.severity, 'FATAL');
    assert.match(err.message, /^pg-readonly-proxy: terminating connection/);
    assert.match(err.message, why);
    return true;
  });
  await ended;
  await assert.rejects(c.query('SELECT 1'));
  await eventually(
    () =>
      proxy.logs.some(
        (l) =>
          l.event === 'security' &&
          l.kind === 'pin_violation' &&
          typeof l.why === 'string' &&
          why.test(l.why as string),
      ),
    2000,
    'security log line',
  );
  await backendGone(pid);
}

test('a function that turns default_transaction_read_only off ends the session (FATAL 25006)', async () => {
  await expectSessionEnded('SELECT pin_flip()', /default_transaction_read_only/, 'pin_flip');
});

test('the same flip inside an explicit transaction block ends the session before COMMIT can run', async () => {
  await expectSessionEnded('BEGIN; SELECT pin_flip()', /default_transaction_read_only/, 'pin_flip_tx');
});

test('a function that turns standard_conforming_strings off ends the session', async () => {
  await expectSessionEnded('SELECT pin_flip_scs()', /standard_conforming_strings/, 'pin_scs');
});

test('a function that sets client_encoding to SJIS ends the session', async () => {
  await expectSessionEnded('SELECT pin_flip_encoding()', /client_encoding/, 'pin_enc');
});

test('a function that sets transaction_read_only off and then writes: the server refuses, nothing is written', async () => {
  const before = await rowCount();
  const c = await proxy.client();
  try {
    await assert.rejects(c.query('SELECT pin_tro_write()'), (err: pg.DatabaseError) => {
      // 25001: "transaction read-write mode must be set before any query".
      assert.match(err.code ?? '', /^25/);
      return true;
    });
    await c.query('SELECT 1');
  } finally {
    await c.end();
  }
  assert.equal(await rowCount(), before);
});

test('a function that writes (invisible to the proxy) is stopped by the server-side read-only setting', async () => {
  const before = await rowCount();
  const c = await proxy.client();
  try {
    await assert.rejects(c.query('SELECT pin_write()'), { code: '25006' });
    await assert.rejects(c.query('SELECT pin_secdef_write()'), { code: '25006' });
    await c.query('BEGIN');
    await assert.rejects(c.query('SELECT pin_write()'), { code: '25006' });
    await c.query('ROLLBACK');
  } finally {
    await c.end();
  }
  assert.equal(await rowCount(), before);
});

/*
 * ParameterStatus is sent only just before ReadyForQuery. So a function that
 * turns default_transaction_read_only off, followed by anything the server runs
 * in a new transaction before that ReadyForQuery reaches the proxy, would write.
 * Three routes, each closed: COMMIT inside one query string (refused by the
 * policy), a second query pipelined behind the first (held at the proxy's
 * barrier until the first one's ReadyForQuery was checked), and Execute after
 * COMMIT inside one extended-query batch (refused).
 */
async function wireToProxy(): Promise<WireClient> {
  const s = testServer();
  return WireClient.connect({ host: proxy.host, port: proxy.port, user: s.user, password: s.password });
}

test('regression: flip; COMMIT; write in one query string is refused and writes nothing', async () => {
  const before = await rowCount();
  const c = await proxy.client();
  try {
    await assert.rejects(
      c.query('SELECT pin_flip(); COMMIT; SELECT pin_write()'),
      (err: pg.DatabaseError) => {
        assert.equal(err.code, '25006');
        assert.match(err.message, /after COMMIT in the same query string/);
        return true;
      },
    );
    assert.equal(
      (await c.query('SHOW default_transaction_read_only')).rows[0].default_transaction_read_only,
      'on',
    );
  } finally {
    await c.end();
  }
  assert.equal(await rowCount(), before, 'a row was written through the proxy');
});

test('regression: a write pipelined behind a flip in a separate query is never sent', async () => {
  const before = await rowCount();
  const c = await wireToProxy();
  try {
    // Both queries in one write, without waiting for the first ReadyForQuery.
    c.write(fe.query('SELECT pin_flip()'), fe.query('SELECT pin_write()'));
    const seen = (await c.untilClosed()).map(label);
    const fatal = seen.find((l) => l.startsWith('ErrorResponse'));
    assert.equal(fatal, 'ErrorResponse 25006', seen.join(', '));
    assert.ok(
      !seen.includes('CommandComplete SELECT 1') ||
        seen.indexOf('CommandComplete SELECT 1') === seen.lastIndexOf('CommandComplete SELECT 1'),
    );
  } finally {
    c.destroy();
  }
  assert.equal(await rowCount(), before, 'a row was written through the proxy');
});

test('regression: Execute after COMMIT in one extended-query batch is refused and writes nothing', async () => {
  const before = await rowCount();
  const c = await wireToProxy();
  try {
    c.write(
      fe.parse('', 'SELECT pin_flip()'),
      fe.bind('', ''),
      fe.execute(''),
      fe.parse('c', 'COMMIT'),
      fe.bind('', 'c'),
      fe.execute(''),
      fe.parse('', 'SELECT pin_write()'),
      fe.bind('', ''),
      fe.execute(''),
      fe.sync(),
    );
    const seen = await c.untilClosed();
    const labels = seen.map(label);
    const refusal = seen.find((m) => label(m) === 'ErrorResponse 25006');
    assert.ok(refusal, labels.join(', '));
    assert.match(errorFields(refusal).M ?? '', /after COMMIT in the same batch/);
  } finally {
    c.destroy();
  }
  assert.equal(await rowCount(), before, 'a row was written through the proxy');
});
