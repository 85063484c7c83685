import assert from 'node:assert/strict';
import { request, type OutgoingHttpHeaders } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import {
  cacheReadiness,
  isLoopback,
  probeTcp,
  startHttpServer,
  type HttpServerHandle,
  type ReadinessResult,
  type ReloadResult,
} from '../../src/observability/http.js';
import { Metrics } from '../../src/observability/metrics.js';

const logger = pino({ level: 'silent' });

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function call(
  port: number,
  method: string,
  path: string,
  headers: OutgoingHttpHeaders = {},
  host = '127.0.0.1',
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, method, path, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

let ready: ReadinessResult = { ok: true, checks: {} };
let readyCalls = 0;
const reloads: ReloadResult[] = [];
let nextReload: ReloadResult = { ok: true };
const metrics = new Metrics({ defaultMetrics: false });
let plain: HttpServerHandle;
let admin: HttpServerHandle;

before(async () => {
  const common = {
    listen: { host: '127.0.0.1', port: 0 },
    metrics,
    ready: async () => {
      readyCalls++;
      return ready;
    },
    logger,
  };
  plain = await startHttpServer(common);
  admin = await startHttpServer({
    ...common,
    admin: {
      enabled: true,
      reload: () => {
        reloads.push(nextReload);
        return nextReload;
      },
    },
  });
});

after(async () => {
  await plain.close();
  await admin.close();
});

test('listens on the port it was given (0: any), reports the address', () => {
  assert.equal(plain.address.host, '127.0.0.1');
  assert.ok(plain.address.port > 0);
  assert.notEqual(plain.address.port, admin.address.port);
});

test('routes: status, content type and body', async () => {
  metrics.statement(true, 'SELECT');
  metrics.statement(true, 'SELECT');
  metrics.statement(true, 'SELECT');
  ready = { ok: true, checks: { parser: true, upstream: true } };
  const rows: Array<{
    method: string;
    path: string;
    status: number;
    type?: RegExp;
    body?: RegExp | string;
    allow?: string;
  }> = [
    {
      method: 'GET',
      path: '/metrics',
      status: 200,
      type: /^text\/plain; version=0\.0\.4/,
      body: /^pgro_statements_total\{decision="allowed",kind="SELECT"\} 3$/m,
    },
    { method: 'GET', path: '/metrics?name[]=x', status: 200, body: /# TYPE pgro_errors_total counter/ },
    { method: 'HEAD', path: '/metrics', status: 200, body: '' },
    { method: 'POST', path: '/metrics', status: 405, allow: 'GET, HEAD' },
    { method: 'GET', path: '/healthz', status: 200, type: /^text\/plain/, body: 'ok\n' },
    { method: 'HEAD', path: '/healthz', status: 200, body: '' },
    { method: 'DELETE', path: '/healthz', status: 405, allow: 'GET, HEAD' },
    {
      method: 'GET',
      path: '/readyz',
      status: 200,
      type: /^application\/json/,
      body: '{"status":"ready","checks":{"parser":true,"upstream":true}}\n',
    },
    { method: 'PUT', path: '/readyz', status: 405, allow: 'GET, HEAD' },
    { method: 'GET', path: '/', status: 404 },
    { method: 'GET', path: '/metrics/', status: 404 },
    { method: 'GET', path: '/Metrics', status: 404 },
    { method: 'GET', path: '/../metrics', status: 404 },
    // The admin endpoint does not exist unless enabled.
    { method: 'POST', path: '/admin/reload', status: 404 },
    { method: 'GET', path: '/admin/reload', status: 404 },
  ];
  for (const row of rows) {
    const r = await call(plain.address.port, row.method, row.path);
    const what = `${row.method} ${row.path}`;
    assert.equal(r.status, row.status, what);
    if (row.type) assert.match(String(r.headers['content-type']), row.type, what);
    if (typeof row.body === 'string') assert.equal(r.body, row.body, what);
    else if (row.body) assert.match(r.body, row.body, what);
    if (row.allow) assert.equal(r.headers.allow, row.allow, what);
    assert.equal(r.headers['cache-control'], 'no-store', what);
  }
  assert.equal(reloads.length, 0);
});

test('/readyz: 503 with the failing checks while not ready, 200 again after', async () => {
  const rows: Array<[ReadinessResult, number, unknown]> = [
    [
      { ok: false, checks: { parser: true, upstream: 'connect ECONNREFUSED 127.0.0.1:5432' } },
      503,
      {
        status: 'not_ready',
        checks: { parser: true, upstream: 'connect ECONNREFUSED 127.0.0.1:5432' },
        failing: ['upstream'],
      },
    ],
    [
      { ok: false, checks: { parser: false, upstream: false, accepting: true } },
      503,
      {
        status: 'not_ready',
        checks: { parser: false, upstream: false, accepting: true },
        failing: ['parser', 'upstream'],
      },
    ],
    // ok: true but a check failing is not ready.
    [
      { ok: true, checks: { upstream: false } },
      503,
      { status: 'not_ready', checks: { upstream: false }, failing: ['upstream'] },
    ],
    [
      { ok: true, checks: { parser: true, upstream: true } },
      200,
      { status: 'ready', checks: { parser: true, upstream: true } },
    ],
  ];
  for (const [result, status, body] of rows) {
    ready = result;
    const r = await call(plain.address.port, 'GET', '/readyz');
    assert.equal(r.status, status, JSON.stringify(result));
    assert.deepEqual(JSON.parse(r.body), body);
  }
});

test('/readyz: a ready callback that throws or hangs answers 503', async () => {
  const throwing = await startHttpServer({
    listen: { host: '127.0.0.1', port: 0 },
    metrics,
    ready: () => Promise.reject(new Error('parser not loaded')),
    logger,
  });
  const hanging = await startHttpServer({
    listen: { host: '127.0.0.1', port: 0 },
    metrics,
    ready: () => new Promise<ReadinessResult>(() => undefined),
    logger,
    readyTimeoutMs: 50,
  });
  try {
    let r = await call(throwing.address.port, 'GET', '/readyz');
    assert.equal(r.status, 503);
    assert.deepEqual(JSON.parse(r.body).checks, { readiness: 'parser not loaded' });
    r = await call(hanging.address.port, 'GET', '/readyz');
    assert.equal(r.status, 503);
    assert.deepEqual(JSON.parse(r.body).checks, { readiness: 'no answer within 50 ms' });
  } finally {
    await throwing.close();
    await hanging.close();
  }
});

test('/admin/reload: POST from loopback calls reload and returns its result', async () => {
  reloads.length = 0;
  const rows: Array<[ReloadResult, number]> = [
    [{ ok: true }, 200],
    [{ ok: false, errors: ['client_tls: ENOENT: no such file'] }, 500],
  ];
  for (const [result, status] of rows) {
    nextReload = result;
    const r = await call(admin.address.port, 'POST', '/admin/reload');
    assert.equal(r.status, status);
    assert.deepEqual(JSON.parse(r.body), result);
  }
  assert.equal(reloads.length, 2);
  nextReload = { ok: true };
});

test('/admin/reload: other methods 405, browser requests 403, and reload is not called', async () => {
  reloads.length = 0;
  const rows: Array<[string, OutgoingHttpHeaders, number]> = [
    ['GET', {}, 405],
    ['HEAD', {}, 405],
    ['PUT', {}, 405],
    ['POST', { origin: 'http://127.0.0.1:9432' }, 403],
    ['POST', { origin: 'null' }, 403],
    ['POST', { 'sec-fetch-site': 'same-origin' }, 403],
  ];
  for (const [method, headers, status] of rows) {
    const r = await call(admin.address.port, method, '/admin/reload', headers);
    assert.equal(r.status, status, `${method} ${JSON.stringify(headers)}`);
    if (status === 405) assert.equal(r.headers.allow, 'POST');
  }
  assert.equal(reloads.length, 0);
});

test('/admin/reload: refused (403) from a non-loopback address', async (t) => {
  const external = Object.values(networkInterfaces())
    .flat()
    .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
  if (!external) return t.skip('no non-loopback IPv4 address on this host');
  const open = await startHttpServer({
    listen: { host: '0.0.0.0', port: 0 },
    metrics,
    ready: async () => ({ ok: true, checks: {} }),
    admin: { enabled: true, reload: () => ({ ok: true }) },
    logger,
  });
  try {
    reloads.length = 0;
    const r = await call(open.address.port, 'POST', '/admin/reload', {}, external);
    assert.equal(r.status, 403);
    // The rest of the endpoints answer anyone.
    assert.equal((await call(open.address.port, 'GET', '/healthz', {}, external)).status, 200);
    assert.equal((await call(open.address.port, 'POST', '/admin/reload')).status, 200);
  } finally {
    await open.close();
  }
});

test('loopback addresses', () => {
  const rows: Array<[string | undefined, boolean]> = [
    ['127.0.0.1', true],
    ['127.10.20.30', true],
    ['::1', true],
    ['::ffff:127.0.0.1', true],
    ['10.0.0.1', false],
    ['::ffff:10.0.0.1', false],
    ['::', false],
    ['0.0.0.0', false],
    ['fe80::1', false],
    ['127.0.0.1.evil', false],
    [undefined, false],
  ];
  for (const [address, loopback] of rows) assert.equal(isLoopback(address), loopback, String(address));
});

test('a port in use is an error at start', async () => {
  await assert.rejects(
    startHttpServer({
      listen: { host: '127.0.0.1', port: plain.address.port },
      metrics,
      ready: async () => ({ ok: true, checks: {} }),
      logger,
    }),
    /EADDRINUSE/,
  );
});

test('close() ends keep-alive connections and stops listening', async () => {
  const s = await startHttpServer({
    listen: { host: '127.0.0.1', port: 0 },
    metrics,
    ready: async () => ({ ok: true, checks: {} }),
    logger,
  });
  assert.equal((await call(s.address.port, 'GET', '/healthz', { connection: 'keep-alive' })).status, 200);
  const started = Date.now();
  await s.close();
  assert.ok(Date.now() - started < 2000);
  await assert.rejects(call(s.address.port, 'GET', '/healthz'), /ECONNREFUSED/);
});

test('probeTcp: true when something listens, the reason when not', async () => {
  const server = createServer((s) => s.destroy());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  assert.equal(await probeTcp({ host: '127.0.0.1', port }, 1000), true);
  await new Promise<void>((r) => server.close(() => r()));
  assert.match(String(await probeTcp({ host: '127.0.0.1', port }, 1000)), /ECONNREFUSED/);
  assert.match(String(await probeTcp({ path: '/nonexistent/.s.PGSQL.5432' }, 1000)), /ENOENT/);
});

test('cacheReadiness: one call per ttl, shared by concurrent probes', async () => {
  let calls = 0;
  const cached = cacheReadiness(async () => {
    calls++;
    return { ok: true, checks: { n: true } };
  }, 60_000);
  const results = await Promise.all([cached(), cached(), cached()]);
  await cached();
  assert.equal(calls, 1);
  assert.deepEqual(results[0], { ok: true, checks: { n: true } });
  const uncached = cacheReadiness(async () => {
    calls++;
    throw new Error('down');
  }, 0);
  assert.deepEqual(await uncached(), { ok: false, checks: { readiness: 'down' } });
  await uncached();
  assert.equal(calls, 3);
});

test('the ready callback runs on each /readyz, not on /healthz', async () => {
  ready = { ok: true, checks: {} };
  const before = readyCalls;
  await call(plain.address.port, 'GET', '/healthz');
  await call(plain.address.port, 'GET', '/readyz');
  await call(plain.address.port, 'HEAD', '/readyz');
  assert.equal(readyCalls - before, 2);
});
