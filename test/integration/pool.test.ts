/**
 * Warm upstream sessions for proxy-managed users (pool.*), against a real
 * PostgreSQL: a client that ends cleanly leaves its upstream session, reset with
 * DISCARD ALL and checked, for the next client of the same key, which gets the
 * same backend (pg_backend_pid) with none of the last client's state and the
 * read-only pin intact. Any other ending closes the backend. Backends are
 * watched from a direct connection (pg_stat_activity), never through the proxy.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { createScramVerifier } from '../../src/auth/scram.js';
import type { AuthConfig, PoolConfig, ProxyConfig, ProxyUserConfig } from '../../src/config/config.js';
import { createPolicy } from '../../src/policy/index.js';
import { ClientAuth } from '../helpers/client-auth.js';
import {
  direct,
  eventually,
  freshDatabase,
  startProxy,
  whenRunning,
  withDb,
  type RunningProxy,
} from '../helpers/harness.js';
import {
  encodeCancel,
  encodeStartup,
  firstColumn,
  RawClient,
  type BackendMessage,
} from '../helpers/raw-client.js';
import { frame } from '../helpers/wire.js';

/** Upstream roles: alice and bob (two proxy users) share the first, carol has her own. */
const ROLE = 'pool_reader';
const OTHER_ROLE = 'pool_other';
const UP_PASSWORD = 'pool-Upstream-pw-51';
const ENV = 'PGRO_TEST_POOL_UPSTREAM';
const ENV_OTHER = 'PGRO_TEST_POOL_UPSTREAM_OTHER';
const DB2 = 'pool_db2';

const PW = { alice: 'alice-pw-1', bob: 'bob-pw-2', carol: 'carol-pw-3' } as const;
type User = keyof typeof PW;

const POOL: PoolConfig = {
  enabled: true,
  maxIdle: 8,
  maxIdleTotal: 64,
  idleTimeoutMs: 600_000,
  maxLifetimeMs: 3_600_000,
  resetTimeoutMs: 5000,
};

function user(password: string, over: Partial<ProxyUserConfig> = {}): ProxyUserConfig {
  return {
    password: createScramVerifier(password),
    upstreamUser: ROLE,
    upstreamPasswordEnv: ENV,
    databases: ['postgres', DB2],
    ...over,
  };
}

function auth(): AuthConfig {
  return {
    mode: 'proxy',
    allowMd5: false,
    users: {
      alice: user(PW.alice),
      bob: user(PW.bob),
      carol: user(PW.carol, { upstreamUser: OTHER_ROLE, upstreamPasswordEnv: ENV_OTHER }),
    },
  };
}

function poolProxy(pool: Partial<PoolConfig> = {}, config: Partial<ProxyConfig> = {}): Promise<RunningProxy> {
  return startProxy({ config: { auth: auth(), pool: { ...POOL, ...pool }, ...config } });
}

/** A node-postgres client through the proxy as a proxy-managed user. */
async function connect(
  proxy: RunningProxy,
  app: string,
  as: User = 'alice',
  opts: Partial<pg.ClientConfig> = {},
): Promise<pg.Client> {
  const c = new pg.Client({
    host: proxy.host,
    port: proxy.port,
    user: as,
    password: PW[as],
    database: 'postgres',
    application_name: app,
    ...opts,
  });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

async function pidOf(c: pg.Client): Promise<number> {
  return (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
}

/** One value of a query through `c`. */
async function value(c: pg.Client, sql: string): Promise<unknown> {
  const r = await c.query({ text: sql, rowMode: 'array' });
  return (r.rows[0] as unknown[])[0];
}

let d: pg.Client;

async function backendAlive(pid: number): Promise<boolean> {
  const r = await d.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1', [pid]);
  return r.rows[0].n === 1;
}

async function backendGone(pid: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (await backendAlive(pid)) {
    if (Date.now() > deadline) throw new Error(`upstream backend ${pid} still alive`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Resolves once `pid` has been reset (the check was its last query) and sits idle in the pool. */
async function waitPooled(proxy: RunningProxy, pid: number): Promise<void> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const r = await d.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE pid = $1 AND state = 'idle' AND query LIKE '%pg_catalog.pg_backend_pid()::pg_catalog.text'`,
      [pid],
    );
    if (r.rows[0].n === 1 && proxy.server.pooledIdle > 0) return;
    if (Date.now() > deadline) throw new Error(`backend ${pid} never came back to the pool`);
    await new Promise((res) => setTimeout(res, 20));
  }
}

/** A counter or gauge from /metrics, 0 when absent. */
async function metric(proxy: RunningProxy, series: string): Promise<number> {
  const text = await proxy.server.metrics.metricsText();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

/** Every message a raw client sees from its startup packet to ReadyForQuery, authentication answered. */
async function rawLogin(
  proxy: RunningProxy,
  app: string,
): Promise<{ c: RawClient; greeting: BackendMessage[] }> {
  const c = await RawClient.connect(proxy.host, proxy.port);
  c.send(
    encodeStartup([
      ['user', 'alice'],
      ['database', 'postgres'],
      ['application_name', app],
    ]),
  );
  const scram = new ClientAuth('alice', PW.alice);
  const greeting: BackendMessage[] = [];
  let afterAuth = false;
  for (;;) {
    const m = await c.read();
    if (m.type === 'E') throw new Error(`login failed: ${m.body.toString()}`);
    if (m.type === 'R' && m.body.readInt32BE(0) === 0) afterAuth = true;
    if (m.type === 'R' && !afterAuth) {
      const answer = scram.respond(m.body);
      if (answer) c.send(frame('p', answer));
      continue;
    }
    greeting.push(m);
    if (m.type === 'Z') return { c, greeting };
  }
}

/** The backend pid, through a raw client. */
async function rawPid(c: RawClient): Promise<number> {
  const rows = await c.query('SELECT pg_backend_pid()::text');
  return Number(firstColumn(rows)[0]);
}

/** A greeting as comparable text: message types and ParameterStatus pairs (key values differ by design). */
function describeGreeting(msgs: BackendMessage[]): string[] {
  return msgs.map((m) => {
    if (m.type === 'S') return `S ${m.body.toString('utf8').split('\0').slice(0, 2).join('=')}`;
    if (m.type === 'R') return `R ${m.body.readInt32BE(0)}`;
    if (m.type === 'Z') return `Z ${m.body.toString('latin1')}`;
    return m.type;
  });
}

before(async () => {
  process.env[ENV] = UP_PASSWORD;
  process.env[ENV_OTHER] = UP_PASSWORD;
  await freshDatabase(DB2);
  d = await direct();
  for (const role of [ROLE, OTHER_ROLE]) {
    await d.query(`DROP OWNED BY ${role}`).catch(() => undefined);
    await d.query(`DROP ROLE IF EXISTS ${role}`);
    await d.query(`SET password_encryption = 'scram-sha-256'`);
    await d.query(`CREATE ROLE ${role} LOGIN PASSWORD '${UP_PASSWORD}'`);
  }
  // Functions the proxy cannot see into: a write (stopped by the server-side pin) and a flip of the pin.
  await d.query(`
    DROP TABLE IF EXISTS pool_t;
    CREATE TABLE pool_t (id int);
    GRANT SELECT, INSERT ON pool_t TO ${ROLE}, ${OTHER_ROLE};
    CREATE OR REPLACE FUNCTION pool_write() RETURNS int LANGUAGE plpgsql AS $$
      BEGIN INSERT INTO pool_t VALUES (1); RETURN 1; END $$;
    CREATE OR REPLACE FUNCTION pool_flip() RETURNS void LANGUAGE plpgsql AS $$
      BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); END $$;
  `);
});

after(async () => {
  for (const role of [ROLE, OTHER_ROLE]) {
    await d.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${role}'`);
  }
  await d.query(
    'DROP TABLE IF EXISTS pool_t; DROP FUNCTION IF EXISTS pool_write(); DROP FUNCTION IF EXISTS pool_flip()',
  );
  for (const role of [ROLE, OTHER_ROLE]) {
    await d.query(`DROP OWNED BY ${role}`).catch(() => undefined);
    await d.query(`DROP ROLE IF EXISTS ${role}`).catch(() => undefined);
  }
  await d.end();
  await withDb('postgres', (c) => c.query(`DROP DATABASE IF EXISTS ${DB2} WITH (FORCE)`));
  delete process.env[ENV];
  delete process.env[ENV_OTHER];
});

describe('a proxy with the pool on', () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await poolProxy();
  });
  after(() => proxy.close());

  test('reconnecting reuses the backend, with every trace of the last client gone', async () => {
    const c1 = await connect(proxy, 'reuse');
    const pid = await pidOf(c1);
    await c1.query('SET search_path = pg_catalog');
    await c1.query('SET work_mem = 1234');
    await c1.query("SET application_name = 'renamed'");
    await c1.query('PREPARE pool_p AS SELECT 1');
    await c1.query('LISTEN pool_chan');
    await c1.query('DECLARE pool_cur CURSOR WITH HOLD FOR SELECT 1');
    await c1.query("SELECT set_config('pool.custom', 'left over', false)");
    await c1.end();
    await waitPooled(proxy, pid);
    assert.ok((await metric(proxy, 'pgro_pool_idle_connections')) >= 1);

    const c2 = await connect(proxy, 'reuse');
    try {
      assert.equal(await pidOf(c2), pid, 'the same backend');
      assert.equal(await value(c2, 'SHOW search_path'), '"$user", public');
      assert.equal(await value(c2, 'SHOW work_mem'), '4MB');
      assert.equal(await value(c2, 'SHOW application_name'), 'reuse');
      assert.equal(await value(c2, 'SELECT count(*)::int FROM pg_prepared_statements'), 0);
      assert.equal(await value(c2, 'SELECT count(*)::int FROM pg_listening_channels()'), 0);
      assert.equal(await value(c2, 'SELECT count(*)::int FROM pg_cursors'), 0);
      assert.ok(
        ['', null].includes((await value(c2, "SELECT current_setting('pool.custom', true)")) as string),
      );
      // Still pinned: the setting, and the server stopping a write the proxy cannot see.
      assert.equal(await value(c2, 'SHOW default_transaction_read_only'), 'on');
      assert.equal(await value(c2, 'SELECT current_user'), ROLE);
      await assert.rejects(c2.query('SELECT pool_write()'), { code: '25006' });
      await assert.rejects(c2.query('CREATE TABLE pool_nope (a int)'), { code: '25006' });
      // The proxy's own key for this client, not the backend's.
      assert.notEqual((c2 as unknown as { processID: number }).processID, pid);
    } finally {
      await c2.end();
    }
    assert.ok((await metric(proxy, 'pgro_pool_requests_total{result="hit"}')) >= 1);
    assert.ok((await metric(proxy, 'pgro_pool_resets_total{result="ok"}')) >= 1);
  });

  test('a pooled login greets the client exactly as a fresh one, ParameterStatus kept current through the reset', async () => {
    const fresh = await rawLogin(proxy, 'greet');
    const freshPid = await rawPid(fresh.c);
    // Changed and reported to this client; the reset changes it back, and the pool must follow.
    await fresh.c.query("SET application_name = 'changed'; SET DateStyle = 'SQL, DMY'");
    fresh.c.send(frame('X'));
    await fresh.c.waitClosed();
    await waitPooled(proxy, freshPid);

    const pooled = await rawLogin(proxy, 'greet');
    try {
      assert.equal(await rawPid(pooled.c), freshPid);
      assert.deepEqual(describeGreeting(pooled.greeting), describeGreeting(fresh.greeting));
      assert.ok(describeGreeting(pooled.greeting).includes('S application_name=greet'));
      assert.ok(describeGreeting(pooled.greeting).includes('S DateStyle=ISO, MDY'));
      const keyOf = (g: BackendMessage[]): string => g.find((m) => m.type === 'K')!.body.toString('hex');
      assert.notEqual(keyOf(pooled.greeting), keyOf(fresh.greeting), 'a new proxy key');
    } finally {
      pooled.c.send(frame('X'));
      await pooled.c.waitClosed();
    }
  });

  test('different proxy users, upstream roles, databases and application names never share a backend', async () => {
    const c = await connect(proxy, 'share');
    const pid = await pidOf(c);
    await c.end();
    await waitPooled(proxy, pid);

    const others: Array<[string, () => Promise<pg.Client>]> = [
      ['bob, on the same upstream role', () => connect(proxy, 'share', 'bob')],
      ['carol, another upstream role', () => connect(proxy, 'share', 'carol')],
      ['alice, another database', () => connect(proxy, 'share', 'alice', { database: DB2 })],
      ['alice, another application_name', () => connect(proxy, 'share-2')],
      ['alice, another startup setting', () => connect(proxy, 'share', 'alice', { statement_timeout: 5000 })],
      ['alice, other options', () => connect(proxy, 'share', 'alice', { options: '-c work_mem=5MB' })],
    ];
    const seen = new Set<number>([pid]);
    for (const [what, open] of others) {
      const o = await open();
      try {
        const p = await pidOf(o);
        assert.ok(!seen.has(p), `${what} got a backend already used: ${p}`);
        seen.add(p);
      } finally {
        await o.end();
      }
    }
    // Two at once: one gets the pooled backend, the other a fresh one.
    const [a, b] = await Promise.all([connect(proxy, 'share'), connect(proxy, 'share')]);
    try {
      const pids = [await pidOf(a), await pidOf(b)];
      assert.notEqual(pids[0], pids[1]);
      assert.ok(pids.includes(pid), 'the pooled backend went to one of them');
    } finally {
      await a.end();
      await b.end();
    }
  });

  const notReused: Array<{ name: string; reason: string; run: (c: pg.Client) => Promise<void> }> = [
    {
      name: 'left inside a transaction block',
      reason: 'in_transaction',
      run: async (c) => {
        await c.query('BEGIN');
        await c.query('SELECT 1');
      },
    },
    {
      name: 'left inside a failed transaction block',
      reason: 'in_transaction',
      run: async (c) => {
        await c.query('BEGIN');
        await assert.rejects(c.query('SELECT 1/0'), { code: '22012' });
      },
    },
    {
      name: 'had a pin violation (a function turned default_transaction_read_only off)',
      reason: 'pin_violation',
      run: async (c) => {
        await assert.rejects(c.query('SELECT pool_flip()'), { code: '25006' });
      },
    },
  ];
  for (const t of notReused) {
    test(`a client that ${t.name}: its backend is closed, the next client gets a new one`, async () => {
      const app = `nr-${t.reason}-${notReused.indexOf(t)}`;
      const before = await metric(proxy, `pgro_pool_closed_total{reason="${t.reason}"}`);
      const c = await connect(proxy, app);
      const pid = await pidOf(c);
      await t.run(c);
      await c.end().catch(() => undefined);
      await backendGone(pid);
      const next = await connect(proxy, app);
      try {
        assert.notEqual(await pidOf(next), pid);
      } finally {
        await next.end();
      }
      assert.equal(await metric(proxy, `pgro_pool_closed_total{reason="${t.reason}"}`), before + 1);
      assert.ok(proxy.logs.some((l) => l.event === 'pool_not_reused' && l.reason === t.reason));
    });
  }

  test('a pooled backend the server ends while idle is dropped; the next client logs in fresh, unharmed', async () => {
    const c = await connect(proxy, 'terminated');
    const pid = await pidOf(c);
    await c.end();
    await waitPooled(proxy, pid);
    const noticed = async (): Promise<number> =>
      (await metric(proxy, 'pgro_pool_closed_total{reason="unexpected_message"}')) +
      (await metric(proxy, 'pgro_pool_closed_total{reason="upstream_closed"}'));
    const before = await noticed();
    const idleBefore = proxy.server.pooledIdle;
    await d.query('SELECT pg_terminate_backend($1)', [pid]);
    await backendGone(pid);
    await eventually(() => proxy.server.pooledIdle === idleBefore - 1, 3000, 'the pool noticed');
    assert.equal(await noticed(), before + 1);
    const next = await connect(proxy, 'terminated');
    try {
      assert.notEqual(await pidOf(next), pid);
      assert.equal(await value(next, 'SELECT 1'), 1);
    } finally {
      await next.end();
    }
  });

  test('a client that errs at the protocol level: its backend is closed', async () => {
    const { c } = await rawLogin(proxy, 'proto');
    const pid = await rawPid(c);
    c.send(frame('d', Buffer.from('stray copy data')));
    const end = await c.readUntil('E');
    assert.equal(end.at(-1)!.type, 'E');
    await c.waitClosed();
    await backendGone(pid);
    const next = await connect(proxy, 'proto');
    try {
      assert.notEqual(await pidOf(next), pid);
    } finally {
      await next.end();
    }
  });

  test('a client that leaves mid-query: its query is cancelled and its backend closed', async () => {
    const c = await connect(proxy, 'midquery');
    const pid = await pidOf(c);
    const sql = 'SELECT pg_sleep(9) AS pool_midquery';
    c.query(sql).catch(() => undefined);
    await whenRunning(sql);
    (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    await backendGone(pid);
  });

  test("a cancel after the handoff cancels that client's query, not another's; then the backend is reused", async () => {
    const c1 = await connect(proxy, 'cancel');
    const pooledPid = await pidOf(c1);
    await c1.end();
    await waitPooled(proxy, pooledPid);

    const c2 = await connect(proxy, 'cancel');
    const c3 = await connect(proxy, 'cancel');
    const otherPid = await pidOf(c3);
    try {
      assert.equal(await pidOf(c2), pooledPid);
      assert.notEqual(otherPid, pooledPid);
      const long = 'SELECT pg_sleep(8) AS pool_cancel_me';
      const short = 'SELECT pg_sleep(1.5) AS pool_not_me';
      const q2 = c2.query(long);
      const q3 = c3.query(short);
      q2.catch(() => undefined);
      await whenRunning(long);
      await whenRunning(short);
      const key = c2 as unknown as { processID: number; secretKey: number };
      const secret = Buffer.alloc(4);
      secret.writeInt32BE(key.secretKey);
      const cancel = await RawClient.connect(proxy.host, proxy.port);
      const started = Date.now();
      cancel.send(encodeCancel(key.processID, secret));
      await cancel.waitClosed();
      await assert.rejects(q2, { code: '57014' });
      assert.ok(Date.now() - started < 4000, 'cancelled well before pg_sleep ended');
      await q3; // untouched
      assert.equal(await value(c2, 'SELECT 1'), 1);
    } finally {
      await c3.end();
      await waitPooled(proxy, otherPid);
      await c2.end();
    }
    // The cancel has settled: the backend goes back to the pool (on top: the last returned
    // is handed out first), and its next client is not hit.
    await waitPooled(proxy, pooledPid);
    const c4 = await connect(proxy, 'cancel');
    try {
      assert.equal(await pidOf(c4), pooledPid);
      assert.deepEqual((await c4.query('SELECT pg_sleep(0.3), 1 AS n')).rows, [{ pg_sleep: '', n: 1 }]);
    } finally {
      await c4.end();
    }
  });

  test('per key at most max_idle: more returned at once are closed (pool_full)', async () => {
    const many = await Promise.all(Array.from({ length: POOL.maxIdle + 2 }, () => connect(proxy, 'full')));
    const pids = await Promise.all(many.map(pidOf));
    const before = await metric(proxy, 'pgro_pool_closed_total{reason="pool_full"}');
    await Promise.all(many.map((c) => c.end()));
    await eventually(() => proxy.logs.filter((l) => l.reason === 'pool_full').length >= 2, 5000, 'pool_full');
    const aliveNow = async (): Promise<number> => {
      const r = await d.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ANY($1)', [pids]);
      return r.rows[0].n as number;
    };
    const deadline = Date.now() + 5000;
    while ((await aliveNow()) > POOL.maxIdle && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 25));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await aliveNow(), POOL.maxIdle, 'max_idle kept, the rest closed');
    assert.ok(proxy.server.pooledIdle >= POOL.maxIdle);
    assert.equal(await metric(proxy, 'pgro_pool_closed_total{reason="pool_full"}'), before + 2);
  });
});

describe('limits and timers', () => {
  test('a client that hit a result limit: its backend is closed; one that did not is reused', async () => {
    const proxy = await poolProxy({}, { maxResultRows: 5 });
    try {
      const ok = await connect(proxy, 'limit');
      const okPid = await pidOf(ok);
      await ok.query('SELECT generate_series(1, 5)');
      await ok.end();
      await waitPooled(proxy, okPid);

      const c = await connect(proxy, 'limit');
      assert.equal(await pidOf(c), okPid);
      await assert.rejects(c.query('SELECT generate_series(1, 100000)'), { code: '54000' });
      assert.equal(await value(c, 'SELECT 1'), 1);
      await c.end();
      await backendGone(okPid);
      assert.equal(await metric(proxy, 'pgro_pool_closed_total{reason="result_limit"}'), 1);
      const next = await connect(proxy, 'limit');
      try {
        assert.notEqual(await pidOf(next), okPid);
      } finally {
        await next.end();
      }
    } finally {
      await proxy.close();
    }
  });

  test('idle_timeout_ms closes an idle pooled session', async () => {
    const proxy = await poolProxy({ idleTimeoutMs: 500 });
    try {
      const c = await connect(proxy, 'idle');
      const pid = await pidOf(c);
      await c.end();
      await waitPooled(proxy, pid);
      const pooledAt = Date.now();
      await backendGone(pid, 4000);
      assert.ok(Date.now() - pooledAt >= 300, 'not before the timeout');
      assert.equal(proxy.server.pooledIdle, 0);
      assert.equal(await metric(proxy, 'pgro_pool_closed_total{reason="idle_timeout"}'), 1);
    } finally {
      await proxy.close();
    }
  });

  test('max_lifetime_ms: reused while young, closed once old, idle or not', async () => {
    const proxy = await poolProxy({ idleTimeoutMs: 0, maxLifetimeMs: 2000 });
    try {
      const c1 = await connect(proxy, 'life');
      const pid = await pidOf(c1);
      await c1.end();
      await waitPooled(proxy, pid);
      const c2 = await connect(proxy, 'life');
      assert.equal(await pidOf(c2), pid);
      await c2.end();
      await waitPooled(proxy, pid);
      await backendGone(pid, 5000);
      assert.equal(await metric(proxy, 'pgro_pool_closed_total{reason="max_lifetime"}'), 1);
      // One that outlives it in use is closed when it comes back.
      const c3 = await connect(proxy, 'life');
      const pid3 = await pidOf(c3);
      assert.notEqual(pid3, pid);
      await new Promise((r) => setTimeout(r, 2100));
      await c3.end();
      await backendGone(pid3);
      assert.equal(await metric(proxy, 'pgro_pool_closed_total{reason="max_lifetime"}'), 2);
    } finally {
      await proxy.close();
    }
  });
});

describe('reload and shutdown', () => {
  test("a reload that changes a user's upstream password closes its pooled sessions, and only its", async () => {
    const proxy = await poolProxy();
    try {
      const a = await connect(proxy, 'reload');
      const alicePid = await pidOf(a);
      await a.end();
      const c = await connect(proxy, 'reload', 'carol');
      const carolPid = await pidOf(c);
      await c.end();
      await waitPooled(proxy, alicePid);
      await waitPooled(proxy, carolPid);

      process.env[ENV] = 'not-the-upstream-password';
      try {
        assert.equal(proxy.server.reload().ok, true);
        await backendGone(alicePid);
        assert.equal(await backendAlive(carolPid), true, "carol's credentials did not change");
        await assert.rejects(connect(proxy, 'reload'), /could not log in upstream for user "alice"/);
      } finally {
        process.env[ENV] = UP_PASSWORD;
      }
      assert.equal(proxy.server.reload().ok, true);
      const c2 = await connect(proxy, 'reload', 'carol');
      assert.equal(await pidOf(c2), carolPid);
      await c2.end();
      assert.ok((await metric(proxy, 'pgro_pool_closed_total{reason="credentials_changed"}')) >= 1);

      // A new configuration with the pool off closes every pooled session.
      await waitPooled(proxy, carolPid);
      const next = { ...proxy.server['ctx'].config, pool: { ...POOL, enabled: false } } as ProxyConfig;
      assert.equal(proxy.server.applyConfig(next, createPolicy()).ok, true);
      await backendGone(carolPid);
      assert.equal(proxy.server.pooledIdle, 0);
    } finally {
      await proxy.close();
    }
  });

  test('shutdown closes idle pooled sessions', async () => {
    const proxy = await poolProxy();
    const c = await connect(proxy, 'shutdown');
    const pid = await pidOf(c);
    await c.end();
    await waitPooled(proxy, pid);
    await proxy.close();
    await backendGone(pid);
  });

  test('pool disabled: every client gets its own backend, closed when it leaves', async () => {
    const proxy = await poolProxy({ enabled: false });
    try {
      const c1 = await connect(proxy, 'off');
      const pid = await pidOf(c1);
      await c1.end();
      await backendGone(pid);
      const c2 = await connect(proxy, 'off');
      try {
        assert.notEqual(await pidOf(c2), pid);
      } finally {
        await c2.end();
      }
      assert.equal(await metric(proxy, 'pgro_pool_requests_total{result="miss"}'), 0);
      assert.equal(proxy.server.pooledIdle, 0);
    } finally {
      await proxy.close();
    }
  });
});
