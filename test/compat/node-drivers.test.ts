/**
 * node-postgres (`pg`, with pg-cursor and pg-copy-streams) and postgres.js used
 * the way applications use them: a pool, parameterised queries, a transaction
 * that tries to write, cursors, COPY TO, LISTEN, cancel. Results must be what a
 * direct connection gives; writes and NOTIFY are refused and the connection
 * goes on. (test/integration/drivers.test.ts covers the protocol corners.)
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before } from 'node:test';
import pg from 'pg';
import Cursor from 'pg-cursor';
import { to as copyTo } from 'pg-copy-streams';
import postgres from 'postgres';
import { direct, startProxy, testServer, whenRunning, type RunningProxy } from '../helpers/harness.js';
import { scenario } from './compat.js';

const FILE = 'node-drivers';
const PG = 'node-postgres';
const PGJS = 'postgres.js';

let proxy: RunningProxy;
let digest: string;

/** Row count and a digest of every row, straight from the server. */
async function tableDigest(): Promise<string> {
  const d = await direct();
  try {
    const r = await d.query<{ n: number; h: string }>(
      `SELECT count(*)::int AS n, md5(string_agg(id || ':' || name || ':' || price, ',' ORDER BY id)) AS h FROM nd_items`,
    );
    return `${r.rows[0]!.n} ${r.rows[0]!.h}`;
  } finally {
    await d.end();
  }
}

before(async () => {
  const d = await direct();
  await d.query(`
    DROP TABLE IF EXISTS nd_items;
    CREATE TABLE nd_items (id int PRIMARY KEY, name text NOT NULL, price numeric(10, 2));
    INSERT INTO nd_items SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 1000) g;
  `);
  await d.end();
  digest = await tableDigest();
  proxy = await startProxy();
});
after(async () => proxy.close());

const pool = (host: string, port: number, extra: Partial<pg.PoolConfig> = {}): pg.Pool => {
  const s = testServer();
  return new pg.Pool({ host, port, user: s.user, password: s.password, database: 'postgres', ...extra });
};
const proxyPool = (extra: Partial<pg.PoolConfig> = {}): pg.Pool => pool(proxy.host, proxy.port, extra);
const directPool = (extra: Partial<pg.PoolConfig> = {}): pg.Pool => {
  const s = testServer();
  return pool(s.host, s.port, extra);
};

const sql = (
  host: string,
  port: number,
  extra: postgres.Options<Record<string, never>> = {},
): postgres.Sql => {
  const s = testServer();
  return postgres({
    host,
    port,
    user: s.user,
    password: s.password,
    database: 'postgres',
    onnotice: () => {},
    ...extra,
  });
};
const proxySql = (extra: postgres.Options<Record<string, never>> = {}): postgres.Sql =>
  sql(proxy.host, proxy.port, extra);
const directSql = (extra: postgres.Options<Record<string, never>> = {}): postgres.Sql => {
  const s = testServer();
  return sql(s.host, s.port, extra);
};

/** sha256 and line count of a COPY TO STDOUT stream. */
async function copyDigest(source: Readable): Promise<{ lines: number; sha: string }> {
  const h = createHash('sha256');
  let lines = 0;
  await pipeline(
    source,
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        h.update(chunk);
        for (const b of chunk) if (b === 0x0a) lines++;
        cb();
      },
    }),
  );
  return { lines, sha: h.digest('hex') };
}

const COPY_QUERY =
  "COPY (SELECT id, name, price, 'tab\there, back\\slash, Zoë' AS t FROM nd_items ORDER BY id) TO STDOUT";

/** A notification on `channel` through the proxy, sent by a direct connection. */
async function notifyDirect(channel: string, payload: string): Promise<void> {
  const d = await direct();
  try {
    await d.query('SELECT pg_notify($1, $2)', [channel, payload]);
  } finally {
    await d.end();
  }
}

// ---- node-postgres ----

scenario(FILE, PG, 'pg.Pool: 40 concurrent parameterised queries over at most 4 connections', async () => {
  const p = proxyPool({ max: 4, application_name: 'nd-pool' });
  try {
    const ids = Array.from({ length: 40 }, (_, i) => i * 25 + 1);
    const results = await Promise.all(
      ids.map((id) =>
        p.query<{ id: number; name: string }>('SELECT id, name FROM nd_items WHERE id = $1', [id]),
      ),
    );
    assert.deepEqual(
      results.map((r) => r.rows),
      ids.map((id) => [{ id, name: `item ${id}` }]),
    );
    assert.ok(p.totalCount > 1 && p.totalCount <= 4, `pool opened ${p.totalCount} connections`);
    const d = await direct();
    try {
      const r = await d.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'nd-pool'",
      );
      assert.equal(r.rows[0]!.n, p.totalCount);
    } finally {
      await d.end();
    }
  } finally {
    await p.end();
  }
});

scenario(
  FILE,
  PG,
  'parameters of every common type, and literals in the SQL text, as on a direct connection',
  async () => {
    const text = `SELECT $1::int AS i, $2::bigint AS big, $3::text AS t, $4::numeric AS n, $5::bool AS b,
      $6::timestamptz AS ts, $7::date AS d, $8::jsonb AS j, $9::int[] AS a, $10::text AS nul, $11::bytea AS by,
      'Zoë' AS lit, 'C:\\temp' AS backslash`;
    const values = [
      42,
      '9007199254740993',
      "Zoë \\ 'quoted'",
      '12345678901234567890.125',
      true,
      new Date('2024-02-29T12:34:56.789Z'),
      '2024-02-29',
      { k: ['v', 1, null] },
      [1, 2, 3],
      null,
      Buffer.from([0, 1, 254, 255]),
    ];
    const [p, q] = [proxyPool({ max: 1 }), directPool({ max: 1 })];
    try {
      const [viaProxy, straight] = await Promise.all([p.query(text, values), q.query(text, values)]);
      assert.deepEqual(viaProxy.rows, straight.rows);
      assert.equal(viaProxy.rows[0].t, "Zoë \\ 'quoted'");
      assert.equal(viaProxy.rows[0].backslash, 'C:\\temp');
      assert.deepEqual(viaProxy.rows[0].by, Buffer.from([0, 1, 254, 255]));
      // A named (prepared) statement, reused.
      for (const id of [1, 2, 3]) {
        const r = await p.query({
          name: 'nd-by-id',
          text: 'SELECT name FROM nd_items WHERE id = $1',
          values: [id],
        });
        assert.equal(r.rows[0].name, `item ${id}`);
      }
    } finally {
      await Promise.all([p.end(), q.end()]);
    }
  },
);

scenario(
  FILE,
  PG,
  'transaction: a refused write rejects 25006, then 25P02 until ROLLBACK; the pooled client goes back usable',
  async () => {
    const p = proxyPool({ max: 1 });
    try {
      const client = await p.connect();
      let failed: unknown;
      try {
        await client.query('BEGIN');
        const r = await client.query('SELECT price FROM nd_items WHERE id = $1', [10]);
        assert.equal(r.rows[0].price, '15.00');
        await client.query('UPDATE nd_items SET price = price * 2 WHERE id = $1', [10]);
        await client.query('COMMIT');
      } catch (err) {
        failed = err;
        await assert.rejects(client.query('SELECT 1'), { code: '25P02' });
        await client.query('ROLLBACK');
      } finally {
        client.release();
      }
      assert.equal((failed as pg.DatabaseError).code, '25006');
      assert.match((failed as pg.DatabaseError).message, /^pg-readonly-proxy: UPDATE is not allowed/);
      // The same (only) connection, back from the pool, outside any transaction.
      const r = await p.query(
        "SELECT price, current_setting('transaction_read_only') AS ro FROM nd_items WHERE id = 10",
      );
      assert.deepEqual(r.rows, [{ price: '15.00', ro: 'on' }]);
      await assert.rejects(p.query('INSERT INTO nd_items (id, name) VALUES ($1, $2)', [5000, 'x']), {
        code: '25006',
      });
      assert.equal((await p.query('SELECT 1 AS one')).rows[0].one, 1);
      assert.equal(await tableDigest(), digest);
    } finally {
      await p.end();
    }
  },
);

scenario(FILE, PG, 'pg-cursor reads 250 rows in batches of 100, inside a transaction', async () => {
  const p = proxyPool({ max: 1 });
  const client = await p.connect();
  try {
    await client.query('BEGIN READ ONLY');
    const cursor = client.query(new Cursor('SELECT id FROM nd_items WHERE id <= $1 ORDER BY id', [250]));
    const sizes: number[] = [];
    const ids: number[] = [];
    for (;;) {
      const rows = await cursor.read(100);
      if (rows.length === 0) break;
      sizes.push(rows.length);
      ids.push(...rows.map((r: { id: number }) => r.id));
    }
    await cursor.close();
    await client.query('COMMIT');
    assert.deepEqual(sizes, [100, 100, 50]);
    assert.deepEqual(
      ids,
      Array.from({ length: 250 }, (_, i) => i + 1),
    );
  } finally {
    client.release();
    await p.end();
  }
});

scenario(
  FILE,
  PG,
  'pg-copy-streams: COPY TO STDOUT gives the same bytes as a direct connection',
  async () => {
    const [a, b] = [await proxy.client(), await direct()];
    try {
      const [viaProxy, straight] = await Promise.all([
        copyDigest(a.query(copyTo(COPY_QUERY))),
        copyDigest(b.query(copyTo(COPY_QUERY))),
      ]);
      assert.equal(viaProxy.lines, 1000);
      assert.deepEqual(viaProxy, straight);
      assert.equal((await a.query('SELECT 1 AS one')).rows[0].one, 1);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  },
);

scenario(
  FILE,
  PG,
  'LISTEN receives notifications (LISTEN is allowed); NOTIFY and pg_notify are refused',
  async () => {
    const c = await proxy.client();
    try {
      await c.query('LISTEN nd_channel');
      const got = new Promise<pg.Notification>((resolve) => c.once('notification', resolve));
      await notifyDirect('nd_channel', 'hello Zoë');
      const n = await got;
      assert.deepEqual([n.channel, n.payload], ['nd_channel', 'hello Zoë']);
      await assert.rejects(c.query("NOTIFY nd_channel, 'from the agent'"), { code: '25006' });
      await assert.rejects(c.query("SELECT pg_notify('nd_channel', 'x')"), { code: '25006' });
      await c.query('UNLISTEN *');
      assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1);
    } finally {
      await c.end();
    }
  },
);

scenario(
  FILE,
  PG,
  'cancel: statement_timeout and Client#cancel stop pg_sleep with 57014 at once; the client goes on',
  async () => {
    // statement_timeout as a connection option (a startup parameter).
    const timed = await proxy.client({ statement_timeout: 300 });
    try {
      const started = Date.now();
      await assert.rejects(timed.query('SELECT pg_sleep(5)'), { code: '57014' });
      assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);
      assert.equal((await timed.query('SELECT 1 AS one')).rows[0].one, 1);
    } finally {
      await timed.end();
    }
    // A CancelRequest, as node-postgres sends it from another client.
    const target = await proxy.client();
    const s = testServer();
    try {
      const query = new pg.Query('SELECT pg_sleep(5.7)');
      const done = new Promise((resolve, reject) => {
        query.on('end', resolve);
        query.on('error', reject);
      });
      const started = Date.now();
      target.query(query);
      await whenRunning('SELECT pg_sleep(5.7)');
      const other = new pg.Client({ host: proxy.host, port: proxy.port, user: s.user, password: s.password });
      // Not in the typings: Client#cancel(target, query) opens a connection and sends a CancelRequest.
      (other as unknown as { cancel(c: pg.Client, q: pg.Query): void }).cancel(target, query);
      await assert.rejects(done, { code: '57014' });
      assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);
      assert.equal((await target.query('SELECT 2 AS two')).rows[0].two, 2);
    } finally {
      await target.end();
    }
  },
);

// ---- postgres.js ----

scenario(FILE, PGJS, 'max: 4, 40 concurrent tagged-template queries (pipelined, prepared)', async () => {
  const db = proxySql({ max: 4, connection: { application_name: 'nd-pgjs' } });
  try {
    const ids = Array.from({ length: 40 }, (_, i) => i * 25 + 1);
    const results = await Promise.all(ids.map((id) => db`SELECT id, name FROM nd_items WHERE id = ${id}`));
    assert.deepEqual(
      results.map((r) => [...r]),
      ids.map((id) => [{ id, name: `item ${id}` }]),
    );
    const d = await direct();
    try {
      const r = await d.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'nd-pgjs'",
      );
      assert.ok(r.rows[0]!.n > 1 && r.rows[0]!.n <= 4, `${r.rows[0]!.n} connections`);
    } finally {
      await d.end();
    }
  } finally {
    await db.end({ timeout: 1 });
  }
});

scenario(
  FILE,
  PGJS,
  'parameters of every common type, and literals in the SQL text, as on a direct connection',
  async () => {
    const [a, b] = [proxySql({ max: 1 }), directSql({ max: 1 })];
    const query = (db: postgres.Sql) => db`
    SELECT ${42}::int AS i, ${'9007199254740993'}::bigint AS big, ${"Zoë \\ 'quoted'"}::text AS t,
      ${'12345678901234567890.125'}::numeric AS n, ${true}::bool AS b,
      ${new Date('2024-02-29T12:34:56.789Z')}::timestamptz AS ts, ${db.json({ k: ['v', 1, null] })}::jsonb AS j,
      ${[1, 2, 3]}::int[] AS a, ${null}::text AS nul, ${Buffer.from([0, 1, 254, 255])}::bytea AS by,
      'Zoë' AS lit, 'C:\\temp' AS backslash`;
    try {
      const [viaProxy, straight] = await Promise.all([query(a), query(b)]);
      assert.deepEqual([...viaProxy], [...straight]);
      assert.equal(viaProxy[0]!.t, "Zoë \\ 'quoted'");
      assert.equal(viaProxy[0]!.backslash, 'C:\\temp');
      assert.deepEqual(viaProxy[0]!.a, [1, 2, 3]);
    } finally {
      await Promise.all([a.end({ timeout: 1 }), b.end({ timeout: 1 })]);
    }
  },
);

scenario(
  FILE,
  PGJS,
  "sql.begin: reads commit; a refused write rejects 25006 and rolls back; sql.begin('read only') works",
  async () => {
    const db = proxySql({ max: 1 });
    try {
      const ro = await db.begin('read only', async (tx) => {
        const [r] =
          await tx`SELECT count(*)::int AS n, current_setting('transaction_read_only') AS ro FROM nd_items`;
        return r;
      });
      assert.deepEqual(ro, { n: 1000, ro: 'on' });
      let afterWrite = false;
      await assert.rejects(
        db.begin(async (tx) => {
          await tx`SELECT 1`;
          await tx`DELETE FROM nd_items WHERE id = ${1}`;
          afterWrite = true;
        }),
        (err: postgres.PostgresError) => {
          assert.equal(err.code, '25006');
          assert.match(err.message, /^pg-readonly-proxy: DELETE is not allowed/);
          return true;
        },
      );
      assert.equal(afterWrite, false);
      assert.deepEqual([...(await db`SELECT name FROM nd_items WHERE id = ${1}`)], [{ name: 'item 1' }]);
      assert.equal(await tableDigest(), digest);
    } finally {
      await db.end({ timeout: 1 });
    }
  },
);

scenario(
  FILE,
  PGJS,
  '.cursor(100) reads 250 rows in batches; breaking out early frees the connection',
  async () => {
    const db = proxySql({ max: 1 });
    try {
      const sizes: number[] = [];
      const ids: number[] = [];
      for await (const batch of db`SELECT id FROM nd_items WHERE id <= ${250} ORDER BY id`.cursor(100)) {
        sizes.push(batch.length);
        ids.push(...batch.map((r) => r.id as number));
      }
      assert.deepEqual(sizes, [100, 100, 50]);
      assert.deepEqual(
        ids,
        Array.from({ length: 250 }, (_, i) => i + 1),
      );
      let seen = 0;
      for await (const batch of db`SELECT id FROM nd_items ORDER BY id`.cursor(10)) {
        seen += batch.length;
        if (seen >= 30) break;
      }
      assert.equal(seen, 30);
      assert.equal((await db`SELECT 6 AS n`)[0]!.n, 6);
    } finally {
      await db.end({ timeout: 1 });
    }
  },
);

scenario(
  FILE,
  PGJS,
  'COPY TO STDOUT with .readable() gives the same bytes as a direct connection',
  async () => {
    // One connection per COPY, not reused: after a .readable() COPY, postgres.js 3.4
    // sometimes never answers the next query on that connection, straight to the
    // server too (porsager/postgres#917).
    const [a, b] = [proxySql({ max: 1 }), directSql({ max: 1 })];
    try {
      const viaProxy = await copyDigest(await a.unsafe(COPY_QUERY).readable());
      const straight = await copyDigest(await b.unsafe(COPY_QUERY).readable());
      assert.equal(viaProxy.lines, 1000);
      assert.deepEqual(viaProxy, straight);
    } finally {
      await Promise.all([a.end({ timeout: 1 }), b.end({ timeout: 1 })]);
    }
  },
);

scenario(FILE, PGJS, 'sql.listen receives notifications; sql.notify is refused', async () => {
  const db = proxySql({ max: 1 });
  try {
    const got = new Promise<string>((resolve) => {
      void db.listen('nd_channel_js', resolve).then(() => notifyDirect('nd_channel_js', 'hello Zoë'));
    });
    assert.equal(await got, 'hello Zoë');
    // sql.notify calls pg_notify().
    await assert.rejects(db.notify('nd_channel_js', 'x'), { code: '25006' });
    assert.equal((await db`SELECT 1 AS n`)[0]!.n, 1);
  } finally {
    await db.end({ timeout: 1 });
  }
});
