/**
 * Protected settings: which changes of a run-time setting (SET, SET LOCAL,
 * RESET, set_config()) a client may make. Used for SET statements and for
 * set_config() calls alike.
 */
import { finding, type Finding } from './messages.js';
import { constantText, type Constant } from './nodes.js';
import { ReasonCode } from './types.js';

/** How a statement or call changes a setting. */
export type SettingChange =
  /** SET name = value[, ...] / set_config(name, value, ...). `values` undefined: not constants. */
  | { type: 'set'; values: Constant[] | undefined }
  /** RESET name, SET name TO DEFAULT: back to the session default the proxy pinned at startup. */
  | { type: 'reset' }
  /** SET name FROM CURRENT: keeps the current value. */
  | { type: 'current' };

export interface SettingsPolicy {
  /** Lower-cased names a client may not change at all (the operator's list plus ours). */
  frozen: ReadonlySet<string>;
  /** Lower-cased name → upper bound in the setting's base unit. */
  limits: ReadonlyMap<string, number>;
}

/** Old names PostgreSQL still accepts for a setting (guc.c map_old_guc_names). */
const OLD_NAMES: Readonly<Record<string, string>> = {
  sort_mem: 'work_mem',
  vacuum_mem: 'maintenance_work_mem',
  ssl_ecdh_curve: 'ssl_groups',
};

/** GUC names are case-insensitive, whatever the quoting; old aliases map to the current name. */
export function canonicalSettingName(name: string): string {
  const lower = name.toLowerCase();
  return OLD_NAMES[lower] ?? lower;
}

/** Settings that may only be set to "on": the proxy pins their session default to on. */
const READ_ONLY_SETTINGS = new Set(['transaction_read_only', 'default_transaction_read_only']);

/**
 * Settings no client may change, beyond the ones with a rule of their own.
 * A superuser upstream could otherwise silence statement logging and auditing,
 * let reads of damaged pages zero them (which is written back to disk), or
 * point library loading elsewhere.
 */
export const BUILTIN_FROZEN_SETTINGS: readonly string[] = [
  'zero_damaged_pages',
  // Where the server loads C libraries from: a later function call could load other code.
  'dynamic_library_path',
  'local_preload_libraries',
  'session_preload_libraries',
  'ignore_checksum_failure',
  'log_statement',
  'log_duration',
  'log_min_duration_statement',
  'log_min_duration_sample',
  'log_statement_sample_rate',
  'log_transaction_sample_rate',
  'log_min_messages',
  'log_min_error_statement',
  'pgaudit.log',
  'pgaudit.log_catalog',
  'pgaudit.log_level',
  'pgaudit.log_relation',
  'pgaudit.role',
];

/**
 * Client-only multibyte encodings, as pg_char_to_encoding() spells them after
 * clean_encoding_name() (lower case, alphanumerics only). Their second bytes can
 * be 0x5c (backslash) or a quote, so the proxy and the server would split the
 * same bytes into different tokens.
 */
const CLIENT_ONLY_ENCODINGS = new Set([
  'sjis',
  'shiftjis',
  'mskanji',
  'win932',
  'windows932',
  'shiftjis2004',
  'big5',
  'win950',
  'windows950',
  'gbk',
  'win936',
  'windows936',
  'uhc',
  'win949',
  'windows949',
  'gb18030',
  'johab',
]);

/** PostgreSQL's clean_encoding_name(): drop non-alphanumerics, lower-case the rest. */
export function cleanEncodingName(name: string): string {
  return name.replace(/[^A-Za-z0-9]/g, '').toLowerCase();
}

export function isClientOnlyEncoding(name: string): boolean {
  return CLIENT_ONLY_ENCODINGS.has(cleanEncodingName(name));
}

/**
 * PostgreSQL's parse_bool(): case-insensitive, unique prefixes of true/false/yes/no,
 * "on"/"off" (at least two letters), "1"/"0". Undefined when not a boolean.
 */
export function parseBool(text: string): boolean | undefined {
  const v = text.toLowerCase();
  const n = v.length;
  if (n === 0) return undefined;
  switch (v[0]) {
    case 't':
      return 'true'.startsWith(v) ? true : undefined;
    case 'f':
      return 'false'.startsWith(v) ? false : undefined;
    case 'y':
      return 'yes'.startsWith(v) ? true : undefined;
    case 'n':
      return 'no'.startsWith(v) ? false : undefined;
    case 'o':
      if (v === 'on') return true;
      if (n >= 2 && 'off'.startsWith(v)) return false;
      return undefined;
    case '1':
      return n === 1 ? true : undefined;
    case '0':
      return n === 1 ? false : undefined;
    default:
      return undefined;
  }
}

type UnitKind = 'time' | 'memory';

/** Base units: milliseconds for the timeouts, kilobytes for the memory settings. */
const SETTING_UNITS: Readonly<Record<string, UnitKind>> = {
  statement_timeout: 'time',
  lock_timeout: 'time',
  idle_in_transaction_session_timeout: 'time',
  idle_session_timeout: 'time',
  transaction_timeout: 'time',
  deadlock_timeout: 'time',
  work_mem: 'memory',
  maintenance_work_mem: 'memory',
  temp_file_limit: 'memory',
  logical_decoding_work_mem: 'memory',
};

/** PostgreSQL's unit names are case-sensitive. */
const UNIT_FACTORS: Readonly<Record<UnitKind, Readonly<Record<string, number>>>> = {
  time: { us: 0.001, ms: 1, s: 1000, min: 60_000, h: 3_600_000, d: 86_400_000 },
  memory: { B: 1 / 1024, kB: 1, MB: 1024, GB: 1024 ** 2, TB: 1024 ** 3 },
};

/** A number as PostgreSQL's parse_int/parse_real read it: decimal, float, 0x hex or 0-prefixed octal. */
function parseNumber(text: string): number | undefined {
  const t = text.trim();
  let m = /^([+-]?)0x([0-9a-f]+)$/i.exec(t);
  if (m) return (m[1] === '-' ? -1 : 1) * parseInt(m[2] ?? '', 16);
  m = /^([+-]?)0([0-7]+)$/.exec(t);
  if (m) return (m[1] === '-' ? -1 : 1) * parseInt(m[2] ?? '', 8);
  if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(t)) return undefined;
  const v = Number(t);
  return Number.isFinite(v) ? v : undefined;
}

/**
 * The value of a numeric setting in its base unit (ms or kB), as PostgreSQL
 * reads `'5s'`, `'1.5 min'`, `30000`, `'64MB'`. Undefined when it cannot tell.
 */
export function parseSettingNumber(name: string, text: string): number | undefined {
  const kind = SETTING_UNITS[name];
  const m =
    /^\s*([+-]?0[xX][0-9a-fA-F]+)\s*([A-Za-z]*)\s*$/.exec(text) ??
    /^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$/.exec(text);
  if (!m) return undefined;
  const value = parseNumber(m[1] ?? '');
  if (value === undefined) return undefined;
  const unit = m[2] ?? '';
  if (unit === '') return kind ? Math.round(value) : value;
  if (!kind) return undefined;
  const factor = UNIT_FACTORS[kind][unit];
  if (factor === undefined) return undefined;
  return Math.round(value * factor);
}

function unitLabel(name: string): string {
  const kind = SETTING_UNITS[name];
  return kind === 'time' ? ' ms' : kind === 'memory' ? ' kB' : '';
}

function singleText(change: SettingChange): string | undefined {
  if (change.type !== 'set' || change.values === undefined || change.values.length !== 1) return undefined;
  const [only] = change.values;
  return only === undefined ? undefined : constantText(only);
}

/**
 * Whether a client may make this change. `what` names the change in the message
 * (e.g. "SET transaction_read_only = off" or "set_config('role', ...)").
 * Returns a finding when refused.
 */
export function checkSettingChange(
  rawName: string,
  change: SettingChange,
  policy: SettingsPolicy,
  what: string,
  offset?: number,
): Finding | undefined {
  const name = canonicalSettingName(rawName);
  const at = offset === undefined ? {} : { offset };

  // SET ... FROM CURRENT keeps the value the session already has.
  if (change.type === 'current') return undefined;

  if (name === 'role' || name === 'session_authorization') {
    if (change.type === 'reset') return undefined;
    const text = singleText(change);
    // check_role() compares with "none" case-sensitively: 'NONE' names a role.
    if (name === 'role' && text === 'none') return undefined;
    return finding(ReasonCode.RoleChange, what, 'the session keeps the role it logged in with', {
      hint: 'RESET ROLE and SET ROLE NONE are allowed; connect as another user to act as another role.',
      ...at,
    });
  }

  if (READ_ONLY_SETTINGS.has(name) || name === 'standard_conforming_strings') {
    if (change.type === 'reset') return undefined;
    const text = singleText(change);
    if (text !== undefined && parseBool(text) === true) return undefined;
    return finding(ReasonCode.ProtectedSetting, what, `the proxy holds ${name} on`, {
      hint: READ_ONLY_SETTINGS.has(name)
        ? `${name} may only be set to on; this connection is read-only.`
        : 'The proxy reads SQL text with standard_conforming_strings on, so the server must too.',
      ...at,
    });
  }

  if (name === 'client_encoding') {
    if (change.type === 'reset') return undefined;
    const text = singleText(change);
    if (text !== undefined && !isClientOnlyEncoding(text)) return undefined;
    return finding(
      ReasonCode.ProtectedSetting,
      what,
      text === undefined
        ? 'client_encoding must be a single constant'
        : `the proxy cannot read SQL in the client-only encoding ${text} the way the server does`,
      { hint: 'Use UTF8 (or another server-side encoding) as client_encoding.', ...at },
    );
  }

  if (policy.frozen.has(name)) {
    if (change.type === 'reset') return undefined;
    return finding(ReasonCode.ProtectedSetting, what, `${name} is protected by the proxy operator`, at);
  }

  const limit = policy.limits.get(name);
  if (limit !== undefined && limit > 0) {
    if (change.type === 'reset') return undefined;
    const text = singleText(change);
    const value = text === undefined ? undefined : parseSettingNumber(name, text);
    const lowest = SETTING_UNITS[name] ? 1 : 0;
    if (value !== undefined && value >= lowest && value <= limit) return undefined;
    const unit = unitLabel(name);
    return finding(ReasonCode.ProtectedSetting, what, `the proxy limits ${name} to at most ${limit}${unit}`, {
      hint: `Set ${name} to a value between ${lowest}${unit} and ${limit}${unit}, or RESET it.`,
      ...at,
    });
  }
  return undefined;
}

/** Whether set_config() on this name needs a constant, checked value. */
export function isGuardedSetting(rawName: string, policy: SettingsPolicy): boolean {
  const name = canonicalSettingName(rawName);
  return (
    name === 'role' ||
    name === 'session_authorization' ||
    READ_ONLY_SETTINGS.has(name) ||
    name === 'standard_conforming_strings' ||
    name === 'client_encoding' ||
    policy.frozen.has(name) ||
    policy.limits.has(name)
  );
}
