/**
 * Function calls: the deny list (or allow list), pg_sleep caps and set_config().
 * Checked for every FuncCall in the tree, and for names used in attribute
 * notation (`(row).fn`, `t.fn`), which PostgreSQL may resolve to `fn(row)`.
 */
import { BUILTIN_SCHEMAS, SAFE_FUNCTIONS } from './allow-list.js';
import { builtinDenyReason } from './deny-list.js';
import { finding, type Finding } from './messages.js';
import {
  asArray,
  constantOf,
  constantText,
  isObject,
  location,
  nameList,
  unwrap,
  type JsonObject,
} from './nodes.js';
import { checkSettingChange, isGuardedSetting, type SettingChange, type SettingsPolicy } from './settings.js';
import { ReasonCode } from './types.js';

export interface FunctionPolicy {
  mode: 'denylist' | 'allowlist';
  /** Operator deny entries: unqualified names, and schema-qualified ones as "schema.name". */
  deny: ReadonlySet<string>;
  /** Operator allow entries, same form. */
  allow: ReadonlySet<string>;
  maxSleepSeconds: number;
  settings: SettingsPolicy;
}

const SLEEP_FUNCTIONS = new Set(['pg_sleep', 'pg_sleep_for', 'pg_sleep_until']);

/** Lower-cases and splits a configured function name: "PG_Catalog.Foo" → ['pg_catalog', 'foo']. */
export function normalizeFunctionEntry(entry: string): string {
  return entry
    .split('.')
    .map((part) =>
      part
        .trim()
        .replace(/^"(.*)"$/, '$1')
        .toLowerCase(),
    )
    .join('.');
}

function qualifiedDisplay(parts: string[]): string {
  return parts.join('.');
}

/** Whether an operator list names this function (unqualified entries match any schema). */
function listed(list: ReadonlySet<string>, schema: string | undefined, name: string): boolean {
  if (list.has(name)) return true;
  // A schema-qualified entry matches that schema, and unqualified calls (which
  // search_path may resolve to it).
  if (schema === undefined) {
    for (const entry of list) if (entry.endsWith(`.${name}`)) return true;
    return false;
  }
  return list.has(`${schema}.${name}`);
}

function forbidden(display: string, why: string, offset: number | undefined, hint?: string): Finding {
  const extra: { offset?: number; hint?: string } = {};
  if (offset !== undefined) extra.offset = offset;
  if (hint !== undefined) extra.hint = hint;
  return finding(ReasonCode.ForbiddenFunction, `function ${display}()`, why, extra);
}

/** Why a name is denied whatever its arguments (built-in list or the operator's), or undefined. */
function denyReason(
  schema: string | undefined,
  name: string,
  policy: FunctionPolicy,
  usePrefixes = true,
): string | undefined {
  if (listed(policy.deny, schema, name)) return 'the proxy operator denies it';
  return builtinDenyReason(name, usePrefixes);
}

function denyFinding(display: string, name: string, reason: string, offset: number | undefined): Finding {
  if (name === 'pg_notify') {
    const extra: { offset?: number; hint: string } = { hint: 'LISTEN is allowed; NOTIFY is not.' };
    if (offset !== undefined) extra.offset = offset;
    return finding(ReasonCode.Notify, `function ${display}()`, 'it signals other sessions', extra);
  }
  return forbidden(display, reason, offset);
}

/** A float8 as PostgreSQL's input function reads a plain number (no NaN/Infinity). */
function parseSeconds(text: string): number | undefined {
  if (!/^\s*[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?\s*$/i.test(text)) return undefined;
  const v = Number(text);
  return Number.isFinite(v) ? v : undefined;
}

const INTERVAL_UNITS: ReadonlyArray<readonly [RegExp, number]> = [
  [/^(microseconds?|usecs?|us)$/, 1e-6],
  [/^(milliseconds?|msecs?|ms)$/, 1e-3],
  [/^(seconds?|secs?|s)$/, 1],
  [/^(minutes?|mins?|m)$/, 60],
  [/^(hours?|hrs?|h)$/, 3600],
  [/^(days?|d)$/, 86400],
  [/^(weeks?|w)$/, 7 * 86400],
  [/^(months?|mons?)$/, 30 * 86400],
  [/^(years?|yrs?|y)$/, 365 * 86400],
  [/^(decades?|decs?)$/, 3650 * 86400],
  [/^(centuries|century|c)$/, 36500 * 86400],
  [/^(millennia|millennium|millenniums|mil|mils)$/, 365000 * 86400],
];

/**
 * Seconds in an interval literal, for the forms people write: "5 seconds",
 * "1 min 30 s", "00:00:05", "5", "@ 2 hours ago". Undefined when unsure: the
 * caller then refuses.
 */
export function parseIntervalSeconds(text: string): number | undefined {
  let rest = text.trim().toLowerCase();
  if (rest.startsWith('@')) rest = rest.slice(1).trim();
  let sign = 1;
  if (/\bago$/.test(rest)) {
    sign = -1;
    rest = rest.slice(0, -3).trim();
  }
  if (rest === '') return undefined;
  let total = 0;
  // hh:mm[:ss] first, so "00:00:05" is not read as the number 00.
  const token = /^([+-]?)(\d+):(\d+)(?::(\d+(?:\.\d*)?))?\s*|^([+-]?(?:\d+\.?\d*|\.\d+))\s*([a-z]*)\s*/;
  while (rest !== '') {
    const m = token.exec(rest);
    if (!m) return undefined;
    if (m[5] !== undefined) {
      const value = Number(m[5]);
      const unit = m[6] ?? '';
      if (unit === '') {
        total += value; // a bare number is seconds
      } else {
        const entry = INTERVAL_UNITS.find(([re]) => re.test(unit));
        if (!entry) return undefined;
        total += value * entry[1];
      }
    } else {
      const neg = m[1] === '-' ? -1 : 1;
      total += neg * (Number(m[2]) * 3600 + Number(m[3]) * 60 + Number(m[4] ?? '0'));
    }
    rest = rest.slice(m[0].length);
  }
  return Number.isFinite(total) ? sign * total : undefined;
}

function checkSleep(name: string, display: string, args: unknown[], policy: FunctionPolicy, offset?: number) {
  const cap = policy.maxSleepSeconds;
  const hint = `pg_sleep and pg_sleep_for are allowed with a constant of at most ${cap} seconds.`;
  if (name === 'pg_sleep_until') {
    return forbidden(display, 'the proxy cannot bound how long it sleeps', offset, hint);
  }
  const arg = args.length === 1 ? args[0] : undefined;
  const c = constantOf(arg);
  const text = c ? constantText(c) : undefined;
  let seconds: number | undefined;
  if (text !== undefined) {
    if (name === 'pg_sleep') {
      seconds = parseSeconds(text);
    } else {
      // `interval '1' minute`: the type modifier changes what the text means.
      const cast = unwrap(arg);
      const typmods =
        cast?.tag === 'TypeCast' && isObject(cast.body.typeName) ? cast.body.typeName.typmods : undefined;
      seconds = asArray(typmods).length > 0 ? undefined : parseIntervalSeconds(text);
    }
  }
  if (seconds === undefined) {
    return forbidden(display, 'its duration is not a constant the proxy can read', offset, hint);
  }
  if (seconds > cap) {
    return forbidden(display, `it sleeps longer than the proxy's limit of ${cap} seconds`, offset, hint);
  }
  return undefined;
}

/** set_config(name, value, is_local): protected settings only with a checked constant. */
function checkSetConfig(args: unknown[], policy: FunctionPolicy, offset?: number): Finding | undefined {
  const nameConst = constantOf(args[0]);
  if (nameConst?.type !== 'string') {
    const extra: { offset?: number; hint: string } = {
      hint: "Name the setting with a string constant, e.g. set_config('search_path', '', false).",
    };
    if (offset !== undefined) extra.offset = offset;
    return finding(
      ReasonCode.ProtectedSetting,
      'set_config() with a computed setting name',
      'the proxy must see which setting it changes',
      extra,
    );
  }
  const setting = nameConst.value;
  if (!isGuardedSetting(setting, policy.settings)) return undefined;
  const valueConst = constantOf(args[1]);
  let change: SettingChange;
  if (args.length !== 3) change = { type: 'set', values: undefined };
  else if (valueConst?.type === 'null') change = { type: 'reset' };
  else change = { type: 'set', values: valueConst ? [valueConst] : undefined };
  const shown = valueConst && valueConst.type !== 'null' ? `'${constantText(valueConst) ?? ''}'` : '...';
  return checkSettingChange(setting, change, policy.settings, `set_config('${setting}', ${shown})`, offset);
}

/** Checks one FuncCall node body. */
export function checkFuncCall(body: JsonObject, policy: FunctionPolicy): Finding | undefined {
  const parts = nameList(body.funcname).map((p) => p.toLowerCase());
  const name = parts[parts.length - 1] ?? '';
  const schema = parts.length > 1 ? parts[parts.length - 2] : undefined;
  const display = qualifiedDisplay(parts);
  const args = asArray(body.args);
  const offset = location(body);

  const reason = denyReason(schema, name, policy);
  if (reason !== undefined) return denyFinding(display, name, reason, offset);
  if (name === 'ts_rewrite' && args.length === 2) {
    return forbidden(display, 'its two-argument form runs SQL given as a string', offset);
  }
  if (SLEEP_FUNCTIONS.has(name)) {
    const f = checkSleep(name, display, args, policy, offset);
    if (f) return f;
  }
  if (name === 'set_config') {
    const f = checkSetConfig(args, policy, offset);
    if (f) return f;
  }
  if (policy.mode === 'allowlist') {
    const builtin = (schema === undefined || BUILTIN_SCHEMAS.has(schema)) && SAFE_FUNCTIONS.has(name);
    if (!builtin && !listed(policy.allow, schema, name)) {
      return forbidden(display, "it is not on the proxy's list of allowed functions", offset, undefined);
    }
  }
  return undefined;
}

/**
 * A name reached by attribute notation (`(row).name`, `alias.name`): refused when
 * it is a denied function, or one whose arguments the proxy would have to check.
 */
export function checkAttributeName(
  rawName: string,
  policy: FunctionPolicy,
  offset: number | undefined,
): Finding | undefined {
  const name = rawName.toLowerCase();
  const reason =
    denyReason(undefined, name, policy, false) ??
    (SLEEP_FUNCTIONS.has(name) || name === 'set_config' || name === 'ts_rewrite'
      ? 'its arguments cannot be checked when it is called with attribute notation'
      : undefined);
  if (reason === undefined) return undefined;
  const f = denyFinding(name, name, reason, offset);
  f.detail = `PostgreSQL reads (x).${name} and t.${name} as the function call ${name}(x).`;
  return f;
}
