/**
 * Session lifecycle against a real PostgreSQL: clients that vanish, an
 * upstream that is down, Terminate, CancelRequest with the proxy's own keys,
 * the connection limit and graceful shutdown.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer } from 'node:net';
import type pg from 'pg';
import { direct, eventually, startProxy, testServer, type RunningProxy } from '../helpers/harness.js';
import {
  RawClient,
  encodeCancel,
  encodeStartup,
  encodeTerminateMessage,
  firstColumn,
} from '../helpers/raw-client.js';

const T = { timeout: 15_000 };
let proxy: RunningProxy;
let d: pg.Client;

before(async () => {
  proxy = await startProxy();
  d = await direct();
});
after(async () => {
  await d.end();
  await proxy.close();
});

async function backendsFor(appName: string): Promise<Array<{ pid: number; state: string; query: string }>> {
  const r = await d.query('SELECT pid, state, query FROM pg_stat_activity WHERE application_name = $1', [
    appName,
  ]);
  return r.rows as Array<{ pid: number; state: string; query: string }>;
}

async function until(pred: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, testServer().host, resolve));
  const addr = s.address();
  assert.ok(addr && typeof addr === 'object');
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return addr.port;
}

/** Sends a CancelRequest for (processId, secret) to the proxy on a fresh socket. */
async function sendCancel(processId: number, secret: Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const s = connect({ host: proxy.host, port: proxy.port });
    s.on('error', reject);
    s.on('connect', () => s.end(encodeCancel(processId, secret)));
    s.resume();
    s.on('close', () => resolve());
  });
}

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n | 0);
  return b;
}

test(
  'client vanishing mid-query: the upstream query is cancelled and the backend ends within 2 s',
  T,
  async () => {
    const app = 'lc_vanish';
    const c = await proxy.client({ application_name: app });
    c.on('error', () => undefined);
    const running = c.query('SELECT pg_sleep(5)').catch(() => undefined);
    await until(
      async () => (await backendsFor(app)).some((b) => b.state === 'active' && b.query.includes('pg_sleep')),
      2000,
      'the sleep to start upstream',
    );
    const vanishedAt = Date.now();
    (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    await until(async () => (await backendsFor(app)).length === 0, 2000, 'the upstream backend to end');
    assert.ok(Date.now() - vanishedAt < 2000);
    await running;
    assert.ok(proxy.logs.some((l) => l.event === 'cancel_forwarded'));
  },
);

test('upstream down at connect time: clear FATAL 08006, and the proxy keeps serving', T, async () => {
  const down = await startProxy({ upstreamPort: await closedPort() });
  try {
    for (let i = 0; i < 2; i++) {
      await assert.rejects(down.client(), (err: pg.DatabaseError) => {
        assert.equal(err.code, '08006');
        assert.equal(err.severity, 'FATAL');
        assert.match(err.message, /could not connect to the upstream server/);
        assert.match(err.detail ?? '', /ECONNREFUSED/);
        return true;
      });
    }
    assert.ok(down.logs.some((l) => l.event === 'upstream_connect_failed'));
    assert.equal(down.server.activeSessions, 0);
    // Other proxies and sessions are unaffected.
    const c = await proxy.client();
    assert.equal((await c.query('SELECT 1 AS n')).rows[0].n, 1);
    await c.end();
  } finally {
    await down.close();
  }
});

test('Terminate ends the session and the upstream backend', T, async () => {
  const s = testServer();
  const raw = await RawClient.connect(proxy.host, proxy.port);
  try {
    raw.send(
      encodeStartup([
        ['user', s.user],
        ['database', 'postgres'],
        ['application_name', 'lc_terminate'],
      ]),
    );
    await raw.login(s.user, s.password);
    const pid = Number(firstColumn(await raw.query('SELECT pg_backend_pid()'))[0]);
    raw.send(encodeTerminateMessage());
    await raw.waitClosed(2000);
    await until(
      async () => (await d.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).rowCount === 0,
      2000,
      'the upstream backend to end',
    );
    await eventually(
      () => proxy.logs.some((l) => l.event === 'connection_closed' && l.reason === 'client terminated'),
      2000,
      'close log line',
    );
  } finally {
    raw.close();
  }
});

test(
  'CancelRequest with the proxy-issued key cancels the query (57014); the session stays usable',
  T,
  async () => {
    const c = await proxy.client({ application_name: 'lc_cancel' });
    try {
      const keys = c as unknown as { processID: number; secretKey: number };
      const upstreamPid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      assert.equal(typeof keys.processID, 'number');
      assert.notEqual(keys.processID, upstreamPid, 'the proxy must not reveal the upstream pid');
      const t0 = Date.now();
      const sleeping = c.query('SELECT pg_sleep(5)');
      await until(
        async () => (await backendsFor('lc_cancel')).some((b) => b.state === 'active'),
        2000,
        'the sleep to start',
      );
      await sendCancel(keys.processID, int32(keys.secretKey));
      await assert.rejects(sleeping, { code: '57014' });
      assert.ok(Date.now() - t0 < 3000);
      assert.equal((await c.query('SELECT 2 AS n')).rows[0].n, 2);
    } finally {
      await c.end();
    }
  },
);

test('CancelRequest with a wrong secret or the upstream pid cancels nothing', T, async () => {
  const c = await proxy.client();
  try {
    const keys = c as unknown as { processID: number; secretKey: number };
    const upstreamPid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    const q = c.query('SELECT pg_sleep(0.6) AS slept');
    await new Promise((r) => setTimeout(r, 100));
    await sendCancel(keys.processID, int32(keys.secretKey ^ 1));
    await sendCancel(upstreamPid, int32(keys.secretKey));
    const r = await q;
    assert.equal(r.rows.length, 1);
  } finally {
    await c.end();
  }
  assert.ok(
    proxy.logs.filter((l) => l.event === 'cancel_request' && l.outcome === 'unknown_key').length >= 2,
  );
});

test('regression: CancelRequest connections do not stay counted as sessions', T, async () => {
  const before = proxy.server.activeSessions;
  for (let i = 0; i < 5; i++) await sendCancel(12345 + i, int32(i));
  await eventually(() => proxy.server.activeSessions === before, 2000, 'cancel sessions to be forgotten');
  assert.equal(before, 0);
});

test('regression: a refused client that never closes its socket does not block shutdown', T, async () => {
  const limited = await startProxy({ config: { maxClientConnections: 1 } });
  const c = await limited.client();
  // A raw socket that reads the refusal but never closes its side.
  const raw = await RawClient.connect(limited.host, limited.port);
  raw.socket.on('end', () => undefined);
  (raw.socket as unknown as { allowHalfOpen: boolean }).allowHalfOpen = true;
  const t0 = Date.now();
  await c.end();
  await limited.close();
  assert.ok(Date.now() - t0 < 3000, `shutdown took ${Date.now() - t0} ms`);
  raw.close();
});

test('connection limit: with maxClientConnections 2 the third client gets 53300', T, async () => {
  const limited = await startProxy({ config: { maxClientConnections: 2 } });
  const clients: pg.Client[] = [];
  try {
    clients.push(await limited.client(), await limited.client());
    await assert.rejects(limited.client(), { code: '53300' });
    // The two sessions still work; freeing one admits a new client.
    for (const c of clients) assert.equal((await c.query('SELECT 1 AS n')).rows[0].n, 1);
    await clients.shift()!.end();
    await eventually(() => limited.server.activeSessions === 1, 2000, 'the session to close');
    clients.push(await limited.client());
  } finally {
    for (const c of clients) await c.end();
    await limited.close();
  }
});

test('graceful shutdown: a running query finishes, then idle sessions get FATAL 57P01', T, async () => {
  const p = await startProxy();
  const c = await p.client();
  const errors: Array<{ code?: string }> = [];
  c.on('error', (e: Error & { code?: string }) => errors.push(e));
  const ended = new Promise<void>((resolve) => c.once('end', () => resolve()));
  const q = c.query('SELECT pg_sleep(0.3) AS s, 1 AS n');
  const shutdown = p.server.shutdown(800);
  const r = await q;
  assert.equal(r.rows[0].n, 1);
  await shutdown;
  await ended;
  assert.equal(errors[0]?.code, '57P01');
  // The listener is closed: new clients cannot connect.
  await assert.rejects(p.client());
});
