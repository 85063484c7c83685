/**
 * The policy engine: classify(sql) → Decision, pure and synchronous once the
 * parser is loaded. Usable as a library (the proxy's session and the `check`
 * command both use it).
 */
import { LruCache } from './cache.js';
import { classifyWith, compileOptions } from './classify.js';
import type { Decision, Policy, PolicyOptions } from './types.js';

export * from './types.js';
export { loadParser, parserReady } from './parser.js';
export { formatCheckReport } from './report.js';
export { LruCache } from './cache.js';

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
  const cache = new LruCache<Decision>(merged.cacheSize);

  let hits = 0;
  let misses = 0;
  function classify(sql: string): Decision {
    const hit = cache.get(sql);
    if (hit !== undefined) {
      hits++;
      return hit;
    }
    misses++;
    const decision = deepFreeze(classifyWith(sql, compiled));
    // Internal failures (e.g. the parser not loaded yet) are not cached.
    if (decision.refusal?.code !== 'internal_error') cache.set(sql, decision);
    return decision;
  }

  return { classify, options: merged, cacheStats: () => ({ hits, misses }) };
}
