/**
 * psql through the proxy: describe meta-commands, `\copy`, a refused write under
 * ON_ERROR_STOP, and Ctrl-C in an interactive session. Output through the proxy
 * must be byte-identical to the same run straight against the server.
 *
 * The installed psql may be older than the server (Debian 12 has psql 15): a
 * meta-command that fails even on a direct connection because the client does
 * not know the server's catalogs is skipped, with psql's own error as the reason.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before } from 'node:test';
import { startProxy, testServer, type RunningProxy, withDb, freshDatabase } from '../helpers/harness.js';
import { directTarget, psql, PSQL, type PsqlResult } from '../fixtures/integration/psql.js';
import { scenario, serverMajor, unavailable } from './compat.js';

const FILE = import.meta.filename;
const DB = 'compat_psql';

const missing = unavailable(PSQL);
const clientMajor = missing
  ? 0
  : Number(/(\d+)(?:\.\d+)?/.exec((await run(PSQL, ['--version'])).stdout)?.[1]);

/** Runs a command to completion, asynchronously (the proxy under test lives in this process). */
function run(command: string, args: string[]): Promise<PsqlResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

// The schema exists before the scenarios are registered: whether psql can run a
// meta-command against this server is decided by running it directly, once.
await freshDatabase(DB);
await withDb(DB, async (c) => {
  await c.query(`
    CREATE SCHEMA shop;
    COMMENT ON SCHEMA shop IS 'the shop''s own objects';
    CREATE TYPE shop.status AS ENUM ('draft', 'live', 'retired');
    CREATE TABLE items (
      id int PRIMARY KEY,
      name text NOT NULL,
      price numeric(10, 2) CHECK (price >= 0),
      tags text[] NOT NULL DEFAULT '{}',
      status shop.status NOT NULL DEFAULT 'live',
      added date NOT NULL DEFAULT '2024-01-01'
    );
    COMMENT ON TABLE items IS 'items for sale';
    COMMENT ON COLUMN items.price IS 'in euros, tax excluded';
    CREATE INDEX items_name_idx ON items (lower(name));
    INSERT INTO items (id, name, price, tags)
      SELECT g, 'item ' || g, g * 1.25, ARRAY['t' || g % 3, 'ä😀']
      FROM generate_series(1, 100) g;
    CREATE TABLE shop.orders (id int PRIMARY KEY, item_id int REFERENCES items, qty int NOT NULL);
    INSERT INTO shop.orders SELECT g, g % 100 + 1, g FROM generate_series(1, 50) g;
    CREATE VIEW cheap_items AS SELECT id, name, price FROM items WHERE price < 10;
    CREATE FUNCTION add_tax(p numeric, rate numeric DEFAULT 0.2) RETURNS numeric
      LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT round(p * (1 + rate), 2) $$;
    CREATE FUNCTION shop.label(i items) RETURNS text LANGUAGE plpgsql STABLE AS $$
    BEGIN
      RETURN i.name || ' (' || add_tax(i.price) || ')';
    END $$;
  `);
  await c.query('VACUUM ANALYZE items, shop.orders'); // \dt+ sizes stay put from now on
});

/** Why psql cannot run `meta` against this server even directly, if it cannot. */
async function clientCannot(meta: string): Promise<string | undefined> {
  if (missing || clientMajor >= serverMajor()) return undefined;
  const r = await psql(directTarget(), ['-c', meta], { database: DB });
  if (r.status === 0 && r.stderr === '') return undefined;
  const error = r.stderr.split('\n')[0] ?? `exit status ${r.status}`;
  return `psql ${clientMajor} cannot run ${meta} against PostgreSQL ${serverMajor()}, even directly (${error}); Debian 12 has no newer psql`;
}

/** [meta-command, something its output must show] */
const metas: Array<[string, string]> = [
  ['\\l', DB],
  ['\\dn', 'shop'],
  ['\\dt+', 'items for sale'],
  ['\\d+ items', 'items_name_idx'],
  ['\\df', 'add_tax'],
  ['\\dv', 'cheap_items'],
  ['\\du', testServer().user],
  ['\\dx', 'plpgsql'],
  ['\\sf shop.label', 'CREATE OR REPLACE FUNCTION shop.label(i items)'],
];

// Every await before the first scenario: node:test starts running (and ends the
// file's hooks) as soon as registration pauses.
const cannot = new Map<string, string | undefined>();
for (const [meta] of metas) cannot.set(meta, await clientCannot(meta));

let proxy: RunningProxy;
before(async () => {
  proxy = await startProxy({ policy: { maxSleepSeconds: 60 } });
});
after(async () => {
  await proxy.close();
});

for (const [meta, shows] of metas) {
  scenario(
    FILE,
    'psql',
    `${meta} output identical to direct`,
    async () => {
      const viaProxy = await psql(proxy, ['-c', meta], { database: DB });
      const viaDirect = await psql(directTarget(), ['-c', meta], { database: DB });
      assert.equal(viaDirect.status, 0, viaDirect.stderr);
      assert.equal(viaDirect.stderr, '');
      assert.ok(viaDirect.stdout.includes(shows), `${meta} should show ${shows}:\n${viaDirect.stdout}`);
      assert.deepEqual(viaProxy, viaDirect);
    },
    { skip: missing ?? cannot.get(meta) },
  );
}

scenario(
  FILE,
  'psql',
  '\\copy (select ...) to stdout identical to direct',
  async () => {
    const args = [
      '-c',
      '\\copy (SELECT id, name, price, tags, status, added FROM items ORDER BY id) TO STDOUT',
      '-c',
      "\\copy (SELECT * FROM shop.orders WHERE qty > 10 ORDER BY id) TO STDOUT (FORMAT csv, HEADER, DELIMITER ';')",
    ];
    const viaProxy = await psql(proxy, args, { database: DB });
    const viaDirect = await psql(directTarget(), args, { database: DB });
    assert.equal(viaDirect.status, 0, viaDirect.stderr);
    const lines = viaDirect.stdout.split('\n');
    assert.equal(lines[0], '1\titem 1\t1.25\t{t1,ä😀}\tlive\t2024-01-01');
    assert.equal(lines.length, 100 + 1 + 40 + 1); // 100 items, the CSV header, 40 orders, a final newline
    assert.deepEqual(viaProxy, viaDirect);
  },
  { skip: missing },
);

scenario(
  FILE,
  'psql',
  'a write under ON_ERROR_STOP exits 3 with SQLSTATE 25006, as a read-only server session does',
  async () => {
    const script = [
      '\\set VERBOSITY verbose',
      "SELECT 'before' AS step;",
      "INSERT INTO items (id, name, price) VALUES (1000, 'new', 1);",
      "SELECT 'after' AS step;",
      '',
    ].join('\n');
    const count = (): Promise<number> =>
      withDb(
        DB,
        async (c) => (await c.query<{ n: number }>('SELECT count(*)::int AS n FROM items')).rows[0]!.n,
      );
    const viaProxy = await psql(proxy, ['-v', 'ON_ERROR_STOP=1'], { database: DB, input: script });
    // The same script on a direct session the server itself keeps read-only.
    const readOnly = await psql(directTarget(), ['-v', 'ON_ERROR_STOP=1'], {
      database: DB,
      input: script,
      env: { PGOPTIONS: '-c default_transaction_read_only=on' },
    });
    const error = /^ERROR: {2}(\w{5}): /m;
    assert.equal(readOnly.status, 3, readOnly.stderr);
    assert.equal(readOnly.stderr.match(error)?.[1], '25006', readOnly.stderr);
    assert.equal(viaProxy.status, 3, viaProxy.stderr);
    assert.equal(viaProxy.stderr.match(error)?.[1], '25006', viaProxy.stderr);
    assert.match(viaProxy.stderr, /read-only/);
    assert.equal(viaProxy.stdout, readOnly.stdout); // 'before' ran, 'after' did not
    assert.match(viaProxy.stdout, /before/);
    assert.doesNotMatch(viaProxy.stdout, /after/);
    assert.equal(await count(), 100);
  },
  { skip: missing },
);

const noScript = unavailable('script', ['-q', '-e', '-c', 'true', '/dev/null']);

/** Single-quotes a word for sh. */
const sh = (word: string): string => `'${word.replaceAll("'", `'\\''`)}'`;

scenario(
  FILE,
  'psql',
  'Ctrl-C cancels a running pg_sleep (57014) and the same session keeps working',
  async () => {
    const s = testServer();
    const app = 'compat-psql-ctrl-c';
    // psql reading a pipe treats Ctrl-C as the end of its script (exit 3): this one
    // gets a terminal from script(1), is interactive, and Ctrl-C is typed into it.
    const command = [
      'exec',
      PSQL,
      '-X',
      '-n',
      '-h',
      proxy.host,
      '-p',
      String(proxy.port),
      '-U',
      s.user,
      '-d',
      DB,
    ];
    const child = spawn('script', ['-q', '-e', '-c', command.map(sh).join(' '), '/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: {
        ...process.env,
        PGPASSWORD: s.password,
        PGAPPNAME: app,
        PGSSLMODE: 'disable',
        PGCONNECT_TIMEOUT: '5',
        PGOPTIONS: '',
        LC_ALL: 'C',
        TERM: 'dumb',
        PAGER: '',
        PSQL_PAGER: '',
      },
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c.replaceAll('\r\n', '\n')));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (out += c.replaceAll('\r\n', '\n')));
    const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
    const until = async (what: string, pred: () => boolean | Promise<boolean>, ms = 5000): Promise<void> => {
      const deadline = Date.now() + ms;
      while (!(await pred())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; psql said:\n${out}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    try {
      child.stdin.write("\\set VERBOSITY verbose\nSELECT 'pid ' || pg_backend_pid() AS before_cancel;\n");
      await until('the first query', () => /pid \d+/.test(out));
      const pid = /pid (\d+)/.exec(out)![1];
      child.stdin.write('SELECT pg_sleep(30);\n');
      await withDb('postgres', (d) =>
        until('the sleep to run upstream', async () => {
          const r = await d.query(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE 'SELECT pg_sleep(30)%'",
            [app],
          );
          return r.rowCount === 1;
        }),
      );
      const pressed = Date.now();
      child.stdin.write('\x03'); // Ctrl-C: the terminal sends psql SIGINT
      await until('the cancel', () => out.includes('canceling statement due to user request'), 3000);
      assert.ok(Date.now() - pressed < 3000);
      assert.match(out, /Cancel request sent\n/);
      assert.match(out, /ERROR: {2}57014: canceling statement due to user request/);
      child.stdin.write("SELECT 'pid ' || pg_backend_pid() AS after_cancel;\nSELECT 6 * 7 AS answer;\n\\q\n");
      assert.equal(await closed, 0, out);
      const after = out.slice(out.indexOf('canceling statement'));
      assert.match(after, /after_cancel\s*\n-+\n pid (\d+)\n/);
      assert.equal(/ pid (\d+)\n/.exec(after)![1], pid, 'the same upstream session after the cancel');
      assert.match(after, /answer\s*\n-+\n\s+42\n/);
      assert.ok(proxy.logs.some((l) => l.event === 'cancel_forwarded'));
    } finally {
      child.kill('SIGKILL');
    }
  },
  { skip: missing ?? noScript, timeout: 30_000 },
);
