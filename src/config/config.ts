/**
 * Loading configuration: YAML file, then libpq's PGHOST/PGPORT, then command-line
 * flags, each overriding the one before. The result is validated as a whole; an
 * unknown key or a bad value is an error that names the key's path.
 */
import { readFileSync } from 'node:fs';
import { Ajv, type ErrorObject } from 'ajv';
import { parseDocument } from 'yaml';
import { configSchema } from './schema.js';
import type { PolicyOptions } from '../policy/types.js';

export interface UpstreamTarget {
  /** A TCP host, or a directory holding a Unix socket (as libpq reads PGHOST). */
  host: string;
  port: number;
}

export interface ProxyConfig {
  listen: { host: string; port: number };
  /** Undefined: start the embedded PostgreSQL with demo data. */
  upstream: UpstreamTarget | undefined;
  upstreamConnectTimeoutMs: number;
  maxClientConnections: number;
  maxMessageBytes: number;
  /** A client must have logged in within this long (PostgreSQL's authentication_timeout). */
  startupTimeoutMs: number;
  shutdownGraceMs: number;
  logLevel: string;
  policy: Partial<PolicyOptions>;
  embedded: { dataDir: string; port: number };
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Raw, validated file contents (snake_case, as in the YAML). */
type RawConfig = {
  listen?: string;
  upstream?: { url?: string; host?: string; port?: number; connect_timeout_ms?: number };
  limits?: { max_client_connections?: number; max_message_bytes?: number; startup_timeout_ms?: number };
  shutdown_grace_ms?: number;
  log?: { level?: string };
  policy?: {
    allow_statements?: string[];
    functions?: { mode?: 'denylist' | 'allowlist'; deny?: string[]; allow?: string[] };
    protected_settings?: string[];
    setting_limits?: Record<string, number>;
    max_sleep_seconds?: number;
    cache_size?: number;
  };
  embedded?: { data_dir?: string; port?: number };
};

const ajv = new Ajv({ allErrors: true, strict: true });
const validate = ajv.compile(configSchema);

function describe(e: ErrorObject): string {
  const path = e.instancePath.replace(/^\//, '').replace(/\//g, '.') || '(top level)';
  if (e.keyword === 'additionalProperties') {
    const key = (e.params as { additionalProperty: string }).additionalProperty;
    return `${path === '(top level)' ? key : `${path}.${key}`}: unknown key`;
  }
  if (e.keyword === 'enum') {
    return `${path}: must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}`;
  }
  return `${path}: ${e.message ?? 'invalid'}`;
}

export function validateRawConfig(raw: unknown, source: string): RawConfig {
  if (raw === null || raw === undefined) return {};
  if (!validate(raw)) {
    const lines = (validate.errors ?? []).map(describe);
    throw new ConfigError(`invalid configuration in ${source}:\n  ${[...new Set(lines)].join('\n  ')}`);
  }
  return raw as RawConfig;
}

export function readConfigFile(file: string): RawConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`);
  }
  const doc = parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(`cannot parse ${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
  }
  return validateRawConfig(doc.toJS(), file);
}

export function parseHostPort(s: string, what: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 0 || port > 65535) throw new ConfigError(`${what}: expected HOST:PORT, got "${s}"`);
  return { host: (m[1] ?? m[2])!, port };
}

/** postgres://HOST:PORT (no credentials: clients bring their own). */
export function parseUpstreamUrl(s: string, what: string): UpstreamTarget {
  let url: URL;
  try {
    url = new URL(s);
  } catch {
    throw new ConfigError(`${what}: not a URL: "${s}"`);
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
    throw new ConfigError(`${what}: expected postgres://HOST:PORT, got "${s}"`);
  }
  if (url.username || url.password) {
    throw new ConfigError(
      `${what}: credentials do not belong in the upstream URL; clients log in with their own`,
    );
  }
  if (url.pathname !== '' && url.pathname !== '/') {
    throw new ConfigError(`${what}: the database comes from each client; remove "${url.pathname}"`);
  }
  for (const key of url.searchParams.keys()) {
    if (key !== 'host') throw new ConfigError(`${what}: unsupported parameter "${key}" in "${s}"`);
  }
  const hostParam = url.searchParams.get('host');
  const host = hostParam ?? decodeURIComponent(url.hostname.replace(/^\[|\]$/g, ''));
  if (!host) throw new ConfigError(`${what}: no host in "${s}"`);
  return { host, port: url.port ? checkPort(url.port, what) : 5432 };
}

function checkPort(value: string, what: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || port < 1 || port > 65535)
    throw new ConfigError(`${what}: not a port number: "${value}"`);
  return port;
}

export interface CliOverrides {
  listen?: string;
  upstream?: string;
}

export function resolveConfig(
  raw: RawConfig,
  overrides: CliOverrides,
  env: NodeJS.ProcessEnv = process.env,
): ProxyConfig {
  let upstream: UpstreamTarget | undefined;
  if (raw.upstream?.url) upstream = parseUpstreamUrl(raw.upstream.url, 'upstream.url');
  if (raw.upstream?.host)
    upstream = { host: raw.upstream.host, port: raw.upstream.port ?? upstream?.port ?? 5432 };
  else if (upstream && raw.upstream?.port) upstream.port = raw.upstream.port;
  // libpq's environment overrides the file: PGHOST names the server, PGPORT its port.
  if (env.PGHOST) upstream = { host: env.PGHOST, port: 5432 };
  if (env.PGPORT && upstream) upstream.port = checkPort(env.PGPORT, 'PGPORT');
  if (overrides.upstream) upstream = parseUpstreamUrl(overrides.upstream, '--upstream');

  const listen = parseHostPort(
    overrides.listen ?? raw.listen ?? '127.0.0.1:6432',
    overrides.listen ? '--listen' : 'listen',
  );
  const p = raw.policy ?? {};
  const policy: Partial<PolicyOptions> = {};
  if (p.allow_statements) policy.allowStatements = p.allow_statements.map((s) => s.toUpperCase());
  if (p.functions?.mode) policy.functionMode = p.functions.mode;
  if (p.functions?.deny) policy.denyFunctions = p.functions.deny;
  if (p.functions?.allow) policy.allowFunctions = p.functions.allow;
  if (p.protected_settings) policy.protectedSettings = p.protected_settings.map((s) => s.toLowerCase());
  if (p.setting_limits) policy.settingLimits = p.setting_limits;
  if (p.max_sleep_seconds !== undefined) policy.maxSleepSeconds = p.max_sleep_seconds;
  if (p.cache_size !== undefined) policy.cacheSize = p.cache_size;

  return {
    listen,
    upstream,
    upstreamConnectTimeoutMs: raw.upstream?.connect_timeout_ms ?? 10000,
    maxClientConnections: raw.limits?.max_client_connections ?? 1000,
    maxMessageBytes: raw.limits?.max_message_bytes ?? 64 * 1024 * 1024,
    startupTimeoutMs: raw.limits?.startup_timeout_ms ?? 60000,
    shutdownGraceMs: raw.shutdown_grace_ms ?? 30000,
    logLevel: raw.log?.level ?? 'info',
    policy,
    embedded: { dataDir: raw.embedded?.data_dir ?? '.data/embedded', port: raw.embedded?.port ?? 0 },
  };
}
