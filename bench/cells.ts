/**
 * The cells: what is measured, one target at a time.
 *
 *   select-<mode>-c<N>   pgbench -S (point selects by primary key) in -M simple,
 *                        extended or prepared, N clients: TPS, average and p99
 *                        latency (from pgbench's per-transaction log)
 *   connect-c8           pgbench -C -S -M simple, 8 clients: a new connection
 *                        (and SCRAM login) per transaction: connections/s
 *   stream-select        SELECT * of the streamed table: time to last byte
 *   stream-copy          COPY (SELECT * ...) TO STDOUT of the same rows
 *   stream-10gb          SELECT repeat('x', 1000) FROM generate_series(1, 10000000)
 *
 * Every cell also measures the process between client and server (proxy or
 * pgbouncer): its CPU time and its peak resident memory.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { ProcessWatch, type ProcessCost } from './proc.js';
import { run, start, stop, waitExit } from './exec.js';
import { ROOT } from './setup.js';
import type { StreamResult } from './stream-client.js';
import type { Target } from './targets.js';

export type Group = 'select' | 'connect' | 'stream';

/** One measurement of one cell on one target. Units are in the names. */
export type Metrics = Record<string, number | undefined>;

export interface Context {
  pgbench: string;
  tmp: string;
  duration: number;
  streamTable: string;
  rows: number;
}

export interface Cell {
  name: string;
  group: Group;
  /** The row label in the report. */
  label: string;
  defaultTargets: readonly string[];
  /** Run in the first round only (the 10 GB stream). */
  once?: boolean;
  measure(ctx: Context, target: Target): Promise<Metrics>;
}

function costMetrics(cost: ProcessCost | undefined, statements: number): Metrics {
  if (!cost) return {};
  const peak = Math.max(cost.peakRssBytes, cost.hwmBytes ?? 0);
  return {
    processes: cost.processes,
    cpu_s: cost.cpuSeconds,
    cpu_ms_per_1k: statements > 0 ? (cost.cpuSeconds * 1e6) / statements : undefined,
    peak_rss_mib: peak / 2 ** 20,
    peak_rss_sampled_mib: cost.peakRssBytes / 2 ** 20,
    hwm_mib: cost.hwmBytes === undefined ? undefined : cost.hwmBytes / 2 ** 20,
  };
}

function clientEnv(target: Target): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('PG')) delete env[k];
  return { ...env, PGPASSWORD: target.password, PGSSLMODE: 'disable', PGGSSENCMODE: 'disable' };
}

function number(text: string, re: RegExp): number | undefined {
  const m = re.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** Transaction latencies in µs from pgbench's per-transaction logs (third field). */
function readLatencies(dir: string): Float64Array {
  const values: number[] = [];
  for (const file of readdirSync(dir)) {
    const text = readFileSync(path.join(dir, file), 'latin1');
    let start = 0;
    while (start < text.length) {
      let end = text.indexOf('\n', start);
      if (end < 0) end = text.length;
      // client_id transaction_no time script_no time_epoch time_us
      const a = text.indexOf(' ', start);
      const b = text.indexOf(' ', a + 1);
      const c = text.indexOf(' ', b + 1);
      if (a > 0 && b > a && c > b && c < end) values.push(Number(text.slice(b + 1, c)));
      start = end + 1;
    }
  }
  return Float64Array.from(values).sort();
}

function quantile(sorted: Float64Array, q: number): number | undefined {
  if (sorted.length === 0) return undefined;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}

async function pgbenchCell(
  ctx: Context,
  target: Target,
  opts: { mode: string; clients: number; connect: boolean; duration?: number; log?: boolean },
): Promise<Metrics> {
  const dir = mkdtempSync(path.join(ctx.tmp, 'pgbench-'));
  const log = opts.log ?? true;
  const args = [
    '-n', // no VACUUM before the run (the proxy refuses it, and nothing was written)
    '-S',
    '-M',
    opts.mode,
    '-c',
    String(opts.clients),
    '-j',
    String(opts.clients >= 2 ? 2 : 1),
    '-T',
    String(opts.duration ?? ctx.duration),
    ...(opts.connect ? ['-C'] : []),
    ...(log ? ['--log', `--log-prefix=${path.join(dir, 'tx')}`] : []),
    '-h',
    target.host,
    '-p',
    String(target.port),
    '-U',
    target.user,
    target.database,
  ];
  const watch = target.pid ? new ProcessWatch(target.pid) : undefined;
  try {
    watch?.start();
    const r = await run(ctx.pgbench, args, { env: clientEnv(target), cwd: dir });
    const cost = watch?.stop();
    const out = r.stdout;
    const transactions = number(out, /number of transactions actually processed: (\d+)/);
    const failed = number(out, /number of failed transactions: (\d+)/) ?? 0;
    if (r.code !== 0 || transactions === undefined || transactions === 0 || failed > 0) {
      const why = r.signal ? `signal ${r.signal}` : `exit code ${r.code}`;
      const proxyLog = target.logTail();
      throw new Error(
        `pgbench on ${target.name} failed (${why}, ${failed} failed transactions):\n${`${r.stdout}\n${r.stderr}`.trim().split('\n').slice(-15).join('\n')}` +
          (proxyLog ? `\n--- ${target.name} log:\n${proxyLog}` : ''),
      );
    }
    const tps = number(out, /^tps = ([\d.]+)/m);
    const metrics: Metrics = { tps, transactions, ...costMetrics(cost, transactions) };
    if (opts.connect) metrics.conn_ms = number(out, /average connection time = ([\d.]+) ms/);
    if (log) {
      const lat = readLatencies(dir);
      if (lat.length > 0) {
        let sum = 0;
        for (const v of lat) sum += v;
        metrics.lat_avg_ms = sum / lat.length / 1000;
        metrics.lat_p50_ms = quantile(lat, 0.5)! / 1000;
        metrics.lat_p99_ms = quantile(lat, 0.99)! / 1000;
      }
    }
    return metrics;
  } finally {
    watch?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Short pgbench runs that are not recorded: JIT, caches and pools warmed up.
 * Returns what went wrong, if anything (the cells that follow report it fully).
 */
export async function warmUp(ctx: Context, target: Target, seconds: number): Promise<string | undefined> {
  for (const mode of ['simple', 'prepared']) {
    try {
      await pgbenchCell(ctx, target, { mode, clients: 8, connect: false, duration: seconds, log: false });
    } catch (err) {
      return (err as Error).message.split('\n')[0];
    }
  }
  return undefined;
}

/**
 * One query through the stream client (a process of its own). The client logs
 * in, says so, and sends its query only when told: the window measured on the
 * proxy is the query alone.
 */
async function streamCell(ctx: Context, target: Target, sql: string): Promise<Metrics> {
  const child = start(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(ROOT, 'bench', 'stream-client.ts'),
      target.host,
      String(target.port),
      target.user,
      target.database,
      sql,
    ],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...clientEnv(target), BENCH_PASSWORD: target.password },
      cwd: ROOT,
    },
  );
  let stdout = '';
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const watch = target.pid ? new ProcessWatch(target.pid) : undefined;
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout!.setEncoding('utf8').on('data', (c: string) => {
        stdout += c;
        if (stdout.includes('"ready"')) resolve();
      });
      void exited.then(() => reject(new Error(`stream client on ${target.name} failed: ${stderr.trim()}`)));
    });
    stdout = '';
    watch?.start();
    child.stdin!.on('error', () => undefined);
    child.stdin!.end('go\n');
    const code = await exited;
    const cost = watch?.stop();
    if (code !== 0)
      throw new Error(`stream client on ${target.name} failed: ${stderr.trim()}\n${target.logTail()}`);
    const r = JSON.parse(stdout.trim().split('\n').pop()!) as StreamResult;
    return {
      seconds: r.seconds,
      mb_per_s: r.bytes / r.seconds / 1e6,
      bytes: r.bytes,
      rows: r.rows,
      reads: r.reads,
      client_cpu_s: r.clientUserSeconds + r.clientSystemSeconds,
      client_sys_s: r.clientSystemSeconds,
      ...costMetrics(cost, 0),
      cpu_s_per_gb: cost ? cost.cpuSeconds / (r.bytes / 1e9) : undefined,
    };
  } finally {
    watch?.stop();
    if (!(await waitExit(child, 0))) await stop(child, 'SIGKILL', 0);
  }
}

const CORE = ['direct', 'pgbouncer', 'proxy'] as const;

/** Every cell, in the order a round runs them. */
export function allCells(rows: number): Cell[] {
  const rowText =
    rows >= 1e6 && rows % 1e6 === 0
      ? `${rows / 1e6}M`
      : rows >= 1e3 && rows % 1e3 === 0
        ? `${rows / 1e3}k`
        : String(rows);
  const cells: Cell[] = [];
  for (const mode of ['simple', 'extended', 'prepared']) {
    for (const clients of [1, 8, 32]) {
      cells.push({
        name: `select-${mode}-c${clients}`,
        group: 'select',
        label: `-M ${mode}, ${clients} client${clients > 1 ? 's' : ''}`,
        defaultTargets: CORE,
        measure: (ctx, t) => pgbenchCell(ctx, t, { mode, clients, connect: false }),
      });
    }
  }
  cells.push({
    name: 'connect-c8',
    group: 'connect',
    label: '-C -M simple, 8 clients',
    defaultTargets: [...CORE, 'proxy-managed'],
    measure: (ctx, t) => pgbenchCell(ctx, t, { mode: 'simple', clients: 8, connect: true }),
  });
  cells.push({
    name: 'stream-select',
    group: 'stream',
    label: `SELECT * of ${rowText} rows`,
    defaultTargets: CORE,
    measure: (ctx, t) => streamCell(ctx, t, `SELECT * FROM ${ctx.streamTable}`),
  });
  cells.push({
    name: 'stream-copy',
    group: 'stream',
    label: `COPY (SELECT * ...) TO STDOUT, ${rowText} rows`,
    defaultTargets: CORE,
    measure: (ctx, t) => streamCell(ctx, t, `COPY (SELECT * FROM ${ctx.streamTable}) TO STDOUT`),
  });
  cells.push({
    name: 'stream-10gb',
    group: 'stream',
    label: "10 GB: SELECT repeat('x', 1000) × 10M",
    defaultTargets: CORE,
    once: true,
    measure: (ctx, t) => streamCell(ctx, t, "SELECT repeat('x', 1000) FROM generate_series(1, 10000000)"),
  });
  return cells;
}
