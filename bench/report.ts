/**
 * From the raw per-round numbers to the report: medians per cell and target,
 * ratios of each proxy target to direct and to pgbouncer, as markdown tables.
 */
import type { Cell, Group, Metrics } from './cells.js';

export interface Sample {
  cell: string;
  target: string;
  round: number;
  metrics: Metrics;
}

export interface Meta {
  started: string;
  runSeconds: number;
  mode: 'full' | 'short';
  /** Not the default set of cells and targets: bench:table refuses it unless forced. */
  partial: boolean;
  label: string | undefined;
  duration: number;
  rounds: number;
  rows: number;
  scale: number;
  bigStream: boolean;
  machine: { cores: number; cpu: string; memoryGiB: number; kernel: string; loadAverage: number[] };
  versions: {
    node: string;
    postgres: string;
    pgbench: string;
    pgbouncer: string;
    proxy: string;
    git: string;
  };
  proxyArgs: string[];
  nodeArgs: string[];
  proxyConfig: string | undefined;
  variants: Array<{ name: string; file: string }>;
}

export function median(values: number[]): number | undefined {
  if (values.length === 0) return undefined;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1]! + s[mid]!) / 2;
}

/** Medians by cell, then target, then metric. */
export type Medians = Map<string, Map<string, Metrics>>;

export function medians(samples: Sample[]): Medians {
  const grouped = new Map<string, Map<string, Sample[]>>();
  for (const s of samples) {
    let byTarget = grouped.get(s.cell);
    if (!byTarget) grouped.set(s.cell, (byTarget = new Map()));
    let list = byTarget.get(s.target);
    if (!list) byTarget.set(s.target, (list = []));
    list.push(s);
  }
  const out: Medians = new Map();
  for (const [cell, byTarget] of grouped) {
    const m = new Map<string, Metrics>();
    for (const [target, list] of byTarget) {
      const keys = new Set(list.flatMap((s) => Object.keys(s.metrics)));
      const metrics: Metrics = {};
      for (const k of keys) {
        metrics[k] = median(list.map((s) => s.metrics[k]).filter((v): v is number => v !== undefined));
      }
      m.set(target, metrics);
    }
    out.set(cell, m);
  }
  return out;
}

interface Spec {
  key: string;
  title: string;
  digits: number;
  /** Only the process between client and server has it (CPU, memory): no direct column. */
  middleOnly?: boolean;
  /** Ratio columns (proxy/direct, proxy/pgbouncer). */
  ratios?: boolean;
  /** A column with the proxy's addition over direct, in µs (for latencies in ms). */
  addedUs?: boolean;
}

const TARGET_ORDER = ['direct', 'pgbouncer', 'proxy', 'proxy-managed'];

function orderTargets(names: Iterable<string>): string[] {
  return [...new Set(names)].sort((a, b) => {
    const ia = TARGET_ORDER.indexOf(a);
    const ib = TARGET_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
}

const isProxy = (t: string): boolean => t === 'proxy' || t.startsWith('proxy-') || t.startsWith('proxy:');

function fmt(v: number | undefined, digits: number): string {
  if (v === undefined || !Number.isFinite(v)) return '–';
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function ratio(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || b === 0) return '–';
  return `${(a / b).toFixed(2)}×`;
}

function markdown(head: string[], rows: string[][], numericFrom = 1): string {
  const align = head.map((_, i) => (i >= numericFrom ? '---:' : '---'));
  return [head, align, ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
}

/** One metric, a row per cell, a column per target, then ratios. */
function metricTable(cells: Cell[], med: Medians, spec: Spec): string | undefined {
  const present = orderTargets(
    cells.flatMap((c) =>
      [...(med.get(c.name)?.entries() ?? [])].filter(([, m]) => m[spec.key] !== undefined).map(([t]) => t),
    ),
  );
  const targets = spec.middleOnly ? present.filter((t) => t !== 'direct') : present;
  if (targets.length === 0) return undefined;
  const proxies = targets.filter(isProxy);
  const extra: Array<{ head: string; value: (m: Map<string, Metrics>) => string }> = [];
  for (const p of proxies) {
    if (spec.addedUs && targets.includes('direct')) {
      extra.push({
        head: `${p} − direct (µs)`,
        value: (m) => {
          const a = m.get(p)?.[spec.key];
          const b = m.get('direct')?.[spec.key];
          return a === undefined || b === undefined ? '–' : fmt((a - b) * 1000, 0);
        },
      });
    }
    if (spec.ratios) {
      for (const base of ['direct', 'pgbouncer']) {
        if (!targets.includes(base)) continue;
        extra.push({
          head: `${p}/${base}`,
          value: (m) => ratio(m.get(p)?.[spec.key], m.get(base)?.[spec.key]),
        });
      }
    }
  }
  const rows = cells
    .filter((c) => med.has(c.name))
    .map((c) => {
      const m = med.get(c.name)!;
      return [
        c.label,
        ...targets.map((t) => fmt(m.get(t)?.[spec.key], spec.digits)),
        ...extra.map((e) => e.value(m)),
      ];
    });
  return `${spec.title}\n\n${markdown(['', ...targets, ...extra.map((e) => e.head)], rows)}`;
}

/** One cell, a row per metric (the connection-setup cell). */
function cellTable(cell: Cell, med: Medians, specs: Spec[]): string | undefined {
  const m = med.get(cell.name);
  if (!m) return undefined;
  const targets = orderTargets(m.keys());
  const proxies = targets.filter(isProxy);
  const bases = ['direct', 'pgbouncer'].filter((b) => targets.includes(b));
  const head = ['', ...targets, ...proxies.flatMap((p) => bases.map((b) => `${p}/${b}`))];
  const rows = specs.map((s) => [
    s.title,
    ...targets.map((t) => (s.middleOnly && t === 'direct' ? '–' : fmt(m.get(t)?.[s.key], s.digits))),
    ...proxies.flatMap((p) =>
      bases.map((b) =>
        s.ratios && !(s.middleOnly && b === 'direct') ? ratio(m.get(p)?.[s.key], m.get(b)?.[s.key]) : '–',
      ),
    ),
  ]);
  return `${cell.label}\n\n${markdown(head, rows)}`;
}

const GROUP_TITLES: Record<Group, string> = {
  select: 'Point selects: `pgbench -S`',
  connect: 'Connection setup: `pgbench -C -S -M simple`, 8 clients, SCRAM login per transaction',
  stream: 'Streaming: time to the last byte of one large result',
};

const SELECT_SPECS: Spec[] = [
  { key: 'tps', title: 'Transactions per second (higher is better)', digits: 0, ratios: true },
  { key: 'lat_avg_ms', title: 'Average latency, ms', digits: 3, ratios: true, addedUs: true },
  { key: 'lat_p99_ms', title: 'p99 latency, ms', digits: 3, ratios: true, addedUs: true },
  {
    key: 'cpu_ms_per_1k',
    title: 'CPU of the process in the middle per 1k statements, ms (= µs per statement)',
    digits: 1,
    middleOnly: true,
    ratios: true,
  },
  { key: 'peak_rss_mib', title: 'Peak RSS of the process in the middle, MiB', digits: 1, middleOnly: true },
];

const CONNECT_SPECS: Spec[] = [
  { key: 'tps', title: 'connections/s (higher is better)', digits: 0, ratios: true },
  { key: 'conn_ms', title: 'average connection time, ms', digits: 3, ratios: true },
  { key: 'cpu_ms_per_1k', title: 'CPU per 1k connections, ms', digits: 0, middleOnly: true, ratios: true },
  { key: 'peak_rss_mib', title: 'peak RSS, MiB', digits: 1, middleOnly: true },
];

const STREAM_SPECS: Spec[] = [
  { key: 'seconds', title: 'Time to last byte, s (lower is better)', digits: 3, ratios: true },
  { key: 'mb_per_s', title: 'Throughput, MB/s', digits: 0, ratios: true },
  {
    key: 'cpu_s_per_gb',
    title: 'CPU of the process in the middle per GB streamed, s',
    digits: 2,
    middleOnly: true,
    ratios: true,
  },
  { key: 'peak_rss_mib', title: 'Peak RSS of the process in the middle, MiB', digits: 1, middleOnly: true },
  {
    key: 'client_cpu_s',
    title: 'CPU of the stream client itself, s (a check: it must stay small beside the rest)',
    digits: 2,
  },
];

function header(meta: Meta): string {
  const v = meta.versions;
  const m = meta.machine;
  const when = meta.started.replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  const mode =
    meta.mode === 'full'
      ? `full mode: ${meta.duration} s per pgbench cell, ${meta.rounds} round${meta.rounds > 1 ? 's' : ''}`
      : `short mode (a quick check, not for comparison): ${meta.duration} s per pgbench cell, ${meta.rounds} round${meta.rounds > 1 ? 's' : ''}`;
  const lines = [
    `Measured ${when}${meta.label ? ` (${meta.label})` : ''}, ${mode}${meta.partial ? ', a subset of the cells or targets' : ''}; ` +
      `${meta.rows.toLocaleString('en-US')}-row streams${meta.bigStream ? ', the 10 GB stream once per target' : ''}; ` +
      `pgbench scale ${meta.scale}. Run time ${(meta.runSeconds / 60).toFixed(1)} min.`,
    '',
    `Machine: ${m.cores} cores (${m.cpu}), ${m.memoryGiB} GiB, Linux ${m.kernel}, load average ${m.loadAverage.map((x) => x.toFixed(2)).join(' ')} at the start. ` +
      `Node ${v.node}; PostgreSQL ${v.postgres} (embedded, SCRAM-SHA-256); ${v.pgbench}; ${v.pgbouncer}; ` +
      `pg-readonly-proxy ${v.proxy} (${v.git}), run as \`node ${[...meta.nodeArgs, 'dist/cli.js'].join(' ')}\`.`,
  ];
  const variants = [
    ...(meta.proxyArgs.length ? [`proxy arguments \`${meta.proxyArgs.join(' ')}\``] : []),
    ...(meta.proxyConfig ? [`proxy config merged from \`${meta.proxyConfig}\``] : []),
    ...meta.variants.map((x) => `\`proxy:${x.name}\` = the proxy with \`${x.file}\``),
  ];
  if (variants.length) lines.push('', `Variants: ${variants.join('; ')}.`);
  lines.push(
    '',
    'Every target runs on the same machine as PostgreSQL and the clients, which share its cores: ' +
      'the numbers compare the targets with each other, not with other machines. ' +
      'Targets take turns within each round (the order rotates from round to round) and each figure is the median of the rounds. ' +
      "Latencies come from pgbench's per-transaction log; CPU is utime + stime from /proc of the proxy or pgbouncer process " +
      '(with its worker processes, if any); peak RSS is the larger of VmRSS sampled every 100 ms and VmHWM (reset before each cell).',
  );
  return lines.join('\n');
}

export function renderReport(meta: Meta, cells: Cell[], samples: Sample[]): string {
  const med = medians(samples);
  const ran = cells.filter((c) => med.has(c.name));
  const parts = [header(meta)];
  for (const group of ['select', 'connect', 'stream'] as const) {
    const groupCells = ran.filter((c) => c.group === group);
    if (groupCells.length === 0) continue;
    parts.push(`#### ${GROUP_TITLES[group]}`);
    if (group === 'connect') {
      for (const c of groupCells) {
        const t = cellTable(c, med, CONNECT_SPECS);
        if (t) parts.push(t);
      }
      continue;
    }
    for (const spec of group === 'select' ? SELECT_SPECS : STREAM_SPECS) {
      const t = metricTable(groupCells, med, spec);
      if (t) parts.push(t);
    }
  }
  return parts.join('\n\n') + '\n';
}
