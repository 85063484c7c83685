/**
 * Real drivers through the proxy: node-postgres (with pg-cursor and
 * pg-copy-streams) and postgres.js. They use the extended protocol, pipelining,
 * portals, COPY and cancel; through the proxy they must behave as they do
 * directly, except that writes are refused with 25006.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import Cursor from 'pg-cursor';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import postgres from 'postgres';
import { direct, startProxy, testServer, type RunningProxy, whenRunning } from '../helpers/harness.js';
import { sendCancelRequest } from '../helpers/wire.js';

let proxy: RunningProxy;

before(async () => {
  proxy = await startProxy();
  const d = await direct();
  await d.query(`
    DROP TABLE IF EXISTS drv_items;
    CREATE TABLE drv_items (id int primary key, name text, price numeric(10, 2));
    INSERT INTO drv_items SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 1000) g;
  `);
  await d.end();
});
after(async () => proxy.close());

async function itemCount(): Promise<number> {
  const d = await direct();
  try {
    return (await d.query<{ n: number }>('SELECT count(*)::int AS n FROM drv_items')).rows[0]!.n;
  } finally {
    await d.end();
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('node-postgres', () => {
  let c: pg.Client;
  before(async () => {
    c = await proxy.client();
  });
  after(async () => c.end());

  test('parameterized queries, with typed results', async () => {
    const r = await c.query<{ s: number; name: string; price: string }>(
      'SELECT $1::int + $2::int AS s, name, price FROM drv_items WHERE id = $3',
      [40, 2, 7],
    );
    assert.deepEqual(r.rows, [{ s: 42, name: 'item 7', price: '10.50' }]);
    const nulls = await c.query('SELECT $1::text IS NULL AS isnull', [null]);
    assert.equal(nulls.rows[0].isnull, true);
  });

  test('named prepared statements: prepared once, executed many times', async () => {
    for (const id of [1, 2, 3]) {
      const r = await c.query({
        name: 'drv-get',
        text: 'SELECT name FROM drv_items WHERE id = $1',
        values: [id],
      });
      assert.equal(r.rows[0].name, `item ${id}`);
    }
    const log = proxy.logs.filter((l) => l.event === 'statement_refused').length;
    // A named write is refused at Parse, every time it is tried (pg re-parses after a failed Parse).
    for (let i = 0; i < 2; i++) {
      await assert.rejects(
        c.query({ name: 'drv-ins', text: 'INSERT INTO drv_items (id) VALUES ($1)', values: [5000 + i] }),
        { code: '25006' },
      );
    }
    assert.equal(proxy.logs.filter((l) => l.event === 'statement_refused').length, log + 2);
    const again = await c.query({
      name: 'drv-get',
      text: 'SELECT name FROM drv_items WHERE id = $1',
      values: [9],
    });
    assert.equal(again.rows[0].name, 'item 9');
  });

  test('pg-cursor reads in batches', async () => {
    const cursor = c.query(new Cursor('SELECT id FROM drv_items WHERE id <= $1 ORDER BY id', [250]));
    const sizes: number[] = [];
    let total = 0;
    for (;;) {
      const rows = await cursor.read(100);
      if (rows.length === 0) break;
      sizes.push(rows.length);
      total += rows.length;
    }
    await cursor.close();
    assert.deepEqual(sizes, [100, 100, 50]);
    assert.equal(total, 250);
    // Closed early, inside a transaction.
    await c.query('BEGIN');
    const early = c.query(new Cursor('SELECT id FROM drv_items ORDER BY id'));
    assert.equal((await early.read(10)).length, 10);
    await early.close();
    await c.query('COMMIT');
    assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1);
  });

  test('pg-copy-streams: COPY TO STDOUT streams every row', async () => {
    let bytes = 0;
    let lines = 0;
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        bytes += chunk.length;
        for (const b of chunk) if (b === 0x0a) lines++;
        cb();
      },
    });
    await pipeline(
      c.query(copyTo('COPY (SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 100000) g) TO STDOUT')),
      sink,
    );
    assert.equal(lines, 100000);
    assert.ok(bytes > 100000 * 128);
    assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1);
  });

  test('pg-copy-streams: COPY FROM STDIN is refused with 25006, the client stays usable', async () => {
    const stream = c.query(copyFrom('COPY drv_items (id, name) FROM STDIN'));
    stream.write('6000\tnope\n');
    stream.end();
    await assert.rejects(
      new Promise((resolve, reject) => {
        stream.on('finish', resolve);
        stream.on('error', reject);
      }),
      { code: '25006' },
    );
    assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1);
  });

  test('a write is rejected with 25006 and the client is still usable', async () => {
    await assert.rejects(c.query("UPDATE drv_items SET name = 'x' WHERE id = 1"), { code: '25006' });
    await assert.rejects(c.query('DELETE FROM drv_items WHERE id = $1', [1]), (err: pg.DatabaseError) => {
      assert.equal(err.code, '25006');
      assert.match(err.message, /^pg-readonly-proxy/);
      return true;
    });
    await c.query('BEGIN');
    await assert.rejects(c.query('TRUNCATE drv_items'), { code: '25006' });
    await assert.rejects(c.query('SELECT 1'), { code: '25P02' });
    await c.query('ROLLBACK');
    assert.equal((await c.query('SELECT count(*)::int AS n FROM drv_items')).rows[0].n, 1000);
    assert.equal(await itemCount(), 1000);
  });

  test('cancel with the BackendKeyData the client was given: 57014', async () => {
    const keyed = c as unknown as { processID: number; secretKey: number };
    assert.equal(typeof keyed.processID, 'number');
    const secret = Buffer.alloc(4);
    secret.writeInt32BE(keyed.secretKey);
    const started = Date.now();
    const q = c.query('SELECT pg_sleep(5)');
    await whenRunning('SELECT pg_sleep(5)');
    await sendCancelRequest(proxy.host, proxy.port, keyed.processID, secret);
    await assert.rejects(q, { code: '57014' });
    assert.ok(Date.now() - started < 4000);
    assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1);
  });

  test("cancel through node-postgres' own Client#cancel: 57014", async () => {
    const s = testServer();
    const target = await proxy.client();
    try {
      const query = new pg.Query('SELECT pg_sleep(5.1)');
      const q = new Promise((resolve, reject) => {
        query.on('end', resolve);
        query.on('error', reject);
      });
      target.query(query);
      await whenRunning('SELECT pg_sleep(5.1)');
      const other = new pg.Client({ host: proxy.host, port: proxy.port, user: s.user, password: s.password });
      // Not in the typings: Client#cancel(target, query) opens a connection and sends a CancelRequest.
      (other as unknown as { cancel(c: pg.Client, q: pg.Query): void }).cancel(target, query);
      await assert.rejects(q, { code: '57014' });
      assert.equal((await target.query('SELECT 2 AS two')).rows[0].two, 2);
    } finally {
      await target.end();
    }
  });
});

describe('postgres.js', () => {
  const connect = (prepare: boolean): postgres.Sql => {
    const s = testServer();
    return postgres({
      host: proxy.host,
      port: proxy.port,
      user: s.user,
      password: s.password,
      database: 'postgres',
      max: 1,
      prepare,
      onnotice: () => {},
    });
  };

  for (const prepare of [true, false]) {
    describe(`prepare: ${prepare}`, () => {
      let sql: postgres.Sql;
      before(() => {
        sql = connect(prepare);
      });
      after(async () => sql.end({ timeout: 1 }));

      test('pipelined tagged-template queries', async () => {
        const ids = Array.from({ length: 50 }, (_, i) => i + 1);
        const results = await Promise.all(
          ids.map((id) => sql`SELECT id, name FROM drv_items WHERE id = ${id}`),
        );
        assert.deepEqual(
          results.map((r) => r[0]!.name),
          ids.map((id) => `item ${id}`),
        );
        // Twice, so prepared statements are reused.
        const again = await Promise.all(ids.map((id) => sql`SELECT id FROM drv_items WHERE id = ${id}`));
        assert.deepEqual(
          again.map((r) => r[0]!.id),
          ids,
        );
      });

      test('a refused write inside a pipeline: reads before and after succeed, the write rejects 25006', async () => {
        const outcomes = await Promise.allSettled([
          sql`SELECT 1 AS n`,
          sql`SELECT name FROM drv_items WHERE id = ${2}`,
          sql`INSERT INTO drv_items (id, name) VALUES (${7000}, ${'x'})`,
          sql`SELECT 3 AS n`,
          sql`SELECT count(*)::int AS n FROM drv_items`,
        ]);
        assert.deepEqual(
          outcomes.map((o) => o.status),
          ['fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled'],
        );
        const err = (outcomes[2] as PromiseRejectedResult).reason as postgres.PostgresError;
        assert.equal(err.code, '25006');
        assert.match(err.message, /^pg-readonly-proxy/);
        const values = outcomes.map((o) => (o.status === 'fulfilled' ? o.value[0] : undefined));
        assert.deepEqual(values, [{ n: 1 }, { name: 'item 2' }, undefined, { n: 3 }, { n: 1000 }]);
        // The same write again (a prepared statement must not have been cached for it).
        await assert.rejects(sql`INSERT INTO drv_items (id, name) VALUES (${7000}, ${'x'})`, {
          code: '25006',
        });
        await assert.rejects(sql`DELETE FROM drv_items`, { code: '25006' });
        assert.equal((await sql`SELECT 4 AS n`)[0]!.n, 4);
      });

      test('sql.begin: reads commit, a refused write rejects and the transaction rolls back', async () => {
        const rows = await sql.begin(async (tx) => {
          const [a] = await tx`SELECT name FROM drv_items WHERE id = ${3}`;
          const [b] = await tx`SELECT current_setting('transaction_read_only') AS ro`;
          return [a!.name, b!.ro];
        });
        assert.deepEqual(rows, ['item 3', 'on']);

        let afterWrite = false;
        await assert.rejects(
          sql.begin(async (tx) => {
            await tx`SELECT 1`;
            await tx`UPDATE drv_items SET name = 'changed' WHERE id = ${3}`;
            afterWrite = true;
          }),
          { code: '25006' },
        );
        assert.equal(afterWrite, false);
        // Back outside any transaction block: now() moves between statements.
        const [t1] = await sql`SELECT now() AS t`;
        await sleep(20);
        const [t2] = await sql`SELECT now() AS t`;
        assert.notEqual((t1!.t as Date).getTime(), (t2!.t as Date).getTime());
        assert.equal((await sql`SELECT name FROM drv_items WHERE id = ${3}`)[0]!.name, 'item 3');
      });

      test("sql.begin('read write') is refused", async () => {
        await assert.rejects(
          sql.begin('read write', async (tx) => tx`SELECT 1`),
          (err: postgres.PostgresError) => {
            assert.equal(err.code, '25006');
            return true;
          },
        );
        assert.equal((await sql`SELECT 5 AS n`)[0]!.n, 5);
      });

      test('cursors read in batches', async () => {
        const sizes: number[] = [];
        for await (const batch of sql`SELECT id FROM drv_items WHERE id <= ${250} ORDER BY id`.cursor(100)) {
          sizes.push(batch.length);
        }
        assert.deepEqual(sizes, [100, 100, 50]);
        // Stopping early closes the cursor; the connection is reused at once.
        let seen = 0;
        for await (const batch of sql`SELECT id FROM drv_items ORDER BY id`.cursor(10)) {
          seen += batch.length;
          if (seen >= 30) break;
        }
        assert.equal(seen, 30);
        assert.equal((await sql`SELECT 6 AS n`)[0]!.n, 6);
      });

      test('query.cancel(): 57014', async () => {
        // A literal duration: the policy refuses pg_sleep with a bound one.
        const text = `SELECT pg_sleep(${prepare ? 5.2 : 5.3})`;
        const q = sql.unsafe(text);
        const started = Date.now();
        const settled = assert.rejects(q, { code: '57014' });
        await whenRunning(text);
        await q.cancel();
        await settled;
        assert.ok(Date.now() - started < 4000);
        assert.equal((await sql`SELECT 7 AS n`)[0]!.n, 7);
      });
    });
  }

  test('nothing was written', async () => {
    assert.equal(await itemCount(), 1000);
  });
});
