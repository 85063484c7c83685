/**
 * `doctor` against a real PostgreSQL: the superuser, a writable role (owns a
 * table, INSERT elsewhere, SECURITY DEFINER functions, a powerful predefined
 * role) and a minimal read-only role (CONNECT, USAGE, SELECT), each with the
 * findings, severities and exit codes expected; a database with dblink and an
 * untrusted language; proxy-managed users; TLS; and the logins that fail.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { createScramVerifier } from '../../src/auth/scram.js';
import { resolveConfig, type ProxyConfig } from '../../src/config/config.js';
import { runDoctor, type DoctorOptions } from '../../src/doctor/index.js';
import type { DoctorReport } from '../../src/doctor/report.js';
import type { Severity } from '../../src/doctor/severity.js';
import { makeTestCerts } from '../helpers/certs.js';
import { freshDatabase, testServer, withDb } from '../helpers/harness.js';
import { run } from '../helpers/run.js';
import { serveTls } from '../helpers/server-tls.js';

const DB = 'doctor_test';
const EXT_DB = 'doctor_test_ext';
const RW = 'doctor_rw';
const RO = 'doctor_ro';
const RW_PASSWORD = 'doctor-rw-Secret-1';
const RO_PASSWORD = 'doctor-ro-Secret-2';
const ENV = 'PGRO_TEST_DOCTOR_UPSTREAM';
/** Before PostgreSQL 14's end of life, so no server-eol finding on either version. */
const NOW = new Date('2026-06-01T00:00:00Z');

function capture(): { stream: Writable; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  return { stream, text: () => chunks.join('') };
}

function passthroughConfig(params = 'sslmode=disable', host = testServer().host): ProxyConfig {
  return resolveConfig({}, { upstream: `postgres://${host}:${testServer().port}?${params}` }, {});
}

interface Run {
  code: number;
  out: string;
  err: string;
}

async function doctor(opts: Partial<DoctorOptions> & { user: string }): Promise<Run> {
  const out = capture();
  const err = capture();
  const config = opts.config ?? passthroughConfig();
  const code = await runDoctor({
    config,
    upstream: config.upstream!,
    database: DB,
    json: false,
    failOn: 'high',
    now: NOW,
    ...opts,
    out: out.stream,
    err: err.stream,
  });
  return { code, out: out.text(), err: err.text() };
}

/** The doctor's JSON report for this login. */
async function report(
  opts: Partial<DoctorOptions> & { user: string },
): Promise<{ code: number; r: DoctorReport }> {
  const run = await doctor({ ...opts, json: true });
  assert.equal(run.err, '');
  return { code: run.code, r: JSON.parse(run.out) as DoctorReport };
}

function ids(r: DoctorReport): Array<[string, Severity]> {
  return r.findings.map((f) => [f.id, f.severity]);
}

function find(r: DoctorReport, id: string) {
  const f = r.findings.find((x) => x.id === id);
  assert.ok(f, `no finding ${id} in ${JSON.stringify(ids(r))}`);
  return f;
}

async function dropRoles(): Promise<void> {
  await withDb('postgres', async (c) => {
    for (const db of [DB, EXT_DB]) await c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    for (const role of [RW, RO]) await c.query(`DROP ROLE IF EXISTS ${role}`);
  });
}

before(async () => {
  await dropRoles();
  await withDb('postgres', async (c) => {
    await c.query(`CREATE ROLE ${RW} LOGIN PASSWORD '${RW_PASSWORD}'`);
    await c.query(`CREATE ROLE ${RO} LOGIN PASSWORD '${RO_PASSWORD}'`);
  });
  await freshDatabase(DB);
  await withDb(DB, async (c) => {
    for (const sql of [
      // PostgreSQL 14 still grants CREATE on public to everyone.
      'REVOKE CREATE ON SCHEMA public FROM PUBLIC',
      'CREATE SCHEMA app',
      'CREATE TABLE app.orders (id serial PRIMARY KEY, note text)',
      'CREATE TABLE app.customers (id int PRIMARY KEY, name text)',
      `CREATE TABLE app.rw_notes (id int)`,
      `ALTER TABLE app.rw_notes OWNER TO ${RW}`,
      `GRANT CONNECT ON DATABASE ${DB} TO ${RW}, ${RO}`,
      `GRANT USAGE ON SCHEMA app TO ${RW}, ${RO}`,
      `GRANT SELECT ON ALL TABLES IN SCHEMA app TO ${RO}`,
      `GRANT SELECT, INSERT ON app.orders TO ${RW}`,
      `GRANT USAGE ON SEQUENCE app.orders_id_seq TO ${RW}`,
      // A SECURITY DEFINER function owned by the superuser, for the writable role only.
      `CREATE FUNCTION app.purge_orders() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'DELETE FROM app.orders'`,
      'REVOKE EXECUTE ON FUNCTION app.purge_orders() FROM PUBLIC',
      `GRANT EXECUTE ON FUNCTION app.purge_orders() TO ${RW}`,
      // One the writable role owns, with its search_path set.
      `CREATE FUNCTION app.rw_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS 'SELECT count(*) FROM app.rw_notes'`,
      `ALTER FUNCTION app.rw_count() OWNER TO ${RW}`,
      `REVOKE EXECUTE ON FUNCTION app.rw_count() FROM PUBLIC`,
      `GRANT pg_signal_backend TO ${RW}`,
      // The proxy's startup parameters outrank this: an info finding, and the pin still holds.
      `ALTER ROLE ${RO} IN DATABASE ${DB} SET default_transaction_read_only = off`,
    ])
      await c.query(sql);
  });
  await freshDatabase(EXT_DB);
  await withDb(EXT_DB, async (c) => {
    for (const sql of [
      'REVOKE CREATE ON SCHEMA public FROM PUBLIC',
      'CREATE EXTENSION dblink',
      // An untrusted language without an outside library: plpgsql's handler, not declared TRUSTED.
      'CREATE LANGUAGE doctor_untrusted HANDLER plpgsql_call_handler VALIDATOR plpgsql_validator',
      `CREATE FUNCTION public.shell_out() RETURNS int LANGUAGE doctor_untrusted AS 'BEGIN RETURN 1; END'`,
      'REVOKE EXECUTE ON FUNCTION public.shell_out() FROM PUBLIC',
      `GRANT EXECUTE ON FUNCTION public.shell_out() TO ${RW}`,
    ])
      await c.query(sql);
  });
});

after(async () => {
  await dropRoles();
});

describe('doctor grades the role', () => {
  test('the superuser: critical, exit 1 even with --fail-on critical', async () => {
    const s = testServer();
    const { code, r } = await report({ user: s.user, password: s.password });
    assert.equal(code, 1);
    assert.deepEqual(ids(r), [
      ['role-superuser', 'critical'],
      ['pin-holds', 'info'],
    ]);
    assert.equal(r.role.superuser, true);
    assert.equal(r.server.versionNum >= 140000, true);
    assert.equal(r.summary.highest, 'critical');
    const strict = await doctor({ user: s.user, password: s.password, failOn: 'critical' });
    assert.equal(strict.code, 1);
  });

  test('a writable role: ownership, writes and a superuser SECURITY DEFINER function are high', async () => {
    const { code, r } = await report({ user: RW, password: RW_PASSWORD });
    assert.equal(code, 1);
    assert.deepEqual(ids(r), [
      ['owns-objects', 'high'],
      ['security-definer-superuser', 'high'],
      ['table-write', 'high'],
      ['member-pg_signal_backend', 'medium'],
      ['sequence-write', 'medium'],
      ['security-definer-own', 'low'],
      ['pin-holds', 'info'],
    ]);
    assert.deepEqual(find(r, 'table-write').objects, ['app.orders', 'app.rw_notes']);
    assert.match(find(r, 'table-write').detail, /app\.orders \(INSERT\)/);
    assert.deepEqual(find(r, 'owns-objects').objects, ['function app.rw_count()', 'table app.rw_notes']);
    assert.deepEqual(find(r, 'security-definer-superuser').objects, ['app.purge_orders()']);
    assert.match(find(r, 'security-definer-superuser').detail, /no SET search_path/);
    assert.doesNotMatch(find(r, 'security-definer-own').detail, /no SET search_path/);
    assert.deepEqual(find(r, 'sequence-write').objects, ['app.orders_id_seq']);
    // Nothing critical: --fail-on critical passes it.
    assert.equal((await doctor({ user: RW, password: RW_PASSWORD, failOn: 'critical' })).code, 0);
  });

  test('a minimal read-only role: nothing above low, exit 0', async () => {
    const { code, r } = await report({ user: RO, password: RO_PASSWORD });
    assert.equal(code, 0);
    assert.deepEqual(ids(r), [
      ['pin-holds', 'info'],
      ['setting-override', 'info'],
    ]);
    assert.match(
      find(r, 'setting-override').detail,
      new RegExp(`ALTER ROLE ${RO} IN DATABASE ${DB}: default_transaction_read_only = off`),
    );
    assert.deepEqual(r.summary.counts, { info: 2, low: 0, medium: 0, high: 0, critical: 0 });
    assert.equal((await doctor({ user: RO, password: RO_PASSWORD, failOn: 'low' })).code, 0);
    assert.equal((await doctor({ user: RO, password: RO_PASSWORD, failOn: 'info' })).code, 1);
  });

  test('the text report groups by severity and ends with the summary', async () => {
    const run = await doctor({ user: RW, password: RW_PASSWORD });
    assert.equal(run.code, 1);
    assert.equal(run.err, '');
    const lines = run.out.trimEnd().split('\n');
    assert.equal(lines[0], 'pg-readonly-proxy doctor');
    assert.match(
      lines[1]!,
      new RegExp(`PostgreSQL \\d+\\.\\d+ at ${testServer().host}:${testServer().port}`),
    );
    assert.match(lines[2]!, new RegExp(`"${RW}" in database "${DB}"`));
    assert.deepEqual(
      lines.filter((l) => /^[A-Z]+ \(\d+\)$/.test(l)),
      ['HIGH (3)', 'MEDIUM (2)', 'LOW (1)', 'INFO (1)'],
    );
    assert.equal(
      lines.at(-1),
      'Summary: 0 critical, 3 high, 2 medium, 1 low, 1 info; fails: findings at high or above (exit 1).',
    );
  });

  test('extensions and languages that reach outside the database', async () => {
    const ro = await report({ user: RO, password: RO_PASSWORD, database: EXT_DB });
    // dblink's functions are executable by PUBLIC; the untrusted function is not the read-only role's.
    assert.deepEqual(ids(ro.r), [
      ['extension-dblink', 'high'],
      ['untrusted-language-doctor_untrusted', 'medium'],
      ['pin-holds', 'info'],
    ]);
    assert.equal(ro.code, 1);
    const rw = await report({ user: RW, password: RW_PASSWORD, database: EXT_DB });
    assert.equal(find(rw.r, 'untrusted-language-doctor_untrusted').severity, 'high');
  });
});

describe('doctor logs in as the proxy would', () => {
  function managedConfig(
    databases: string[],
    requireAuth?: Array<'scram-sha-256' | 'md5' | 'password' | 'none'>,
  ): ProxyConfig {
    return resolveConfig(
      {
        ...(requireAuth ? { upstream: { require_auth: requireAuth } } : {}),
        auth: {
          mode: 'proxy',
          users: {
            agent: {
              password: createScramVerifier('agent-pw'),
              upstream_user: RO,
              upstream_password_env: ENV,
              databases,
            },
          },
        },
      },
      { upstream: `postgres://${testServer().host}:${testServer().port}?sslmode=disable` },
      {},
    );
  }

  test('a proxy-managed user: its upstream role and password', async () => {
    const { code, r } = await report({
      config: managedConfig([DB]),
      user: 'agent',
      env: { [ENV]: RO_PASSWORD },
    });
    assert.equal(code, 0);
    assert.equal(r.role.name, RO);
    assert.equal(r.role.proxyUser, 'agent');
    assert.equal(find(r, 'pin-holds').severity, 'info');
  });

  test('upstream.require_auth: a method it does not list is refused before the password is sent', async () => {
    // The test server asks for SCRAM.
    const env = { [ENV]: RO_PASSWORD };
    const scram = await report({ config: managedConfig([DB], ['scram-sha-256']), user: 'agent', env });
    assert.equal(scram.code, 0);
    const md5 = await doctor({ config: managedConfig([DB], ['md5', 'password']), user: 'agent', env });
    assert.equal(md5.code, 2);
    assert.match(
      md5.err,
      /asked for scram-sha-256 authentication, which upstream.require_auth does not allow/,
    );
  });

  test('an unknown proxy user, or a database it may not open: exit 2', async () => {
    const unknown = await doctor({ config: managedConfig([DB]), user: RO, env: { [ENV]: RO_PASSWORD } });
    assert.equal(unknown.code, 2);
    assert.match(unknown.err, /no proxy-managed user "doctor_ro"/);
    assert.equal(unknown.out, '');
    const db = await doctor({ config: managedConfig(['other']), user: 'agent', env: { [ENV]: RO_PASSWORD } });
    assert.equal(db.code, 2);
    assert.match(db.err, /may not open database "doctor_test"/);
    const noEnv = await doctor({ config: managedConfig([DB]), user: 'agent', env: {} });
    assert.equal(noEnv.code, 2);
    assert.match(noEnv.err, new RegExp(`${ENV} is not set`));
  });

  test('a wrong password: exit 2, as text and as JSON, without the password', async () => {
    const run = await doctor({ user: RO, password: 'not-the-password' });
    assert.equal(run.code, 2);
    assert.equal(run.out, '');
    assert.match(run.err, /cannot log in to .* as "doctor_ro": .*28P01/);
    assert.doesNotMatch(run.err, /not-the-password/);
    const json = await doctor({ user: RO, password: 'not-the-password', json: true });
    assert.equal(json.code, 2);
    const parsed = JSON.parse(json.out) as { error: string; summary: { exitCode: number } };
    assert.equal(parsed.summary.exitCode, 2);
    assert.match(parsed.error, /28P01/);
  });

  test('nothing listening: exit 2', async () => {
    const config = resolveConfig({}, { upstream: 'postgres://127.0.0.1:1?sslmode=disable' }, {});
    const run = await doctor({ config, user: RO, password: RO_PASSWORD });
    assert.equal(run.code, 2);
    assert.match(run.err, /ECONNREFUSED/);
  });
});

describe('doctor over TLS', () => {
  const certs = makeTestCerts();
  let undoTls: (() => Promise<void>) | undefined;
  before(async () => {
    undoTls = await serveTls({ cert: certs.localhost.cert, key: certs.localhost.key });
  });
  after(async () => {
    await undoTls?.();
  });

  test('verify-full against the right CA: TLS in use, no TLS finding', async () => {
    const config = passthroughConfig(`sslmode=verify-full&sslrootcert=${certs.ca.cert}`, 'localhost');
    const { code, r } = await report({ config, user: RO, password: RO_PASSWORD });
    assert.equal(code, 0);
    assert.ok(r.server.tls, 'pg_stat_ssl reports TLS');
    assert.match(r.server.tls.version, /^TLSv1\.[23]$/);
    assert.equal(r.server.sslmode, 'verify-full');
    assert.ok(!r.findings.some((f) => f.id.startsWith('tls-')));
  });

  test('prefer takes TLS when the server offers it', async () => {
    const { r } = await report({
      config: passthroughConfig('sslmode=prefer'),
      user: RO,
      password: RO_PASSWORD,
    });
    assert.ok(r.server.tls);
  });

  test(
    'sslnegotiation direct (PostgreSQL 17+)',
    { skip: Number(process.env.TEST_PG_MAJOR) < 17 },
    async () => {
      const config = passthroughConfig(`sslmode=require&sslnegotiation=direct`);
      const { code, r } = await report({ config, user: RO, password: RO_PASSWORD });
      assert.equal(code, 0);
      assert.ok(r.server.tls);
    },
  );

  test('verify-full against another CA: exit 2, the certificate named', async () => {
    const config = passthroughConfig(`sslmode=verify-full&sslrootcert=${certs.otherCa.cert}`, 'localhost');
    const run = await doctor({ config, user: RO, password: RO_PASSWORD });
    assert.equal(run.code, 2);
    assert.match(run.err, /with TLS: .*certificate/i);
  });
});

test('the CLI: pg-readonly-proxy doctor --json against the superuser exits 1 with role-superuser', async () => {
  const s = testServer();
  const r = await run(
    process.execPath,
    [
      '--import',
      'tsx',
      'src/cli.ts',
      'doctor',
      '--upstream',
      `postgres://${s.host}:${s.port}?sslmode=disable`,
      '--user',
      s.user,
      '--password-env',
      'DOCTOR_CLI_PASSWORD',
      '--database',
      'postgres',
      '--json',
    ],
    { env: { ...process.env, DOCTOR_CLI_PASSWORD: s.password }, timeoutMs: 60_000 },
  );
  assert.equal(r.status, 1, r.stderr);
  const report = JSON.parse(r.stdout) as { findings: Array<{ id: string; severity: string }> };
  assert.ok(
    report.findings.some((f) => f.id === 'role-superuser' && f.severity === 'critical'),
    r.stdout,
  );
  const bad = await run(
    process.execPath,
    ['--import', 'tsx', 'src/cli.ts', 'doctor', '--fail-on', 'severe'],
    {
      timeoutMs: 60_000,
    },
  );
  assert.equal(bad.status, 2, bad.stderr);
});
