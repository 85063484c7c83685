/**
 * pgbench through the proxy: the select-only workload in each protocol mode
 * (simple, extended, prepared) runs without a failed transaction; the default
 * write workload fails cleanly, and the proxy keeps serving afterwards.
 * The tables are made directly (`pgbench -i`): initialising writes.
 */
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { startProxy, testServer, type RunningProxy, withDb, freshDatabase } from '../helpers/harness.js';
import { run, type RunResult } from '../helpers/run.js';
import { scenario, unavailable } from './compat.js';

const FILE = import.meta.filename;
const DB = 'compat_pgbench';
const PGBENCH = process.env.PGBENCH ?? 'pgbench';
const skip = unavailable(PGBENCH);

/** Runs pgbench to completion as the test superuser, without TLS. */
function pgbench(target: { host: string; port: number }, args: string[]): Promise<RunResult> {
  const s = testServer();
  return run(PGBENCH, ['-h', target.host, '-p', String(target.port), '-U', s.user, ...args, DB], {
    env: {
      ...process.env,
      PGPASSWORD: s.password,
      PGSSLMODE: 'disable',
      PGCONNECT_TIMEOUT: '5',
      PGOPTIONS: '',
      LC_ALL: 'C',
    },
  });
}

/** A number pgbench reports, e.g. "number of transactions actually processed: 1234". */
function reported(r: RunResult, label: string): number {
  const m = new RegExp(`^${label}: (\\d+)`, 'm').exec(r.stdout);
  assert.ok(m, `pgbench did not report "${label}":\n${r.stdout}\n${r.stderr}`);
  return Number(m[1]);
}

/** What the write workload would change. */
const state = (): Promise<unknown> =>
  withDb(DB, async (c) => {
    const r = await c.query(`
      SELECT (SELECT sum(abalance) FROM pgbench_accounts)::text AS accounts,
             (SELECT sum(bbalance) FROM pgbench_branches)::text AS branches,
             (SELECT sum(tbalance) FROM pgbench_tellers)::text AS tellers,
             (SELECT count(*) FROM pgbench_history)::int AS history`);
    return r.rows[0];
  });

let proxy: RunningProxy;

before(async () => {
  if (skip) return;
  proxy = await startProxy();
  await freshDatabase(DB);
  const init = await pgbench(testServer(), ['-i', '-s', '1', '-q']);
  assert.equal(init.status, 0, init.stderr);
});
after(async () => {
  await proxy?.close();
});

for (const mode of ['simple', 'extended', 'prepared']) {
  scenario(
    FILE,
    'pgbench',
    `-S -M ${mode}, 4 clients for 3 s: no failed transaction`,
    async () => {
      const r = await pgbench(proxy, ['-n', '-S', '-M', mode, '-c', '4', '-j', '2', '-T', '3']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^query mode: ${mode}$`, 'm'));
      assert.ok(reported(r, 'number of transactions actually processed') > 0, r.stdout);
      assert.equal(reported(r, 'number of failed transactions'), 0, r.stdout);
      assert.doesNotMatch(r.stderr, /error/i);
    },
    { skip },
  );
}

scenario(
  FILE,
  'pgbench',
  'the default (write) workload fails cleanly (read-only), and the proxy still serves new connections',
  async () => {
    const before = await state();
    // Without -n: pgbench's own VACUUM is refused first, which it reports and ignores.
    const r = await pgbench(proxy, ['-c', '2', '-t', '5']);
    assert.notEqual(r.status, 0, r.stdout);
    assert.match(r.stderr, /VACUUM is not allowed: this connection is read-only/);
    assert.match(r.stderr, /\(ignoring this error and continuing anyway\)/);
    assert.match(
      r.stderr,
      /client \d+ script \d+ aborted in command \d+ query \d+: ERROR: {2}pg-readonly-proxy: UPDATE is not allowed: this connection is read-only/,
    );
    assert.equal(reported(r, 'number of transactions actually processed'), 0);
    assert.deepEqual(await state(), before);

    const again = await pgbench(proxy, ['-n', '-S', '-M', 'extended', '-c', '1', '-t', '20']);
    assert.equal(again.status, 0, again.stderr);
    assert.equal(reported(again, 'number of transactions actually processed'), 20);
    const c = await proxy.client({ database: DB });
    try {
      const r2 = await c.query<{ n: number }>('SELECT count(*)::int AS n FROM pgbench_branches');
      assert.equal(r2.rows[0]!.n, 1);
    } finally {
      await c.end();
    }
  },
  { skip },
);
