/**
 * `pg-readonly-proxy doctor`: logs in upstream as the proxy would and reports
 * what a careful DBA would check before handing the endpoint to an agent. The
 * exit code is 0 when no finding is at or above `failOn`, 1 when one is, and 2
 * when the doctor could not log in (or the login it was given is not one the
 * proxy would use).
 */
import type { ProxyConfig, UpstreamTarget } from '../config/config.js';
import { UserDirectory } from '../auth/users.js';
import { describeTarget } from '../upstream/connect.js';
import { connectForDoctor, isLoopback, isUnixSocketHost, type DoctorLogin } from './connect.js';
import { grade } from './grade.js';
import { inspect } from './inspect.js';
import { buildReport, formatJson, formatText } from './report.js';
import type { Severity } from './severity.js';

export interface DoctorOptions {
  config: ProxyConfig;
  upstream: UpstreamTarget;
  /** With auth.mode proxy, a proxy-managed user (its upstream_user and password are used); else the upstream role. */
  user: string;
  /** The upstream password (e.g. from --password-env); a proxy-managed user's configured one comes first. */
  password?: string | undefined;
  database: string;
  json: boolean;
  failOn: Severity;
  out: NodeJS.WritableStream;
  /** Where text-mode errors go (default: process.stderr); JSON mode writes them to `out` as JSON. */
  err?: NodeJS.WritableStream | undefined;
  /** Environment for proxy users' upstream_password_env (default: process.env). */
  env?: NodeJS.ProcessEnv | undefined;
  /** Today, for end-of-life dates (tests). */
  now?: Date | undefined;
}

export const EXIT_CANNOT_CONNECT = 2;

export async function runDoctor(opts: DoctorOptions): Promise<number> {
  const fail = (message: string): number => {
    if (opts.json) {
      opts.out.write(
        `${JSON.stringify({ error: message, summary: { exitCode: EXIT_CANNOT_CONNECT } }, null, 2)}\n`,
      );
    } else {
      (opts.err ?? process.stderr).write(`pg-readonly-proxy doctor: ${message}\n`);
    }
    return EXIT_CANNOT_CONNECT;
  };

  let login: DoctorLogin;
  let proxyUser: string | undefined;
  try {
    const resolved = resolveLogin(opts);
    if (typeof resolved === 'string') return fail(resolved);
    ({ login, proxyUser } = resolved);
  } catch (err) {
    return fail((err as Error).message);
  }

  const target = describeTarget(opts.upstream);
  let client;
  try {
    client = await connectForDoctor(opts.upstream, login, opts.config.upstreamConnectTimeoutMs);
  } catch (err) {
    return fail(`cannot log in to ${target} as "${login.user}": ${(err as Error).message}`);
  }
  try {
    const facts = await inspect(client, {
      proxyUser,
      connection: {
        target,
        unixSocket: isUnixSocketHost(opts.upstream.host),
        local: isLoopback(opts.upstream.host),
        sslmode: opts.upstream.tls.sslmode,
        sslrootcert: !!opts.upstream.tls.sslrootcert,
        authMode: opts.config.auth.mode,
      },
    });
    const report = buildReport(facts, grade(facts, opts.now), opts.failOn);
    opts.out.write(opts.json ? `${formatJson(report)}\n` : formatText(report));
    return report.summary.exitCode;
  } catch (err) {
    return fail(`could not inspect ${target} as "${login.user}": ${(err as Error).message}`);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * Which upstream role and password the proxy would use: a proxy-managed user's
 * configured ones (auth.mode proxy), or the name and password given
 * (passthrough, where clients bring their own). A string says why not.
 */
function resolveLogin(opts: DoctorOptions): { login: DoctorLogin; proxyUser?: string } | string {
  if (opts.config.auth.mode !== 'proxy') {
    return { login: { user: opts.user, password: opts.password, database: opts.database } };
  }
  const users = new UserDirectory(opts.config.auth, opts.env ?? process.env);
  const u = users.get(opts.user);
  if (!u) {
    return `no proxy-managed user "${opts.user}" in the configuration (auth.mode is proxy: name one of auth.users)`;
  }
  if (u.databases && !u.databases.has(opts.database)) {
    return `proxy user "${opts.user}" may not open database "${opts.database}" (its databases: ${[...u.databases].join(', ')})`;
  }
  return {
    login: {
      user: u.upstreamUser,
      password: u.upstreamPassword ?? opts.password,
      database: opts.database,
      requireAuth: opts.config.auth.upstreamRequireAuth && new Set(opts.config.auth.upstreamRequireAuth),
    },
    proxyUser: opts.user,
  };
}
