#!/usr/bin/env node
/**
 * Command line: argv → config → the proxy (in front of a configured upstream or
 * the embedded default), or the `check` subcommand.
 */
import cluster from 'node:cluster';
import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import {
  ConfigError,
  readConfigFile,
  resolveConfig,
  type CliOverrides,
  type ProxyConfig,
  type RawConfig,
  type UpstreamTarget,
} from './config/config.js';
import { WORKER_INDEX_ENV } from './cluster/messages.js';
import { createLogger, logDestination, type Logger } from './observability/logger.js';
import { createPolicy, formatCheckReport, loadParser } from './policy/index.js';
import { ProxyServer } from './server.js';
import { Metrics } from './observability/metrics.js';
import { cacheReadiness, startHttpServer } from './observability/http.js';
import { describeTarget } from './upstream/connect.js';
import { VERSION } from './version.js';

const HELP = `pg-readonly-proxy ${VERSION}: a PostgreSQL proxy that makes every session read-only

Usage:
  pg-readonly-proxy [options]            run the proxy
  pg-readonly-proxy check [options] SQL  print the policy's decision for each statement
                                         (reads SQL from stdin when none is given;
                                         exit 1 if anything is refused)
  pg-readonly-proxy doctor [options]     check the upstream role before handing the proxy out
                                         (exit 1 at --fail-on or above, 2 if it cannot log in)
  pg-readonly-proxy hash-password        print a SCRAM-SHA-256 verifier for a password
                                         (asked for on a terminal, else read from stdin),
                                         for auth.users.*.password

Options:
  -c, --config FILE        YAML configuration (see config.example.yaml)
  -l, --listen HOST:PORT   where clients connect (default 127.0.0.1:6432)
  -u, --upstream URL       postgres://HOST:PORT of the server to protect, with
                           ?sslmode=...&sslrootcert=... as in libpq (PGHOST,
                           PGPORT, PGSSLMODE, PGSSLROOTCERT, ... are read too);
                           with none, an embedded PostgreSQL with demo data is started
      --tls-cert FILE      certificate (PEM) for clients' TLS
      --tls-key FILE       its private key (PEM)
      --client-tls MODE    disable, allow or require (default: allow with a
                           certificate, else disable)
      --http-listen HOST:PORT  serve /metrics, /healthz and /readyz (off by default)
      --workers N|auto     worker processes behind the one listener (default 1;
                           auto: one per CPU)
      --iterations N       hash-password: SCRAM iteration count (default 4096)
      --user U             doctor: the role (with auth.mode proxy: a proxy user) to check
      --password-env VAR   doctor: its upstream password from this environment variable
      --database D         doctor: the database to check (default: the user name)
      --json               doctor: print the report as JSON
      --fail-on SEVERITY   doctor: exit 1 at info, low, medium, high (default) or critical
      --log-level LEVEL    fatal, error, warn, info, debug, trace or silent
  -h, --help               show this help
  -v, --version            show the version

Signals: SIGTERM / SIGINT shut down gracefully; SIGHUP rereads the TLS
certificate, the users file and upstream password files.
`;

/** The command line: the config overrides, and what the subcommands take. */
interface Args extends CliOverrides {
  command: 'run' | 'check' | 'hash-password' | 'doctor';
  user?: string | undefined;
  passwordEnv?: string | undefined;
  database?: string | undefined;
  json?: boolean | undefined;
  failOn?: string | undefined;
  config?: string | undefined;
  iterations?: string | undefined;
  logLevel?: string | undefined;
  sql: string[];
}

function parseCli(argv: string[]): Args | 'help' | 'version' {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      config: { type: 'string', short: 'c' },
      listen: { type: 'string', short: 'l' },
      upstream: { type: 'string', short: 'u' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'client-tls': { type: 'string' },
      'http-listen': { type: 'string' },
      workers: { type: 'string' },
      iterations: { type: 'string' },
      user: { type: 'string' },
      'password-env': { type: 'string' },
      database: { type: 'string' },
      json: { type: 'boolean' },
      'fail-on': { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'v' },
    },
  });
  if (values.help) return 'help';
  if (values.version) return 'version';
  let command: Args['command'] = 'run';
  const rest = [...positionals];
  if (rest[0] === 'check' || rest[0] === 'hash-password' || rest[0] === 'doctor') {
    command = rest[0];
    rest.shift();
    if (command === 'doctor' && rest.length > 0)
      throw new ConfigError('doctor takes options only (see --help)');
    if (command === 'hash-password' && rest.length > 0) {
      throw new ConfigError(
        'hash-password takes no arguments: the password is read from the terminal or stdin',
      );
    }
  } else if (rest.length > 0) {
    throw new ConfigError(`unknown command "${rest[0]}" (see --help)`);
  }
  return {
    command,
    config: values.config,
    listen: values.listen,
    upstream: values.upstream,
    tlsCert: values['tls-cert'],
    tlsKey: values['tls-key'],
    clientTls: values['client-tls'],
    httpListen: values['http-listen'],
    workers: values.workers,
    iterations: values.iterations,
    user: values.user,
    passwordEnv: values['password-env'],
    database: values.database,
    json: values.json,
    failOn: values['fail-on'],
    logLevel: values['log-level'],
    sql: rest,
  };
}

/** The config file, validated, with --log-level applied. */
function readRawConfig(args: Args): RawConfig {
  const raw = args.config ? readConfigFile(args.config) : {};
  if (args.logLevel) raw.log = { ...raw.log, level: args.logLevel as never };
  return raw;
}

function loadConfig(args: Args): ProxyConfig {
  return resolveConfig(readRawConfig(args), args);
}

async function runCheck(args: Args): Promise<number> {
  const config = loadConfig(args);
  await loadParser();
  const policy = createPolicy(config.policy);
  const sql = args.sql.length > 0 ? args.sql.join(' ') : readFileSync(0, 'utf8');
  const decision = policy.classify(sql);
  process.stdout.write(formatCheckReport(sql, decision) + '\n');
  return decision.allowed ? 0 : 1;
}

async function runHashPassword(args: Args): Promise<number> {
  const iterations = args.iterations === undefined ? 4096 : Number(args.iterations);
  if (!Number.isInteger(iterations) || iterations < 4096 || iterations > 10_000_000) {
    throw new ConfigError('--iterations: a whole number from 4096 to 10000000');
  }
  const { readPassword } = await import('./auth/read-password.js');
  const { createScramVerifier } = await import('./auth/scram.js');
  const password = await readPassword();
  if (password === '') throw new ConfigError('empty password');
  process.stdout.write(createScramVerifier(password, { iterations }) + '\n');
  return 0;
}

async function runDoctorCommand(args: Args): Promise<number> {
  const config = loadConfig(args);
  if (!config.upstream) {
    throw new ConfigError('doctor needs an upstream: --upstream, PGHOST or upstream in the config');
  }
  const { runDoctor, parseSeverity, DEFAULT_FAIL_ON } = await import('./doctor/index.js');
  const failOn = args.failOn ? parseSeverity(args.failOn) : DEFAULT_FAIL_ON;
  const user = args.user ?? process.env.PGUSER ?? userInfo().username;
  let password: string | undefined;
  if (args.passwordEnv) {
    password = process.env[args.passwordEnv];
    if (password === undefined) throw new ConfigError(`--password-env: ${args.passwordEnv} is not set`);
  }
  return runDoctor({
    config,
    upstream: config.upstream,
    user,
    password,
    database: args.database ?? process.env.PGDATABASE ?? user,
    json: args.json === true,
    failOn,
    out: process.stdout,
  });
}

async function runProxy(args: Args): Promise<void> {
  if (cluster.isWorker && process.env[WORKER_INDEX_ENV] !== undefined) {
    // A worker the primary forked: it gets the configuration from the primary.
    const { runWorker } = await import('./cluster/worker.js');
    return runWorker({ resolve: (raw) => resolveConfig(raw, args) });
  }
  const raw = readRawConfig(args);
  const config = resolveConfig(raw, args);
  if (config.workers > 1) return runPrimary(args, raw, config);
  const logger = createLogger(config.logLevel);
  // SIGHUP's default action ends the process: take it over before anything slow
  // (the embedded PostgreSQL) starts; it reloads once the server exists.
  const hooks: { reload?: () => void } = {};
  process.on('SIGHUP', () => {
    logger.info(
      { signal: 'SIGHUP' },
      hooks.reload ? 'signal received: reloading' : 'signal received before start: ignored',
    );
    hooks.reload?.();
  });
  await loadParser();
  const policy = createPolicy(config.policy);

  let upstream: UpstreamTarget;
  let stopEmbedded: (() => Promise<void>) | undefined;
  let banner: ((addr: { host: string; port: number }) => string) | undefined;
  if (config.upstream) {
    upstream = config.upstream;
  } else {
    ({ upstream, stop: stopEmbedded, banner } = await startEmbeddedUpstream(config, logger));
  }

  const metrics = new Metrics({
    defaultMetrics: config.http !== undefined,
    decisionCacheStats: () => policy.cacheStats(),
  });
  let server: ProxyServer;
  try {
    server = new ProxyServer({ config, upstream, policy, logger, metrics });
  } catch (err) {
    await stopEmbedded?.();
    throw err;
  }
  let addr: { host: string; port: number };
  try {
    addr = await server.listen();
  } catch (err) {
    await stopEmbedded?.();
    throw err;
  }
  logger.info(
    {
      event: 'listening',
      listen: `${addr.host}:${addr.port}`,
      upstream: describeTarget(upstream),
      upstream_sslmode: upstream.tls.sslmode,
      client_tls: config.clientTls.mode,
      certificate: server.tlsCertificate,
      auth: config.auth.mode,
      version: VERSION,
    },
    'listening',
  );
  /**
   * SIGHUP and /admin/reload: the config file read again (policy, limits, log
   * level, TLS and users settings for new connections and statements; an invalid
   * file is refused and everything old kept), then certificates, the users file
   * and upstream password files read again.
   */
  const reloadAll = (): { ok: boolean; errors: string[] } => {
    const errors: string[] = [];
    if (args.config) {
      try {
        const next = loadConfig(args);
        const applied = server.applyConfig(next, createPolicy(next.policy));
        errors.push(...applied.errors);
      } catch (err) {
        const message = (err as Error).message;
        logger.error(
          { event: 'reload_failed', part: 'config', err: message },
          'new configuration refused; keeping the old one',
        );
        errors.push(`config: ${message}`);
      }
    }
    errors.push(...server.reload().errors);
    return { ok: errors.length === 0, errors };
  };
  let http: { close(): Promise<void> } | undefined;
  if (config.http) {
    try {
      http = await startHttpServer({
        listen: config.http.listen,
        metrics,
        logger,
        ready: cacheReadiness(() => server.readiness(), 2000),
        admin: config.http.admin ? { enabled: true, reload: () => reloadAll() } : undefined,
      });
    } catch (err) {
      await server.shutdown(0);
      await stopEmbedded?.();
      throw err;
    }
  }
  if (banner) process.stderr.write(banner(addr));
  warnAboutUpstreamCredentials(config, upstream, logger);

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now');
      await stopEmbedded?.().catch(() => undefined);
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'signal received');
    await server.shutdown();
    await http?.close();
    await stopEmbedded?.();
    logger.info({ event: 'stopped' }, 'stopped');
    logger.flush();
    process.exitCode = 0;
    setTimeout(() => process.exit(0), 200).unref();
  };
  hooks.reload = () => void reloadAll();
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
}

/** The embedded PostgreSQL with demo data (no upstream configured), and the banner that says how to connect. */
async function startEmbeddedUpstream(
  config: ProxyConfig,
  logger: Logger,
): Promise<{
  upstream: UpstreamTarget;
  stop: () => Promise<void>;
  banner: (addr: { host: string; port: number }) => string;
}> {
  const { startEmbedded } = await import('./embedded/embedded.js');
  const { DEMO_DATABASE, DEMO_PASSWORD, DEMO_USER } = await import('./embedded/demo-schema.js');
  logger.info(
    { dataDir: config.embedded.dataDir },
    'no upstream configured: starting the embedded PostgreSQL',
  );
  const embedded = await startEmbedded({ ...config.embedded, logger, demo: true });
  return {
    upstream: {
      host: embedded.host,
      port: embedded.port,
      tls: { sslmode: 'disable', sslnegotiation: 'postgres' },
    },
    stop: embedded.stop,
    banner: (addr) =>
      [
        '',
        `pg-readonly-proxy is listening on ${addr.host}:${addr.port}, in front of an embedded PostgreSQL with demo data.`,
        'Connect with:',
        '',
        `  psql "postgresql://${DEMO_USER}:${DEMO_PASSWORD}@${hostForUrl(addr.host)}:${addr.port}/${DEMO_DATABASE}"`,
        '',
        'Reads work; writes are refused. Press Ctrl-C to stop.',
        '',
      ].join('\n'),
  };
}

/**
 * `workers` > 1: this process is the primary of a cluster (src/cluster/). It
 * starts the embedded PostgreSQL if there is no upstream, forks the workers,
 * serves the HTTP endpoint, and coordinates reloads and shutdown.
 */
async function runPrimary(args: Args, raw: RawConfig, config: ProxyConfig): Promise<void> {
  const logger = createLogger(config.logLevel, logDestination({ fd: 1 }, { shared: true })).child({
    role: 'primary',
  });
  const { runPrimary: run } = await import('./cluster/primary.js');
  let banner: ((addr: { host: string; port: number }) => string) | undefined;
  await run({
    raw,
    config,
    logger,
    reread: args.config
      ? () => {
          const next = readRawConfig(args);
          return { raw: next, config: resolveConfig(next, args) };
        }
      : undefined,
    startEmbedded: async () => {
      const embedded = await startEmbeddedUpstream(config, logger);
      banner = embedded.banner;
      return embedded;
    },
    onListening: (addr, upstream) => {
      if (banner) process.stderr.write(banner(addr));
      warnAboutUpstreamCredentials(config, upstream, logger);
    },
  });
}

/**
 * Proxy-managed users' upstream passwords go to whatever answers at the upstream
 * address: without a verified certificate, a man in the middle could ask for them.
 */
function warnAboutUpstreamCredentials(config: ProxyConfig, upstream: UpstreamTarget, logger: Logger): void {
  if (config.auth.mode !== 'proxy') return;
  const local = upstream.host.startsWith('/') || ['127.0.0.1', '::1', 'localhost'].includes(upstream.host);
  const verified = upstream.tls.sslmode === 'verify-ca' || upstream.tls.sslmode === 'verify-full';
  if (local || verified) return;
  logger.warn(
    { event: 'config_warning', upstream_sslmode: upstream.tls.sslmode },
    'proxy-managed users log in upstream without a verified server certificate: a man in the middle could collect the upstream passwords. Use upstream sslmode verify-full (and require_auth: [scram-sha-256]).',
  );
}

function hostForUrl(host: string): string {
  if (host === '0.0.0.0' || host === '::') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}

/**
 * V8 keeps the WebAssembly SQL parser in its baseline tier (Liftoff): its
 * optimizing tier would spend ~110 MiB of memory, for good, to make the
 * parser ~13 % faster, and with the decision cache the parser runs only for
 * query strings of a new shape. Must run before the parser is compiled.
 */
v8.setFlagsFromString('--liftoff-only');

async function main(): Promise<void> {
  let args: ReturnType<typeof parseCli>;
  try {
    args = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`pg-readonly-proxy: ${(err as Error).message}\n`);
    process.exit(2);
  }
  if (args === 'help') return void process.stdout.write(HELP);
  if (args === 'version') return void process.stdout.write(`${VERSION}\n`);
  try {
    if (args.command === 'check') process.exitCode = await runCheck(args);
    else if (args.command === 'hash-password') process.exitCode = await runHashPassword(args);
    else if (args.command === 'doctor') process.exitCode = await runDoctorCommand(args);
    else await runProxy(args);
  } catch (err) {
    const message = err instanceof ConfigError ? err.message : ((err as Error).stack ?? String(err));
    process.stderr.write(`pg-readonly-proxy: ${message}\n`);
    process.exit(err instanceof ConfigError ? 2 : 1);
  }
}

await main();
