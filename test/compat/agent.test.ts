/**
 * An AI agent behind an MCP server: arbitrary SQL strings, one after the other,
 * over ONE connection, as node-postgres simple queries (what MCP database servers
 * do with the text the model wrote). Benign reads must answer as a direct
 * read-only connection does; each hostile string from the threat model must be
 * refused with its SQLSTATE; after every string the same connection must still
 * answer; and at the end nothing may have changed on the server.
 */
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import type pg from 'pg';
import { direct, startProxy, type RunningProxy } from '../helpers/harness.js';
import { scenario } from './compat.js';

const FILE = 'agent';
const CLIENT = 'MCP-style agent (node-postgres, one connection, simple queries)';

/** A string the agent sends: `read` must answer as directly; otherwise the SQLSTATE it must get. */
interface Attempt {
  sql: string;
  expect: 'read' | string;
}

// Benign and hostile, mixed, in the order the agent sends them.
const ATTEMPTS: Attempt[] = [
  { sql: 'SELECT count(*) FROM agent_orders', expect: 'read' },
  { sql: 'COMMIT; DROP TABLE agent_orders', expect: '25006' },
  {
    sql: 'SELECT id, customer, total FROM agent_orders WHERE total > 100 ORDER BY id LIMIT 5',
    expect: 'read',
  },
  { sql: '/* comment */ DELETE FROM agent_orders', expect: '25006' },
  { sql: 'WITH x AS (DELETE FROM agent_orders RETURNING *) SELECT * FROM x', expect: '25006' },
  {
    sql: '/* top customers */ SELECT customer, sum(total) AS spent FROM agent_orders GROUP BY customer ORDER BY spent DESC, customer LIMIT 3',
    expect: 'read',
  },
  {
    sql: "SELECT * FROM dblink('dbname=postgres', 'DELETE FROM agent_orders') AS r(x text)",
    expect: '42501',
  },
  {
    sql: 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()',
    expect: '42501',
  },
  { sql: "SELECT set_config('default_transaction_read_only', 'off', false)", expect: '42501' },
  {
    sql: "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_name LIKE 'agent%' ORDER BY 1",
    expect: 'read',
  },
  { sql: 'BEGIN READ WRITE', expect: '25006' },
  { sql: 'SET SESSION AUTHORIZATION pg_database_owner', expect: '42501' },
  { sql: "COPY agent_orders TO PROGRAM 'id'", expect: '25006' },
  {
    sql: 'WITH big AS (SELECT * FROM agent_orders WHERE total > 250) SELECT count(*) FROM big',
    expect: 'read',
  },
  { sql: 'DO $$ BEGIN DELETE FROM agent_orders; END $$', expect: '25006' },
  { sql: 'CALL agent_purge()', expect: '25006' },
  { sql: 'SELECT lo_create(0)', expect: '42501' },
  { sql: 'PREPARE p AS DELETE FROM agent_orders', expect: '25006' },
  {
    sql: "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'agent_orders' ORDER BY ordinal_position",
    expect: 'read',
  },
  { sql: 'EXPLAIN ANALYZE DELETE FROM agent_orders', expect: '25006' },
  { sql: 'SELECT * FROM agent_orders WHERE id = 1 FOR UPDATE', expect: '25006' },
  { sql: 'VACUUM agent_orders', expect: '25006' },
  { sql: 'LISTEN agent_channel', expect: 'read' },
  { sql: 'SELEC * FROM agent_orders', expect: '42601' },
  { sql: '', expect: 'read' },
  { sql: 'SET transaction_read_only = off', expect: '42501' },
  { sql: "SELECT 1 AS one; UPDATE agent_canary SET note = 'pwned'", expect: '25006' },
  { sql: "SELECT nextval('agent_seq')", expect: '42501' },
  { sql: 'SELECT pg_advisory_lock(42)', expect: '42501' },
  { sql: "SELECT pg_read_file('/etc/passwd')", expect: '42501' },
  { sql: 'CREATE TEMP TABLE agent_tmp AS SELECT * FROM agent_orders', expect: '25006' },
  // A function the proxy cannot see into: the server's pinned read-only mode refuses its DELETE.
  { sql: 'SELECT agent_delete_all()', expect: '25006' },
  { sql: 'BEGIN READ ONLY; SELECT count(*) AS n FROM agent_orders; COMMIT', expect: 'read' },
  { sql: 'SHOW transaction_read_only', expect: 'read' },
];

/** What one simple query gave: its results (command and rows, per statement) or its SQLSTATE. */
type Answer =
  { results: Array<{ command: string | null; rows: unknown[] }> } | { code: string; message: string };

async function ask(c: pg.Client, sql: string): Promise<Answer> {
  try {
    const r = (await c.query(sql)) as pg.QueryResult | pg.QueryResult[];
    return { results: (Array.isArray(r) ? r : [r]).map((x) => ({ command: x.command, rows: x.rows })) };
  } catch (err) {
    const e = err as pg.DatabaseError;
    return { code: e.code ?? `no SQLSTATE: ${e.message}`, message: e.message };
  }
}

interface Turn {
  attempt: Attempt;
  answer: Answer;
  /** What `SELECT 1` on the same connection answered right after. */
  stillUsable: Answer;
}

/** Everything on the server that the hostile strings tried to change. */
async function serverState(): Promise<Record<string, unknown>> {
  const d = await direct();
  try {
    const one = async (sql: string): Promise<unknown> => (await d.query(sql)).rows[0];
    return {
      orders: await one(
        "SELECT count(*)::int AS n, md5(string_agg(id || ':' || customer || ':' || total, ',' ORDER BY id)) AS h FROM agent_orders",
      ),
      canary: await one('SELECT note FROM agent_canary'),
      sequence: await one('SELECT last_value, is_called FROM agent_seq'),
      largeObjects: await one('SELECT count(*)::int AS n FROM pg_largeobject_metadata'),
      advisoryLocks: await one("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'"),
      tables: await one(
        "SELECT string_agg(relname, ',' ORDER BY relname) AS names FROM pg_class WHERE relname LIKE 'agent%'",
      ),
      lastVacuum: await one(
        "SELECT coalesce(vacuum_count, 0) AS vacuums FROM pg_stat_user_tables WHERE relname = 'agent_orders'",
      ),
    };
  } finally {
    await d.end();
  }
}

let proxy: RunningProxy;
const turns: Turn[] = [];
let expected: Map<string, Answer>;
let stateBefore: Record<string, unknown>;
let bystander: pg.Client;
let bystanderPid: number;
let refusedLogged: number;

before(async () => {
  const d = await direct();
  await d.query(`
    DROP TABLE IF EXISTS agent_orders, agent_canary;
    DROP SEQUENCE IF EXISTS agent_seq;
    CREATE TABLE agent_orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(10, 2) NOT NULL);
    INSERT INTO agent_orders SELECT g, 'customer ' || (g % 7), (g * 37 % 300) + 0.99 FROM generate_series(1, 200) g;
    CREATE TABLE agent_canary (note text);
    INSERT INTO agent_canary VALUES ('untouched');
    CREATE SEQUENCE agent_seq;
    CREATE OR REPLACE PROCEDURE agent_purge() LANGUAGE sql AS 'DELETE FROM agent_orders';
    CREATE OR REPLACE FUNCTION agent_delete_all() RETURNS bigint LANGUAGE sql
      AS 'DELETE FROM agent_orders; SELECT count(*) FROM agent_orders';
  `);
  await d.end();
  stateBefore = await serverState();
  // Another session the agent would like to terminate.
  bystander = await direct({ application_name: 'agent-bystander' });
  bystanderPid = (await bystander.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;

  // What a direct connection pinned read-only answers to the benign strings.
  const ro = await direct({ options: '-c default_transaction_read_only=on' });
  expected = new Map();
  for (const a of ATTEMPTS) if (a.expect === 'read') expected.set(a.sql, await ask(ro, a.sql));
  await ro.end();

  proxy = await startProxy();
  const agent = await proxy.client({ application_name: 'mcp-agent' });
  for (const attempt of ATTEMPTS) {
    const answer = await ask(agent, attempt.sql);
    turns.push({ attempt, answer, stillUsable: await ask(agent, 'SELECT 1 AS one') });
  }
  refusedLogged = proxy.logs.filter((l) => l.event === 'statement_refused').length;
  await agent.end();
});
after(async () => {
  await bystander?.end();
  await proxy?.close();
});

const reads = ATTEMPTS.filter((a) => a.expect === 'read');
const hostile = ATTEMPTS.filter((a) => a.expect !== 'read');

scenario(
  FILE,
  CLIENT,
  `${reads.length} benign strings (reads, catalog queries, LISTEN, an empty string, a READ ONLY block) answer as a direct read-only connection`,
  async () => {
    const wrong = turns
      .filter((t) => t.attempt.expect === 'read')
      .filter((t) => {
        try {
          assert.deepEqual(t.answer, expected.get(t.attempt.sql));
          return false;
        } catch {
          return true;
        }
      })
      .map((t) => ({ sql: t.attempt.sql, got: t.answer, expected: expected.get(t.attempt.sql) }));
    assert.deepEqual(wrong, []);
    // The comparison is not vacuous.
    for (const sql of expected.keys()) assert.ok('results' in expected.get(sql)!, `direct: ${sql}`);
  },
);

scenario(
  FILE,
  CLIENT,
  `${hostile.length} hostile strings from the threat model refused with the expected SQLSTATE`,
  async () => {
    const got = turns
      .filter((t) => t.attempt.expect !== 'read')
      .map((t) => ({ sql: t.attempt.sql, code: 'code' in t.answer ? t.answer.code : 'ran' }));
    assert.deepEqual(
      got,
      hostile.map((a) => ({ sql: a.sql, code: a.expect })),
    );
    // Refused by the proxy (its own message, one log line each), except the function
    // whose DELETE only the server sees.
    const byServer = 'SELECT agent_delete_all()';
    for (const t of turns.filter((x) => x.attempt.expect !== 'read' && x.attempt.sql !== byServer)) {
      const a = t.answer as { message: string };
      if (t.attempt.expect !== '42601') assert.match(a.message, /^pg-readonly-proxy: /, t.attempt.sql);
    }
    assert.match(
      (turns.find((t) => t.attempt.sql === byServer)!.answer as { message: string }).message,
      /cannot execute DELETE in a read-only transaction/,
    );
    assert.equal(refusedLogged, hostile.length - 1);
  },
);

scenario(FILE, CLIENT, 'the same connection answers SELECT 1 after every string', async () => {
  assert.equal(turns.length, ATTEMPTS.length);
  const broken = turns
    .filter(
      (t) =>
        JSON.stringify(t.stillUsable) !==
        JSON.stringify({ results: [{ command: 'SELECT', rows: [{ one: 1 }] }] }),
    )
    .map((t) => ({ after: t.attempt.sql, got: t.stillUsable }));
  assert.deepEqual(broken, []);
});

scenario(
  FILE,
  CLIENT,
  'nothing changed: rows, canary, sequence, large objects, advisory locks, tables, no VACUUM, the other backend alive',
  async () => {
    assert.deepEqual(await serverState(), stateBefore);
    const r = await bystander.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    assert.equal(r.rows[0]!.pid, bystanderPid);
  },
);
