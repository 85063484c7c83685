/**
 * The policy engine: classify(sql) → Decision, pure and synchronous once the
 * parser is loaded. Usable as a library (the proxy's session and the `check`
 * command both use it).
 */
import { LruCache } from './cache.js';
import { classifyTraced, compileOptions } from './classify.js';
import { literalShape, mapOffset, type LiteralShape } from './shape.js';
import type { Decision, Policy, PolicyOptions, StatementResult } from './types.js';

export * from './types.js';
export { loadParser, parserReady } from './parser.js';
export { formatCheckReport } from './report.js';
export { LruCache } from './cache.js';
export { literalShape, type LiteralShape } from './shape.js';

/** An allowed decision that read no literal, for every query string of one literal shape. */
interface ShapeEntry {
  /** The query string it was made for, and the decision for it. */
  sql: string;
  decision: Decision;
  /** The literals of the query string it was made for. */
  spans: number[];
  /** Where each statement's text was in that string (start, end pairs). */
  ranges: number[];
}

function statementRanges(sql: string, decision: Decision): number[] {
  const ranges: number[] = [];
  let from = 0;
  for (const st of decision.statements) {
    const at = sql.indexOf(st.text, from);
    if (at < 0) return [];
    ranges.push(at, at + st.text.length);
    from = at + st.text.length;
  }
  return ranges;
}

/** The cached decision, with each statement's text taken from `sql` itself. */
function fromShape(entry: ShapeEntry, sql: string, shape: LiteralShape): Decision {
  if (sql === entry.sql) return entry.decision;
  const statements: StatementResult[] = entry.decision.statements.map((st, k) =>
    Object.freeze({
      ...st,
      text: sql.slice(
        mapOffset(entry.ranges[2 * k]!, entry.spans, shape.spans),
        mapOffset(entry.ranges[2 * k + 1]!, entry.spans, shape.spans),
      ),
    }),
  );
  return Object.freeze({ allowed: true, statements: Object.freeze(statements) as StatementResult[] });
}

/**
 * Strict defaults: only the built-in catalogue and deny list, no extra settings
 * protected or limited, pg_sleep capped at 10 seconds, 10 000 cached decisions.
 */
export const defaultPolicyOptions: PolicyOptions = Object.freeze({
  allowStatements: [],
  functionMode: 'denylist',
  denyFunctions: [],
  allowFunctions: [],
  protectedSettings: [],
  settingLimits: {},
  maxSleepSeconds: 10,
  cacheSize: 10_000,
}) as PolicyOptions;

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

export function createPolicy(options: Partial<PolicyOptions> = {}): Policy {
  const merged: PolicyOptions = deepFreeze({
    allowStatements: [...(options.allowStatements ?? defaultPolicyOptions.allowStatements)],
    functionMode: options.functionMode ?? defaultPolicyOptions.functionMode,
    denyFunctions: [...(options.denyFunctions ?? defaultPolicyOptions.denyFunctions)],
    allowFunctions: [...(options.allowFunctions ?? defaultPolicyOptions.allowFunctions)],
    protectedSettings: [...(options.protectedSettings ?? defaultPolicyOptions.protectedSettings)],
    settingLimits: { ...(options.settingLimits ?? defaultPolicyOptions.settingLimits) },
    maxSleepSeconds: options.maxSleepSeconds ?? defaultPolicyOptions.maxSleepSeconds,
    cacheSize: options.cacheSize ?? defaultPolicyOptions.cacheSize,
  });
  const compiled = compileOptions(merged);
  // Two caches: exact query strings, and literal shapes (see shape.ts) for
  // allowed decisions that read no literal, so that `WHERE id = 1` and
  // `WHERE id = 2` cost one parse between them.
  const cache = new LruCache<Decision>(merged.cacheSize);
  const shapes = new LruCache<ShapeEntry>(merged.cacheSize);

  let hits = 0;
  let shapeHits = 0;
  let misses = 0;
  function classify(sql: string): Decision {
    const hit = cache.get(sql);
    if (hit !== undefined) {
      hits++;
      return hit;
    }
    const shape = merged.cacheSize > 0 ? literalShape(sql) : undefined;
    const literal = shape !== undefined && shape.spans.length > 0;
    if (literal) {
      const entry = shapes.get(shape.key);
      if (entry !== undefined) {
        hits++;
        shapeHits++;
        return fromShape(entry, sql, shape);
      }
    }
    misses++;
    const traced = classifyTraced(sql, compiled);
    const decision = deepFreeze(traced.decision);
    // Internal failures (e.g. the parser not loaded yet) are not cached.
    if (decision.refusal?.code === 'internal_error') return decision;
    if (literal && decision.allowed && !traced.readsLiterals) {
      const ranges = statementRanges(sql, decision);
      if (ranges.length === 2 * decision.statements.length) {
        shapes.set(shape.key, { sql, decision, spans: shape.spans, ranges });
        return decision;
      }
    }
    cache.set(sql, decision);
    return decision;
  }

  return { classify, options: merged, cacheStats: () => ({ hits, misses, shapeHits }) };
}
