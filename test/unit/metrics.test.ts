import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ConnectionResult,
  connectionResultFor,
  ErrorKind,
  Metrics,
  OTHER_KIND,
  SecurityEventKind,
  STATEMENT_KINDS,
  statementKindLabel,
} from '../../src/observability/metrics.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the text exposition format (the subset prom-client writes). */
function parse(text: string): { types: Map<string, string>; samples: Sample[] } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      types.set(type[1]!, type[2]!);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `unparsable line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return { types, samples };
}

/** The value of the one sample with exactly these labels (undefined if none). */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const want = JSON.stringify(Object.entries(labels).sort());
  const found = samples.filter(
    (s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want,
  );
  assert.ok(found.length <= 1, `${found.length} samples of ${name} ${want}`);
  return found[0]?.value;
}

async function scrape(m: Metrics): Promise<{ types: Map<string, string>; samples: Sample[] }> {
  return parse(await m.metricsText());
}

test('every metric is present, prefixed, with its type', async () => {
  const { types } = await scrape(new Metrics());
  const expected: Array<[string, string]> = [
    ['pgro_build_info', 'gauge'],
    ['pgro_client_connections', 'gauge'],
    ['pgro_client_connections_total', 'counter'],
    ['pgro_statements_total', 'counter'],
    ['pgro_classification_duration_seconds', 'histogram'],
    ['pgro_query_duration_seconds', 'histogram'],
    ['pgro_upstream_connect_duration_seconds', 'histogram'],
    ['pgro_client_received_bytes_total', 'counter'],
    ['pgro_client_sent_bytes_total', 'counter'],
    ['pgro_decision_cache_hits_total', 'counter'],
    ['pgro_decision_cache_misses_total', 'counter'],
    ['pgro_decision_cache_shape_hits_total', 'counter'],
    ['pgro_security_events_total', 'counter'],
    ['pgro_errors_total', 'counter'],
    // Node's default metrics, with the same prefix.
    ['pgro_process_cpu_user_seconds_total', 'counter'],
    ['pgro_process_resident_memory_bytes', 'gauge'],
    ['pgro_nodejs_eventloop_lag_seconds', 'gauge'],
    ['pgro_nodejs_heap_size_used_bytes', 'gauge'],
  ];
  for (const [name, type] of expected) assert.equal(types.get(name), type, name);
  for (const name of types.keys()) assert.match(name, /^pgro_[a-z0-9_]+$/, name);
  // Ours (not prom-client's defaults, which have a gauge named *_total): counters
  // end in _total and nothing else does; units are base units, last.
  const own = (await scrape(new Metrics({ defaultMetrics: false }))).types;
  for (const [name, type] of own) {
    assert.equal(name.endsWith('_total'), type === 'counter', name);
    assert.doesNotMatch(name, /_(ms|milliseconds|kb|kilobytes)(_|$)/, name);
  }
});

test('default metrics can be left out', async () => {
  const { types } = await scrape(new Metrics({ defaultMetrics: false }));
  assert.equal(types.has('pgro_process_cpu_user_seconds_total'), false);
  assert.equal(types.has('pgro_statements_total'), true);
});

test('counters move by exactly the calls made', async () => {
  const m = new Metrics({ defaultMetrics: false });
  // [what, call, how many times, metric, labels, expected value]
  const rows: Array<[string, () => void, number, string, Record<string, string>, number]> = [
    [
      'allowed',
      () => m.statement(true, 'SELECT'),
      3,
      'pgro_statements_total',
      { decision: 'allowed', kind: 'SELECT' },
      3,
    ],
    [
      'reason ignored when allowed',
      () => m.statement(true, 'SHOW', 'write'),
      2,
      'pgro_statements_total',
      { decision: 'allowed', kind: 'SHOW' },
      2,
    ],
    [
      'refused',
      () => m.statement(false, 'INSERT', 'write'),
      4,
      'pgro_statements_total',
      { decision: 'refused', kind: 'INSERT', reason: 'write' },
      4,
    ],
    [
      'unknown reason',
      () => m.statement(false, 'SELECT', 'made_up'),
      1,
      'pgro_statements_total',
      { decision: 'refused', kind: 'SELECT', reason: 'other' },
      1,
    ],
    [
      'refused without reason',
      () => m.statement(false, 'DELETE'),
      2,
      'pgro_statements_total',
      { decision: 'refused', kind: 'DELETE', reason: 'other' },
      2,
    ],
    [
      'result ok',
      () => m.connectionResult(ConnectionResult.Ok),
      5,
      'pgro_client_connections_total',
      { result: 'ok' },
      5,
    ],
    [
      'result refused_limit',
      () => m.connectionResult(ConnectionResult.RefusedLimit),
      2,
      'pgro_client_connections_total',
      { result: 'refused_limit' },
      2,
    ],
    [
      'unknown result',
      () => m.connectionResult('nonsense' as ConnectionResult),
      1,
      'pgro_client_connections_total',
      { result: 'other' },
      1,
    ],
    ['bytes in', () => m.bytesIn(1000), 3, 'pgro_client_received_bytes_total', {}, 3000],
    ['bytes out', () => m.bytesOut(7), 6, 'pgro_client_sent_bytes_total', {}, 42],
    [
      'pin violation',
      () => m.securityEvent(SecurityEventKind.PinViolation),
      2,
      'pgro_security_events_total',
      { kind: 'pin_violation' },
      2,
    ],
    [
      'startup attack',
      () => m.securityEvent('startup_protected_setting'),
      3,
      'pgro_security_events_total',
      { kind: 'startup_protected_setting' },
      3,
    ],
    [
      'unknown security event',
      () => m.securityEvent('x'),
      1,
      'pgro_security_events_total',
      { kind: 'other' },
      1,
    ],
    [
      'error',
      () => m.error(ErrorKind.ProtocolViolation),
      4,
      'pgro_errors_total',
      { kind: 'protocol_violation' },
      4,
    ],
    [
      'startup_* error not listed',
      () => m.error('startup_replication'),
      2,
      'pgro_errors_total',
      { kind: 'startup_refused' },
      2,
    ],
    ['unknown error', () => m.error('whatever'), 1, 'pgro_errors_total', { kind: 'other' }, 1],
  ];
  for (const [, call, times] of rows) for (let i = 0; i < times; i++) call();
  for (let scrapeNo = 1; scrapeNo <= 2; scrapeNo++) {
    // The second scrape reports the same values: collect() does not count twice.
    const { samples } = await scrape(m);
    for (const [what, , , name, labels, expected] of rows)
      assert.equal(value(samples, name, labels), expected, `scrape ${scrapeNo}, ${what}`);
    // Label values no call touched are there, at 0.
    assert.equal(value(samples, 'pgro_client_connections_total', { result: 'auth_failed' }), 0);
    assert.equal(value(samples, 'pgro_errors_total', { kind: 'upstream_connect_failed' }), 0);
  }
});

test('the active connections gauge follows opened and closed, never below 0', async () => {
  const m = new Metrics({ defaultMetrics: false });
  for (let i = 0; i < 3; i++) m.connectionOpened();
  m.connectionClosed();
  assert.equal(value((await scrape(m)).samples, 'pgro_client_connections'), 2);
  for (let i = 0; i < 5; i++) m.connectionClosed();
  assert.equal(value((await scrape(m)).samples, 'pgro_client_connections'), 0);
});

test('histograms count each observation in the right bucket, in seconds', async () => {
  const m = new Metrics({ defaultMetrics: false });
  const observations: Array<[string, (s: number) => void, number[]]> = [
    [
      'pgro_classification_duration_seconds',
      (s) => m.observeClassification(s),
      [0.000003, 0.000004, 0.002, 0.5],
    ],
    ['pgro_query_duration_seconds', (s) => m.observeQuery(s), [0.0001, 2]],
    ['pgro_upstream_connect_duration_seconds', (s) => m.observeUpstreamConnect(s), [0.003]],
  ];
  for (const [, observe, values] of observations) for (const v of values) observe(v);
  // Not a duration: dropped, not thrown across the session loop.
  for (const [, observe] of observations) for (const v of [NaN, Infinity]) observe(v);
  const { samples } = await scrape(m);
  for (const [name, , values] of observations) {
    assert.equal(value(samples, `${name}_count`), values.length, name);
    const sum = value(samples, `${name}_sum`)!;
    assert.ok(Math.abs(sum - values.reduce((a, b) => a + b, 0)) < 1e-9, `${name}_sum ${sum}`);
    assert.equal(value(samples, `${name}_bucket`, { le: '+Inf' }), values.length);
  }
  // 1 µs .. 10 ms buckets for classification.
  assert.equal(value(samples, 'pgro_classification_duration_seconds_bucket', { le: '0.000001' }), 0);
  assert.equal(value(samples, 'pgro_classification_duration_seconds_bucket', { le: '0.000005' }), 2);
  assert.equal(value(samples, 'pgro_classification_duration_seconds_bucket', { le: '0.01' }), 3);
});

test('decision-cache counters read the stats function at each scrape', async () => {
  let stats = { hits: 10, misses: 3, shapeHits: 7 };
  const m = new Metrics({ defaultMetrics: false, decisionCacheStats: () => stats });
  let s = (await scrape(m)).samples;
  assert.equal(value(s, 'pgro_decision_cache_hits_total'), 10);
  assert.equal(value(s, 'pgro_decision_cache_misses_total'), 3);
  assert.equal(value(s, 'pgro_decision_cache_shape_hits_total'), 7);
  stats = { hits: 25, misses: 4, shapeHits: 9 };
  s = (await scrape(m)).samples;
  assert.equal(value(s, 'pgro_decision_cache_hits_total'), 25);
  assert.equal(value(s, 'pgro_decision_cache_misses_total'), 4);
  assert.equal(value(s, 'pgro_decision_cache_shape_hits_total'), 9);
  // No source, or one that throws: 0, and the scrape still works.
  m.setDecisionCacheStats(() => {
    throw new Error('boom');
  });
  s = (await scrape(m)).samples;
  assert.equal(value(s, 'pgro_decision_cache_hits_total'), 0);
  m.setDecisionCacheStats(undefined);
  assert.equal(value((await scrape(m)).samples, 'pgro_decision_cache_misses_total'), 0);
});

test('statement kind labels come from a bounded set', () => {
  const cases: Array<[string, string]> = [
    ['SELECT', 'SELECT'],
    ['SELECT FOR UPDATE', 'SELECT FOR UPDATE'],
    ['CREATE TABLE', 'CREATE TABLE'],
    ['CREATE FOREIGN DATA WRAPPER', 'CREATE'],
    ['ALTER TEXT SEARCH DICTIONARY', 'ALTER'],
    ['DROP OPERATOR CLASS', 'DROP'],
    ['DROP', 'DROP'],
    ['UNKNOWN', 'UNKNOWN'],
    ['select', OTHER_KIND],
    ['CREATEX TABLE', OTHER_KIND],
    ['', OTHER_KIND],
    ['x'.repeat(10_000), OTHER_KIND],
  ];
  for (const [kind, label] of cases) assert.equal(statementKindLabel(kind), label, kind.slice(0, 40));
});

test('1000 distinct bogus kinds and reasons stay within the bounded label set', async () => {
  const m = new Metrics({ defaultMetrics: false });
  for (let i = 0; i < 1000; i++) {
    m.statement(true, `BOGUS ${i}`);
    m.statement(false, `CREATE THING${i}`, `reason_${i}`);
    m.statement(false, `kind-${i}"\n`, 'write');
  }
  m.statement(true, 'SELECT');
  const { samples } = await scrape(m);
  const series = samples.filter((s) => s.name === 'pgro_statements_total');
  const kinds = new Set(series.map((s) => s.labels.kind!));
  const allowedKinds = new Set([...STATEMENT_KINDS, 'CREATE', 'ALTER', 'DROP', OTHER_KIND]);
  for (const k of kinds) assert.ok(allowedKinds.has(k), k);
  assert.deepEqual([...kinds].sort(), ['CREATE', OTHER_KIND, 'SELECT']);
  assert.equal(series.length, 4);
  assert.equal(value(samples, 'pgro_statements_total', { decision: 'allowed', kind: OTHER_KIND }), 1000);
  assert.equal(
    value(samples, 'pgro_statements_total', { decision: 'refused', kind: 'CREATE', reason: 'other' }),
    1000,
  );
  assert.equal(
    value(samples, 'pgro_statements_total', { decision: 'refused', kind: OTHER_KIND, reason: 'write' }),
    1000,
  );
});

test('registries are separate: two Metrics count apart', async () => {
  const a = new Metrics({ defaultMetrics: false });
  const b = new Metrics({ defaultMetrics: false });
  a.statement(true, 'SELECT');
  a.statement(true, 'SELECT');
  b.statement(true, 'SELECT');
  assert.equal(
    value((await scrape(a)).samples, 'pgro_statements_total', { decision: 'allowed', kind: 'SELECT' }),
    2,
  );
  assert.equal(
    value((await scrape(b)).samples, 'pgro_statements_total', { decision: 'allowed', kind: 'SELECT' }),
    1,
  );
  assert.match(a.contentType, /^text\/plain; version=0\.0\.4/);
});

test('connection results for the reasons a session ends before it is ready', () => {
  const cases: Array<[string, ConnectionResult]> = [
    ['startup_protected_setting', 'startup_refused'],
    ['startup_replication', 'startup_refused'],
    ['startup_unsupported_protocol', 'startup_refused'],
    ['plaintext_refused', 'startup_refused'],
    ['startup_timeout', 'protocol_error'],
    ['protocol_violation', 'protocol_error'],
    ['auth_failed', 'auth_failed'],
    ['database_not_granted', 'auth_failed'],
    ['channel_binding_refused', 'auth_failed'],
    ['upstream_connect_failed', 'upstream_failed'],
    ['upstream login failed', 'upstream_failed'],
    ['server too old', 'upstream_failed'],
    ['pin violation', 'upstream_failed'],
    ['upstream closed', 'upstream_failed'],
    ['TLS handshake failed', 'tls_failed'],
    ['cancel request', 'cancel_request'],
    ['client disconnected', 'client_closed'],
    ['client terminated', 'client_closed'],
    ['admin_shutdown', 'refused_shutdown'],
    ['internal_error', 'other'],
    ['anything else', 'other'],
  ];
  for (const [reason, result] of cases) assert.equal(connectionResultFor(reason), result, reason);
});

test('the hot-path calls cost well under a microsecond', () => {
  const m = new Metrics({ defaultMetrics: false });
  const n = 200_000;
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    m.statement(true, 'SELECT');
    m.statement(false, 'INSERT', 'write');
    m.bytesIn(100);
    m.bytesOut(1000);
  }
  const perCall = Number(process.hrtime.bigint() - start) / n / 4;
  assert.ok(perCall < 250, `${perCall.toFixed(1)} ns per call`);
});
