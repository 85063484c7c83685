/**
 * The literal shape (src/policy/shape.ts) against PostgreSQL's own scanner
 * (libpg-query's scanSync), differentially: on the policy corpus, on texts
 * built to probe the scanner's corners, and on random text. Wherever the
 * shape takes a literal out, the scanner must see exactly one literal token
 * there, of the matching kind, with the same bounds, and nothing the shape
 * gives up on (comments, other literal forms) may appear.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { scanSync } from 'libpg-query';
import { loadParser } from '../../src/policy/index.js';
import { literalShape, mapOffset } from '../../src/policy/shape.js';
import { corpus } from '../fixtures/policy/corpus.js';

before(async () => {
  await loadParser();
});

interface Token {
  start: number;
  end: number;
  tokenName: string;
  text: string;
}

function scan(sql: string): Token[] | undefined {
  if (sql === '') return []; // libpg-query's scanSync fails on an empty string
  try {
    return scanSync(sql).tokens as Token[];
  } catch {
    return undefined;
  }
}

/** Token kinds that may only appear where the shape took a literal out. */
const LITERAL_TOKENS = new Set(['SCONST', 'ICONST', 'FCONST', 'BCONST', 'XCONST', 'USCONST']);
const GIVE_UP_TOKENS = new Set(['SQL_COMMENT', 'C_COMMENT', 'BCONST', 'XCONST', 'USCONST', 'UIDENT']);

/** Why the shape disagrees with the scanner on `sql`, or undefined when it does not. */
function disagreement(sql: string): string | undefined {
  const shape = literalShape(sql);
  if (shape === undefined) return undefined; // giving up is always safe
  const tokens = scan(sql);
  if (tokens === undefined) return 'the scanner rejects a text the shape accepted';
  const spans = new Map<number, number>();
  for (let k = 0; k < shape.spans.length; k += 2) spans.set(shape.spans[k]!, shape.spans[k + 1]!);
  let matched = 0;
  for (const t of tokens) {
    if (GIVE_UP_TOKENS.has(t.tokenName)) return `scanner found ${t.tokenName} ${JSON.stringify(t.text)}`;
    const end = spans.get(t.start);
    if (end !== undefined) {
      if (end !== t.end) return `span ${t.start}-${end} but token ${t.tokenName} ${t.start}-${t.end}`;
      if (!LITERAL_TOKENS.has(t.tokenName)) return `span over ${t.tokenName} ${JSON.stringify(t.text)}`;
      const marked = shape.key.includes('\u0001');
      if (!marked) return 'span without a marker';
      matched++;
      continue;
    }
    if (t.tokenName === 'SCONST') return `string ${JSON.stringify(t.text)} left in the shape`;
    if ((t.tokenName === 'ICONST' || t.tokenName === 'FCONST') && !/^\d{10,}$/.test(t.text))
      return `number ${JSON.stringify(t.text)} (${t.tokenName}) left in the shape`;
  }
  if (matched !== spans.size) return `${spans.size - matched} span(s) match no token`;
  // Kinds: a string span is an SCONST, an integer one an ICONST, a decimal an FCONST.
  for (const t of tokens) {
    if (!spans.has(t.start)) continue;
    const text = sql.slice(t.start, t.end);
    const expected = text.startsWith("'") ? 'SCONST' : text.includes('.') ? 'FCONST' : 'ICONST';
    if (t.tokenName !== expected) return `${JSON.stringify(text)} is ${t.tokenName}, not ${expected}`;
  }
  return undefined;
}

describe('literal shape', () => {
  test('takes out plain literals and keeps everything else', () => {
    const s = literalShape("SELECT a FROM t WHERE id = 42 AND name = 'O''Brien' AND x > 1.5");
    assert.ok(s);
    assert.equal(s.key, 'SELECT a FROM t WHERE id = \u0001i AND name = \u0001s AND x > \u0001d');
    assert.deepEqual(s.spans, [27, 29, 41, 51, 60, 63]);
    assert.deepEqual(literalShape('SELECT 1'), literalShape('SELECT 1'));
    assert.equal(literalShape('SELECT 1')!.key, literalShape('SELECT 123456789')!.key);
    assert.notEqual(literalShape('SELECT 1')!.key, literalShape("SELECT '1'")!.key);
    assert.notEqual(literalShape('SELECT 1')!.key, literalShape('SELECT 1.0')!.key);
    // Ten digits may be an int4 or a numeric: kept.
    assert.equal(literalShape('SELECT 1234567890')!.key, 'SELECT 1234567890');
    // Names, quoted names and parameters are part of the shape.
    assert.equal(literalShape('SELECT "a""b", t1.c2, $1 FROM x')!.spans.length, 0);
  });

  const giveUps = [
    'SELECT 1 -- comment',
    'SELECT /* c */ 1',
    'SELECT $$x$$',
    'SELECT $tag$x$tag$',
    "SELECT E'x'",
    "SELECT e'\\n'",
    "SELECT B'101'",
    "SELECT X'1F'",
    "SELECT N'x'",
    "SELECT U&'x'",
    'SELECT U&"x"',
    "SELECT 'a\\'",
    "SELECT 'a'\n'b'",
    "SELECT 'a' 'b'",
    'SELECT 1e5',
    'SELECT 0x1F',
    'SELECT 1_000',
    'SELECT 1abc',
    'SELECT 1.',
    'SELECT .5',
    'SELECT t.5',
    'SELECT 1..2',
    'SELECT 1.2.3',
    "SELECT 'unterminated",
    'SELECT "unterminated',
    "SELECT 'é'",
    'SELECT 1\u000b',
    'SELECT $1abc',
    'SELECT $',
    "SELECT x'1'",
    "SELECT interval'1 day'",
  ];
  for (const sql of giveUps) {
    test(`gives up on ${JSON.stringify(sql)}`, () => assert.equal(literalShape(sql), undefined));
  }

  test('agrees with PostgreSQL’s scanner on the policy corpus', () => {
    let shaped = 0;
    for (const row of corpus) {
      assert.equal(disagreement(row.sql), undefined, row.sql);
      const s = literalShape(row.sql);
      if (s && s.spans.length > 0) shaped++;
    }
    assert.ok(shaped > 100, `only ${shaped} corpus rows have literals the shape takes out`);
  });

  test('agrees with PostgreSQL’s scanner on random text', () => {
    // Pieces chosen to hit the scanner's corners: quotes of every kind,
    // comment openers, prefixes, digits next to letters and dots.
    const pieces = [
      "'",
      "''",
      '"',
      '""',
      '$',
      '$$',
      '$1',
      '$a$',
      '-',
      '--',
      '/',
      '*',
      '/*',
      '*/',
      '\\',
      '\n',
      ' ',
      '\t',
      '.',
      '..',
      '_',
      'e',
      'E',
      'x',
      'X',
      'b',
      'n',
      'U',
      'u',
      '&',
      'U&',
      '0',
      '1',
      '9',
      '12',
      '123456789',
      '1234567890',
      '0x',
      'a',
      'abc',
      ';',
      '(',
      ')',
      ',',
      '=',
      '+',
      ':',
      '::',
      'SELECT ',
      ' FROM t',
      'é',
      '\r',
      '\f',
      "'abc'",
      '1.5',
      'e5',
    ];
    let seed = 20261121;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    let accepted = 0;
    for (let i = 0; i < 40_000; i++) {
      let sql = '';
      const len = 1 + rand(14);
      for (let k = 0; k < len; k++) sql += pieces[rand(pieces.length)];
      const why = disagreement(sql);
      assert.equal(why, undefined, `${JSON.stringify(sql)}: ${why}`);
      const s = literalShape(sql);
      if (s && s.spans.length > 0) accepted++;
    }
    assert.ok(accepted > 2000, `only ${accepted} random texts had literals taken out`);
  });

  test('maps offsets across texts of one shape', () => {
    const a = "SELECT 1; SELECT 'x' FROM t";
    const b = "SELECT 100; SELECT 'yyyy' FROM t";
    const sa = literalShape(a)!;
    const sb = literalShape(b)!;
    assert.equal(sa.key, sb.key);
    assert.equal(mapOffset(8, sa.spans, sb.spans), 10); // after the first literal
    assert.equal(
      b.slice(mapOffset(10, sa.spans, sb.spans), mapOffset(a.length, sa.spans, sb.spans)),
      "SELECT 'yyyy' FROM t",
    );
    assert.equal(mapOffset(0, sa.spans, sb.spans), 0);
  });
});
