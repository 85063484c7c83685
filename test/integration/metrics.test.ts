/**
 * Metrics and health over HTTP: a scripted workload through the proxy, then a
 * scrape of /metrics with the exact counts; /healthz and /readyz with the
 * upstream up and down.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startHttpServer } from '../../src/observability/http.js';
import { freePort } from '../../src/embedded/embedded.js';
import { createLogger } from '../../src/observability/logger.js';
import { eventually, startProxy, type RunningProxy } from '../helpers/harness.js';

let proxy: RunningProxy;
let http: { address: { host: string; port: number }; close(): Promise<void> };

before(async () => {
  proxy = await startProxy();
  http = await startHttpServer({
    listen: { host: '127.0.0.1', port: 0 },
    metrics: proxy.server.metrics,
    logger: createLogger('silent'),
    ready: () => proxy.server.readiness(),
  });
});
after(async () => {
  await http.close();
  await proxy.close();
});

async function get(path: string): Promise<{ status: number; text: string }> {
  const r = await fetch(`http://127.0.0.1:${http.address.port}${path}`);
  return { status: r.status, text: await r.text() };
}

/** The value of one sample line, e.g. `pgro_statements_total{decision="allowed",kind="SELECT"}`; 0 when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^([^{\s]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return 0;
}

test('a scripted workload is counted exactly', async () => {
  const before = (await get('/metrics')).text;
  const c = await proxy.client();
  const during = (await get('/metrics')).text;
  assert.equal(sample(during, 'pgro_client_connections'), 1);
  for (let i = 0; i < 3; i++) await c.query('SELECT 1');
  await assert.rejects(c.query('DELETE FROM pg_class'), { code: '25006' });
  await assert.rejects(c.query('SELECT pg_terminate_backend(1)'), { code: '42501' });
  await c.end();
  // A startup-packet attack: refused before anything reaches the server.
  await assert.rejects(proxy.client({ options: '-c default_transaction_read_only=off' }), { code: '42501' });
  await eventually(() => proxy.server.activeSessions === 0, 5000, 'sessions to close');

  const after = (await get('/metrics')).text;
  const delta = (name: string, labels: Record<string, string> = {}): number =>
    sample(after, name, labels) - sample(before, name, labels);
  assert.equal(delta('pgro_statements_total', { decision: 'allowed', kind: 'SELECT' }), 3);
  assert.equal(delta('pgro_statements_total', { decision: 'refused', kind: 'DELETE', reason: 'write' }), 1);
  assert.equal(
    delta('pgro_statements_total', { decision: 'refused', kind: 'SELECT', reason: 'forbidden_function' }),
    1,
  );
  assert.equal(delta('pgro_client_connections_total', { result: 'ok' }), 1);
  assert.equal(delta('pgro_client_connections_total', { result: 'startup_refused' }), 1);
  assert.equal(sample(after, 'pgro_client_connections'), 0);
  const attack = proxy.logs.filter((l) => l.event === 'security').at(-1);
  assert.ok(attack, 'the refused startup was logged as a security event');
  assert.equal(delta('pgro_security_events_total', { kind: String(attack.kind) }), 1);
  // Five query strings (three SELECTs and two refusals) ended at a ReadyForQuery.
  assert.equal(delta('pgro_query_duration_seconds_count'), 5);
  assert.equal(delta('pgro_classification_duration_seconds_count'), 5);
  assert.equal(delta('pgro_upstream_connect_duration_seconds_count'), 1);
  assert.ok(delta('pgro_client_received_bytes_total') > 0);
  assert.ok(delta('pgro_client_sent_bytes_total') > 0);
  // 'SELECT 1' three times: parsed once, then found twice.
  assert.equal(delta('pgro_decision_cache_hits_total'), 2);
  assert.ok(delta('pgro_decision_cache_misses_total') >= 3);
});

test('/healthz answers while the process serves; /readyz follows the upstream', async () => {
  assert.deepEqual(await get('/healthz'), { status: 200, text: 'ok\n' });
  const ready = await get('/readyz');
  assert.equal(ready.status, 200, ready.text);
  // A proxy whose upstream is down is alive but not ready.
  const down = await startProxy({ upstreamPort: await freePort() });
  const h = await startHttpServer({
    listen: { host: '127.0.0.1', port: 0 },
    metrics: down.server.metrics,
    logger: createLogger('silent'),
    ready: () => down.server.readiness(),
  });
  try {
    const r = await fetch(`http://127.0.0.1:${h.address.port}/readyz`);
    assert.equal(r.status, 503);
    const body = (await r.json()) as { failing: string[] };
    assert.deepEqual(body.failing, ['upstream']);
    assert.equal((await fetch(`http://127.0.0.1:${h.address.port}/healthz`)).status, 200);
  } finally {
    await h.close();
    await down.close();
  }
});
