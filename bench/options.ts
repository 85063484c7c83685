/**
 * The benchmark's command line: the mode (full or --short), what to run
 * (--cells, --targets) and how long, and the proxy variants to compare.
 */
import { parseArgs } from 'node:util';

export const USAGE = `npm run bench -- [options]

Measures pg-readonly-proxy beside a direct connection and pgbouncer, in one run,
against one embedded PostgreSQL, and reports medians and ratios.

Modes:
  (default)              full: 10 s per pgbench cell, 3 rounds, 1M-row streams, the 10 GB stream
  --short                3 s per cell, 1 round, 100k-row streams, no 10 GB stream

Options:
  --duration S           seconds per pgbench cell
  --rounds N             rounds (targets interleaved within each round; medians reported)
  --cells LIST           cells to run: names, prefixes or globs, comma-separated
                         (e.g. select-simple, 'select-*-c32', connect, stream)
  --targets LIST         targets for every cell: direct, pgbouncer, proxy, proxy-managed,
                         and variants by name (proxy:NAME)
  --targets CELLS=LIST   targets for the cells matching CELLS only (repeatable)
  --rows N               rows of the streamed table
  --scale N              pgbench scale factor (pgbench -i -s)
  --big-stream / --no-big-stream   run the 10 GB stream or not (default: full mode only)
  --proxy-config FILE    YAML merged over the proxy's benchmark config (every proxy target)
  --proxy-arg ARG        an extra command-line argument for the proxy (repeatable;
                         write it as --proxy-arg=--flag=value)
  --node-arg ARG         a Node.js flag for the proxy processes (repeatable, written
                         --node-arg=--flag=value); by default the flags npm start uses
  --workers N|auto       shorthand for --proxy-arg=--workers=N (the proxy's worker
                         processes; CPU and memory are summed over all of them)
  --variant NAME=FILE    an extra target proxy:NAME: the proxy with FILE merged over
                         its config (repeatable); it runs wherever proxy runs
  --no-build             use dist/ as it is, even if src/ is newer
  --keep                 keep the temporary directory (logs, data directory)
  --label TEXT           a label for this run, shown in the report
  -h, --help             this text
`;

export interface Variant {
  name: string;
  file: string;
}

export interface Options {
  mode: 'full' | 'short';
  duration: number;
  rounds: number;
  rows: number;
  scale: number;
  bigStream: boolean;
  cells: string[] | undefined;
  /** Targets for every cell, replacing each cell's default set. */
  targets: string[] | undefined;
  /** Targets per cell pattern, applied after `targets`. */
  cellTargets: Array<{ pattern: string; targets: string[] }>;
  proxyConfig: string | undefined;
  proxyArgs: string[];
  /** Node.js flags for the proxy; undefined: those of package.json's start script. */
  nodeArgs: string[] | undefined;
  variants: Variant[];
  build: boolean;
  keep: boolean;
  label: string | undefined;
}

export class UsageError extends Error {}

function positiveInt(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${name}: a whole number of 1 or more`);
  return n;
}

function list(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

export function parseOptions(argv: string[]): Options | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    allowNegative: true,
    options: {
      short: { type: 'boolean' },
      duration: { type: 'string' },
      rounds: { type: 'string' },
      cells: { type: 'string' },
      targets: { type: 'string', multiple: true },
      rows: { type: 'string' },
      scale: { type: 'string' },
      'big-stream': { type: 'boolean' },
      'proxy-config': { type: 'string' },
      'proxy-arg': { type: 'string', multiple: true },
      'node-arg': { type: 'string', multiple: true },
      workers: { type: 'string' },
      variant: { type: 'string', multiple: true },
      build: { type: 'boolean', default: true },
      keep: { type: 'boolean' },
      label: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return 'help';
  const short = values.short === true;
  let targets: string[] | undefined;
  const cellTargets: Options['cellTargets'] = [];
  for (const spec of values.targets ?? []) {
    const eq = spec.indexOf('=');
    if (eq < 0) targets = list(spec);
    else cellTargets.push({ pattern: spec.slice(0, eq), targets: list(spec.slice(eq + 1)) });
  }
  const proxyArgs = [...(values['proxy-arg'] ?? [])];
  if (values.workers !== undefined) {
    const n = values.workers === 'auto' ? 'auto' : positiveInt('workers', values.workers, 1);
    proxyArgs.push(`--workers=${n}`);
  }
  const variants: Variant[] = [];
  for (const spec of values.variant ?? []) {
    const m = /^([A-Za-z0-9_.-]+)=(.+)$/.exec(spec);
    if (!m) throw new UsageError(`--variant: NAME=FILE, got "${spec}"`);
    variants.push({ name: m[1]!, file: m[2]! });
  }
  return {
    mode: short ? 'short' : 'full',
    duration: positiveInt('duration', values.duration, short ? 3 : 10),
    rounds: positiveInt('rounds', values.rounds, short ? 1 : 3),
    rows: positiveInt('rows', values.rows, short ? 100_000 : 1_000_000),
    scale: positiveInt('scale', values.scale, 10),
    bigStream: values['big-stream'] ?? !short,
    cells: values.cells === undefined ? undefined : list(values.cells),
    targets,
    cellTargets,
    proxyConfig: values['proxy-config'],
    proxyArgs,
    nodeArgs: values['node-arg'],
    variants,
    build: values.build,
    keep: values.keep === true,
    label: values.label,
  };
}

/** A cell name matches a pattern equal to it, starting with it, or matching it as a glob (*). */
export function matchesCell(name: string, pattern: string): boolean {
  if (pattern.includes('*')) {
    const re = new RegExp(`^${pattern.split('*').map(escapeRegExp).join('.*')}$`);
    return re.test(name);
  }
  return name === pattern || name.startsWith(pattern);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.+?^${}()|[\]\\]/g, '\\$&');
}
