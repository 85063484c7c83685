/**
 * The targets measured side by side, all in front of the same PostgreSQL:
 *
 *   direct          PostgreSQL itself
 *   pgbouncer       pgbouncer in session mode, SCRAM towards clients and server
 *   proxy           pg-readonly-proxy (dist/cli.js), passthrough logins, its
 *                   defaults otherwise (the audit log goes to a file)
 *   proxy-managed   the proxy logging clients in itself (auth.mode: proxy)
 *   proxy:NAME      the proxy with a variant config (--variant NAME=FILE)
 */
import {
  closeSync,
  openSync,
  chownSync,
  readFileSync,
  writeFileSync,
  mkdirSync,
  truncateSync,
} from 'node:fs';
import { connect } from 'node:net';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import YAML from 'yaml';
import { freePort } from '../src/embedded/embedded.js';
import { runOk, start, stop } from './exec.js';
import type { Database } from './setup.js';
import { ROOT } from './setup.js';

export interface Target {
  name: string;
  kind: 'direct' | 'pgbouncer' | 'proxy';
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  /** The process between client and server, whose CPU and memory are measured. */
  pid: number | undefined;
  /** Files that grow with every statement (the audit log), emptied between cells. */
  scratchFiles: string[];
  /** Whether the process is still running (false once it has died). */
  alive(): boolean;
  /** Its log, for error messages. */
  logTail(): string;
  stop(): Promise<void>;
}

export const BASE_TARGETS = ['direct', 'pgbouncer', 'proxy', 'proxy-managed'] as const;

function tail(file: string, lines = 20): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** Resolves once something accepts TCP connections on host:port. */
async function waitForPort(
  host: string,
  port: number,
  child: ChildProcess,
  what: string,
  log: string,
): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `${what} exited before it listened (${child.exitCode ?? child.signalCode}):\n${tail(log)}`,
      );
    }
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline)
      throw new Error(`${what} did not listen on ${host}:${port} within 30 s:\n${tail(log)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function directTarget(db: Database): Target {
  return {
    name: 'direct',
    kind: 'direct',
    host: db.host,
    port: db.port,
    user: db.user,
    password: db.password,
    database: db.database,
    pid: undefined,
    scratchFiles: [],
    alive: () => true,
    logTail: () => '',
    stop: async () => undefined,
  };
}

async function postgresIds(): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const uid = Number((await runOk('id', ['-u', 'postgres'])).trim());
  const gid = Number((await runOk('id', ['-g', 'postgres'])).trim());
  return { uid, gid };
}

/**
 * pgbouncer refuses to run as root: as root it runs as the `postgres` OS user
 * (which the embedded PostgreSQL already uses), its files owned by that user.
 * Its auth_file holds the role's SCRAM verifier from pg_authid, so it checks
 * clients with SCRAM and logs in upstream with SCRAM (using the client's proof).
 */
export async function startPgbouncer(opts: { bin: string; dir: string; db: Database }): Promise<Target> {
  const { db } = opts;
  const dir = path.join(opts.dir, 'pgbouncer');
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const authFile = path.join(dir, 'userlist.txt');
  const ini = path.join(dir, 'pgbouncer.ini');
  const log = path.join(dir, 'pgbouncer.log');
  writeFileSync(authFile, `"${db.user}" "${db.verifier}"\n`, { mode: 0o600 });
  writeFileSync(
    ini,
    [
      '[databases]',
      `${db.database} = host=${db.host} port=${db.port} dbname=${db.database}`,
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${authFile}`,
      'pool_mode = session',
      'max_client_conn = 500',
      'default_pool_size = 64',
      // pgbench and the stream client send nothing pgbouncer would refuse; JDBC-style
      // extra_float_digits is accepted as most deployments do.
      'ignore_startup_parameters = extra_float_digits',
      '',
    ].join('\n'),
  );
  const ids = await postgresIds();
  if (ids) {
    chownSync(dir, ids.uid, ids.gid);
    for (const f of [authFile, ini]) chownSync(f, ids.uid, ids.gid);
  }
  const fd = openSync(log, 'a');
  let child: ChildProcess;
  try {
    child = start(opts.bin, [ini], {
      stdio: ['ignore', fd, fd],
      ...(ids ? { uid: ids.uid, gid: ids.gid } : {}),
    });
  } finally {
    closeSync(fd);
  }
  await waitForPort('127.0.0.1', port, child, 'pgbouncer', log);
  return {
    name: 'pgbouncer',
    kind: 'pgbouncer',
    host: '127.0.0.1',
    port,
    user: db.user,
    password: db.password,
    database: db.database,
    pid: child.pid,
    scratchFiles: [],
    alive: () => child.exitCode === null && child.signalCode === null,
    logTail: () => tail(log),
    // SIGTERM: immediate shutdown (SIGINT would wait for clients).
    stop: () => stop(child, 'SIGTERM'),
  };
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `over` merged into `base`: objects key by key, anything else replaced. */
export function deepMerge(base: Json, over: Json): Json {
  const out: Json = { ...base };
  for (const [k, v] of Object.entries(over)) {
    out[k] = isObject(v) && isObject(out[k]) ? deepMerge(out[k], v) : v;
  }
  return out;
}

export function readYaml(file: string): Json {
  const parsed: unknown = YAML.parse(readFileSync(file, 'utf8'));
  if (parsed === null || parsed === undefined) return {};
  if (!isObject(parsed)) throw new Error(`${file}: not a YAML mapping`);
  return parsed;
}

export interface ProxyOptions {
  name: string;
  dir: string;
  db: Database;
  /** Proxy-managed logins: the client's user, password and the password's SCRAM verifier. */
  managed?: { user: string; password: string; verifier: string };
  /** YAML files merged over the benchmark's config, in order. */
  configFiles: string[];
  args: string[];
  /** Node.js flags (before dist/cli.js). */
  nodeArgs: string[];
}

/** Environment variable that hands proxy-managed users' upstream password to the proxy. */
const UPSTREAM_PASSWORD_ENV = 'BENCH_UPSTREAM_PASSWORD';

/**
 * The built proxy (dist/cli.js) as a child process, its JSON logs and audit log
 * in files of its own (a pipe nobody reads would block it).
 */
export async function startProxy(opts: ProxyOptions): Promise<Target> {
  const { db } = opts;
  const dir = path.join(opts.dir, opts.name.replace(/[^A-Za-z0-9_.-]/g, '_'));
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const log = path.join(dir, 'proxy.log');
  const audit = path.join(dir, 'audit.log');
  let config: Json = { audit: { file: audit } };
  if (opts.managed) {
    config = deepMerge(config, {
      auth: {
        mode: 'proxy',
        users: {
          [opts.managed.user]: {
            password: opts.managed.verifier,
            upstream_user: db.user,
            upstream_password_env: UPSTREAM_PASSWORD_ENV,
            databases: [db.database],
          },
        },
      },
    });
  }
  for (const file of opts.configFiles) config = deepMerge(config, readYaml(file));
  const configFile = path.join(dir, 'config.yaml');
  writeFileSync(configFile, YAML.stringify(config), { mode: 0o600 });
  const env: NodeJS.ProcessEnv = { ...process.env, [UPSTREAM_PASSWORD_ENV]: db.password };
  for (const k of Object.keys(env)) if (k.startsWith('PG')) delete env[k];
  const fd = openSync(log, 'a');
  let child: ChildProcess;
  try {
    child = start(
      process.execPath,
      [
        ...opts.nodeArgs,
        path.join(ROOT, 'dist', 'cli.js'),
        '--config',
        configFile,
        '--upstream',
        `postgres://${db.host}:${db.port}?sslmode=disable`,
        '--listen',
        `127.0.0.1:${port}`,
        ...opts.args,
      ],
      { stdio: ['ignore', fd, fd], env, cwd: ROOT },
    );
  } finally {
    closeSync(fd);
  }
  await waitForPort('127.0.0.1', port, child, opts.name, log);
  const auditFile =
    isObject(config.audit) && typeof config.audit.file === 'string' ? config.audit.file : audit;
  return {
    name: opts.name,
    kind: 'proxy',
    host: '127.0.0.1',
    port,
    user: opts.managed?.user ?? db.user,
    password: opts.managed?.password ?? db.password,
    database: db.database,
    pid: child.pid,
    scratchFiles: [auditFile],
    alive: () => child.exitCode === null && child.signalCode === null,
    logTail: () => tail(log),
    stop: () => stop(child, 'SIGTERM', 5000),
  };
}

/** Empties files that only grow (the audit log); the writer appends, so it carries on at 0. */
export function emptyScratch(t: Target): void {
  for (const f of t.scratchFiles) {
    try {
      truncateSync(f, 0);
    } catch {
      // not written yet
    }
  }
}

/** A SCRAM verifier for `password`, made by the proxy's own hash-password command. */
export async function hashPassword(password: string): Promise<string> {
  const out = await runOk(process.execPath, [path.join(ROOT, 'dist', 'cli.js'), 'hash-password'], {
    input: password,
  });
  return out.trim();
}
