import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LruCache } from '../../src/policy/cache.js';

test('evicts the least recently used entry', () => {
  const c = new LruCache<number>(3);
  c.set('a', 1);
  c.set('b', 2);
  c.set('c', 3);
  assert.equal(c.get('a'), 1); // a is now the most recent
  c.set('d', 4); // evicts b
  assert.equal(c.get('b'), undefined);
  assert.deepEqual(c.keys(), ['d', 'a', 'c']);
  c.set('e', 5); // evicts c
  assert.deepEqual(c.keys(), ['e', 'd', 'a']);
  assert.equal(c.size, 3);
});

test('updating a key keeps one entry and refreshes it', () => {
  const c = new LruCache<number>(2);
  c.set('a', 1);
  c.set('b', 2);
  c.set('a', 10);
  c.set('c', 3); // evicts b
  assert.deepEqual(c.keys(), ['c', 'a']);
  assert.equal(c.get('a'), 10);
});

test('bounded by total key length too', () => {
  const c = new LruCache<number>(100, 10);
  c.set('aaaa', 1);
  c.set('bbbb', 2);
  c.set('cccc', 3); // 12 chars > 10: evicts aaaa
  assert.deepEqual(c.keys(), ['cccc', 'bbbb']);
  c.set('x'.repeat(11), 4); // longer than the whole budget: not cached
  assert.equal(c.size, 2);
});

test('capacity 0 caches nothing; clear empties', () => {
  const off = new LruCache<number>(0);
  off.set('a', 1);
  assert.equal(off.get('a'), undefined);
  const c = new LruCache<number>(2);
  c.set('a', 1);
  c.clear();
  assert.equal(c.size, 0);
  assert.deepEqual(c.keys(), []);
});

test('a hit on a hot key costs well under a microsecond', () => {
  const c = new LruCache<number>(10_000);
  const keys = Array.from({ length: 10_000 }, (_, i) => `SELECT ${i} FROM some_table WHERE id = $1`);
  keys.forEach((k, i) => c.set(k, i));
  const hot = keys[5000] as string;
  const other = keys[10] as string;
  const n = 200_000;
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) c.get(i & 1 ? hot : other);
  const perHit = Number(process.hrtime.bigint() - start) / n;
  assert.ok(perHit < 1000, `${perHit.toFixed(1)} ns per hit`);
});
