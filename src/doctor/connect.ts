/**
 * Logging in upstream for the doctor with node-postgres, the way the proxy
 * would: the same host and port, TLS as the upstream's sslmode says (libpq's
 * meanings, as in src/upstream/connect.ts), and the session pinned read-only
 * with the settings the proxy pins.
 *
 * sslmode → node-postgres `ssl`:
 *   disable                  plaintext
 *   allow                    plaintext; if that fails, TLS without a certificate check
 *   prefer                   TLS without a certificate check; if that fails, plaintext
 *   require                  TLS without a certificate check (with sslrootcert: as verify-ca)
 *   verify-ca                TLS, the chain checked against sslrootcert
 *   verify-full              as verify-ca, and the host name checked
 * A Unix socket never uses TLS. sslrootcert "system" is Node's bundled CA list,
 * sslcert / sslkey a client certificate, sslnegotiation direct node-postgres's
 * direct TLS. Unlike the proxy, the doctor retries after any failure of the
 * first attempt (a wrong password is then tried twice, as libpq does), and it
 * sends the pinned settings in `options` (node-postgres sends no other keys);
 * PostgreSQL applies both the same way.
 *
 * As for the proxy's own logins: upstream.require_auth (for proxy-managed users)
 * is checked when the server asks, before any secret is sent; SCRAM uses channel
 * binding over TLS when the server offers it; at most 409600 SCRAM iterations.
 */
import type { ConnectionOptions } from 'node:tls';
import { tlsOptions } from '../upstream/connect.js';
import pg from 'pg';
import type { UpstreamTarget } from '../config/config.js';
import { PINNED_SETTINGS } from '../session/startup.js';

/** One login attempt: no TLS, or TLS with these options. */
export type PgSsl = false | ConnectionOptions;

export function isUnixSocketHost(host: string): boolean {
  return host.startsWith('/');
}

export function isLoopback(host: string): boolean {
  return (
    host === 'localhost' ||
    host === '::1' ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) ||
    isUnixSocketHost(host)
  );
}

/**
 * The TLS options for one TLS attempt, the proxy's own (files are read now).
 * node-postgres passes the host itself, and sends it as SNI when it is a name.
 */
export function pgTlsOptions(target: UpstreamTarget): ConnectionOptions {
  const { host: _host, servername: _servername, ...opts } = tlsOptions(target);
  return opts;
}

/** The attempts libpq would make for this target, in order. */
export function pgSslAttempts(target: UpstreamTarget): PgSsl[] {
  if (isUnixSocketHost(target.host)) return [false];
  switch (target.tls.sslmode) {
    case 'disable':
      return [false];
    case 'allow':
      return [false, pgTlsOptions(target)];
    case 'prefer':
      return [pgTlsOptions(target), false];
    default:
      return [pgTlsOptions(target)];
  }
}

/** `options` with the proxy's pinned settings (and a statement timeout for the doctor's own queries). */
export function pinnedOptions(statementTimeoutMs = 60_000): string {
  return [...PINNED_SETTINGS, ['statement_timeout', String(statementTimeoutMs)] as const]
    .map(([k, v]) => `-c ${k}=${v}`)
    .join(' ');
}

export interface DoctorLogin {
  user: string;
  password: string | undefined;
  database: string;
  /** libpq's require_auth names the server may ask for; undefined: any. */
  requireAuth?: ReadonlySet<string> | undefined;
}

/** The most SCRAM iterations the proxy accepts from a server (src/auth/scram.ts). */
const MAX_SCRAM_ITERATIONS = 409_600;

/** node-postgres's Connection events for each Authentication request, by require_auth name. */
const AUTH_EVENTS: ReadonlyArray<readonly [string, string]> = [
  ['authenticationCleartextPassword', 'password'],
  ['authenticationMD5Password', 'md5'],
  ['authenticationSASL', 'scram-sha-256'],
];

export class DoctorConnectError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DoctorConnectError';
  }
}

/** Connects as the proxy would; a DoctorConnectError says why each attempt failed. */
export async function connectForDoctor(
  target: UpstreamTarget,
  login: DoctorLogin,
  timeoutMs: number,
): Promise<pg.Client> {
  let attempts: PgSsl[];
  try {
    attempts = pgSslAttempts(target);
  } catch (err) {
    throw new DoctorConnectError(`cannot read the upstream TLS files: ${(err as Error).message}`);
  }
  const failures: string[] = [];
  for (const ssl of attempts) {
    // What the server asked for, seen before node-postgres answers (its listeners come later).
    let asked: string | undefined;
    const requireAuth = login.requireAuth;
    const config: pg.ClientConfig & { scramMaxIterations: number } = {
      host: target.host,
      port: target.port,
      user: login.user,
      // undefined: node-postgres falls back to PGPASSWORD and ~/.pgpass, as libpq.
      password: requireAuth
        ? () => {
            if (asked && !requireAuth.has(asked)) {
              throw new Error(
                `the server asked for ${asked} authentication, which upstream.require_auth does not allow`,
              );
            }
            if (login.password === undefined)
              throw new Error('the server asked for a password; none is configured');
            return login.password;
          }
        : login.password,
      database: login.database,
      ssl,
      ...(ssl && target.tls.sslnegotiation === 'direct' ? { sslnegotiation: 'direct' as const } : {}),
      enableChannelBinding: ssl !== false,
      scramMaxIterations: MAX_SCRAM_ITERATIONS,
      options: pinnedOptions(),
      application_name: 'pg-readonly-proxy doctor',
      connectionTimeoutMillis: timeoutMs,
    };
    const client = new pg.Client(config);
    for (const [event, method] of AUTH_EVENTS) client.connection.on(event, () => (asked = method));
    // An error after connect (the server going away) must not crash the process.
    client.on('error', () => undefined);
    try {
      await client.connect();
      if (requireAuth && asked === undefined && !requireAuth.has('none')) {
        await client.end().catch(() => undefined);
        failures.push('the server asked for no authentication, which upstream.require_auth does not allow');
        // Every attempt would end the same way.
        break;
      }
      return client;
    } catch (err) {
      const why = describeError(err);
      // sslmode prefer against a server without TLS: the refusal is expected, the next attempt says what matters.
      if (!(ssl && attempts.length > 1 && why === NO_TLS)) {
        failures.push(`${ssl ? 'with TLS' : 'without TLS'}: ${why}`);
      }
      await client.end().catch(() => undefined);
    }
  }
  throw new DoctorConnectError(failures.join('; '));
}

/** node-postgres's words when the server answers SSLRequest with N. */
const NO_TLS = 'The server does not support SSL connections';

function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && code !== '' ? `${err.message} (${code})` : err.message;
}
