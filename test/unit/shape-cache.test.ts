/**
 * The decision cache answers exactly as a full parse would. Every corpus row,
 * and variants of it with other literal values (chosen to flip decisions that
 * do read literals: setting names and values, sleep durations), goes through
 * one cached policy in several orders and through a policy with no cache; the
 * decisions must be identical, statement texts included.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { createPolicy, loadParser, type Policy } from '../../src/policy/index.js';
import { literalShape } from '../../src/policy/shape.js';
import { corpus } from '../fixtures/policy/corpus.js';

before(async () => {
  await loadParser();
});

/** Replacement values per literal kind, one set per variant. */
const VARIANTS: ReadonlyArray<{ s: string; i: string; d: string }> = [
  { s: "''", i: '0', d: '0.0' },
  { s: "'off'", i: '1', d: '1.5' },
  { s: "'default_transaction_read_only'", i: '100000000', d: '99999.25' },
  { s: "'search_path'", i: '5', d: '0.001' },
  { s: "'x''y'", i: '999999999', d: '3.14159' },
];

function variant(sql: string, v: { s: string; i: string; d: string }): string | undefined {
  const shape = literalShape(sql);
  if (!shape || shape.spans.length === 0) return undefined;
  let out = '';
  let at = 0;
  for (let k = 0; k < shape.spans.length; k += 2) {
    const [from, to] = [shape.spans[k]!, shape.spans[k + 1]!];
    const lit = sql.slice(from, to);
    out += sql.slice(at, from) + (lit.startsWith("'") ? v.s : lit.includes('.') ? v.d : v.i);
    at = to;
  }
  return out + sql.slice(at);
}

/** Queries whose decisions hang on a literal, beyond the corpus's own. */
const EXTRA = [
  "SELECT set_config('search_path', 'public', false)",
  "SELECT set_config('default_transaction_read_only', 'off', false)",
  'SELECT pg_sleep(1)',
  'SELECT pg_sleep(1000)',
  "SELECT pg_sleep_for('1 second')",
  "SELECT pg_sleep_for('1 hour')",
  "SET statement_timeout = '5s'",
  'SET statement_timeout = 0',
  "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'search_path'",
  "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'default_transaction_read_only'",
  "BEGIN TRANSACTION READ ONLY; SELECT 1; SELECT 'a'; COMMIT",
  "SELECT 1; COMMIT; SELECT 'a'",
  "SELECT a FROM t WHERE b = 'x' FOR UPDATE",
  "SELECT 'x' AS a, 2 AS b; SELECT 3.5",
  'SELECT abalance FROM pgbench_accounts WHERE aid = 42;',
  "SELECT * FROM t WHERE d > DATE '2020-01-01' LIMIT 10 OFFSET 5",
  'SELECT 1::float(5)',
  'FETCH 5 FROM c',
  "EXPLAIN (FORMAT 'json') SELECT 1",
  "COPY (SELECT 'a', 1) TO STDOUT",
  "COPY t TO '/tmp/file'",
  "SELECT lo_import('/etc/passwd')",
];

function decisions(policy: Policy, queries: readonly string[]): unknown[] {
  return queries.map((q) => JSON.parse(JSON.stringify(policy.classify(q))) as unknown);
}

test('the cached decision is the full parse’s decision, whatever came first', () => {
  const base = [...corpus.map((r) => r.sql), ...EXTRA];
  const queries: string[] = [];
  for (const sql of base) {
    queries.push(sql);
    for (const v of VARIANTS) {
      const other = variant(sql, v);
      if (other !== undefined) queries.push(other);
    }
  }
  assert.ok(queries.length > base.length * 2, `${queries.length} queries`);
  const uncached = createPolicy({ cacheSize: 0 });
  const expected = decisions(uncached, queries);

  for (const order of ['forward', 'backward', 'interleaved'] as const) {
    const cached = createPolicy();
    const idx = queries.map((_, i) => i);
    if (order === 'backward') idx.reverse();
    if (order === 'interleaved') idx.sort((a, b) => (a % 7) - (b % 7) || a - b);
    for (const i of idx) {
      const got = JSON.parse(JSON.stringify(cached.classify(queries[i]!))) as unknown;
      assert.deepEqual(got, expected[i], `${order}: ${queries[i]}`);
    }
    // And a second pass, all from the cache.
    assert.deepEqual(decisions(cached, queries), expected, order);
    const stats = cached.cacheStats();
    assert.ok(stats.shapeHits > 300, `${order}: only ${stats.shapeHits} hits by shape`);
  }
});

test('decisions that read a literal are never shared by shape', () => {
  const cached = createPolicy();
  assert.equal(cached.classify('SELECT pg_sleep(1)').allowed, true);
  assert.equal(cached.classify('SELECT pg_sleep(1000)').allowed, false);
  assert.equal(cached.classify("SELECT set_config('search_path', 'x', false)").allowed, true);
  assert.equal(
    cached.classify("SELECT set_config('default_transaction_read_only', 'off', false)").allowed,
    false,
  );
  assert.equal(cached.cacheStats().shapeHits, 0);
});

test('queries that differ only in literals cost one parse', () => {
  const cached = createPolicy();
  for (let aid = 1; aid <= 1000; aid++) {
    const d = cached.classify(`SELECT abalance FROM pgbench_accounts WHERE aid = ${aid};`);
    assert.equal(d.allowed, true);
    assert.equal(d.statements[0]!.text, `SELECT abalance FROM pgbench_accounts WHERE aid = ${aid}`);
  }
  assert.deepEqual(cached.cacheStats(), { hits: 999, shapeHits: 999, misses: 1 });
});
