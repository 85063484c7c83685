/**
 * The read-only gate end to end, with psql and node-postgres against a real
 * PostgreSQL: reads give what a direct connection gives; every write and every
 * way out of read-only mode is refused with the proxy's own error and the
 * right SQLSTATE, and a direct connection shows nothing changed.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import type pg from 'pg';
import { direct, startProxy, testServer, type RunningProxy } from '../helpers/harness.js';
import { RawClient, encodeStartup, errorFields } from '../helpers/raw-client.js';
import { directTarget, psql } from '../fixtures/integration/psql.js';

const T = 'gate_items';
const PWNED = `/tmp/pgro-gate-pwned-${process.pid}`;
let proxy: RunningProxy;
let d: pg.Client;

async function snapshot(): Promise<string> {
  const r = await d.query(`SELECT id, name FROM ${T} ORDER BY id`);
  return JSON.stringify(r.rows);
}

before(async () => {
  proxy = await startProxy();
  d = await direct();
  await d.query(`DROP TABLE IF EXISTS ${T}, gate_new CASCADE; DROP PROCEDURE IF EXISTS gate_proc()`);
  await d.query(`CREATE TABLE ${T} (id int PRIMARY KEY, name text)`);
  await d.query(`INSERT INTO ${T} SELECT i, 'item ' || i FROM generate_series(1, 20) i`);
  await d.query(`CREATE PROCEDURE gate_proc() LANGUAGE sql AS $$ INSERT INTO ${T} VALUES (1000, 'proc') $$`);
  rmSync(PWNED, { force: true });
});
after(async () => {
  await d.end();
  await proxy.close();
});

describe('reads return what a direct connection returns', () => {
  const reads: Array<{ text: string; values?: unknown[] }> = [
    { text: `SELECT id, name FROM ${T} ORDER BY id` },
    { text: `SELECT * FROM ${T} WHERE id = $1`, values: [7] },
    { text: 'SELECT i, md5(i::text) FROM generate_series(1, 50000) i' },
    {
      text: "SELECT 1.5::numeric AS n, '{1,2}'::int[] AS a, '\\x00ff'::bytea AS b, NULL::text AS z, 'ä😀' AS u, '2024-01-02'::date::text AS dt",
    },
    { text: 'SELECT relname, relkind FROM pg_catalog.pg_class ORDER BY oid LIMIT 200' },
    { text: `WITH x AS (SELECT * FROM ${T} WHERE id < 5) SELECT count(*) FROM x` },
  ];
  for (const q of reads) {
    test(`node-postgres: ${q.text.slice(0, 70)}`, async () => {
      const c = await proxy.client();
      try {
        const viaProxy = await c.query(q);
        const viaDirect = await d.query(q);
        assert.deepEqual(viaProxy.rows, viaDirect.rows);
        assert.deepEqual(
          viaProxy.fields.map((f) => [f.name, f.dataTypeID]),
          viaDirect.fields.map((f) => [f.name, f.dataTypeID]),
        );
        assert.ok(viaProxy.rows.length > 0);
      } finally {
        await c.end();
      }
    });
  }

  test('psql: query output through the proxy is byte-identical to direct', async () => {
    const args = [
      '-v',
      'ON_ERROR_STOP=1',
      '-c',
      `SELECT id, name FROM ${T} ORDER BY id`,
      '-c',
      'SELECT count(*), sum(i) FROM generate_series(1, 100000) i',
      '-c',
      `SELECT * FROM ${T} WHERE id % 3 = 0 ORDER BY id DESC`,
    ];
    const p = await psql(proxy, args);
    const dr = await psql(directTarget(), args);
    assert.equal(p.status, 0, p.stderr);
    assert.equal(dr.status, 0, dr.stderr);
    assert.equal(p.stdout, dr.stdout);
    assert.match(p.stdout, /item 20/);
  });
});

/** [sql, expected SQLSTATE] */
const writes: Array<[string, string]> = [
  [`INSERT INTO ${T} VALUES (100, 'new')`, '25006'],
  [`UPDATE ${T} SET name = 'changed'`, '25006'],
  [`DELETE FROM ${T}`, '25006'],
  [
    `MERGE INTO ${T} t USING (VALUES (1)) v(id) ON t.id = v.id WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (v.id, 'm')`,
    '25006',
  ],
  [`TRUNCATE ${T}`, '25006'],
  ['CREATE TABLE gate_new (a int)', '25006'],
  [`DROP TABLE ${T}`, '25006'],
  [`ALTER TABLE ${T} ADD COLUMN extra int`, '25006'],
  [`COPY ${T} FROM STDIN`, '25006'],
  [`COPY (SELECT 1) TO PROGRAM 'touch ${PWNED}'`, '25006'],
  [`VACUUM ${T}`, '25006'],
  ['CHECKPOINT', '25006'],
  [`DO $$ BEGIN DELETE FROM ${T}; END $$`, '25006'],
  ['CALL gate_proc()', '25006'],
  ['BEGIN READ WRITE', '25006'],
  ['SET LOCAL transaction_read_only = off', '42501'],
  ["SELECT set_config('default_transaction_read_only', 'off', false)", '42501'],
  ['SELECT pg_terminate_backend(1)', '42501'],
  [`WITH x AS (DELETE FROM ${T} RETURNING *) SELECT count(*) FROM x`, '25006'],
  [`COMMIT; DROP TABLE ${T}`, '25006'],
  [`/* harmless */ DELETE FROM ${T}`, '25006'],
  [`-- comment\nDELETE FROM ${T}`, '25006'],
  [`SELECT * FROM ${T} FOR UPDATE`, '25006'],
];

describe('writes and ways out of read-only are refused; a direct connection shows nothing changed', () => {
  for (const [sql, code] of writes) {
    test(`node-postgres: ${sql.slice(0, 80)} → ${code}`, async () => {
      const before = await snapshot();
      const c = await proxy.client();
      try {
        await assert.rejects(c.query(sql), (err: pg.DatabaseError) => {
          assert.equal(err.code, code, `${sql}: ${err.message}`);
          assert.match(err.message, /^pg-readonly-proxy/);
          return true;
        });
        // The session is idle and usable after the refusal.
        const r = await c.query('SELECT 41 + 1 AS n');
        assert.equal(r.rows[0].n, 42);
        const ro = await c.query('SHOW transaction_read_only');
        assert.equal(ro.rows[0].transaction_read_only, 'on');
      } finally {
        await c.end();
      }
      assert.equal(await snapshot(), before);
    });
  }

  test('nothing outside the table changed either (no new table, no program ran, no procedure row)', async () => {
    const r = await d.query("SELECT to_regclass('gate_new') AS t");
    assert.equal(r.rows[0].t, null);
    assert.equal(existsSync(PWNED), false);
    const n = await d.query(`SELECT count(*)::int AS n FROM ${T}`);
    assert.equal(n.rows[0].n, 20);
  });

  for (const [sql, code] of writes.slice(0, 8)) {
    test(`psql: ${sql.slice(0, 60)} → ERROR ${code} from the proxy`, async () => {
      const before = await snapshot();
      const r = await psql(proxy, ['-v', 'ON_ERROR_STOP=1', '-v', 'VERBOSITY=verbose', '-c', sql]);
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, new RegExp(`ERROR:  ${code}: pg-readonly-proxy`));
      assert.equal(await snapshot(), before);
    });
  }

  test('psql: a script that writes stops at the refusal and the reads before it still print', async () => {
    const before = await snapshot();
    const r = await psql(proxy, ['-v', 'ON_ERROR_STOP=1', '-A', '-t'], {
      input: `SELECT 'before';\nINSERT INTO ${T} VALUES (500, 'x');\nSELECT 'after';\n`,
    });
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stdout, /before/);
    assert.doesNotMatch(r.stdout, /after/);
    assert.match(r.stderr, /pg-readonly-proxy/);
    assert.equal(await snapshot(), before);
  });
});

describe('a multi-statement string with one refused statement executes nothing', () => {
  for (const sql of [
    `INSERT INTO ${T} VALUES (200, 'x'); SELECT 1`,
    `SELECT 1; INSERT INTO ${T} VALUES (200, 'x')`,
    `SELECT 1/0; INSERT INTO ${T} VALUES (200, 'x')`,
    `SELECT pg_sleep(1); DELETE FROM ${T}`,
    `SET application_name = 'gate_ran'; UPDATE ${T} SET name = 'x'`,
  ]) {
    test(sql, async () => {
      const before = await snapshot();
      const c = await proxy.client({ application_name: 'gate_multi' });
      try {
        const t0 = Date.now();
        await assert.rejects(c.query(sql), (err: pg.DatabaseError) => {
          // The proxy's error, not division_by_zero from a statement that ran.
          assert.equal(err.code, '25006');
          assert.match(err.message, /^pg-readonly-proxy/);
          return true;
        });
        assert.ok(Date.now() - t0 < 900, 'pg_sleep(1) must not have run');
        const app = await c.query('SHOW application_name');
        assert.equal(app.rows[0].application_name, 'gate_multi');
      } finally {
        await c.end();
      }
      assert.equal(await snapshot(), before);
    });
  }
});

describe('transaction state after a refusal', () => {
  test('inside BEGIN the transaction is failed: 25P02 until ROLLBACK, then usable', async () => {
    const c = await proxy.client();
    try {
      await c.query('BEGIN');
      await c.query('SELECT 1');
      await assert.rejects(c.query(`INSERT INTO ${T} VALUES (300, 'x')`), { code: '25006' });
      await assert.rejects(c.query('SELECT 1'), { code: '25P02' });
      await assert.rejects(c.query('SELECT 2'), { code: '25P02' });
      await c.query('ROLLBACK');
      const r = await c.query('SELECT 7 AS n');
      assert.equal(r.rows[0].n, 7);
    } finally {
      await c.end();
    }
  });

  test('COMMIT of the failed transaction rolls back, as after a server error', async () => {
    const c = await proxy.client();
    try {
      await c.query('BEGIN');
      await assert.rejects(c.query(`DELETE FROM ${T}`), { code: '25006' });
      const r = await c.query('COMMIT');
      assert.equal(r.command, 'ROLLBACK');
    } finally {
      await c.end();
    }
  });

  test('raw protocol: ReadyForQuery says E inside a block after a refusal and I outside one', async () => {
    const s = testServer();
    const raw = await RawClient.connect(proxy.host, proxy.port);
    try {
      raw.send(
        encodeStartup([
          ['user', s.user],
          ['database', 'postgres'],
        ]),
      );
      await raw.login(s.user, s.password);
      let msgs = await raw.query(`DELETE FROM ${T}`);
      let err = msgs.find((m) => m.type === 'E');
      assert.equal(errorFields(err!.body).get('C'), '25006');
      assert.equal(msgs.at(-1)!.body.toString(), 'I');
      msgs = await raw.query('BEGIN');
      assert.equal(msgs.at(-1)!.body.toString(), 'T');
      msgs = await raw.query(`UPDATE ${T} SET name = 'x'`);
      err = msgs.find((m) => m.type === 'E');
      assert.equal(errorFields(err!.body).get('C'), '25006');
      assert.equal(errorFields(err!.body).get('S'), 'ERROR');
      assert.equal(msgs.at(-1)!.body.toString(), 'E');
      msgs = await raw.query('ROLLBACK');
      assert.equal(msgs.at(-1)!.body.toString(), 'I');
    } finally {
      raw.close();
    }
  });
});

test('a refusal is logged with reason, kind, user and database', async () => {
  const c = await proxy.client({ application_name: 'gate_logged' });
  try {
    await assert.rejects(c.query(`TRUNCATE ${T}`), { code: '25006' });
  } finally {
    await c.end();
  }
  const line = proxy.logs.find(
    (l) => l.event === 'statement_refused' && l.application_name === 'gate_logged',
  );
  assert.ok(line, 'refusal log line');
  assert.equal(line.reason, 'write');
  assert.equal(line.kind, 'TRUNCATE TABLE');
  assert.equal(line.user, testServer().user);
  assert.equal(line.database, 'postgres');
  assert.equal(line.sqlstate, '25006');
});

describe('extended protocol (node-postgres with parameters)', () => {
  test('a parameterized write gets 25006 and the connection stays usable', async () => {
    const before = await snapshot();
    const c = await proxy.client();
    try {
      await assert.rejects(
        c.query(`INSERT INTO ${T} VALUES ($1, $2)`, [400, 'x']),
        (err: pg.DatabaseError) => {
          assert.equal(err.code, '25006');
          assert.match(err.message, /^pg-readonly-proxy/);
          return true;
        },
      );
      await assert.rejects(c.query(`UPDATE ${T} SET name = $1 WHERE id = $2`, ['y', 1]), { code: '25006' });
      const r = await c.query('SELECT $1::int + 1 AS n', [41]);
      assert.equal(r.rows[0].n, 42);
    } finally {
      await c.end();
    }
    assert.equal(await snapshot(), before);
  });

  test('a named prepared statement is parsed once and executed many times', async () => {
    const c = await proxy.client();
    try {
      for (const id of [1, 2, 3]) {
        const r = await c.query({
          name: 'gate_by_id',
          text: `SELECT name FROM ${T} WHERE id = $1`,
          values: [id],
        });
        assert.deepEqual(r.rows, [{ name: `item ${id}` }]);
      }
    } finally {
      await c.end();
    }
  });

  test('a named prepared write is refused and the connection stays usable', async () => {
    const before = await snapshot();
    const c = await proxy.client();
    try {
      await assert.rejects(
        c.query({ name: 'gate_ins', text: `INSERT INTO ${T} VALUES ($1, 'z')`, values: [600] }),
        { code: '25006' },
      );
      const r = await c.query({ name: 'gate_ok', text: 'SELECT $1::text AS t', values: ['ok'] });
      assert.equal(r.rows[0].t, 'ok');
    } finally {
      await c.end();
    }
    assert.equal(await snapshot(), before);
  });

  test('a refused write inside BEGIN via the extended protocol fails the transaction', async () => {
    const c = await proxy.client();
    try {
      await c.query('BEGIN');
      await assert.rejects(c.query(`DELETE FROM ${T} WHERE id = $1`, [1]), { code: '25006' });
      await assert.rejects(c.query('SELECT $1::int', [1]), { code: '25P02' });
      await c.query('ROLLBACK');
      const r = await c.query('SELECT $1::int AS n', [3]);
      assert.equal(r.rows[0].n, 3);
    } finally {
      await c.end();
    }
  });
});
