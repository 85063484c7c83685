/**
 * Bookkeeping for the compatibility suite. Each scenario is a node:test test run
 * with a real client nobody on this team wrote; its outcome (passed, failed, or
 * skipped with the reason) is recorded per client and PostgreSQL version, and
 * `npm run compat:table` turns the records into the README's table.
 *
 * A scenario whose client cannot run here is skipped loudly: a line on stderr
 * and "skipped: <why>" in the table, never a silent pass.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';

export type Outcome = { status: 'passed' | 'failed' } | { status: 'skipped'; reason: string };

export interface Record {
  client: string;
  scenario: string;
  outcome: Outcome;
}

/** Where each test file's records go: results/pg<major>/<file>.json. */
const RESULTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'results');

const records: Record[] = [];
let registered = false;

/** The upstream's major version, as scripts/run-tests.ts reports it. */
export function serverMajor(): number {
  const v = Number(process.env.TEST_PG_MAJOR);
  if (!Number.isInteger(v) || v <= 0) throw new Error('compat tests run through scripts/run-tests.ts');
  return v;
}

function save(file: string): void {
  const dir = path.join(RESULTS, `pg${serverMajor()}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    path.join(dir, `${path.basename(file, '.test.ts')}.json`),
    JSON.stringify(records, null, 2) + '\n',
  );
}

/**
 * A compatibility scenario. `skip`: why the client cannot run here (then the
 * scenario is skipped and says so); `fn` must assert what it checks.
 */
export function scenario(
  file: string,
  client: string,
  name: string,
  fn: (t: TestContext) => Promise<void>,
  opts: { skip?: string | undefined; timeout?: number } = {},
): void {
  if (!registered) {
    registered = true;
    process.on('exit', () => save(file));
  }
  test(`${client}: ${name}`, { timeout: opts.timeout ?? 120_000 }, async (t) => {
    if (opts.skip) {
      process.stderr.write(`\nCOMPAT SKIPPED ${client}: ${name}: ${opts.skip}\n`);
      records.push({ client, scenario: name, outcome: { status: 'skipped', reason: opts.skip } });
      t.skip(opts.skip);
      return;
    }
    try {
      await fn(t);
      records.push({ client, scenario: name, outcome: { status: 'passed' } });
    } catch (err) {
      records.push({ client, scenario: name, outcome: { status: 'failed' } });
      throw err;
    }
  });
}

/** Why a command cannot run here, or undefined when it can (`args` are run once to check). */
export function unavailable(command: string, args: string[] = ['--version']): string | undefined {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 20_000 });
  if (r.error)
    return `${command} is not installed (${(r.error as NodeJS.ErrnoException).code ?? r.error.message})`;
  if (r.status !== 0)
    return `${command} ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim().slice(0, 200)}`;
  return undefined;
}
