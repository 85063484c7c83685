/**
 * The proxy's command line as a child process (run from source with tsx, so no
 * stale build is involved), with its JSON log lines collected as they come.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { testServer } from './harness.js';

export class Cli {
  readonly lines: Array<Record<string, unknown>> = [];
  stderr = '';
  readonly exited: Promise<number | null>;
  private partial = '';

  constructor(readonly child: ChildProcess) {
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      const parts = (this.partial + chunk).split('\n');
      this.partial = parts.pop()!;
      for (const p of parts) if (p.trim()) this.lines.push(JSON.parse(p) as Record<string, unknown>);
    });
    child.stderr!.setEncoding('utf8').on('data', (c: string) => (this.stderr += c));
    this.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  }

  /** Waits for the n-th (1-based) log line matching `pred`. */
  async line(pred: (l: Record<string, unknown>) => boolean, n = 1): Promise<Record<string, unknown>> {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const hits = this.lines.filter(pred);
      if (hits.length >= n) return hits[n - 1]!;
      assert.ok(Date.now() < deadline, `no such log line; stderr: ${this.stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/**
 * Starts the proxy from source with a config file, in front of the test server
 * (plaintext upstream), listening on a free port; libpq's PGHOST / PGPORT are
 * taken out of the environment so only these arguments count.
 */
export function startCli(config: string, extraArgs: string[] = [], extraEnv: NodeJS.ProcessEnv = {}): Cli {
  const s = testServer();
  const env: NodeJS.ProcessEnv = { ...process.env, ...extraEnv };
  delete env.PGHOST;
  delete env.PGPORT;
  const args = [
    '--import',
    'tsx',
    'src/cli.ts',
    '--config',
    config,
    '--upstream',
    `postgres://${s.host}:${s.port}?sslmode=disable`,
    '--listen',
    '127.0.0.1:0',
    ...extraArgs,
  ];
  return new Cli(spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] }));
}
