/**
 * pg_dump through the proxy: a plain dump identical to a direct one, and a
 * directory-format dump with `-j 2`, whose workers join the leader's snapshot
 * (pg_export_snapshot, SET TRANSACTION SNAPSHOT) through the proxy.
 *
 * pg_dump refuses a server newer than itself; Debian 12 has pg_dump 15, so on a
 * newer server the scenarios are skipped and say so. PG_DUMP / PG_RESTORE name
 * other binaries.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { startProxy, testServer, type RunningProxy, withDb, freshDatabase } from '../helpers/harness.js';
import { run, type RunResult } from '../helpers/run.js';
import { scenario, serverMajor, unavailable } from './compat.js';

const FILE = import.meta.filename;
const DB = 'compat_dump';
const PG_DUMP = process.env.PG_DUMP ?? 'pg_dump';
const PG_RESTORE = process.env.PG_RESTORE ?? 'pg_restore';

/** Runs pg_dump / pg_restore to completion as the test superuser, without TLS. */
function runClient(command: string, args: string[]): Promise<RunResult> {
  const s = testServer();
  return run(command, args, {
    env: {
      ...process.env,
      PGUSER: s.user,
      PGPASSWORD: s.password,
      PGSSLMODE: 'disable',
      PGCONNECT_TIMEOUT: '5',
      PGOPTIONS: '',
      LC_ALL: 'C',
    },
    timeoutMs: 60_000,
  });
}

function majorOf(versionLine: string): number {
  return Number(/\) (\d+)/.exec(versionLine)?.[1] ?? /(\d+)/.exec(versionLine)?.[1]);
}

/** Why pg_dump (and pg_restore) cannot dump this server, if they cannot. */
async function cannotDump(): Promise<string | undefined> {
  const missing = unavailable(PG_DUMP) ?? unavailable(PG_RESTORE);
  if (missing) return missing;
  const client = majorOf((await runClient(PG_DUMP, ['--version'])).stdout);
  if (client < serverMajor()) {
    return `pg_dump ${client} cannot dump PostgreSQL ${serverMajor()} (it refuses a newer server: "server version mismatch"; Debian 12 has no newer client)`;
  }
  return undefined;
}
const skip = await cannotDump();

/** pg_dump ≥ 15.14 / 17.6 brackets a plain script with \restrict and \unrestrict and a random key. */
const unrestricted = (script: string): string =>
  script.replace(/^\\(?:un)?restrict \S+$/gm, '\\restrict KEY');

let proxy: RunningProxy;
let work: string;

before(async () => {
  if (skip) return;
  work = mkdtempSync(path.join(tmpdir(), 'pgro-compat-dump-'));
  proxy = await startProxy();
  await freshDatabase(DB);
  await withDb(DB, async (c) => {
    await c.query(`
      CREATE SCHEMA shop;
      COMMENT ON SCHEMA shop IS 'everything the shop owns';
      CREATE TYPE shop.status AS ENUM ('draft', 'live', 'retired');
      CREATE DOMAIN shop.money_eur AS numeric(12, 2) CHECK (VALUE >= 0);
      CREATE TABLE shop.customers (
        id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name text NOT NULL,
        email text UNIQUE,
        meta jsonb
      );
      CREATE TABLE shop.items (
        id serial PRIMARY KEY,
        name text NOT NULL,
        price shop.money_eur,
        status shop.status NOT NULL DEFAULT 'live',
        photo bytea,
        tags text[],
        updated timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00'
      );
      CREATE TABLE shop.orders (
        id bigint PRIMARY KEY,
        customer_id int NOT NULL REFERENCES shop.customers,
        item_id int NOT NULL REFERENCES shop.items ON DELETE CASCADE,
        qty int NOT NULL CHECK (qty > 0),
        placed timestamptz NOT NULL
      );
      CREATE INDEX orders_customer_idx ON shop.orders (customer_id, placed DESC);
      CREATE TABLE shop.events (id int NOT NULL, at date NOT NULL, payload text) PARTITION BY RANGE (at);
      CREATE TABLE shop.events_2024 PARTITION OF shop.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
      CREATE TABLE shop.events_2025 PARTITION OF shop.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
      CREATE SEQUENCE shop.ticket START 100;
      SELECT setval('shop.ticket', 123);
      CREATE VIEW shop.order_totals AS
        SELECT o.customer_id, sum(o.qty * i.price) AS total
        FROM shop.orders o JOIN shop.items i ON i.id = o.item_id GROUP BY o.customer_id;
      CREATE MATERIALIZED VIEW shop.item_counts AS
        SELECT item_id, count(*) AS n FROM shop.orders GROUP BY item_id;
      CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        NEW.updated := now();
        RETURN NEW;
      END $$;
      CREATE TRIGGER items_touch BEFORE UPDATE ON shop.items FOR EACH ROW EXECUTE FUNCTION shop.touch();
      ALTER TABLE shop.orders ENABLE ROW LEVEL SECURITY;
      CREATE POLICY orders_recent ON shop.orders USING (placed > '2020-01-01');
      GRANT USAGE ON SCHEMA shop TO PUBLIC;
      GRANT SELECT ON shop.items TO PUBLIC;
      COMMENT ON TABLE shop.items IS 'what the shop sells';
      COMMENT ON COLUMN shop.items.price IS 'in euros';

      INSERT INTO shop.customers (name, email, meta)
        SELECT 'customer ' || g, 'c' || g || '@example.com',
               jsonb_build_object('tier', g % 3, 'tags', jsonb_build_array('a', g))
        FROM generate_series(1, 500) g;
      INSERT INTO shop.items (name, price, status, photo, tags)
        SELECT 'item ' || g || E'\\ttab\\nnewline \\\\ backslash ä😀', g * 1.25,
               (ARRAY['draft', 'live', 'retired'])[g % 3 + 1]::shop.status,
               CASE WHEN g % 7 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
               ARRAY['t' || g % 5, NULL]
        FROM generate_series(1, 200) g;
      INSERT INTO shop.orders
        SELECT g, g % 500 + 1, g % 200 + 1, g % 9 + 1, timestamptz '2024-03-01 12:00:00+00' + g * interval '17 minutes'
        FROM generate_series(1, 5000) g;
      INSERT INTO shop.events
        SELECT g, date '2024-06-01' + g % 400, repeat('x', g % 50) FROM generate_series(1, 1000) g;
      REFRESH MATERIALIZED VIEW shop.item_counts;
    `);
  });
});
after(async () => {
  await proxy?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

const at = (t: { host: string; port: number }): string[] => ['-h', t.host, '-p', String(t.port), '-d', DB];

scenario(
  FILE,
  'pg_dump',
  'plain format dump identical to direct',
  async () => {
    const viaProxy = await runClient(PG_DUMP, at(proxy));
    const viaDirect = await runClient(PG_DUMP, at(testServer()));
    assert.equal(viaDirect.status, 0, viaDirect.stderr);
    assert.equal(viaProxy.status, 0, viaProxy.stderr);
    assert.equal(viaProxy.stderr, '');
    assert.match(
      viaDirect.stdout,
      /COPY shop\.orders \(id, customer_id, item_id, qty, placed\) FROM stdin;\n1\t2\t2\t2\t/,
    );
    assert.match(viaDirect.stdout, /SELECT pg_catalog\.setval\('shop\.ticket', 123, true\);/);
    assert.equal(unrestricted(viaProxy.stdout), unrestricted(viaDirect.stdout));
  },
  { skip },
);

/** The archive's table of contents, without the line that says when it was made. */
async function toc(dir: string): Promise<string> {
  const r = await runClient(PG_RESTORE, ['-l', dir]);
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.replace(/^; Archive created at .*\n/m, '');
}

/** The data files of a directory archive (uncompressed: -Z 0), by name. */
function dataFiles(dir: string): Map<string, Buffer> {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.dat') && f !== 'toc.dat')
    .sort();
  return new Map(files.map((f) => [f, readFileSync(path.join(dir, f))]));
}

scenario(
  FILE,
  'pg_dump',
  'directory format with -j 2 (synchronized snapshots): TOC and data identical to direct',
  async () => {
    const viaProxy = path.join(work, 'proxy');
    const viaDirect = path.join(work, 'direct');
    const sessionsBefore = proxy.logs.filter((l) => l.event === 'session_ready').length;
    const p = await runClient(PG_DUMP, [...at(proxy), '-Fd', '-j', '2', '-Z', '0', '-f', viaProxy]);
    assert.equal(p.status, 0, p.stderr);
    assert.equal(p.stderr, '');
    // The leader and its two workers each had a session through the proxy.
    const sessions = proxy.logs.filter((l) => l.event === 'session_ready').length - sessionsBefore;
    assert.ok(sessions >= 3, `${sessions} sessions`);
    assert.ok(!proxy.logs.some((l) => l.event === 'statement_refused'));
    const d = await runClient(PG_DUMP, [...at(testServer()), '-Fd', '-j', '2', '-Z', '0', '-f', viaDirect]);
    assert.equal(d.status, 0, d.stderr);

    const directToc = await toc(viaDirect);
    assert.match(directToc, /TABLE DATA shop orders /);
    assert.equal(await toc(viaProxy), directToc);

    const directData = dataFiles(viaDirect);
    assert.ok(directData.size >= 5, `${directData.size} data files`);
    assert.deepEqual(dataFiles(viaProxy), directData);

    // And the whole archive, as the script pg_restore makes of it.
    const scripts = await Promise.all(
      [viaProxy, viaDirect].map((dir) => runClient(PG_RESTORE, ['-f', '-', dir])),
    );
    for (const s of scripts) assert.equal(s.status, 0, s.stderr);
    assert.equal(unrestricted(scripts[0]!.stdout), unrestricted(scripts[1]!.stdout));
  },
  { skip },
);
