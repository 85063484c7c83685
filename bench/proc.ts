/**
 * What a process costs, read from Linux's /proc: CPU time (utime + stime, all
 * threads, and its child processes: the proxy's workers) and resident memory,
 * sampled while a cell runs.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';

let ticksPerSecond: number | undefined;

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** CPU seconds (user + system) the process has used so far. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may hold spaces: count from after it.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  return (Number(fields[11]) + Number(fields[12])) / clockTicks();
}

/** A field of /proc/<pid>/status in bytes (VmRSS, VmHWM), or undefined. */
export function statusBytes(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : undefined;
}

/** Resets the process's peak RSS (VmHWM) to its current RSS; false where the kernel or rights refuse. */
export function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** The process and all its descendants (the proxy's worker processes), from /proc. */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const list = children.get(ppid);
    if (list) list.push(Number(name));
    else children.set(ppid, [Number(name)]);
  }
  const out: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    const pid = queue.shift()!;
    out.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return out;
}

function tryCpu(pid: number): number | undefined {
  try {
    return cpuSeconds(pid);
  } catch {
    return undefined;
  }
}

export interface ProcessCost {
  /** Processes measured: the root and its descendants (workers). */
  processes: number;
  cpuSeconds: number;
  /** The largest sum of VmRSS over the processes, sampled during the window. */
  peakRssBytes: number;
  /**
   * The sum of the processes' VmHWM at the end of the window (reset at its start
   * where the kernel allows; with several processes an upper bound of the peak).
   */
  hwmBytes: number | undefined;
}

/**
 * Watches a process and its descendants from start() to stop(): CPU time used
 * in between and resident memory sampled every `intervalMs`. The descendants
 * are looked up at start and again at stop (workers are long-lived).
 */
export class ProcessWatch {
  private tree: number[] = [];
  private cpuAtStart = new Map<number, number>();
  private peak = 0;
  private timer: NodeJS.Timeout | undefined;
  private hwmReset = false;
  private stopped: ProcessCost | undefined;

  constructor(
    readonly pid: number,
    private readonly intervalMs = 100,
  ) {}

  start(): void {
    this.tree = processTree(this.pid);
    this.hwmReset = this.tree.map((p) => resetPeak(p)).every(Boolean);
    for (const p of this.tree) {
      const cpu = tryCpu(p);
      if (cpu !== undefined) this.cpuAtStart.set(p, cpu);
    }
    this.peak = 0;
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
  }

  private sample(): void {
    let sum = 0;
    for (const p of this.tree) sum += statusBytes(p, 'VmRSS') ?? 0;
    if (sum > this.peak) this.peak = sum;
  }

  /** Ends the window (again: the first result). */
  stop(): ProcessCost {
    if (this.stopped) return this.stopped;
    clearInterval(this.timer);
    this.sample();
    const tree = processTree(this.pid);
    let cpu = 0;
    let hwm = 0;
    for (const p of tree) {
      const now = tryCpu(p);
      if (now !== undefined) cpu += now - (this.cpuAtStart.get(p) ?? 0);
      hwm += statusBytes(p, 'VmHWM') ?? 0;
    }
    this.stopped = {
      processes: tree.length,
      cpuSeconds: cpu,
      peakRssBytes: this.peak,
      hwmBytes: this.hwmReset ? hwm : undefined,
    };
    return this.stopped;
  }
}
