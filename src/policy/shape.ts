/**
 * The literal shape of a query string: the text with the contents of its
 * plain string and number literals taken out. Two strings with the same shape
 * differ only in those literals, so PostgreSQL's scanner gives both the same
 * tokens, literal values aside, and its grammar the same tree; a decision that
 * read no literal value holds for both. This is what lets the decision cache
 * answer `WHERE aid = 42` and `WHERE aid = 43` with one parse.
 *
 * The scan is deliberately narrow. It reads the plain forms exactly as
 * PostgreSQL's scanner does (scan.l): 'strings' with '' escapes, "quoted
 * identifiers", unsigned integers and decimals, $n parameters, identifiers.
 * Anything whose reading depends on more than that gives up (undefined), and
 * the query is parsed in full: comments, dollar quotes, E'', B'', X'', N'',
 * U&'' and U&"" forms, backslashes, string continuation across whitespace,
 * exponents, numbers running into letters or dots, non-ASCII and control
 * characters. A differential test holds this scanner to libpg_query's on a
 * corpus and on random text: every literal it takes out is one literal token
 * there, with the same bounds.
 */

/** The shape, and where each literal taken out was (start, end pairs, in characters). */
export interface LiteralShape {
  key: string;
  spans: number[];
}

// Markers for the literals taken out. Control characters other than white space
// make the scan give up, so no query text can contain them itself. The empty
// string and zero have markers of their own: the parse tree leaves out fields
// holding a default value, so `COPY t TO ''` reads like `COPY t TO STDOUT`
// there, and a shape must not join such a query to one with a real value.
const STRING_MARK = '\u0001s';
const EMPTY_STRING_MARK = '\u0001e';
const INTEGER_MARK = '\u0001i';
const ZERO_MARK = '\u0001z';
const DECIMAL_MARK = '\u0001d';

const QUOTE = 0x27;
const DOUBLE_QUOTE = 0x22;
const DOLLAR = 0x24;
const AMPERSAND = 0x26;
const DOT = 0x2e;
const MINUS = 0x2d;
const SLASH = 0x2f;
const STAR = 0x2a;
const BACKSLASH = 0x5c;

/** Longest integer always read as an int4 constant (ICONST), whatever its digits. */
const MAX_INTEGER_DIGITS = 9;

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

function isIdentStart(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x5f;
}

/** A character that continues an identifier (ident_cont, ASCII part). */
function isIdentChar(c: number): boolean {
  return isIdentStart(c) || isDigit(c) || c === DOLLAR;
}

/** PostgreSQL's white space, less \v (which only newer servers take as space). */
function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d || c === 0x0c;
}

/** Whether the number at `at` is the precision in `float(p)`, which the grammar checks. */
function isFloatPrecision(sql: string, at: number): boolean {
  let k = at - 1;
  while (k >= 0 && isSpace(sql.charCodeAt(k))) k--;
  if (k < 0 || sql.charCodeAt(k) !== 0x28 /* ( */) return false;
  k--;
  while (k >= 0 && isSpace(sql.charCodeAt(k))) k--;
  return (
    k >= 4 &&
    sql.slice(k - 4, k + 1).toLowerCase() === 'float' &&
    !(k >= 5 && isIdentChar(sql.charCodeAt(k - 5)))
  );
}

/** The shape of `sql`, or undefined when it holds anything outside the plain forms. */
export function literalShape(sql: string): LiteralShape | undefined {
  const n = sql.length;
  const spans: number[] = [];
  let key = '';
  let copied = 0;
  let i = 0;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (c >= 0x7f) return undefined;
    if (c < 0x20) {
      if (!isSpace(c)) return undefined;
      i++;
      continue;
    }
    if (isIdentStart(c)) {
      i++;
      while (i < n && isIdentChar(sql.charCodeAt(i))) i++;
      continue;
    }
    if (c === QUOTE) {
      // Prefixed strings (E'', B'', X'', N'', U&'') and a quote right after a
      // name or number: not the plain form.
      const prev = i > 0 ? sql.charCodeAt(i - 1) : 0x20;
      if (isIdentChar(prev) || prev === AMPERSAND) return undefined;
      let j = i + 1;
      for (;;) {
        if (j >= n) return undefined; // unterminated
        const d = sql.charCodeAt(j);
        if (d === QUOTE) {
          if (j + 1 < n && sql.charCodeAt(j + 1) === QUOTE) {
            j += 2;
            continue;
          }
          break;
        }
        if (d >= 0x7f || d === BACKSLASH || (d < 0x20 && !isSpace(d))) return undefined;
        j++;
      }
      const end = j + 1;
      // 'a' <newline> 'b' is one literal to the server; give up on any quote after space.
      let k = end;
      while (k < n && isSpace(sql.charCodeAt(k))) k++;
      if (k < n && sql.charCodeAt(k) === QUOTE) return undefined;
      key += sql.slice(copied, i) + (end - i === 2 ? EMPTY_STRING_MARK : STRING_MARK);
      spans.push(i, end);
      copied = i = end;
      continue;
    }
    if (c === DOUBLE_QUOTE) {
      const prev = i > 0 ? sql.charCodeAt(i - 1) : 0x20;
      if (isIdentChar(prev) || prev === AMPERSAND) return undefined;
      let j = i + 1;
      for (;;) {
        if (j >= n) return undefined;
        const d = sql.charCodeAt(j);
        if (d === DOUBLE_QUOTE) {
          if (j + 1 < n && sql.charCodeAt(j + 1) === DOUBLE_QUOTE) {
            j += 2;
            continue;
          }
          break;
        }
        if (d >= 0x7f || d === BACKSLASH || (d < 0x20 && !isSpace(d))) return undefined;
        j++;
      }
      i = j + 1; // kept as it is: a name, part of the shape
      continue;
    }
    if (c === DOLLAR) {
      // Only a parameter ($1); a dollar quote or anything else gives up.
      let j = i + 1;
      if (j >= n || !isDigit(sql.charCodeAt(j))) return undefined;
      while (j < n && isDigit(sql.charCodeAt(j))) j++;
      if (j < n && (isIdentChar(sql.charCodeAt(j)) || sql.charCodeAt(j) === DOT)) return undefined;
      i = j;
      continue;
    }
    if (isDigit(c)) {
      let j = i;
      while (j < n && isDigit(sql.charCodeAt(j))) j++;
      let mark = INTEGER_MARK;
      if (j < n && sql.charCodeAt(j) === DOT) {
        j++;
        if (j >= n || !isDigit(sql.charCodeAt(j))) return undefined; // 1. or 1..2
        while (j < n && isDigit(sql.charCodeAt(j))) j++;
        mark = DECIMAL_MARK;
      }
      // 1e5, 0x1F, 1_000, 1abc, 1.2.3: forms whose reading differs between versions, or junk.
      if (j < n && (isIdentChar(sql.charCodeAt(j)) || sql.charCodeAt(j) === DOT)) return undefined;
      if (mark === INTEGER_MARK && (j - i > MAX_INTEGER_DIGITS || isFloatPrecision(sql, i))) {
        // More than nine digits may be read as int4 or as numeric; float(p)'s
        // precision is checked by the grammar itself: kept as part of the shape.
        i = j;
        continue;
      }
      if (mark === INTEGER_MARK && /^0+$/.test(sql.slice(i, j))) mark = ZERO_MARK;
      key += sql.slice(copied, i) + mark;
      spans.push(i, j);
      copied = i = j;
      continue;
    }
    if (c === DOT && i + 1 < n && isDigit(sql.charCodeAt(i + 1))) return undefined; // .5
    if (c === MINUS && i + 1 < n && sql.charCodeAt(i + 1) === MINUS) return undefined; // -- comment
    if (c === SLASH && i + 1 < n && sql.charCodeAt(i + 1) === STAR) return undefined; // /* comment
    if (c === BACKSLASH) return undefined;
    i++;
  }
  if (spans.length === 0) return { key: sql, spans };
  return { key: key + sql.slice(copied), spans };
}

/**
 * Maps a character offset in the text a shape was first seen with (outside its
 * literals) to the same place in another text of the same shape.
 */
export function mapOffset(offset: number, from: readonly number[], to: readonly number[]): number {
  let delta = 0;
  for (let k = 0; k < from.length; k += 2) {
    if (from[k + 1]! > offset) break;
    delta += to[k + 1]! - to[k]! - (from[k + 1]! - from[k]!);
  }
  return offset + delta;
}
