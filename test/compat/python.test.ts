/**
 * Python drivers through the proxy: psycopg2, psycopg 3 and asyncpg, Debian
 * 12's packages for /usr/bin/python3 (COMPAT_PYTHON names another interpreter).
 * Each scenario is a function in test/compat/python/with_<driver>.py that
 * prints its result as JSON; the same script runs through the proxy and
 * straight against the server, and the results must match. A write is compared
 * with a direct session the server itself keeps read-only
 * (default_transaction_read_only): the same exception class, SQLSTATE and
 * aftermath, whatever the message says.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before } from 'node:test';
import { startProxy, testServer, type RunningProxy, withDb, freshDatabase } from '../helpers/harness.js';
import { run } from '../helpers/run.js';
import { scenario, unavailable } from './compat.js';

const FILE = import.meta.filename;
const DB = 'compat_python';
const PYTHON = process.env.COMPAT_PYTHON ?? '/usr/bin/python3';
const SCRIPTS = path.join(path.dirname(FILE), 'python');

/** Why `module` cannot be imported, if it cannot. */
function missing(module: string, debianPackage: string): string | undefined {
  const why = unavailable(PYTHON, ['-c', `import ${module}`]);
  return why && `${why} (Debian: apt-get install ${debianPackage})`;
}

type Target = 'proxy' | 'direct' | 'read-only';

let proxy: RunningProxy;

/** Runs one scenario of a script against `target` and returns what it printed. */
async function py(script: string, name: string, target: Target): Promise<Record<string, unknown>> {
  const s = testServer();
  const at = target === 'proxy' ? proxy : s;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PGHOST: at.host,
    PGPORT: String(at.port),
    PGUSER: s.user,
    PGPASSWORD: s.password,
    PGDATABASE: DB,
    PGSSLMODE: 'disable',
    PGOPTIONS: '',
    COMPAT_READ_ONLY: target === 'read-only' ? '1' : '0',
    PYTHONDONTWRITEBYTECODE: '1',
    PYTHONIOENCODING: 'utf-8',
  };
  delete env.PYTHONPATH;
  delete env.PYTHONHOME;
  const { status, stdout, stderr } = await run(PYTHON, [path.join(SCRIPTS, script), name], {
    env,
    timeoutMs: 40_000,
  });
  assert.equal(status, 0, `${script} ${name} against ${target} failed:\n${stderr}${stdout}`);
  return JSON.parse(stdout) as Record<string, unknown>;
}

/** The scenario through the proxy and directly: the same result, which is returned. */
async function same(script: string, name: string): Promise<Record<string, unknown>> {
  const viaProxy = await py(script, name, 'proxy');
  const viaDirect = await py(script, name, 'direct');
  assert.deepEqual(viaProxy, viaDirect);
  return viaProxy;
}

/** The scenario through the proxy, and directly on a read-only session: the same result, returned. */
async function sameAsReadOnly(script: string, name: string): Promise<Record<string, unknown>> {
  const before = await itemsState();
  const viaProxy = await py(script, name, 'proxy');
  const readOnly = await py(script, name, 'read-only');
  assert.deepEqual(viaProxy, readOnly);
  assert.equal(await itemsState(), before, 'nothing changed');
  return viaProxy;
}

/** A driver error as common.error() reports it. */
const refused = (cls: string, sqlstate = '25006'): unknown => ({ class: cls, sqlstate, read_only: true });

const itemsState = (): Promise<string> =>
  withDb(DB, async (c) => JSON.stringify((await c.query('SELECT * FROM items ORDER BY id')).rows));

const noPsycopg2 = missing('psycopg2', 'python3-psycopg2');
const noPsycopg3 = missing('psycopg', 'python3-psycopg');
const noAsyncpg = missing('asyncpg', 'python3-asyncpg');

before(async () => {
  if (noPsycopg2 && noPsycopg3 && noAsyncpg) return;
  proxy = await startProxy({ policy: { maxSleepSeconds: 60 } });
  await freshDatabase(DB);
  await withDb(DB, async (c) => {
    await c.query(`
      CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
      CREATE TYPE pair AS (a int, b text);
      CREATE TABLE items (
        id int PRIMARY KEY,
        name text NOT NULL,
        price numeric(10, 2),
        tags text[],
        meta jsonb,
        added date,
        at timestamptz,
        flag boolean,
        mood mood,
        uid uuid,
        dur interval,
        raw bytea,
        p pair
      );
      INSERT INTO items
        SELECT g, 'item ' || g || CASE WHEN g % 10 = 0 THEN E' \\t''quoted'' ä😀' ELSE '' END,
               CASE WHEN g % 13 = 0 THEN NULL ELSE g * 1.25 END,
               ARRAY['t' || g % 3, NULL],
               jsonb_build_object('n', g, 'even', g % 2 = 0, 'list', jsonb_build_array(1, 'two', null)),
               date '2024-01-01' + g,
               timestamptz '2024-01-01 12:00:00+00' + g * interval '1 hour 7 minutes',
               g % 2 = 0,
               (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood,
               md5(g::text)::uuid,
               g * interval '1 minute 1.5 seconds',
               decode(md5(g::text), 'hex'),
               ROW(g, 'p' || g)::pair
        FROM generate_series(1, 300) g;
    `);
  });
});
after(async () => {
  await proxy?.close();
});

// psycopg2

scenario(
  FILE,
  'psycopg2',
  'select (simple protocol, typed rows, RealDictCursor) identical to direct',
  async () => {
    const r = await same('with_psycopg2.py', 'select');
    assert.equal((r.rows as unknown[]).length, 300);
    assert.deepEqual(r.interpolated, [42, "ä😀 'quoted'", null]);
  },
  { skip: noPsycopg2 },
);

scenario(
  FILE,
  'psycopg2',
  'server-side named cursor with itersize (DECLARE, FETCH, MOVE) identical to direct',
  async () => {
    const r = await same('with_psycopg2.py', 'named_cursor');
    assert.equal(r.count, 1050);
    assert.deepEqual(r.at_199, [200, "item 200 \t'quoted' ä😀"]);
    assert.deepEqual(r.back, [
      [151, 'item 151'],
      [152, 'item 152'],
    ]);
  },
  { skip: noPsycopg2 },
);

scenario(
  FILE,
  'psycopg2',
  'a write raises pgcode 25006 as on a read-only server session; usable after rollback',
  async () => {
    const r = await sameAsReadOnly('with_psycopg2.py', 'write');
    assert.deepEqual(r, {
      insert: refused('ReadOnlySqlTransaction'),
      in_failed_transaction: { class: 'InFailedSqlTransaction', sqlstate: '25P02', read_only: false },
      after_rollback: true,
      autocommit_update: refused('ReadOnlySqlTransaction'),
      after_autocommit: 42,
    });
  },
  { skip: noPsycopg2 },
);

/** A cancel result: 57014 within 3 s of the cancel, and the session usable; the timing dropped. */
function cancelled(r: Record<string, unknown>, cls: string): Record<string, unknown> {
  const { ms_from_cancel: ms, ...rest } = r;
  assert.deepEqual(rest, { sleep: { class: cls, sqlstate: '57014', read_only: false }, after: 42 });
  assert.ok(typeof ms === 'number' && ms < 3000, `57014 arrived ${String(ms)} ms after the cancel`);
  return rest;
}

scenario(
  FILE,
  'psycopg2',
  'conn.cancel() from a thread during pg_sleep: QueryCanceled 57014 within 3 s, session usable (as direct)',
  async () => {
    const viaProxy = cancelled(await py('with_psycopg2.py', 'cancel', 'proxy'), 'QueryCanceled');
    const viaDirect = cancelled(await py('with_psycopg2.py', 'cancel', 'direct'), 'QueryCanceled');
    assert.deepEqual(viaProxy, viaDirect);
  },
  { skip: noPsycopg2, timeout: 60_000 },
);

// psycopg 3

scenario(
  FILE,
  'psycopg 3',
  'pipeline mode, with a refused write mid-pipeline, behaves as a read-only server session',
  async () => {
    const r = await sameAsReadOnly('with_psycopg3.py', 'pipeline');
    assert.deepEqual(r.reads, [{ rows: [[300]] }, { rows: [['item 7']] }, { rows: [[42]] }]);
    for (const mode of ['transaction', 'autocommit']) {
      const m = r[mode] as Record<string, unknown>;
      assert.deepEqual(m.pipeline, refused('ReadOnlySqlTransaction'), mode);
      assert.deepEqual((m.results as unknown[])[0], { rows: [[300]] }, mode);
      assert.equal(m.after, 42, mode);
    }
  },
  { skip: noPsycopg3 },
);

scenario(
  FILE,
  'psycopg 3',
  'binary COPY TO STDOUT identical to direct',
  async () => {
    const r = await same('with_psycopg3.py', 'copy_binary');
    assert.equal(r.rows, 300);
    assert.equal(
      r.header,
      Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1').toString('hex') + '00000000' + '00000000',
    );
    assert.ok((r.bytes as number) > 30_000);
  },
  { skip: noPsycopg3 },
);

scenario(
  FILE,
  'psycopg 3',
  'server-side cursors (itersize, scroll, WITH HOLD) identical to direct',
  async () => {
    const r = await same('with_psycopg3.py', 'server_cursor');
    assert.equal((r.first as unknown[]).length, 5);
    assert.deepEqual(r.after_move, [26, 'item 26', null]); // 26 % 13 = 0: no price
    assert.equal((r.rest as unknown[]).length, 300 - 26);
    assert.deepEqual(r.at_500, [500, 250000]);
    assert.deepEqual(r.back, [401, 160801]);
    assert.equal((r.held as unknown[]).length, 50);
  },
  { skip: noPsycopg3 },
);

scenario(
  FILE,
  'psycopg 3',
  'conn.cancel() during pg_sleep: QueryCanceled 57014 within 3 s, session usable (as direct)',
  async () => {
    const viaProxy = cancelled(await py('with_psycopg3.py', 'cancel', 'proxy'), 'QueryCanceled');
    const viaDirect = cancelled(await py('with_psycopg3.py', 'cancel', 'direct'), 'QueryCanceled');
    assert.deepEqual(viaProxy, viaDirect);
  },
  { skip: noPsycopg3, timeout: 60_000 },
);

// asyncpg

scenario(
  FILE,
  'asyncpg',
  'connect (type introspection) and fetch identical to direct',
  async () => {
    const r = await same('with_asyncpg.py', 'fetch');
    assert.equal((r.rows as unknown[]).length, 300);
    assert.deepEqual(r.composite, [5, 'p5']);
    assert.deepEqual(r.mood_array, ['ok', 'happy', 'sad', 'ok']);
    assert.deepEqual(r.fetchrow, ["ä😀 'quoted'", { decimal: '1.50' }, [1, null, 3], 'happy']);
  },
  { skip: noAsyncpg },
);

scenario(
  FILE,
  'asyncpg',
  'prepared statements identical to direct',
  async () => {
    const r = await same('with_asyncpg.py', 'prepared');
    assert.deepEqual(r.parameters, ['int4']);
    assert.equal(r.missing, null);
    assert.deepEqual(r.named, [269, 203, 0]); // prices above 10, 100, 1000 (every 13th is NULL)
  },
  { skip: noAsyncpg },
);

scenario(
  FILE,
  'asyncpg',
  'cursors in a transaction (iteration with prefetch, fetch, forward) identical to direct',
  async () => {
    const r = await same('with_asyncpg.py', 'cursor');
    assert.equal(r.count, 1050);
    assert.equal(r.moved, 100);
    assert.deepEqual(r.next, [111, 'item 111']);
    assert.equal((r.rest as unknown[]).length, 300 - 111);
    assert.equal(r.in_transaction_after, false);
  },
  { skip: noAsyncpg },
);

scenario(
  FILE,
  'asyncpg',
  'a write raises ReadOnlySQLTransactionError 25006 as on a read-only server session; usable after',
  async () => {
    const r = await sameAsReadOnly('with_asyncpg.py', 'write');
    assert.deepEqual(r, {
      insert: refused('ReadOnlySQLTransactionError'),
      update_with_args: refused('ReadOnlySQLTransactionError'),
      delete_in_transaction: refused('ReadOnlySQLTransactionError'),
      in_transaction_after: false,
      unchanged: true,
    });
  },
  { skip: noAsyncpg },
);

scenario(
  FILE,
  'asyncpg',
  'a query timeout cancels pg_sleep (CancelRequest); the connection answers within 3 s (as direct)',
  async () => {
    for (const target of ['proxy', 'direct'] as const) {
      const { ms, ...rest } = await py('with_asyncpg.py', 'timeout_cancel', target);
      assert.deepEqual(rest, { sleep: 'timed out', after: 42 }, target);
      assert.ok(typeof ms === 'number' && ms < 3000, `${target}: ${String(ms)} ms`);
    }
  },
  { skip: noAsyncpg, timeout: 60_000 },
);
