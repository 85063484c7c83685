/**
 * npm run bench: pg-readonly-proxy measured beside a direct connection and
 * pgbouncer, in one run, against one embedded PostgreSQL 18. See bench/README.md.
 *
 * Progress goes to stderr; the report (markdown) to stdout and to
 * bench/results/latest.md, with a timestamped copy and the raw numbers as JSON.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { createLogger } from '../src/observability/logger.js';
import { allCells, warmUp, type Cell, type Context, type Metrics } from './cells.js';
import { killAllNow, run, stopAll } from './exec.js';
import { matchesCell, parseOptions, USAGE, UsageError, type Options } from './options.js';
import { medians, renderReport, type Meta, type Sample } from './report.js';
import {
  ensureBuild,
  findPgbench,
  findPgbouncer,
  ROOT,
  startDatabase,
  startNodeFlags,
  versionOf,
  type Database,
} from './setup.js';
import {
  BASE_TARGETS,
  directTarget,
  emptyScratch,
  hashPassword,
  startPgbouncer,
  startProxy,
  type Target,
} from './targets.js';

const say = (line: string): void => void process.stderr.write(`${line}\n`);

let interrupted: NodeJS.Signals | undefined;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (interrupted) {
      say(`${signal} again: exiting now`);
      process.exit(130);
    }
    interrupted = signal;
    say(`\n${signal}: stopping everything the benchmark started`);
    void stopAll();
  });
}

/**
 * Last resort if the run itself dies (an uncaught error): whatever it started is
 * killed, and the PostgreSQL (not a tracked child) told to shut down.
 */
let postmasterPidFile: string | undefined;
process.on('exit', () => {
  killAllNow();
  if (!postmasterPidFile) return;
  try {
    const pid = Number(readFileSync(postmasterPidFile, 'utf8').split('\n')[0]);
    if (Number.isInteger(pid) && pid > 0) process.kill(pid, 'SIGINT');
  } catch {
    // already stopped
  }
});

function checkInterrupted(): void {
  if (interrupted) throw new Error(`interrupted (${interrupted})`);
}

interface PlanItem {
  cell: Cell;
  targets: string[];
}

function plan(opts: Options): PlanItem[] {
  const variants = opts.variants.map((v) => `proxy:${v.name}`);
  const known = new Set<string>([...BASE_TARGETS, ...variants]);
  let cells = allCells(opts.rows).filter((c) => c.name !== 'stream-10gb' || opts.bigStream);
  if (opts.cells) {
    const patterns = opts.cells;
    cells = cells.filter((c) => patterns.some((p) => matchesCell(c.name, p)));
    if (cells.length === 0) {
      const names = allCells(opts.rows).map((c) => c.name);
      throw new UsageError(`--cells ${patterns.join(',')} matches no cell; the cells: ${names.join(', ')}`);
    }
  }
  return cells
    .map((cell) => {
      let targets = opts.targets ?? [
        ...cell.defaultTargets,
        ...(cell.defaultTargets.includes('proxy') ? variants : []),
      ];
      for (const ct of opts.cellTargets) if (matchesCell(cell.name, ct.pattern)) targets = ct.targets;
      for (const t of targets) {
        if (!known.has(t)) throw new UsageError(`unknown target "${t}" (known: ${[...known].join(', ')})`);
      }
      return { cell, targets: [...new Set(targets)] };
    })
    .filter((p) => p.targets.length > 0);
}

function rotate<T>(list: T[], by: number): T[] {
  const k = by % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}

function describe(m: Metrics): string {
  const parts: string[] = [];
  const f = (v: number | undefined, d: number): string => (v === undefined ? '–' : v.toFixed(d));
  if (m.tps !== undefined) parts.push(`${f(m.tps, 0)} tps`);
  if (m.lat_avg_ms !== undefined) parts.push(`avg ${f(m.lat_avg_ms, 3)} ms`, `p99 ${f(m.lat_p99_ms, 3)} ms`);
  if (m.conn_ms !== undefined) parts.push(`connect ${f(m.conn_ms, 2)} ms`);
  if (m.seconds !== undefined) parts.push(`${f(m.seconds, 3)} s`, `${f(m.mb_per_s, 0)} MB/s`);
  if (m.cpu_ms_per_1k !== undefined) parts.push(`cpu ${f(m.cpu_ms_per_1k, 1)} ms/1k`);
  else if (m.cpu_s !== undefined) parts.push(`cpu ${f(m.cpu_s, 2)} s`);
  if (m.peak_rss_mib !== undefined) parts.push(`rss ${f(m.peak_rss_mib, 0)} MiB`);
  return parts.join(', ');
}

async function gitDescription(): Promise<string> {
  const head = await run('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT }).catch(() => undefined);
  if (!head || head.code !== 0) return 'no git';
  const dirty = await run('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: ROOT });
  return `git ${head.stdout.trim()}${dirty.stdout.trim() ? ', with uncommitted changes' : ''}`;
}

/**
 * The PostgreSQL is stopped unless it is already gone (Ctrl-C reaches it too);
 * one that started but was never handed back (setup failed) is stopped by pid.
 */
async function stopDatabase(db: Database | undefined, dataDir: string): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return;
  if (db) {
    await Promise.race([db.server.stop(), new Promise((r) => setTimeout(r, 15_000))]);
    return;
  }
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) return;
  try {
    process.kill(pid, 'SIGINT');
    for (let i = 0; i < 150; i++) {
      await new Promise((r) => setTimeout(r, 100));
      process.kill(pid, 0);
    }
  } catch {
    // gone
  }
}

async function main(): Promise<number> {
  let opts: Options;
  try {
    const parsed = parseOptions(process.argv.slice(2));
    if (parsed === 'help') {
      process.stdout.write(USAGE);
      return 0;
    }
    opts = parsed;
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  let items: PlanItem[];
  try {
    items = plan(opts);
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n`);
    return 2;
  }
  const needed = new Set(items.flatMap((p) => p.targets));
  const startedAt = new Date();
  const t0 = Date.now();
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'pgro-bench-'));
  chmodSync(tmp, 0o755); // the postgres OS user must reach the data directory
  const logger = createLogger('warn', pino.destination({ fd: 2, sync: true }));
  const targets = new Map<string, Target>();
  let db: Database | undefined;
  let failed = false;
  try {
    say(
      `bench: ${opts.mode} mode, ${items.length} cells, targets ${[...needed].join(', ')}; temporary files in ${tmp}`,
    );
    const pgbench = await findPgbench(say);
    const pgbouncer = needed.has('pgbouncer') ? await findPgbouncer(say) : undefined;
    await ensureBuild(opts.build, say);
    checkInterrupted();
    postmasterPidFile = path.join(tmp, 'data', 'postmaster.pid');
    db = await startDatabase({ dir: tmp, logger, scale: opts.scale, rows: opts.rows, pgbench, say });
    checkInterrupted();

    say('starting the targets');
    if (needed.has('direct')) targets.set('direct', directTarget(db));
    if (pgbouncer) targets.set('pgbouncer', await startPgbouncer({ bin: pgbouncer, dir: tmp, db }));
    const proxyConfigs = opts.proxyConfig ? [opts.proxyConfig] : [];
    const nodeArgs = opts.nodeArgs ?? startNodeFlags();
    if (needed.has('proxy')) {
      targets.set(
        'proxy',
        await startProxy({
          name: 'proxy',
          dir: tmp,
          db,
          configFiles: proxyConfigs,
          args: opts.proxyArgs,
          nodeArgs,
        }),
      );
    }
    if (needed.has('proxy-managed')) {
      const password = randomBytes(18).toString('base64url');
      const verifier = await hashPassword(password);
      targets.set(
        'proxy-managed',
        await startProxy({
          name: 'proxy-managed',
          dir: tmp,
          db,
          managed: { user: 'agent', password, verifier },
          configFiles: proxyConfigs,
          args: opts.proxyArgs,
          nodeArgs,
        }),
      );
    }
    for (const v of opts.variants) {
      const name = `proxy:${v.name}`;
      if (!needed.has(name)) continue;
      targets.set(
        name,
        await startProxy({
          name,
          dir: tmp,
          db,
          configFiles: [...proxyConfigs, v.file],
          args: opts.proxyArgs,
          nodeArgs,
        }),
      );
    }
    checkInterrupted();

    const ctx: Context = {
      pgbench,
      tmp,
      duration: opts.duration,
      streamTable: db.streamTable,
      rows: opts.rows,
    };
    const warm = 2;
    say(`warming up every target (${warm} s of -M simple and -M prepared, 8 clients)`);
    for (const t of targets.values()) {
      const problem = await warmUp(ctx, t, warm);
      checkInterrupted();
      if (problem) say(`  warm-up of ${t.name}: ${problem}`);
    }

    const samples: Sample[] = [];
    for (let round = 0; round < opts.rounds; round++) {
      say(`round ${round + 1} of ${opts.rounds}`);
      for (const { cell, targets: names } of items) {
        if (cell.once && round > 0) continue;
        for (const name of rotate(names, round)) {
          const t = targets.get(name)!;
          if (!t.alive()) throw new Error(`${name} is no longer running:\n${t.logTail()}`);
          emptyScratch(t);
          const metrics = await cell.measure(ctx, t);
          checkInterrupted();
          samples.push({ cell: cell.name, target: name, round: round + 1, metrics });
          say(`  ${cell.name.padEnd(22)} ${name.padEnd(14)} ${describe(metrics)}`);
        }
      }
    }

    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const cpus = os.cpus();
    const meta: Meta = {
      started: startedAt.toISOString(),
      runSeconds: (Date.now() - t0) / 1000,
      mode: opts.mode,
      partial:
        opts.cells !== undefined ||
        opts.targets !== undefined ||
        opts.cellTargets.length > 0 ||
        (opts.mode === 'full' && !opts.bigStream),
      label: opts.label,
      duration: opts.duration,
      rounds: opts.rounds,
      rows: opts.rows,
      scale: opts.scale,
      bigStream: opts.bigStream && items.some((p) => p.cell.name === 'stream-10gb'),
      machine: {
        cores: cpus.length,
        cpu: cpus[0]?.model.trim() ?? 'unknown',
        memoryGiB: Math.round(os.totalmem() / 2 ** 30),
        kernel: os.release(),
        loadAverage: loadAtStart,
      },
      versions: {
        node: process.version,
        postgres: db.version,
        pgbench: await versionOf(pgbench),
        pgbouncer: pgbouncer ? await versionOf(pgbouncer) : 'pgbouncer not run',
        proxy: pkg.version,
        git: await gitDescription(),
      },
      proxyArgs: opts.proxyArgs,
      nodeArgs: opts.nodeArgs ?? startNodeFlags(),
      proxyConfig: opts.proxyConfig,
      variants: opts.variants,
    };
    const cells = items.map((p) => p.cell);
    const report = renderReport(meta, cells, samples);
    const dir = path.join(ROOT, 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    const stamp = startedAt
      .toISOString()
      .replace(/:/g, '-')
      .replace(/\.\d+Z$/, 'Z');
    const json =
      JSON.stringify(
        {
          meta,
          plan: items.map((p) => ({
            cell: p.cell.name,
            label: p.cell.label,
            group: p.cell.group,
            targets: p.targets,
          })),
          samples,
          medians: Object.fromEntries(
            [...medians(samples)].map(([cell, m]) => [cell, Object.fromEntries(m)]),
          ),
        },
        null,
        2,
      ) + '\n';
    for (const base of [stamp, 'latest']) {
      writeFileSync(path.join(dir, `${base}.md`), report);
      writeFileSync(path.join(dir, `${base}.json`), json);
    }
    process.stdout.write(`\n${report}`);
    say(
      `\nwrote bench/results/latest.md, bench/results/${stamp}.md and .json (${((Date.now() - t0) / 60000).toFixed(1)} min)`,
    );
    return 0;
  } catch (err) {
    failed = true;
    say(`\nbench: ${interrupted ? `interrupted (${interrupted})` : (err as Error).message}`);
    return interrupted ? 130 : 1;
  } finally {
    say('stopping the targets and PostgreSQL');
    for (const t of [...targets.values()].reverse()) await t.stop().catch(() => undefined);
    await stopAll();
    await stopDatabase(db, path.join(tmp, 'data')).catch(() => undefined);
    postmasterPidFile = undefined;
    if (opts.keep) {
      say(`kept ${tmp} (logs of the proxy and pgbouncer, PostgreSQL's data directory)`);
    } else {
      rmSync(tmp, { recursive: true, force: true });
      if (failed && !interrupted) say('run again with --keep to keep the logs');
    }
  }
}

const loadAtStart = os.loadavg();
// Exit even if a library left a handle open.
process.exit(await main());
