/**
 * Loading configuration: YAML file, then libpq's PGHOST/PGPORT, then command-line
 * flags, each overriding the one before. The result is validated as a whole; an
 * unknown key or a bad value is an error that names the key's path.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Ajv, type ErrorObject } from 'ajv';
import { parseDocument } from 'yaml';
import { configSchema, MAX_WORKERS } from './schema.js';
import type { PolicyOptions } from '../policy/types.js';
import type { SslMode, UpstreamTls } from '../upstream/connect.js';

export interface UpstreamTarget {
  /** A TCP host, or a directory holding a Unix socket (as libpq reads PGHOST). */
  host: string;
  port: number;
  tls: UpstreamTls;
}

export type ClientTlsMode = 'disable' | 'allow' | 'require';

export interface ClientTlsConfig {
  /** disable: answer SSLRequest 'N'; allow: TLS or plaintext; require: plaintext clients are refused. */
  mode: ClientTlsMode;
  certFile?: string | undefined;
  keyFile?: string | undefined;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
}

export interface ProxyUserConfig {
  /** A SCRAM-SHA-256 verifier (or an MD5 one, with allowMd5); never a plaintext password. */
  password: string;
  upstreamUser: string;
  upstreamPasswordEnv?: string | undefined;
  upstreamPasswordFile?: string | undefined;
  /** Databases this user may open; '*' for any. */
  databases: string[];
}

/** libpq's require_auth names: how the proxy may log in upstream for proxy-managed users. */
export type UpstreamAuthMethod = 'password' | 'md5' | 'scram-sha-256' | 'none';

export interface AuthConfig {
  /** passthrough: the server authenticates each client; proxy: the proxy does, and logs in upstream itself. */
  mode: 'passthrough' | 'proxy';
  allowMd5: boolean;
  usersFile?: string | undefined;
  users: Record<string, ProxyUserConfig>;
  /** Upstream login methods the proxy answers (libpq's require_auth); undefined: any. */
  upstreamRequireAuth?: UpstreamAuthMethod[] | undefined;
}

/** The tls part of an upstream target with libpq's defaults. */
export function defaultUpstreamTls(): UpstreamTls {
  return { sslmode: 'prefer', sslnegotiation: 'postgres' };
}

/**
 * Warm upstream sessions for proxy-managed users (see src/upstream/pool.ts).
 * Timeouts of 0 mean never, as PgBouncer's server_idle_timeout / server_lifetime.
 */
export interface PoolConfig {
  /** Keep a client's upstream session, reset, for the next client with the same key (auth.mode proxy only). */
  enabled: boolean;
  /** Idle sessions kept per key (proxy user, database, startup parameters). */
  maxIdle: number;
  /** Idle sessions kept in all. */
  maxIdleTotal: number;
  /** An idle session is closed after this long unused. */
  idleTimeoutMs: number;
  /** A session is closed once this old, at its next return or while idle. */
  maxLifetimeMs: number;
  /** DISCARD ALL and its check must be answered within this long, or the session is closed. */
  resetTimeoutMs: number;
}

/** Worker processes when neither the file nor --workers says (1: one process, no cluster). */
export const DEFAULT_WORKERS = 1;

export interface ProxyConfig {
  /** Worker processes behind the one listener ("auto" resolved); 1: a single process, no cluster. */
  workers: number;
  listen: { host: string; port: number };
  /** Undefined: start the embedded PostgreSQL with demo data. */
  upstream: UpstreamTarget | undefined;
  upstreamConnectTimeoutMs: number;
  clientTls: ClientTlsConfig;
  auth: AuthConfig;
  maxClientConnections: number;
  /** Sessions one user may hold at once (the startup packet's user); undefined: only the global limit. */
  maxConnectionsPerUser: number | undefined;
  /** End a session idle outside a transaction this long (PostgreSQL's idle_session_timeout); 0: never. */
  idleClientTimeoutMs: number;
  /** Rows / bytes one query may return before it is cancelled (54000); undefined: no limit. */
  maxResultRows: number | undefined;
  maxResultBytes: number | undefined;
  maxMessageBytes: number;
  /** A client must have logged in within this long (PostgreSQL's authentication_timeout). */
  startupTimeoutMs: number;
  shutdownGraceMs: number;
  /** One record per statement: on stdout with the other logs, or in a file of its own. */
  audit: { enabled: boolean; file?: string | undefined; includeText: boolean };
  /** /metrics, /healthz, /readyz (and /admin/reload, on loopback only, when admin); undefined: off. */
  http: { listen: { host: string; port: number }; admin: boolean } | undefined;
  logLevel: string;
  policy: Partial<PolicyOptions>;
  embedded: { dataDir: string; port: number };
  pool: PoolConfig;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Raw, validated file contents (snake_case, as in the YAML). */
export type RawUser = {
  password: string;
  upstream_user: string;
  upstream_password_env?: string;
  upstream_password_file?: string;
  databases: string[];
};

export type RawConfig = {
  workers?: number | 'auto';
  listen?: string;
  upstream?: {
    url?: string;
    host?: string;
    port?: number;
    connect_timeout_ms?: number;
    sslmode?: SslMode;
    sslrootcert?: string;
    sslcert?: string;
    sslkey?: string;
    sslnegotiation?: 'postgres' | 'direct';
    require_auth?: UpstreamAuthMethod[];
  };
  client_tls?: {
    mode?: ClientTlsMode;
    cert_file?: string;
    key_file?: string;
    min_version?: 'TLSv1.2' | 'TLSv1.3';
  };
  auth?: {
    mode?: 'passthrough' | 'proxy';
    allow_md5?: boolean;
    users_file?: string;
    users?: Record<string, RawUser>;
  };
  limits?: {
    max_client_connections?: number;
    max_message_bytes?: number;
    startup_timeout_ms?: number;
    max_connections_per_user?: number;
    idle_client_timeout_ms?: number;
    max_result_rows?: number;
    max_result_bytes?: number;
  };
  shutdown_grace_ms?: number;
  http?: { listen?: string; admin?: boolean };
  audit?: { enabled?: boolean; file?: string; include_text?: boolean };
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
  pool?: {
    enabled?: boolean;
    max_idle?: number;
    max_idle_total?: number;
    idle_timeout_ms?: number;
    max_lifetime_ms?: number;
    reset_timeout_ms?: number;
  };
};

const ajv = new Ajv({ allErrors: true, strict: true });
const validate = ajv.compile(configSchema);

function describe(e: ErrorObject): string {
  const path = e.instancePath.replace(/^\//, '').replace(/\//g, '.') || '(top level)';
  const described = e.keyword === 'anyOf' ? schemaDescription(e.schemaPath) : undefined;
  if (described) return `${path}: must be ${described}`;
  if (e.keyword === 'additionalProperties') {
    const key = (e.params as { additionalProperty: string }).additionalProperty;
    return `${path === '(top level)' ? key : `${path}.${key}`}: unknown key`;
  }
  if (e.keyword === 'enum') {
    return `${path}: must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}`;
  }
  return `${path}: ${e.message ?? 'invalid'}`;
}

/** The description of the config schema's node at an ajv schemaPath's parent (`#/properties/workers/anyOf`). */
function schemaDescription(schemaPath: string): string | undefined {
  let node: unknown = configSchema;
  for (const key of schemaPath.replace(/^#\//, '').split('/').slice(0, -1))
    node = node && typeof node === 'object' ? (node as Record<string, unknown>)[key] : undefined;
  const d = node && typeof node === 'object' ? (node as { description?: unknown }).description : undefined;
  return typeof d === 'string' ? d : undefined;
}

export function validateRawConfig(raw: unknown, source: string): RawConfig {
  if (raw === null || raw === undefined) return {};
  if (!validate(raw)) {
    const errors = validate.errors ?? [];
    // A described anyOf that failed is one line, not one per branch it tried.
    const told = errors
      .filter((e) => e.keyword === 'anyOf' && schemaDescription(e.schemaPath))
      .map((e) => `${e.schemaPath}/`);
    const lines = errors.filter((e) => !told.some((p) => e.schemaPath.startsWith(p))).map(describe);
    throw new ConfigError(`invalid configuration in ${source}:\n  ${[...new Set(lines)].join('\n  ')}`);
  }
  return raw as RawConfig;
}

/** A YAML file's contents as plain data (duplicate keys are an error). */
export function readYamlFile(file: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${what} ${file}: ${(err as Error).message}`);
  }
  const doc = parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(`cannot parse ${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
  }
  return doc.toJS() as unknown;
}

export function readConfigFile(file: string): RawConfig {
  return validateRawConfig(readYamlFile(file, 'config file'), file);
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
  const tls = defaultUpstreamTls();
  for (const [key, value] of url.searchParams) {
    if (key === 'host') continue;
    if (!(URL_TLS_PARAMS as readonly string[]).includes(key))
      throw new ConfigError(`${what}: unsupported parameter "${key}" in "${s}"`);
    setTlsParam(tls, key as (typeof URL_TLS_PARAMS)[number], value, `${what} ${key}`);
  }
  const hostParam = url.searchParams.get('host');
  const host = hostParam ?? decodeURIComponent(url.hostname.replace(/^\[|\]$/g, ''));
  if (!host) throw new ConfigError(`${what}: no host in "${s}"`);
  return { host, port: url.port ? checkPort(url.port, what) : 5432, tls };
}

/** libpq's TLS connection parameters the proxy takes, in URLs and as PGSSL* variables. */
const URL_TLS_PARAMS = ['sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'sslnegotiation'] as const;
const SSL_MODES: readonly SslMode[] = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];

function setTlsParam(
  tls: UpstreamTls,
  key: (typeof URL_TLS_PARAMS)[number],
  value: string,
  what: string,
): void {
  switch (key) {
    case 'sslmode':
      if (!SSL_MODES.includes(value as SslMode))
        throw new ConfigError(`${what}: must be one of ${SSL_MODES.join(', ')}`);
      tls.sslmode = value as SslMode;
      return;
    case 'sslnegotiation':
      if (value !== 'postgres' && value !== 'direct')
        throw new ConfigError(`${what}: must be postgres or direct`);
      tls.sslnegotiation = value;
      return;
    default:
      tls[key] = value;
  }
}

/** The combinations libpq refuses, refused the same way (and a missing CA file named now, not per connection). */
function checkUpstreamTls(tls: UpstreamTls): void {
  if ((tls.sslmode === 'verify-ca' || tls.sslmode === 'verify-full') && !tls.sslrootcert) {
    throw new ConfigError(
      `upstream sslmode ${tls.sslmode} needs sslrootcert: a CA bundle file (e.g. the RDS global bundle) or "system"`,
    );
  }
  if (tls.sslrootcert === 'system' && tls.sslmode !== 'verify-full') {
    throw new ConfigError('upstream sslrootcert "system" needs sslmode verify-full (as libpq)');
  }
  if (tls.sslnegotiation === 'direct' && ['disable', 'allow', 'prefer'].includes(tls.sslmode)) {
    throw new ConfigError('upstream sslnegotiation direct needs sslmode require, verify-ca or verify-full');
  }
  if (!!tls.sslcert !== !!tls.sslkey) throw new ConfigError('upstream sslcert and sslkey go together');
  for (const file of [tls.sslrootcert, tls.sslcert, tls.sslkey]) {
    if (file && file !== 'system') checkReadable(file, 'upstream TLS file');
  }
}

function checkReadable(file: string, what: string): void {
  try {
    readFileSync(file);
  } catch (err) {
    throw new ConfigError(`${what} ${file}: ${(err as Error).message}`);
  }
}

function checkPort(value: string, what: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || port < 1 || port > 65535)
    throw new ConfigError(`${what}: not a port number: "${value}"`);
  return port;
}

export interface CliOverrides {
  listen?: string | undefined;
  upstream?: string | undefined;
  tlsCert?: string | undefined;
  tlsKey?: string | undefined;
  clientTls?: string | undefined;
  httpListen?: string | undefined;
  /** --workers N|auto */
  workers?: string | undefined;
}

export function resolveConfig(
  raw: RawConfig,
  overrides: CliOverrides,
  env: NodeJS.ProcessEnv = process.env,
): ProxyConfig {
  const u = raw.upstream;
  let upstream: UpstreamTarget | undefined;
  if (u?.url) upstream = parseUpstreamUrl(u.url, 'upstream.url');
  if (u?.host)
    upstream = {
      host: u.host,
      port: u.port ?? upstream?.port ?? 5432,
      tls: upstream?.tls ?? defaultUpstreamTls(),
    };
  else if (upstream && u?.port) upstream.port = u.port;
  // TLS parameters the file sets, in upstream.url or as keys: the environment
  // may not change them (a stray PGSSLMODE must not weaken a verify-full).
  const fileSets = new Set<string>(u?.url ? new URL(u.url).searchParams.keys() : []);
  if (upstream) {
    for (const key of URL_TLS_PARAMS) {
      const value = u?.[key];
      if (value === undefined) continue;
      setTlsParam(upstream.tls, key, value, `upstream.${key}`);
      fileSets.add(key);
    }
  }
  // libpq's environment: PGHOST names the server and PGPORT its port (over the
  // file's), PGSSLMODE and friends fill in the TLS parameters the file leaves out.
  if (env.PGHOST) upstream = { host: env.PGHOST, port: 5432, tls: upstream?.tls ?? defaultUpstreamTls() };
  if (env.PGPORT && upstream) upstream.port = checkPort(env.PGPORT, 'PGPORT');
  if (overrides.upstream) upstream = parseUpstreamUrl(overrides.upstream, '--upstream');
  if (upstream) {
    for (const key of URL_TLS_PARAMS) {
      const value = env[`PG${key.toUpperCase()}`];
      // A URL on the command line says it all.
      if (value && !overrides.upstream && !fileSets.has(key))
        setTlsParam(upstream.tls, key, value, `PG${key.toUpperCase()}`);
    }
    checkUpstreamTls(upstream.tls);
  }

  const clientTls = resolveClientTls(raw.client_tls ?? {}, overrides);
  const auth = resolveAuth(raw.auth ?? {});
  if (u?.require_auth) {
    if (auth.mode !== 'proxy') {
      throw new ConfigError(
        'upstream.require_auth applies to proxy-managed users (auth.mode: proxy); in passthrough the client answers the server',
      );
    }
    auth.upstreamRequireAuth = u.require_auth;
  }

  const workersSpec = overrides.workers ?? raw.workers ?? DEFAULT_WORKERS;
  const workers = resolveWorkers(workersSpec, overrides.workers !== undefined ? '--workers' : 'workers');
  if (raw.limits?.max_connections_per_user !== undefined && (workersSpec === 'auto' || workers > 1)) {
    throw new ConfigError(
      `limits.max_connections_per_user cannot be enforced with several worker processes (workers: ${workersSpec}): each would count only its own sessions. Remove the limit or run one process (workers: 1)`,
    );
  }

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
    workers,
    listen,
    upstream,
    upstreamConnectTimeoutMs: raw.upstream?.connect_timeout_ms ?? 10000,
    clientTls,
    auth,
    maxClientConnections: raw.limits?.max_client_connections ?? 1000,
    maxConnectionsPerUser: raw.limits?.max_connections_per_user,
    idleClientTimeoutMs: raw.limits?.idle_client_timeout_ms ?? 0,
    maxResultRows: raw.limits?.max_result_rows,
    maxResultBytes: raw.limits?.max_result_bytes,
    maxMessageBytes: raw.limits?.max_message_bytes ?? 64 * 1024 * 1024,
    startupTimeoutMs: raw.limits?.startup_timeout_ms ?? 60000,
    shutdownGraceMs: raw.shutdown_grace_ms ?? 30000,
    http: resolveHttp(raw.http, overrides.httpListen),
    audit: {
      enabled: raw.audit?.enabled ?? true,
      file: raw.audit?.file,
      includeText: raw.audit?.include_text ?? false,
    },
    logLevel: raw.log?.level ?? 'info',
    policy,
    embedded: { dataDir: raw.embedded?.data_dir ?? '.data/embedded', port: raw.embedded?.port ?? 0 },
    pool: resolvePool(raw.pool ?? {}, auth.mode),
  };
}

/**
 * The `pool` section. It applies to proxy-managed users only (passthrough
 * clients bring their own credentials), and is on by default with them.
 */
function resolvePool(raw: NonNullable<RawConfig['pool']>, mode: AuthConfig['mode']): PoolConfig {
  return {
    enabled: raw.enabled ?? mode === 'proxy',
    maxIdle: raw.max_idle ?? 8,
    maxIdleTotal: raw.max_idle_total ?? 64,
    idleTimeoutMs: raw.idle_timeout_ms ?? 600000,
    maxLifetimeMs: raw.max_lifetime_ms ?? 3600000,
    resetTimeoutMs: raw.reset_timeout_ms ?? 5000,
  };
}

/**
 * `workers`: a count, or "auto" for the CPUs this process may use
 * (os.availableParallelism(), at most MAX_WORKERS).
 */
export function resolveWorkers(
  spec: number | string,
  what: string,
  parallelism: () => number = availableParallelism,
): number {
  if (spec === 'auto') return Math.max(1, Math.min(MAX_WORKERS, parallelism()));
  const n = typeof spec === 'number' ? spec : /^\d{1,4}$/.test(spec) ? Number(spec) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > MAX_WORKERS)
    throw new ConfigError(`${what}: must be a whole number from 1 to ${MAX_WORKERS}, or "auto"`);
  return n;
}

function resolveClientTls(raw: NonNullable<RawConfig['client_tls']>, o: CliOverrides): ClientTlsConfig {
  const certFile = o.tlsCert ?? raw.cert_file;
  const keyFile = o.tlsKey ?? raw.key_file;
  if (!!certFile !== !!keyFile) {
    throw new ConfigError('client_tls: cert_file and key_file (--tls-cert and --tls-key) go together');
  }
  let mode = (o.clientTls ?? raw.mode ?? (certFile ? 'allow' : 'disable')) as ClientTlsMode;
  if (!['disable', 'allow', 'require'].includes(mode)) {
    throw new ConfigError(`--client-tls: must be one of disable, allow, require`);
  }
  if (mode !== 'disable' && !certFile) {
    throw new ConfigError(
      `client_tls mode ${mode} needs a certificate: cert_file and key_file (--tls-cert, --tls-key)`,
    );
  }
  if (mode === 'disable' && certFile && o.clientTls === undefined && raw.mode === undefined) mode = 'allow';
  return { mode, certFile, keyFile, minVersion: raw.min_version ?? 'TLSv1.2' };
}

function resolveAuth(raw: NonNullable<RawConfig['auth']>): AuthConfig {
  const mode = raw.mode ?? 'passthrough';
  const users: Record<string, ProxyUserConfig> = {};
  for (const [name, u] of Object.entries(raw.users ?? {})) users[name] = resolveUser(u);
  if (mode === 'passthrough' && (raw.users_file || Object.keys(users).length > 0)) {
    throw new ConfigError('auth.users and auth.users_file need auth.mode: proxy');
  }
  if (mode === 'proxy' && !raw.users_file && Object.keys(users).length === 0) {
    throw new ConfigError('auth.mode proxy needs users: auth.users or auth.users_file');
  }
  return { mode, allowMd5: raw.allow_md5 ?? false, usersFile: raw.users_file, users };
}

export function resolveUser(u: RawUser): ProxyUserConfig {
  return {
    password: u.password,
    upstreamUser: u.upstream_user,
    upstreamPasswordEnv: u.upstream_password_env,
    upstreamPasswordFile: u.upstream_password_file,
    databases: u.databases,
  };
}

function resolveHttp(
  raw: RawConfig['http'],
  flag: string | undefined,
): { listen: { host: string; port: number }; admin: boolean } | undefined {
  const listen = flag ?? raw?.listen;
  if (listen === undefined) {
    if (raw?.admin) throw new ConfigError('http.admin needs http.listen (or --http-listen)');
    return undefined;
  }
  return {
    listen: parseHostPort(listen, flag !== undefined ? '--http-listen' : 'http.listen'),
    admin: raw?.admin ?? false,
  };
}
