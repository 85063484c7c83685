/**
 * Several worker processes behind one listener (`--workers 2`), the command
 * line run as a child process in front of the test server: connections land on
 * both workers; a CancelRequest reaches the worker that issued the key
 * whichever worker receives it (through the primary), and a wrong secret
 * cancels nothing; /metrics on the primary sums both workers; SIGHUP and
 * /admin/reload reload both; a worker that dies is replaced; SIGTERM stops
 * every process; the embedded PostgreSQL is started once, by the primary; and
 * the configuration refuses what one process per user cannot count.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { Metrics } from '../../src/observability/metrics.js';
import { workerOfProcessId } from '../../src/session/cancel-registry.js';
import { VERSION } from '../../src/version.js';
import { Cli, startCli } from '../helpers/cli-process.js';
import { direct, eventually, testServer } from '../helpers/harness.js';
import { sendCancelRequest } from '../helpers/wire.js';

let dir: string;
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'pgro-workers-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

let configs = 0;
function configFile(body: string): string {
  const file = path.join(dir, `config-${++configs}.yaml`);
  writeFileSync(file, `log:\n  level: info\n${body}`);
  return file;
}

const portOf = (address: unknown): number => Number(String(address).split(':').pop());

/** Starts the CLI with two workers; resolves with its client port once every worker listens. */
async function startCluster(
  config: string,
  extra: string[] = [],
): Promise<{ cli: Cli; port: number; pids: number[] }> {
  const cli = startCli(config, ['--workers', '2', ...extra]);
  try {
    const listening = await cli.line((l) => l.event === 'listening' && l.role === 'primary');
    assert.equal(listening.workers, 2);
    const pids: number[] = [];
    for (const w of [0, 1]) {
      pids.push(Number((await cli.line((l) => l.event === 'worker_listening' && l.worker === w)).pid));
    }
    assert.notEqual(pids[0], pids[1]);
    return { cli, port: portOf(listening.listen), pids };
  } catch (err) {
    await stopCluster(cli);
    throw err;
  }
}

/** SIGTERM, and SIGKILL if that takes too long (the workers go with the primary). */
async function stopCluster(cli: Cli): Promise<void> {
  if (cli.child.exitCode !== null || cli.child.signalCode !== null) return;
  cli.child.kill('SIGTERM');
  await Promise.race([cli.exited, new Promise((r) => setTimeout(r, 10_000))]);
  cli.child.kill('SIGKILL');
  await cli.exited;
}

function client(port: number): pg.Client {
  const s = testServer();
  const c = new pg.Client({
    host: '127.0.0.1',
    port,
    user: s.user,
    password: s.password,
    database: 'postgres',
    connectionTimeoutMillis: 10_000,
  });
  // A connection whose worker is killed or stopped ends with an error: the test looks at it where it matters.
  c.on('error', () => undefined);
  return c;
}

/** The worker that issued a client's BackendKeyData. */
const ownerOf = (c: pg.Client): number | undefined =>
  workerOfProcessId((c as unknown as { processID: number }).processID, 2);

/**
 * Opens connections until there are at least `n` and each worker owns at least
 * `each` of them (or gives up after 40).
 */
async function spread(port: number, n: number, open: pg.Client[], each = 1): Promise<pg.Client[]> {
  const clients: pg.Client[] = [];
  const enough = (): boolean =>
    clients.length >= n && [0, 1].every((w) => clients.filter((c) => ownerOf(c) === w).length >= each);
  for (let i = 0; i < 40 && !enough(); i++) {
    const c = client(port);
    open.push(c);
    await c.connect();
    clients.push(c);
  }
  assert.ok(enough(), `connections land on both workers: ${clients.map(ownerOf).join(' ')}`);
  return clients;
}

/** The client's key as a CancelRequest carries it. */
function keyOf(c: pg.Client): { processId: number; secret: Buffer } {
  const k = c as unknown as { processID: number; secretKey: number };
  const secret = Buffer.alloc(4);
  secret.writeInt32BE(k.secretKey);
  return { processId: k.processID, secret };
}

/** Waits until `n` backends run exactly `sql`. */
async function running(sql: string, n: number): Promise<void> {
  const d = await direct();
  try {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const r = await d.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
        [sql],
      );
      if ((r.rows[0] as { n: number }).n >= n) return;
      assert.ok(Date.now() < deadline, `${n} × "${sql}" never ran`);
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    await d.end();
  }
}

const count = (cli: Cli, pred: (l: Record<string, unknown>) => boolean): number =>
  cli.lines.filter(pred).length;

test('connections land on both workers; every cancel reaches its owner within a second, across workers; a wrong secret cancels nothing', async () => {
  const { cli, port } = await startCluster(configFile(''));
  const open: pg.Client[] = [];
  try {
    let clients = await spread(port, 7, open);
    // An odd number, so that round-robin cannot make every cancel land on its owner.
    if (clients.length % 2 === 0) clients = clients.slice(1);
    for (const w of [0, 1]) await cli.line((l) => l.event === 'session_ready' && l.worker === w);

    const sleep = 'SELECT pg_sleep(5)';
    let forwarded = 0;
    for (let round = 1; round <= 4; round++) {
      const queries = clients.map((c) =>
        c.query(sleep).then(
          () => ({ code: 'none', at: Date.now() }),
          (err: Error & { code?: string }) => ({ code: err.code, at: Date.now() }),
        ),
      );
      await running(sleep, clients.length);
      const t0 = Date.now();
      await Promise.all(
        clients.map((c) => {
          const k = keyOf(c);
          return sendCancelRequest('127.0.0.1', port, k.processId, k.secret);
        }),
      );
      for (const [i, r] of (await Promise.all(queries)).entries()) {
        assert.equal(
          r.code,
          '57014',
          `round ${round}: connection ${i} (worker ${ownerOf(clients[i]!)}) cancelled`,
        );
        assert.ok(r.at - t0 < 1000, `round ${round}: connection ${i} cancelled after ${r.at - t0} ms`);
      }
      // Each cancel is forwarded upstream exactly once, by its owner: here or through the primary.
      forwarded += clients.length;
      await cli.line((l) => l.event === 'cancel_request' && l.outcome === 'forwarded', forwarded);
      if (count(cli, (l) => l.event === 'cancel_request' && l.via === 'primary') > 0) break;
    }
    const relayed = (): number => count(cli, (l) => l.event === 'cancel_request' && l.outcome === 'relayed');
    const viaPrimary = count(
      cli,
      (l) => l.event === 'cancel_request' && l.via === 'primary' && l.outcome === 'forwarded',
    );
    assert.ok(viaPrimary > 0, 'some cancels reached the other worker first');
    // The receiving worker's lines may come a little later than the owner's.
    await eventually(() => relayed() === viaPrimary, 5000, 'every relayed cancel forwarded by its owner');
    assert.equal(
      count(cli, (l) => l.event === 'cancel_request' && l.outcome === 'unknown_key'),
      0,
    );
    for (const c of clients) assert.deepEqual((await c.query('SELECT 1 AS n')).rows, [{ n: 1 }]);

    // A wrong secret: refused by the owner wherever it lands, the query runs to its end.
    const victim = clients[0]!;
    const q = victim.query('SELECT pg_sleep(1.5) AS slept');
    await running('SELECT pg_sleep(1.5) AS slept', 1);
    const k = keyOf(victim);
    const wrong = Buffer.from(k.secret.map((b) => b ^ 0x5a));
    for (let i = 0; i < 4; i++) await sendCancelRequest('127.0.0.1', port, k.processId, wrong);
    assert.equal((await q).rowCount, 1, 'not cancelled');
    await cli.line((l) => l.event === 'cancel_request' && l.outcome === 'unknown_key', 4);
    // A process id no worker issued (not a positive Int32) is dropped where it lands.
    await sendCancelRequest('127.0.0.1', port, -5, k.secret);
    await cli.line((l) => l.event === 'cancel_request' && l.outcome === 'unknown_key', 5);
    assert.deepEqual((await victim.query('SELECT 2 AS n')).rows, [{ n: 2 }]);
  } finally {
    for (const c of open) await c.end().catch(() => undefined);
    await stopCluster(cli);
  }
});

/** The value of one sample line; 0 when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    const m = /^([^{\s]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return 0;
}

/** `# TYPE` lines: metric name → type. */
function types(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (m) {
      assert.equal(out.has(m[1]!), false, `${m[1]} described once`);
      out.set(m[1]!, m[2]!);
    }
  }
  return out;
}

test('/metrics on the primary sums both workers, with the names, types and labels of a single process', async () => {
  const { cli, port } = await startCluster(configFile('http:\n  listen: 127.0.0.1:0\n'));
  const open: pg.Client[] = [];
  try {
    const http = await cli.line((l) => l.event === 'http_listening');
    assert.equal(http.role, 'primary');
    const get = async (p: string): Promise<{ status: number; text: string }> => {
      const r = await fetch(`http://127.0.0.1:${String(http.port)}${p}`);
      return { status: r.status, text: await r.text() };
    };
    const clients = await spread(port, 6, open);
    const before = await get('/metrics');
    assert.equal(before.status, 200, before.text);
    for (const c of clients) for (let i = 0; i < 3; i++) await c.query('SELECT 1');
    await assert.rejects(clients[0]!.query('DELETE FROM pg_class'), { code: '25006' });
    const after = (await get('/metrics')).text;

    assert.equal(sample(after, 'pgro_client_connections'), open.length, 'open connections of both workers');
    assert.ok(sample(after, 'pgro_client_connections_total', { result: 'ok' }) >= open.length);
    const selects = (t: string): number =>
      sample(t, 'pgro_statements_total', { decision: 'allowed', kind: 'SELECT' });
    assert.equal(selects(after) - selects(before.text), 18);
    const deletes = (t: string): number =>
      sample(t, 'pgro_statements_total', { decision: 'refused', kind: 'DELETE', reason: 'write' });
    assert.equal(deletes(after) - deletes(before.text), 1);
    const queries = (t: string): number => sample(t, 'pgro_query_duration_seconds_count');
    // The refused statement too: the server gets a stand-in that fails harmlessly.
    assert.equal(queries(after) - queries(before.text), 19);
    assert.equal(
      sample(after, 'pgro_query_duration_seconds_bucket', { le: '+Inf' }),
      queries(after),
      'histogram buckets summed like their count',
    );
    assert.equal(sample(after, 'pgro_build_info', { version: VERSION }), 1);
    assert.ok(sample(after, 'pgro_process_start_time_seconds') > 0, 'the earliest start, not left out');

    // The same metrics as a single process, each described once; every sample line once.
    const single = types(await new Metrics({ defaultMetrics: true }).metricsText());
    assert.deepEqual(Object.fromEntries(types(after)), Object.fromEntries(single));
    for (const name of types(after).keys()) assert.match(name, /^pgro_[a-z0-9_]+$/);
    const samples = after.split('\n').filter((l) => l && !l.startsWith('#'));
    const series = samples.map((l) => l.slice(0, l.lastIndexOf(' ')));
    assert.equal(new Set(series).size, series.length, 'no series twice');
    for (const l of samples) assert.match(l, / (-?\d[\d.e+-]*|NaN|[+-]Inf)$/, 'a number (IPC carries JSON)');

    const ready = await get('/readyz');
    assert.equal(ready.status, 200, ready.text);
    assert.deepEqual(JSON.parse(ready.text).checks, { workers: true, upstream: true, accepting: true });
  } finally {
    for (const c of open) await c.end().catch(() => undefined);
    await stopCluster(cli);
  }
});

test('SIGHUP and /admin/reload reload both workers; an invalid file is refused once and both keep the old', async () => {
  const http = 'http:\n  listen: 127.0.0.1:0\n  admin: true\n';
  const file = configFile(http);
  const write = (body: string): void => writeFileSync(file, `log:\n  level: info\n${http}${body}`);
  const { cli, port } = await startCluster(file);
  const open: pg.Client[] = [];
  try {
    const httpPort = Number((await cli.line((l) => l.event === 'http_listening')).port);
    const clients = await spread(port, 4, open);
    for (const c of clients) await assert.rejects(c.query('ANALYZE pg_class'), { code: '25006' });

    write('policy:\n  allow_statements: [ANALYZE]\n');
    cli.child.kill('SIGHUP');
    const done = await cli.line((l) => l.event === 'workers_reloaded');
    assert.equal(done.ok, true);
    assert.equal(done.workers, 2);
    await cli.line((l) => l.event === 'reloaded', 2);
    const applied = cli.lines.filter((l) => l.event === 'config_applied').map((l) => l.worker);
    assert.deepEqual(applied.sort(), [0, 1]);
    for (const c of clients) await c.query('ANALYZE pg_class');

    // Invalid: refused by the primary, once; no worker applies anything.
    write('policy:\n  alow_statements: []\n');
    cli.child.kill('SIGHUP');
    const failed = await cli.line((l) => l.event === 'workers_reloaded', 2);
    assert.equal(failed.ok, false);
    // Each worker still rereads its certificates and users (none here), and says so.
    await cli.line((l) => l.event === 'reloaded', 4);
    const refused = cli.lines.filter((l) => l.event === 'reload_failed');
    assert.equal(refused.length, 1);
    assert.equal(refused[0]!.role, 'primary');
    assert.match(String(refused[0]!.err), /policy\.alow_statements: unknown key/);
    assert.equal(
      count(cli, (l) => l.event === 'config_applied'),
      2,
    );
    for (const c of clients) await c.query('ANALYZE pg_class');

    // /admin/reload: the same, answered with the outcome of every worker.
    write('');
    const r = await fetch(`http://127.0.0.1:${httpPort}/admin/reload`, { method: 'POST' });
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { ok: true, errors: [] });
    for (const c of clients) await assert.rejects(c.query('ANALYZE pg_class'), { code: '25006' });
    await cli.line((l) => l.event === 'config_applied', 4);
  } finally {
    for (const c of open) await c.end().catch(() => undefined);
    await stopCluster(cli);
  }
});

test('a worker that dies is logged and replaced; the other serves on, and cancels reach the replacement', async () => {
  const { cli, port, pids } = await startCluster(configFile(''));
  const open: pg.Client[] = [];
  try {
    const clients = await spread(port, 2, open);
    const survivor = clients.find((c) => ownerOf(c) === 0)!;
    process.kill(pids[1]!, 'SIGKILL');
    const exited = await cli.line((l) => l.event === 'worker_exited');
    assert.equal(exited.worker, 1);
    assert.equal(exited.signal, 'SIGKILL');
    const replaced = await cli.line((l) => l.event === 'worker_replaced');
    assert.equal(replaced.worker, 1);
    assert.notEqual(replaced.pid, pids[1]);
    assert.deepEqual((await survivor.query('SELECT 1 AS n')).rows, [{ n: 1 }]);

    const fresh = (await spread(port, 4, open, 2)).filter((c) => ownerOf(c) === 1);
    const sleep = 'SELECT pg_sleep(5) AS replaced';
    const queries = fresh.map((c) =>
      c.query(sleep).then(
        () => 'none',
        (err: Error & { code?: string }) => err.code,
      ),
    );
    await running(sleep, fresh.length);
    for (const c of fresh) {
      const k = keyOf(c);
      await sendCancelRequest('127.0.0.1', port, k.processId, k.secret);
    }
    assert.deepEqual(
      await Promise.all(queries),
      fresh.map(() => '57014'),
    );
  } finally {
    for (const c of open) await c.end().catch(() => undefined);
    await stopCluster(cli);
  }
});

test('SIGTERM stops every worker as a single process stops: sessions end after the grace period, every process exits', async () => {
  const { cli, port, pids } = await startCluster(configFile('shutdown_grace_ms: 500\n'));
  const open: pg.Client[] = [];
  try {
    const clients = await spread(port, 2, open);
    const ended = clients.map(
      (c) =>
        new Promise<string | undefined>((resolve) =>
          c.on('error', (err: Error & { code?: string }) => resolve(err.code)),
        ),
    );
    cli.child.kill('SIGTERM');
    assert.equal(await cli.exited, 0, cli.stderr);
    assert.deepEqual(await Promise.all(ended), ['57P01', '57P01']);
    const stopped = cli.lines.filter((l) => l.event === 'stopped');
    assert.deepEqual(stopped.map((l) => l.worker ?? l.role).sort(), [0, 1, 'primary']);
    for (const pid of pids) assert.throws(() => process.kill(pid, 0), `worker ${pid} is gone`);
  } finally {
    for (const c of open) await c.end().catch(() => undefined);
    cli.child.kill('SIGKILL');
  }
});

test('--workers 1 is the single process of before: no cluster, no worker field', async () => {
  const cli = startCli(configFile(''), ['--workers', '1']);
  try {
    const listening = await cli.line((l) => l.event === 'listening');
    assert.equal(listening.workers, undefined);
    const c = client(portOf(listening.listen));
    await c.connect();
    await c.query('SELECT 1');
    await c.end();
    await cli.line((l) => l.event === 'connection_closed');
    assert.equal(cli.lines.filter((l) => 'worker' in l || 'role' in l).length, 0);
  } finally {
    await stopCluster(cli);
  }
  assert.equal(await cli.exited, 0, cli.stderr);
});

test('the configuration refuses what several processes cannot enforce, and bad worker counts', async () => {
  const cases: Array<{ body: string; args: string[]; error: RegExp }> = [
    {
      body: 'limits:\n  max_connections_per_user: 5\n',
      args: ['--workers', '2'],
      error:
        /limits\.max_connections_per_user cannot be enforced with several worker processes \(workers: 2\)/,
    },
    {
      body: 'workers: auto\nlimits:\n  max_connections_per_user: 5\n',
      args: [],
      error: /max_connections_per_user cannot be enforced .*\(workers: auto\)/,
    },
    { body: 'workers: 0\n', args: [], error: /workers: must be a whole number from 1 to 256, or "auto"/ },
    { body: 'workers: many\n', args: [], error: /workers: must be a whole number from 1 to 256, or "auto"/ },
    {
      body: '',
      args: ['--workers', '3x'],
      error: /--workers: must be a whole number from 1 to 256, or "auto"/,
    },
  ];
  for (const c of cases) {
    const cli = startCli(configFile(c.body), c.args);
    const code = await Promise.race([cli.exited, new Promise((r) => setTimeout(() => r('running'), 20_000))]);
    cli.child.kill('SIGKILL');
    assert.equal(code, 2, `${c.body} ${c.args.join(' ')}: ${cli.stderr}`);
    assert.match(cli.stderr, c.error);
    assert.equal(
      cli.stderr.split('\n').filter((l) => l.startsWith('pg-readonly-proxy:')).length,
      1,
      'said once',
    );
  }
});

test('no upstream: the primary starts one embedded PostgreSQL for both workers and stops it on SIGINT', async () => {
  const home = mkdtempSync(path.join(tmpdir(), 'pgro-workers-embedded-'));
  chmodSync(home, 0o755);
  const config = path.join(home, 'config.yaml');
  writeFileSync(
    config,
    `workers: 2\nlisten: 127.0.0.1:0\nembedded:\n  data_dir: ${path.join(home, 'data')}\n`,
  );
  const env = { ...process.env };
  delete env.PGHOST;
  delete env.PGPORT;
  const cli = new Cli(
    spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', '--config', config], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  const open: pg.Client[] = [];
  try {
    await eventually(() => /psql "postgresql:\/\/[^"]+"/.test(cli.stderr), 90_000, 'the banner');
    const url = /psql "(postgresql:\/\/[^"]+)"/.exec(cli.stderr)![1]!;
    const owners = new Set<number | undefined>();
    for (let i = 0; i < 20 && owners.size < 2; i++) {
      const c = new pg.Client({ connectionString: url });
      open.push(c);
      await c.connect();
      owners.add(ownerOf(c));
      assert.equal((await c.query('SELECT count(*)::int AS n FROM customers')).rows[0].n, 200);
    }
    assert.deepEqual([...owners].sort(), [0, 1]);
    assert.equal(
      count(cli, (l) => l.msg === 'no upstream configured: starting the embedded PostgreSQL'),
      1,
    );
    // Log lines are written in batches: wait for both workers' lines.
    await cli.line((l) => l.event === 'worker_listening', 2);
    const upstreams = new Set(cli.lines.filter((l) => l.event === 'worker_listening').map((l) => l.upstream));
    assert.equal(upstreams.size, 1, 'both workers in front of the same server');
    for (const c of open.splice(0)) await c.end();

    const pidFile = path.join(home, 'data', 'postmaster.pid');
    assert.ok(existsSync(pidFile));
    const postmaster = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
    cli.child.kill('SIGINT');
    assert.equal(await cli.exited, 0, cli.stderr);
    assert.throws(() => process.kill(postmaster, 0), 'the embedded postmaster stopped with the proxy');
  } finally {
    for (const c of open) await c.end().catch(() => undefined);
    cli.child.kill('SIGKILL');
    rmSync(home, { recursive: true, force: true });
  }
});
