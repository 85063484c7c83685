/**
 * Upstream TLS against the real PostgreSQL (14 and 18), as libpq's sslmode means it:
 *
 * - the sslmode matrix for roles pg_hba.conf admits only with TLS or only
 *   without, with allow/prefer's fallback (logged as upstream_retry);
 * - certificate checks: the right CA, an unrelated CA, a name that does not
 *   match, an address where the certificate names a host, require with a root
 *   certificate (then verify-ca);
 * - client certificates for a `cert` role, direct TLS negotiation (ALPN; a
 *   PostgreSQL 17+ feature: an older server takes the TLS handshake for a
 *   startup packet and hangs up, and the proxy must fail with 08006, no fallback);
 * - a server that does not do TLS at all;
 * - cancel over TLS (seen on the wire by a TCP spy) and the read-only pin;
 * - passthrough SCRAM with TLS on either side, with psql (libpq) and
 *   node-postgres, including the refusal of channel binding;
 * - no password in any log line.
 *
 * Whether the upstream session is encrypted is asked of the server itself
 * (pg_stat_ssl) through the proxy, and cross-checked with the proxy's own
 * `authenticated` log line.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createServer } from 'node:net';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { createScramVerifier } from '../../src/auth/scram.js';
import type { ClientTlsConfig, UpstreamTarget } from '../../src/config/config.js';
import type { UpstreamTls } from '../../src/upstream/connect.js';
import { psql } from '../fixtures/integration/psql.js';
import { makeTestCerts } from '../helpers/certs.js';
import { ClientAuth } from '../helpers/client-auth.js';
import { direct, startProxy, testServer, whenRunning, type RunningProxy } from '../helpers/harness.js';
import { startRelay } from '../helpers/relay.js';
import { encodeStartup, errorFields, RawClient } from '../helpers/raw-client.js';
import { prependHba, servedFingerprint, serveTls } from '../helpers/server-tls.js';
import { frame } from '../helpers/wire.js';

const TLS_ONLY = 'upstls_tls_only';
const PLAIN_ONLY = 'upstls_plain_only';
const CERT_USER = 'upstls_cert';
const SCRAM = 'upstls_scram';
const CLEARTEXT = 'upstls_cleartext';
const PASSWORD = 'Upstr3am-TLS-s3cret!';
const CLEARTEXT_PASSWORD = 'Cl3artext-over-TLS-9f2c';

const certs = makeTestCerts(CERT_USER);

/** Direct TLS negotiation (sslnegotiation=direct) is PostgreSQL 17's. */
const DIRECT_TLS = Number(process.env.TEST_PG_MAJOR) >= 17;
/** What a proxy with sslnegotiation=direct gets from a server older than 17: no TLS, no fallback. */
const NO_DIRECT_TLS: Expect = {
  sqlstate: '08006',
  detail: /^TLS with (127\.0\.0\.1|localhost):\d+ failed: /,
};

/** Every proxy this file starts, for the log scan at the end. */
const proxies: RunningProxy[] = [];

function target(
  tls: Partial<UpstreamTls>,
  host = testServer().host,
  port = testServer().port,
): UpstreamTarget {
  return { host, port, tls: { sslmode: 'prefer', sslnegotiation: 'postgres', ...tls } };
}

async function withProxy<T>(
  upstream: UpstreamTarget,
  fn: (p: RunningProxy) => Promise<T>,
  clientTls?: ClientTlsConfig,
): Promise<T> {
  const p = await startProxy({
    config: { upstream, ...(clientTls ? { clientTls } : {}) },
    // pg_sleep(30) for the cancel tests
    policy: { maxSleepSeconds: 60 },
  });
  proxies.push(p);
  try {
    return await fn(p);
  } finally {
    await p.close();
  }
}

/** What the server says about this session's encryption, and who it is. */
async function sessionInfo(c: pg.Client): Promise<{ ssl: boolean; user: string }> {
  const r = await c.query<{ ssl: boolean; user: string }>(
    'SELECT ssl, current_user AS user FROM pg_stat_ssl WHERE pid = pg_backend_pid()',
  );
  assert.equal(r.rows.length, 1);
  return r.rows[0]!;
}

const events = (p: RunningProxy, event: string) => p.logs.filter((l) => l.event === event);

/** The `upstream_tls` field of the proxy's `authenticated` line: the protocol, or false. */
function loggedUpstreamTls(p: RunningProxy): unknown {
  const lines = events(p, 'authenticated');
  assert.equal(lines.length, 1, 'one authenticated log line');
  return lines[0]!.upstream_tls;
}

const CERT_PROBLEM = /certificate|cert's/;

type Expect =
  | { ssl: boolean; retry?: 'tls' | 'plain' }
  | { sqlstate: '28000'; message: RegExp; retry?: 'tls' | 'plain' }
  | { sqlstate: '08006'; detail: RegExp };

interface Row {
  name: string;
  user: string;
  tls: Partial<UpstreamTls>;
  host?: string;
  expect: Expect;
}

/** Connects through a proxy in front of `upstream` as `user` and checks the outcome. */
async function check(
  upstream: UpstreamTarget,
  user: string,
  password: string,
  expect: Expect,
): Promise<void> {
  await withProxy(upstream, async (p) => {
    if ('ssl' in expect) {
      const c = await p.client({ user, password });
      try {
        assert.deepEqual(await sessionInfo(c), { ssl: expect.ssl, user });
      } finally {
        await c.end();
      }
      assert.equal(loggedUpstreamTls(p) !== false, expect.ssl, 'the log line agrees with the server');
      assert.deepEqual(
        events(p, 'upstream_retry').map((l) => l.attempt),
        expect.retry ? [expect.retry] : [],
        'upstream_retry logged exactly when a fallback happened',
      );
      return;
    }
    await assert.rejects(p.client({ user, password }), (err: pg.DatabaseError) => {
      assert.equal(err.severity, 'FATAL');
      assert.equal(err.code, expect.sqlstate, err.message);
      if (expect.sqlstate === '28000') {
        // The server's own refusal, passed through.
        assert.match(err.message, expect.message);
      } else {
        assert.equal(err.message, 'pg-readonly-proxy: could not connect to the upstream server');
        assert.match(err.detail ?? '', expect.detail);
      }
      return true;
    });
    assert.deepEqual(
      events(p, 'upstream_retry').map((l) => l.attempt),
      'retry' in expect && expect.retry ? [expect.retry] : [],
      'upstream_retry logged exactly when a fallback happened',
    );
    assert.equal(events(p, 'authenticated').length, 0);
  });
}

const roles: Array<{ name: string; sql: string }> = [
  { name: TLS_ONLY, sql: `LOGIN PASSWORD '${PASSWORD}'` },
  { name: PLAIN_ONLY, sql: `LOGIN PASSWORD '${PASSWORD}'` },
  { name: CERT_USER, sql: 'LOGIN' },
  { name: SCRAM, sql: `LOGIN PASSWORD '${PASSWORD}'` },
  { name: CLEARTEXT, sql: `LOGIN PASSWORD '${CLEARTEXT_PASSWORD}'` },
];

before(async () => {
  const d = await direct();
  try {
    await d.query("SET password_encryption = 'scram-sha-256'");
    for (const r of roles) {
      await d.query(`DROP ROLE IF EXISTS ${r.name}`);
      await d.query(`CREATE ROLE ${r.name} ${r.sql}`);
    }
  } finally {
    await d.end();
  }
});

after(async () => {
  const d = await direct();
  try {
    for (const r of roles) await d.query(`DROP ROLE IF EXISTS ${r.name}`);
  } finally {
    await d.end();
  }
  rmSync(certs.dir, { recursive: true, force: true });
});

describe('a server without TLS', () => {
  before(async () => {
    assert.equal(await servedFingerprint(), undefined, 'the test server starts without TLS');
  });

  const s = () => testServer();
  const rows: Array<{ name: string; tls: Partial<UpstreamTls>; host?: string; expect: Expect }> = [
    {
      name: 'require: FATAL 08006 saying the server does not support TLS',
      tls: { sslmode: 'require' },
      expect: { sqlstate: '08006', detail: /does not support TLS, but sslmode requires it/ },
    },
    {
      name: 'verify-full: the same',
      tls: { sslmode: 'verify-full', sslrootcert: certs.ca.cert },
      host: 'localhost',
      expect: { sqlstate: '08006', detail: /does not support TLS, but sslmode requires it/ },
    },
    { name: 'prefer: plaintext, no retry needed', tls: { sslmode: 'prefer' }, expect: { ssl: false } },
    { name: 'allow: plaintext', tls: { sslmode: 'allow' }, expect: { ssl: false } },
    {
      name: 'require with direct negotiation: FATAL 08006',
      tls: { sslmode: 'require', sslnegotiation: 'direct' },
      expect: { sqlstate: '08006', detail: /^TLS with 127\.0\.0\.1:\d+ failed: / },
    },
  ];
  for (const row of rows) {
    test(row.name, async () => {
      await check(target(row.tls, row.host), s().user, s().password, row.expect);
    });
  }
});

describe('a server with TLS', () => {
  let undoTls: (() => Promise<void>) | undefined;
  let undoHba: (() => Promise<void>) | undefined;

  before(async () => {
    undoTls = await serveTls({ cert: certs.localhost.cert, key: certs.localhost.key, ca: certs.ca.cert });
    // After TLS is on: PostgreSQL flags hostssl lines as errors while ssl is off.
    undoHba = await prependHba([
      `hostssl all ${TLS_ONLY} 127.0.0.1/32 scram-sha-256`,
      `hostnossl all ${TLS_ONLY} 127.0.0.1/32 reject`,
      `hostnossl all ${PLAIN_ONLY} 127.0.0.1/32 scram-sha-256`,
      `hostssl all ${PLAIN_ONLY} 127.0.0.1/32 reject`,
      `hostssl all ${CERT_USER} 127.0.0.1/32 cert`,
      `hostnossl all ${CERT_USER} 127.0.0.1/32 reject`,
      `host all ${SCRAM} 127.0.0.1/32 scram-sha-256`,
      `hostssl all ${CLEARTEXT} 127.0.0.1/32 password`,
      `hostnossl all ${CLEARTEXT} 127.0.0.1/32 reject`,
    ]);
  });

  after(async () => {
    await undoHba?.();
    await undoTls?.();
  });

  describe('sslmode matrix', () => {
    const refusedPlain = (user: string) =>
      new RegExp(
        `pg_hba\\.conf rejects connection for host "127\\.0\\.0\\.1", user "${user}", .*no encryption`,
      );
    const refusedTls = (user: string) =>
      new RegExp(
        `pg_hba\\.conf rejects connection for host "127\\.0\\.0\\.1", user "${user}", .*SSL encryption`,
      );
    const rows: Row[] = [
      {
        name: 'disable, TLS-only role: the server refuses (its own 28000)',
        user: TLS_ONLY,
        tls: { sslmode: 'disable' },
        expect: { sqlstate: '28000', message: refusedPlain(TLS_ONLY) },
      },
      {
        name: 'disable, plaintext-only role',
        user: PLAIN_ONLY,
        tls: { sslmode: 'disable' },
        expect: { ssl: false },
      },
      {
        name: 'allow, TLS-only role: refused in plaintext, then TLS',
        user: TLS_ONLY,
        tls: { sslmode: 'allow' },
        expect: { ssl: true, retry: 'tls' },
      },
      {
        name: 'allow, plaintext-only role',
        user: PLAIN_ONLY,
        tls: { sslmode: 'allow' },
        expect: { ssl: false },
      },
      { name: 'prefer, TLS-only role', user: TLS_ONLY, tls: { sslmode: 'prefer' }, expect: { ssl: true } },
      {
        name: 'prefer, plaintext-only role: refused over TLS, then plaintext',
        user: PLAIN_ONLY,
        tls: { sslmode: 'prefer' },
        expect: { ssl: false, retry: 'plain' },
      },
      { name: 'require, TLS-only role', user: TLS_ONLY, tls: { sslmode: 'require' }, expect: { ssl: true } },
      {
        name: 'require, plaintext-only role: the server refuses, no fallback',
        user: PLAIN_ONLY,
        tls: { sslmode: 'require' },
        expect: { sqlstate: '28000', message: refusedTls(PLAIN_ONLY) },
      },
      {
        name: 'verify-ca with the right CA (by address: no name check)',
        user: TLS_ONLY,
        tls: { sslmode: 'verify-ca', sslrootcert: certs.ca.cert },
        expect: { ssl: true },
      },
      {
        name: 'verify-full with the right CA and host localhost',
        user: TLS_ONLY,
        host: 'localhost',
        tls: { sslmode: 'verify-full', sslrootcert: certs.ca.cert },
        expect: { ssl: true },
      },
      {
        name: 'verify-full by address 127.0.0.1: the certificate names no address',
        user: TLS_ONLY,
        tls: { sslmode: 'verify-full', sslrootcert: certs.ca.cert },
        expect: { sqlstate: '08006', detail: /127\.0\.0\.1.*cert/ },
      },
      {
        name: 'verify-ca with an unrelated CA',
        user: TLS_ONLY,
        tls: { sslmode: 'verify-ca', sslrootcert: certs.otherCa.cert },
        expect: { sqlstate: '08006', detail: CERT_PROBLEM },
      },
      {
        name: 'verify-full with an unrelated CA',
        user: TLS_ONLY,
        host: 'localhost',
        tls: { sslmode: 'verify-full', sslrootcert: certs.otherCa.cert },
        expect: { sqlstate: '08006', detail: CERT_PROBLEM },
      },
      {
        name: 'require with sslrootcert of an unrelated CA: checked as verify-ca, fails',
        user: TLS_ONLY,
        tls: { sslmode: 'require', sslrootcert: certs.otherCa.cert },
        expect: { sqlstate: '08006', detail: CERT_PROBLEM },
      },
      {
        name: 'prefer with sslrootcert of an unrelated CA: the chain is checked, so plaintext (as libpq)',
        user: PLAIN_ONLY,
        tls: { sslmode: 'prefer', sslrootcert: certs.otherCa.cert },
        expect: { ssl: false, retry: 'plain' },
      },
      {
        name: 'prefer with sslrootcert of an unrelated CA, TLS-only role: plaintext is all that is left, refused',
        user: TLS_ONLY,
        tls: { sslmode: 'prefer', sslrootcert: certs.otherCa.cert },
        expect: { sqlstate: '28000', message: refusedPlain(TLS_ONLY), retry: 'plain' },
      },
      {
        name: 'allow with sslrootcert of the right CA, TLS-only role: plaintext refused, then checked TLS',
        user: TLS_ONLY,
        tls: { sslmode: 'allow', sslrootcert: certs.ca.cert },
        expect: { ssl: true, retry: 'tls' },
      },
      {
        name: 'require with sslrootcert of the right CA: works',
        user: TLS_ONLY,
        tls: { sslmode: 'require', sslrootcert: certs.ca.cert },
        expect: { ssl: true },
      },
      {
        name: DIRECT_TLS
          ? 'sslnegotiation=direct, require (PostgreSQL 17+ takes TLS at once)'
          : 'sslnegotiation=direct, require: a server older than 17 cannot, FATAL 08006',
        user: TLS_ONLY,
        tls: { sslmode: 'require', sslnegotiation: 'direct' },
        expect: DIRECT_TLS ? { ssl: true } : NO_DIRECT_TLS,
      },
      {
        name: DIRECT_TLS
          ? 'sslnegotiation=direct, verify-full with host localhost'
          : 'sslnegotiation=direct, verify-full with host localhost: a server older than 17 cannot, FATAL 08006',
        user: TLS_ONLY,
        host: 'localhost',
        tls: { sslmode: 'verify-full', sslrootcert: certs.ca.cert, sslnegotiation: 'direct' },
        expect: DIRECT_TLS ? { ssl: true } : NO_DIRECT_TLS,
      },
      {
        name: DIRECT_TLS
          ? 'sslnegotiation=direct, plaintext-only role: refused, no fallback'
          : 'sslnegotiation=direct, plaintext-only role: a server older than 17 cannot, FATAL 08006, no fallback',
        user: PLAIN_ONLY,
        tls: { sslmode: 'require', sslnegotiation: 'direct' },
        expect: DIRECT_TLS ? { sqlstate: '28000', message: refusedTls(PLAIN_ONLY) } : NO_DIRECT_TLS,
      },
    ];
    for (const row of rows) {
      test(row.name, async () => {
        await check(target(row.tls, row.host), row.user, PASSWORD, row.expect);
      });
    }
  });

  describe('a server certificate for another name (wrong.example)', () => {
    before(async () => {
      await serveTls({ cert: certs.wrongName.cert, key: certs.wrongName.key, ca: certs.ca.cert });
    });
    after(async () => {
      await serveTls({ cert: certs.localhost.cert, key: certs.localhost.key, ca: certs.ca.cert });
    });

    test('verify-ca: the chain is good, the name is not checked', async () => {
      await check(target({ sslmode: 'verify-ca', sslrootcert: certs.ca.cert }), TLS_ONLY, PASSWORD, {
        ssl: true,
      });
    });

    test('verify-full with host localhost: the name does not match', async () => {
      await check(
        target({ sslmode: 'verify-full', sslrootcert: certs.ca.cert }, 'localhost'),
        TLS_ONLY,
        PASSWORD,
        { sqlstate: '08006', detail: /localhost.*wrong\.example|wrong\.example.*localhost/ },
      );
    });
  });

  describe('client certificates', () => {
    const verifyFull = { sslmode: 'verify-full', sslrootcert: certs.ca.cert } as const;

    test('sslcert/sslkey: the cert-auth role logs in with its certificate', async () => {
      const upstream = target(
        { ...verifyFull, sslcert: certs.client.cert, sslkey: certs.client.key },
        'localhost',
      );
      await withProxy(upstream, async (p) => {
        const c = await p.client({ user: CERT_USER, password: undefined });
        try {
          const r = await c.query<{ ssl: boolean; client_dn: string; u: string }>(
            'SELECT ssl, client_dn, current_user AS u FROM pg_stat_ssl WHERE pid = pg_backend_pid()',
          );
          assert.deepEqual(r.rows, [{ ssl: true, client_dn: `/CN=${CERT_USER}`, u: CERT_USER }]);
        } finally {
          await c.end();
        }
      });
    });

    test('without a client certificate: the server refuses (its own 28000)', async () => {
      await check(target(verifyFull, 'localhost'), CERT_USER, PASSWORD, {
        sqlstate: '28000',
        message: /connection requires a valid client certificate/,
      });
    });
  });

  describe('cancel and the read-only pin over TLS', () => {
    /** A TCP relay in front of the server that records how each connection begins. */
    async function spy(): Promise<{ port: number; openings: string[]; close(): Promise<void> }> {
      const openings: string[] = [];
      const relay = await startRelay((inbound) => {
        inbound.once('data', (chunk: Buffer) => {
          if (chunk[0] === 0x16) openings.push('TLS handshake');
          else if (chunk.length >= 8 && chunk.readInt32BE(4) === 80877103) openings.push('SSLRequest');
          else if (chunk.length >= 8 && chunk.readInt32BE(4) === 80877102) openings.push('CancelRequest');
          else openings.push(`other: ${chunk.subarray(0, 8).toString('hex')}`);
        });
      });
      return { ...relay, openings };
    }

    const rows: Array<{ negotiation: 'postgres' | 'direct'; opening: string }> = [
      { negotiation: 'postgres', opening: 'SSLRequest' },
      { negotiation: 'direct', opening: 'TLS handshake' },
    ];
    for (const row of rows) {
      const skip =
        row.negotiation === 'direct' && !DIRECT_TLS
          ? 'needs PostgreSQL 17+: direct TLS negotiation (its refusal by older servers is in the sslmode matrix)'
          : false;
      test(
        `sslnegotiation=${row.negotiation}: pg_sleep(30) cancelled over TLS with 57014 within 2 s; the session goes on`,
        { skip },
        async () => {
          const relay = await spy();
          try {
            const upstream = target(
              { sslmode: 'require', sslnegotiation: row.negotiation },
              '127.0.0.1',
              relay.port,
            );
            await withProxy(upstream, async (p) => {
              const c = await p.client({ application_name: 'upstls_cancel' });
              try {
                assert.equal((await sessionInfo(c)).ssl, true);
                const text = 'SELECT pg_sleep(30)';
                const query = new pg.Query(text);
                const done = new Promise((resolve, reject) => {
                  query.on('end', resolve);
                  query.on('error', reject);
                });
                void c.query(query);
                await whenRunning(text);
                const s = testServer();
                const other = new pg.Client({
                  host: p.host,
                  port: p.port,
                  user: s.user,
                  password: s.password,
                });
                const t0 = Date.now();
                // Not in the typings: Client#cancel(target, query) sends a CancelRequest with target's keys.
                (other as unknown as { cancel(c: pg.Client, q: pg.Query): void }).cancel(c, query);
                await assert.rejects(done, { code: '57014' });
                assert.ok(Date.now() - t0 < 2000, `cancelled after ${Date.now() - t0} ms`);
                assert.equal((await c.query('SELECT 2 AS n')).rows[0].n, 2);
              } finally {
                await c.end();
              }
              assert.equal(events(p, 'cancel_forwarded').length, 1);
            });
            // The session, then the cancel: both encrypted; no CancelRequest in plaintext.
            assert.deepEqual(relay.openings, [row.opening, row.opening]);
          } finally {
            await relay.close();
          }
        },
      );
    }

    test('the read-only pin holds over TLS: SHOW says on, a write is refused', async () => {
      await withProxy(target({ sslmode: 'require' }), async (p) => {
        const c = await p.client();
        try {
          assert.equal((await sessionInfo(c)).ssl, true);
          const r = await c.query<{ default_transaction_read_only: string }>(
            'SHOW default_transaction_read_only',
          );
          assert.equal(r.rows[0]!.default_transaction_read_only, 'on');
          await assert.rejects(c.query('CREATE TABLE upstls_written (a int)'), { code: '25006' });
          await assert.rejects(c.query('BEGIN READ WRITE'), { code: '25006' });
          assert.equal((await c.query('SELECT 1 AS n')).rows[0].n, 1);
        } finally {
          await c.end();
        }
      });
      const d = await direct();
      try {
        const r = await d.query("SELECT to_regclass('upstls_written') IS NULL AS absent");
        assert.equal(r.rows[0].absent, true);
      } finally {
        await d.end();
      }
    });

    test('cleartext password authentication over a TLS upstream is relayed', async () => {
      await check(target({ sslmode: 'require' }), CLEARTEXT, CLEARTEXT_PASSWORD, { ssl: true });
    });
  });

  describe('passthrough SCRAM with TLS on either side', () => {
    const clientTls: ClientTlsConfig = {
      mode: 'allow',
      certFile: certs.localhost.cert,
      keyFile: certs.localhost.key,
      minVersion: 'TLSv1.2',
    };
    const QUERY = 'SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()';

    /** Runs psql through a proxy and returns its result and the proxy's authenticated line. */
    async function viaPsql(upstream: 'disable' | 'require', env: Record<string, string>) {
      return withProxy(
        target({ sslmode: upstream }),
        async (p) => {
          const r = await psql(p, ['-At', '-c', QUERY], { user: SCRAM, password: PASSWORD, env });
          return { ...r, auth: events(p, 'authenticated'), refused: events(p, 'channel_binding_refused') };
        },
        clientTls,
      );
    }

    const ok: Array<{
      client: 'disable' | 'require';
      upstream: 'disable' | 'require';
      binding: string;
    }> = [
      { client: 'disable', upstream: 'disable', binding: 'prefer' },
      { client: 'disable', upstream: 'require', binding: 'prefer' },
      { client: 'disable', upstream: 'require', binding: 'disable' },
      { client: 'require', upstream: 'disable', binding: 'prefer' },
      { client: 'require', upstream: 'require', binding: 'disable' },
    ];
    for (const row of ok) {
      test(`psql, client ${row.client === 'require' ? 'TLS' : 'plaintext'}, upstream ${row.upstream === 'require' ? 'TLS' : 'plaintext'}, channel_binding=${row.binding}: logs in`, async () => {
        const r = await viaPsql(row.upstream, { PGSSLMODE: row.client, PGCHANNELBINDING: row.binding });
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stdout.trim(), `${SCRAM}|${row.upstream === 'require' ? 't' : 'f'}`);
        assert.equal(r.auth.length, 1);
        assert.equal(r.auth[0]!.client_tls !== false, row.client === 'require', 'client side TLS as asked');
        assert.equal(r.auth[0]!.upstream_tls !== false, row.upstream === 'require', 'upstream TLS as asked');
      });
    }

    test('psql, TLS on both sides, channel_binding=prefer: the proxy refuses, saying why', async () => {
      const r = await viaPsql('require', { PGSSLMODE: 'require', PGCHANNELBINDING: 'prefer' });
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /FATAL: {2}pg-readonly-proxy cannot relay SCRAM channel binding/);
      assert.match(r.stderr, /DETAIL: {2}The client's TLS connection ends at the proxy/);
      assert.match(
        r.stderr,
        /HINT: {2}Connect with channel_binding=disable, or log in as a proxy-managed user/,
      );
      assert.deepEqual(
        r.refused.map((l) => l.mechanism),
        ['SCRAM-SHA-256-PLUS'],
      );
      assert.equal(r.auth.length, 0);
    });

    // node-postgres (lib/crypto/sasl.js) binds only with enableChannelBinding: it then
    // picks SCRAM-SHA-256-PLUS when offered; otherwise it sends gs2 flag 'n'.
    test('node-postgres, TLS on both sides, default settings: sends n, logs in', async () => {
      await withProxy(
        target({ sslmode: 'require' }),
        async (p) => {
          const c = await p.client({ user: SCRAM, password: PASSWORD, ssl: { rejectUnauthorized: false } });
          try {
            assert.deepEqual(await sessionInfo(c), { ssl: true, user: SCRAM });
          } finally {
            await c.end();
          }
          const auth = events(p, 'authenticated');
          assert.equal(auth.length, 1);
          assert.notEqual(auth[0]!.client_tls, false);
          assert.notEqual(auth[0]!.upstream_tls, false);
        },
        clientTls,
      );
    });

    test('node-postgres, plaintext client, TLS upstream: logs in (it does not check the list as libpq does)', async () => {
      await withProxy(target({ sslmode: 'require' }), async (p) => {
        const c = await p.client({ user: SCRAM, password: PASSWORD });
        try {
          assert.deepEqual(await sessionInfo(c), { ssl: true, user: SCRAM });
        } finally {
          await c.end();
        }
      });
    });

    test('psql with its defaults through a proxy with its defaults (no client TLS, upstream prefer) logs in', async () => {
      await withProxy(target({}), async (p) => {
        const r = await psql(p, ['-At', '-c', QUERY], {
          user: SCRAM,
          password: PASSWORD,
          env: { PGSSLMODE: 'prefer' },
        });
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stdout.trim(), `${SCRAM}|t`);
      });
    });

    test('node-postgres, TLS on both sides, enableChannelBinding: SCRAM-SHA-256-PLUS is refused', async () => {
      await withProxy(
        target({ sslmode: 'require' }),
        async (p) => {
          await assert.rejects(
            p.client({
              user: SCRAM,
              password: PASSWORD,
              ssl: { rejectUnauthorized: false },
              enableChannelBinding: true,
            }),
            (err: pg.DatabaseError) => {
              assert.equal(err.severity, 'FATAL');
              assert.equal(err.code, '28000');
              assert.equal(err.message, 'pg-readonly-proxy cannot relay SCRAM channel binding');
              assert.match(err.hint ?? '', /channel_binding=disable/);
              return true;
            },
          );
          assert.deepEqual(
            events(p, 'channel_binding_refused').map((l) => l.mechanism),
            ['SCRAM-SHA-256-PLUS'],
          );
        },
        clientTls,
      );
    });
  });

  test('upstream TLS files are read once and reread on reload; a bad file keeps the old', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'pgro-upstls-'));
    const bundle = path.join(dir, 'ca.pem');
    copyFileSync(certs.ca.cert, bundle);
    try {
      await withProxy(target({ sslmode: 'verify-ca', sslrootcert: bundle }), async (p) => {
        const ok = async (): Promise<void> => {
          const c = await p.client({ user: TLS_ONLY, password: PASSWORD });
          try {
            assert.deepEqual(await sessionInfo(c), { ssl: true, user: TLS_ONLY });
          } finally {
            await c.end();
          }
        };
        const refused = async (): Promise<void> => {
          await assert.rejects(p.client({ user: TLS_ONLY, password: PASSWORD }), (err: pg.DatabaseError) => {
            assert.equal(err.code, '08006');
            assert.match(err.detail ?? '', CERT_PROBLEM);
            return true;
          });
        };
        await ok();
        // The file changes; connections keep the CA read at first until a reload.
        copyFileSync(certs.otherCa.cert, bundle);
        await ok();
        assert.deepEqual(p.server.reload(), { ok: true, errors: [] });
        await refused();
        // A broken file: the reload says so, and the CA in use stays.
        writeFileSync(bundle, 'not a certificate');
        const r = p.server.reload();
        assert.equal(r.ok, false);
        assert.match(r.errors.join(' '), /^upstream_tls: /);
        await refused();
        copyFileSync(certs.ca.cert, bundle);
        assert.equal(p.server.reload().ok, true);
        await ok();
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('proxy-managed users over a TLS upstream', () => {
  const ENV = 'PGRO_TEST_UPSTLS_MANAGED';
  const AGENT_PW = 'agent-over-TLS-pw-4';
  let undoTls: (() => Promise<void>) | undefined;
  let undoHba: (() => Promise<void>) | undefined;

  before(async () => {
    process.env[ENV] = PASSWORD;
    undoTls = await serveTls(certs.localhost);
    // The role logs in with or without TLS: a second attempt would succeed as well as the first.
    undoHba = await prependHba([`host all ${SCRAM} 127.0.0.1/32 scram-sha-256`]);
  });
  after(async () => {
    await undoHba?.();
    await undoTls?.();
    delete process.env[ENV];
  });

  for (const sslmode of ['prefer', 'allow'] as const) {
    test(`sslmode ${sslmode}, a database that does not exist: one AuthenticationOk, then 3D000; no retry`, async () => {
      const p = await startProxy({
        config: {
          upstream: target({ sslmode }),
          auth: {
            mode: 'proxy',
            allowMd5: false,
            users: {
              anywhere: {
                password: createScramVerifier(AGENT_PW),
                upstreamUser: SCRAM,
                upstreamPasswordEnv: ENV,
                databases: ['*'],
              },
            },
          },
        },
      });
      proxies.push(p);
      try {
        const c = await RawClient.connect(p.host, p.port);
        const auth = new ClientAuth('anywhere', AGENT_PW);
        const labels: string[] = [];
        let error: Map<string, string> | undefined;
        try {
          c.send(
            encodeStartup([
              ['user', 'anywhere'],
              ['database', 'upstls_no_such_db'],
            ]),
          );
          while (!error) {
            const m = await c.read();
            if (m.type === 'R') {
              labels.push(`R ${m.body.readInt32BE(0)}`);
              const answer = auth.respond(m.body);
              if (answer) c.send(frame('p', answer));
            } else if (m.type === 'E') {
              error = errorFields(m.body);
              labels.push(`E ${error.get('C')}`);
            } else labels.push(m.type);
          }
          await c.waitClosed();
        } finally {
          c.close();
        }
        assert.deepEqual(labels, ['R 10', 'R 11', 'R 12', 'R 0', 'E 3D000'], 'exactly one AuthenticationOk');
        assert.equal(error.get('S'), 'FATAL');
        assert.equal(error.get('M'), 'database "upstls_no_such_db" does not exist');
        assert.deepEqual(
          events(p, 'upstream_retry'),
          [],
          'no fallback after the client saw AuthenticationOk',
        );
        assert.equal(loggedUpstreamTls(p) !== false, sslmode === 'prefer', 'the first attempt only');
      } finally {
        await p.close();
      }
    });
  }
});

describe('an upstream that hangs up during TLS negotiation', () => {
  test('sslmode require, the server closes after the SSLRequest: FATAL 08006 at once, not at the timeout', async () => {
    const openings: string[] = [];
    const server = createServer((sock) => {
      sock.on('error', () => undefined);
      sock.once('data', (chunk: Buffer) => {
        openings.push(chunk.length === 8 && chunk.readInt32BE(4) === 80877103 ? 'SSLRequest' : 'other');
        sock.end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      const p = await startProxy({
        config: {
          upstream: target({ sslmode: 'require' }, '127.0.0.1', port),
          upstreamConnectTimeoutMs: 5000,
        },
      });
      proxies.push(p);
      try {
        const t0 = Date.now();
        await assert.rejects(p.client(), (err: pg.DatabaseError) => {
          assert.equal(err.severity, 'FATAL');
          assert.equal(err.code, '08006');
          assert.equal(err.message, 'pg-readonly-proxy: could not connect to the upstream server');
          assert.equal(err.detail, `127.0.0.1:${port} closed the connection while it was being set up`);
          return true;
        });
        const elapsed = Date.now() - t0;
        assert.ok(elapsed < 1000, `failed after ${elapsed} ms (connect timeout 5000 ms)`);
        assert.deepEqual(openings, ['SSLRequest']);
        assert.deepEqual(events(p, 'upstream_retry'), []);
        assert.equal(events(p, 'upstream_connect_failed').length, 1);
      } finally {
        await p.close();
      }
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

test('no password appears in any log line of any proxy in this file', () => {
  const secrets = [PASSWORD, CLEARTEXT_PASSWORD, testServer().password];
  const lines = proxies.flatMap((p) => p.logs.map((l) => JSON.stringify(l)));
  assert.ok(proxies.length > 20 && lines.length > 100, `${proxies.length} proxies, ${lines.length} lines`);
  for (const line of lines) for (const s of secrets) assert.ok(!line.includes(s), `a password in ${line}`);
});
