/**
 * Child processes of the benchmark: every one is tracked, so Ctrl-C or an error
 * can end all of them, and none outlives the run.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

const running = new Set<ChildProcess>();

/** Starts a process and tracks it until it exits. */
export function start(command: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, opts);
  running.add(child);
  child.on('exit', () => running.delete(child));
  child.on('error', () => running.delete(child));
  return child;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end, collecting its output; stdin gets `input` (or nothing). */
export function run(
  command: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string; cwd?: string; inherit?: boolean } = {},
): Promise<RunResult> {
  const child = start(command, args, {
    env: opts.env ?? process.env,
    cwd: opts.cwd,
    stdio: ['pipe', opts.inherit ? 'inherit' : 'pipe', opts.inherit ? 'inherit' : 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr?.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
    // A program that exits without reading its input must not crash the run.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input ?? '');
  });
}

/** Runs a program and returns its stdout; throws with its stderr if it fails. */
export async function runOk(
  command: string,
  args: string[],
  opts: Parameters<typeof run>[2] = {},
): Promise<string> {
  const r = await run(command, args, opts);
  if (r.code !== 0) {
    const why = r.signal ? `signal ${r.signal}` : `exit code ${r.code}`;
    throw new Error(`${command} ${args.join(' ')}: ${why}\n${r.stderr.trim() || r.stdout.trim()}`);
  }
  return r.stdout;
}

/** Waits for a process to exit, up to `ms`; true if it did. */
export function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Ends a process: `signal` first, SIGKILL after `graceMs`. */
export async function stop(
  child: ChildProcess,
  signal: NodeJS.Signals = 'SIGTERM',
  graceMs = 5000,
): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  if (!(await waitExit(child, graceMs))) {
    child.kill('SIGKILL');
    await waitExit(child, 2000);
  }
}

/** Last resort, when the run itself dies: SIGKILL to whatever is still running. */
export function killAllNow(): void {
  for (const c of running) c.kill('SIGKILL');
}

/** Ends every tracked process still running (Ctrl-C, errors). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((c) => stop(c, 'SIGTERM', 3000)));
}
