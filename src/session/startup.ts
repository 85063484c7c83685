/**
 * Startup packet sanitising. The client controls every key of its StartupMessage
 * and the `options` string, and PostgreSQL applies each as a session setting, so
 * each one is judged exactly like the equivalent `SET name = 'value'` by the
 * policy. Anything the proxy cannot read with certainty is refused.
 */
import type { Policy, Refusal } from '../policy/types.js';
import { SqlState } from '../protocol/sqlstate.js';

/** Settings the proxy sets itself on every upstream session. */
export const PINNED_SETTINGS: ReadonlyArray<readonly [string, string]> = [
  ['default_transaction_read_only', 'on'],
  ['standard_conforming_strings', 'on'],
];

/** A GUC name as PostgreSQL would look it up: identifiers and dots, nothing else. */
const SETTING_NAME = /^[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)*$/;

export interface StartupRefusal {
  sqlstate: string;
  message: string;
  detail?: string;
  hint?: string;
  /** Stable code for logs and metrics. */
  event: string;
}

export interface SanitisedStartup {
  user: string;
  database: string;
  /** Parameters for the upstream StartupMessage, in order. */
  upstreamParams: Array<[string, string]>;
  /** `_pq_.` protocol options the client asked for and the proxy does not support. */
  unsupportedProtocolOptions: string[];
}

/**
 * Splits `options` the way PostgreSQL's pg_split_opts does: on whitespace, with a
 * backslash taking the next character literally.
 */
export function splitOptions(options: string): string[] {
  const out: string[] = [];
  let i = 0;
  const isSpace = (c: string): boolean =>
    c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f' || c === '\v';
  while (i < options.length) {
    while (i < options.length && isSpace(options[i]!)) i++;
    if (i >= options.length) break;
    let arg = '';
    let escaped = false;
    for (; i < options.length; i++) {
      const c = options[i]!;
      if (isSpace(c) && !escaped) break;
      if (!escaped && c === '\\') escaped = true;
      else {
        escaped = false;
        arg += c;
      }
    }
    out.push(arg);
  }
  return out;
}

/**
 * Reads the switches in `options`. Only `-c name=value`, `-cname=value` and
 * `--name=value` are understood; any other postgres switch is refused.
 */
export function parseOptionSwitches(
  options: string,
): { ok: true; settings: Array<[string, string]> } | { ok: false; arg: string } {
  const args = splitOptions(options);
  const settings: Array<[string, string]> = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    let body: string | undefined;
    let long = false;
    if (arg === '-c') body = args[++i];
    else if (arg.startsWith('--')) {
      body = arg.slice(2);
      long = true;
    } else if (arg.startsWith('-c')) body = arg.slice(2);
    if (body === undefined) return { ok: false, arg };
    const eq = body.indexOf('=');
    if (eq <= 0) return { ok: false, arg };
    let name = body.slice(0, eq);
    // ParseLongOption turns dashes into underscores for both spellings.
    if (long || name.includes('-')) name = name.replace(/-/g, '_');
    settings.push([name, body.slice(eq + 1)]);
  }
  return { ok: true, settings };
}

/** Quotes a value as a standard SQL string literal (standard_conforming_strings is on). */
function literal(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

function judgeSetting(
  policy: Policy,
  rawName: string,
  value: string,
  origin: string,
): StartupRefusal | undefined {
  const name = rawName.toLowerCase();
  if (!SETTING_NAME.test(name) || value.includes('\0')) {
    return {
      sqlstate: SqlState.ProtocolViolation,
      message: `pg-readonly-proxy: invalid startup setting name "${rawName}" in ${origin}`,
      event: 'startup_invalid_setting',
    };
  }
  const decision = policy.classify(`SET "${name}" = ${literal(value)}`);
  if (decision.allowed) return undefined;
  const r: Refusal | undefined = decision.refusal;
  return {
    sqlstate: SqlState.InsufficientPrivilege,
    message: `pg-readonly-proxy: setting "${name}" in the ${origin} is not allowed`,
    detail: r?.message,
    hint: 'Remove this setting from the connection string; the proxy pins it for every session.',
    event: 'startup_protected_setting',
  };
}

export function sanitiseStartup(
  params: ReadonlyMap<string, string>,
  policy: Policy,
): { ok: true; startup: SanitisedStartup } | { ok: false; refusal: StartupRefusal } {
  const refuse = (refusal: StartupRefusal) => ({ ok: false as const, refusal });
  const user = params.get('user');
  if (!user) {
    return refuse({
      sqlstate: SqlState.InvalidAuthorizationSpecification,
      message: 'no PostgreSQL user name specified in startup packet',
      event: 'startup_no_user',
    });
  }
  const database = params.get('database') || user;
  const pinned = new Set(PINNED_SETTINGS.map(([k]) => k));
  const upstreamParams: Array<[string, string]> = [
    ['user', user],
    ['database', database],
  ];
  const unsupportedProtocolOptions: string[] = [];
  const optionSettings: Array<[string, string]> = [];

  for (const [key, value] of params) {
    if (key === 'replication') {
      return refuse({
        sqlstate: SqlState.InsufficientPrivilege,
        message: 'pg-readonly-proxy: replication connections are not allowed',
        hint: 'Connect to the server directly for replication.',
        event: 'startup_replication',
      });
    }
    if (key.startsWith('_pq_.')) {
      unsupportedProtocolOptions.push(key);
      continue;
    }
    if (key === 'user' || key === 'database') continue;
    if (key === 'application_name') {
      upstreamParams.push([key, value]);
      continue;
    }
    if (key === 'options') {
      const parsed = parseOptionSwitches(value);
      if (!parsed.ok) {
        return refuse({
          sqlstate: SqlState.InsufficientPrivilege,
          message: `pg-readonly-proxy: unsupported switch "${parsed.arg}" in startup options`,
          hint: 'Only -c name=value and --name=value are accepted in options.',
          event: 'startup_options_switch',
        });
      }
      for (const [name, v] of parsed.settings) {
        const bad = judgeSetting(policy, name, v, 'startup options');
        if (bad) return refuse(bad);
        if (!pinned.has(name.toLowerCase())) optionSettings.push([name.toLowerCase(), v]);
      }
      continue;
    }
    const bad = judgeSetting(policy, key, value, 'startup packet');
    if (bad) return refuse(bad);
    if (!pinned.has(key.toLowerCase())) upstreamParams.push([key, value]);
  }
  // The accepted option settings are forwarded, rebuilt from what was parsed so
  // the server reads exactly what the proxy judged; pinned ones are left out and
  // come last as their own keys, which PostgreSQL applies after options.
  if (optionSettings.length > 0)
    upstreamParams.push([
      'options',
      optionSettings.map(([n, v]) => `-c ${escapeOption(`${n}=${v}`)}`).join(' '),
    ]);
  for (const [k, v] of PINNED_SETTINGS) upstreamParams.push([k, v]);
  // Limits the operator pins (statement_timeout, ...) are set unless the client
  // asked for a value the policy accepted (one at or below the limit).
  const clientSet = new Set([
    ...optionSettings.map(([n]) => n),
    ...upstreamParams.map(([n]) => n.toLowerCase()),
  ]);
  for (const [name, limit] of Object.entries(policy.options.settingLimits)) {
    if (limit > 0 && !clientSet.has(name)) upstreamParams.push([name, String(limit)]);
  }
  return { ok: true, startup: { user, database, upstreamParams, unsupportedProtocolOptions } };
}

function escapeOption(s: string): string {
  return s.replace(/[\\\s]/g, (c) => `\\${c}`);
}
