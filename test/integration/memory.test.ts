/**
 * Memory: the proxy forwards results as they arrive and never holds one, so its
 * memory does not depend on how large a result is, and a client that reads
 * slowly slows the server down instead of filling the proxy.
 *
 * The proxy runs as its own process (the CLI from source), a fresh one per
 * case, warmed up until its RSS holds still; its resident memory is read from
 * /proc/<pid>/status (VmRSS, and VmHWM reset before the work so it gives the
 * peak) while a raw protocol client reads the result and throws the bytes away.
 * Growth is the peak, up to a moment after the result ended, over the idle RSS
 * just before the work. For the slow client, pg_stat_activity shows who waits
 * (the server, in ClientWrite) and the proxy's /metrics how much it passed on.
 *
 *   PGRO_TEST_RSS_GROWTH_MB  the most the proxy's RSS may grow over its idle
 *                            baseline, in MiB (default 64)
 *   PGRO_TEST_BIG_ROWS       rows of 1000 bytes in the large stream (default
 *                            1000000, about 1 GB; 10000000 streams about
 *                            10 GB, which takes a minute or two)
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import type pg from 'pg';
import { startCli } from '../helpers/cli-process.js';
import { direct, testServer } from '../helpers/harness.js';
import { CountingClient, RssWatch, mb, readMemory, type StreamResult } from '../helpers/memory.js';

const GROWTH_MB = Number(process.env.PGRO_TEST_RSS_GROWTH_MB || 64);
const BIG_ROWS = Number(process.env.PGRO_TEST_BIG_ROWS || 1_000_000);
/** How long after a result ended its memory is still watched (freeing can touch pages too). */
const SETTLE_MS = 500;
const WARM_UP_STATEMENTS = 40;

const ROWS_1M = "SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g";
const COPY_1M = `COPY (${ROWS_1M}) TO STDOUT`;
const BIG = `SELECT repeat('x', 1000) FROM generate_series(1, ${BIG_ROWS})`;
/** About 500 MB: a proxy that ignored backpressure would have to hold most of it. */
const SLOW = "SELECT g, repeat('x', 1000) FROM generate_series(1, 500000) g";

let dir: string;
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'pgro-memory-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function within<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function connectTo(port: number): Promise<CountingClient> {
  const s = testServer();
  return CountingClient.connect({ host: '127.0.0.1', port, user: s.user, password: s.password });
}

/** Runs one query straight to the server: the reference for what the proxy must deliver. */
async function directly(sql: string, sha256 = true): Promise<StreamResult> {
  const c = await connectTo(testServer().port);
  try {
    return await within(c.query(sql, { sha256 }), 60_000, `${sql} (direct)`);
  } finally {
    c.close();
  }
}

interface Proxy {
  port: number;
  pid: number;
  /** pgro_client_sent_bytes_total: every byte the proxy has handed to client sockets. */
  sentBytes(): Promise<number>;
}

/**
 * Waits until the process's RSS has held still (within 1 MiB) for 1.5 s, for
 * at most 20 s; returns it, and whether it did hold still.
 */
async function steadyRss(pid: number): Promise<{ rssMb: number; steady: boolean }> {
  const samples: number[] = [];
  const deadline = Date.now() + 20_000;
  for (;;) {
    samples.push(readMemory(pid).rssMb);
    const last = samples.slice(-16);
    if (last.length === 16 && Math.max(...last) - Math.min(...last) <= 1)
      return { rssMb: last.at(-1)!, steady: true };
    if (Date.now() > deadline) return { rssMb: samples.at(-1)!, steady: false };
    await sleep(100);
  }
}

/**
 * Starts the CLI with this config, warms it up and runs `fn`, then stops it with
 * SIGTERM. The warm-up matters: after its first few dozen statements V8
 * optimizes the parser's WebAssembly (PostgreSQL's grammar) in the background,
 * which takes tens of MiB once and for all; a baseline taken before that would
 * charge it to whatever result comes next. So: distinct statements (each is
 * parsed, none comes from the decision cache), then a wait until RSS holds still.
 */
async function withProxy(t: TestContext, yaml: string, fn: (p: Proxy) => Promise<void>): Promise<void> {
  const config = path.join(dir, `${t.name.replace(/\W+/g, '-').slice(0, 40)}.yaml`);
  writeFileSync(config, `log:\n  level: info\n${yaml}`);
  const cli = startCli(config, ['--http-listen', '127.0.0.1:0']);
  try {
    const listening = await cli.line((l) => l.event === 'listening');
    const port = Number(String(listening.listen).split(':').pop());
    const http = await cli.line((l) => l.event === 'http_listening');
    const sentBytes = async (): Promise<number> => {
      const text = await (await fetch(`http://127.0.0.1:${String(http.port)}/metrics`)).text();
      const m = /^pgro_client_sent_bytes_total (\d+)$/m.exec(text);
      assert.ok(m, 'no pgro_client_sent_bytes_total in /metrics');
      return Number(m[1]);
    };
    const pid = cli.child.pid!;
    const started = readMemory(pid).rssMb;
    const warm = await connectTo(port);
    for (let i = 0; i < WARM_UP_STATEMENTS; i++) {
      const sql = `SELECT g + ${i} FROM generate_series(0, 1) g WHERE g < $$${i}$$::int OR g = 0 ORDER BY 1`;
      assert.equal(await warm.scalar(sql), String(i));
    }
    warm.close();
    const { rssMb, steady } = await steadyRss(pid);
    t.diagnostic(
      `proxy RSS: ${mb(started)} once listening, ${mb(rssMb)} after the warm-up${steady ? '' : ' (still moving after 20 s)'}`,
    );
    await fn({ port, pid, sentBytes });
  } finally {
    cli.child.kill('SIGTERM');
    const code = await cli.exited;
    assert.equal(code, 0, `the proxy exited with ${code}: ${cli.stderr}`);
  }
}

interface Measured {
  result: StreamResult;
  baselineMb: number;
  peakMb: number;
  growthMb: number;
}

/** Streams `sql` through the proxy to a client that reads as fast as it can, watching the proxy's RSS. */
async function throughProxy(p: Proxy, sql: string, sha256 = true, timeoutMs = 60_000): Promise<Measured> {
  const c = await connectTo(p.port);
  try {
    const watch = new RssWatch(p.pid);
    try {
      const result = await within(c.query(sql, { sha256 }), timeoutMs, `${sql} (through the proxy)`);
      await sleep(SETTLE_MS);
      return { result, ...watch.stop() };
    } finally {
      watch.close();
    }
  } finally {
    c.close();
  }
}

const rowsOf = (r: StreamResult): number => r.dataRows + r.copyData;

function figures(what: string, m: Measured, directMs?: number): string {
  const times = `${Math.round(m.result.ms)} ms through the proxy${directMs === undefined ? '' : `, ${Math.round(directMs)} ms direct`}`;
  return (
    `${what}: ${rowsOf(m.result)} rows, ${(m.result.bytes / 1e6).toFixed(1)} MB in ${times}; ` +
    `proxy RSS idle ${mb(m.baselineMb)}, peak ${mb(m.peakMb)}, growth ${mb(m.growthMb)} (bound ${GROWTH_MB} MiB)`
  );
}

function assertBounded(what: string, m: Measured, directMs?: number): void {
  assert.ok(m.growthMb <= GROWTH_MB, `the proxy's memory grew too much: ${figures(what, m, directMs)}`);
}

/** The same bytes, rows and tags as the server sends directly. */
function assertSame(got: StreamResult, want: StreamResult, what: string): void {
  assert.equal(got.error, undefined, `${what}: ${JSON.stringify(got.error)}`);
  assert.deepEqual(got.tags, want.tags, what);
  assert.equal(rowsOf(got), rowsOf(want), `${what}: rows`);
  assert.equal(got.bytes, want.bytes, `${what}: bytes`);
  if (want.sha256) assert.equal(got.sha256, want.sha256, `${what}: content`);
}

test('a 1M-row result and a 1M-row COPY arrive whole while the proxy stays small', async (t) => {
  for (const [what, sql] of [
    ['1M rows', ROWS_1M],
    ['COPY of 1M rows', COPY_1M],
  ] as const) {
    const want = await directly(sql);
    assert.equal(rowsOf(want), 1_000_000);
    await withProxy(t, '', async (p) => {
      const m = await throughProxy(p, sql);
      t.diagnostic(figures(what, m, want.ms));
      assertSame(m.result, want, what);
      assertBounded(what, m, want.ms);
    });
  }
});

test(`a large stream (${BIG_ROWS} rows of 1000 bytes) leaves the proxy as small as a 1M-row one`, async (t) => {
  // DataRow: type, length, column count, value length, 1000 bytes.
  const rowBytes = 1 + 4 + 2 + 4 + 1000;
  const tag = `SELECT ${BIG_ROWS}`;
  const rowDescription = 1 + 4 + 2 + 'repeat\0'.length + 18;
  const expectedBytes = rowDescription + BIG_ROWS * rowBytes + (1 + 4 + tag.length + 1) + 6;
  await withProxy(t, '', async (p) => {
    const m = await throughProxy(p, BIG, false, 60_000 + BIG_ROWS / 20);
    t.diagnostic(figures(`${BIG_ROWS} rows of 1000 bytes`, m));
    assert.equal(m.result.error, undefined, JSON.stringify(m.result.error));
    assert.deepEqual(m.result.tags, [tag]);
    assert.equal(m.result.dataRows, BIG_ROWS);
    assert.equal(m.result.bytes, expectedBytes);
    assertBounded(`${BIG_ROWS} rows of 1000 bytes`, m);
  });
});

interface Activity {
  state: string | null;
  wait_event_type: string | null;
  wait_event: string | null;
}

async function activity(d: pg.Client, pid: number): Promise<Activity | undefined> {
  const r = await d.query<Activity>(
    'SELECT state, wait_event_type, wait_event FROM pg_stat_activity WHERE pid = $1',
    [pid],
  );
  return r.rows[0];
}

const show = (a: Activity | undefined): string =>
  a ? `${a.state} ${a.wait_event_type ?? '-'}/${a.wait_event ?? '-'}` : 'gone';

/** Polls until the backend waits in ClientWrite; returns what it saw when it did not in time. */
async function untilClientWrite(d: pg.Client, pid: number, timeoutMs: number): Promise<string[]> {
  const seen: string[] = [];
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const a = await activity(d, pid);
    if (a?.wait_event === 'ClientWrite') return [];
    seen.push(show(a));
    await sleep(50);
  }
  return seen;
}

/**
 * The most two TCP buffers can hold between the proxy and a client that does
 * not read: the proxy's send buffer and the client's receive buffer, at their
 * largest (tcp_wmem / tcp_rmem maxima), plus 16 MiB for Node's own queue.
 */
function inFlightBound(): number {
  const max = (file: string): number => Number(readFileSync(file, 'utf8').trim().split(/\s+/)[2]);
  return max('/proc/sys/net/ipv4/tcp_wmem') + max('/proc/sys/net/ipv4/tcp_rmem') + 16 * 2 ** 20;
}

test('a slow client: the server waits to write, the proxy holds nothing, and the result arrives whole', async (t) => {
  const want = await directly(SLOW);
  const bound = inFlightBound();
  assert.ok(
    want.bytes > 4 * bound,
    `the result (${want.bytes} bytes) must dwarf the socket buffers (${bound})`,
  );
  const d = await direct();
  try {
    await withProxy(t, '', async (p) => {
      const c = await connectTo(p.port);
      let watch: RssWatch | undefined;
      try {
        const backend = Number(await c.scalar('SELECT pg_backend_pid()'));
        const sentBefore = await p.sentBytes();
        const receivedBefore = c.received;
        /** Bytes of this result the proxy has passed on that the client has not read yet. */
        const inFlight = async (): Promise<number> =>
          (await p.sentBytes()) - sentBefore - (c.received - receivedBefore);
        watch = new RssWatch(p.pid);
        c.pause();
        const done = c.query(SLOW, { sha256: true });
        done.catch(() => undefined); // awaited below; a failure must not surface as unhandled first

        // Not reading at all: once the socket buffers are full, the proxy stops
        // reading upstream and the server blocks in its write (ClientWrite).
        const before = await untilClientWrite(d, backend, 10_000);
        assert.deepEqual(before, [], `the server never blocked writing; it was: ${before.join(', ')}`);
        const waits: string[] = [];
        for (let i = 0; i < 10; i++) {
          await sleep(200);
          waits.push(show(await activity(d, backend)));
        }
        const held = await inFlight();
        const pausedGrowth = watch.peakMb() - watch.baselineMb;
        t.diagnostic(
          `client paused for 2 s: the proxy passed on ${(held / 1e6).toFixed(1)} MB of ${(want.bytes / 1e6).toFixed(1)} ` +
            `(bound ${(bound / 1e6).toFixed(1)}), RSS growth ${mb(pausedGrowth)}; server: ${waits.join(', ')}`,
        );
        assert.deepEqual(
          waits,
          waits.map(() => 'active Client/ClientWrite'),
          'the server must stay blocked writing while the client does not read',
        );
        assert.ok(held <= bound, `the proxy passed on ${held} bytes to a client that reads nothing`);
        assert.ok(
          pausedGrowth <= GROWTH_MB,
          `the proxy grew ${mb(pausedGrowth)} while the client was paused`,
        );

        // Reading in small bursts (5 ms in every 100): the server is still the one that waits.
        for (let i = 0; i < 20; i++) {
          c.resume();
          await sleep(5);
          c.pause();
          await sleep(95);
        }
        const afterBursts = await untilClientWrite(d, backend, 5_000);
        assert.deepEqual(
          afterBursts,
          [],
          `the server stopped waiting for the slow client: ${afterBursts.join(', ')}`,
        );
        const read = c.received - receivedBefore;
        const heldAfter = await inFlight();
        t.diagnostic(
          `after 20 bursts: the client read ${(read / 1e6).toFixed(1)} MB, ${(heldAfter / 1e6).toFixed(1)} MB in flight`,
        );
        assert.ok(read > 0 && read < want.bytes, `the bursts read ${read} of ${want.bytes} bytes`);
        assert.ok(heldAfter <= bound, `${heldAfter} bytes in flight to a slow client`);

        // Reading at full speed again: the rest arrives, all of it.
        c.resume();
        const result = await within(done, 60_000, 'the rest of the slow result');
        await sleep(SETTLE_MS);
        const m: Measured = { result, ...watch.stop() };
        t.diagnostic(figures('a slow client (paused, then bursts)', m, want.ms));
        assertSame(result, want, 'the slow result');
        assertBounded('a slow client', m, want.ms);
      } finally {
        watch?.close();
        c.close();
      }
    });
  } finally {
    await d.end();
  }
});

test('with result limits on (inspecting every DataRow), a 1M-row result still leaves the proxy small', async (t) => {
  const want = await directly(ROWS_1M);
  await withProxy(
    t,
    'limits:\n  max_result_rows: 10000000\n  max_result_bytes: 100000000000\n',
    async (p) => {
      const m = await throughProxy(p, ROWS_1M);
      t.diagnostic(figures('1M rows with result limits on', m, want.ms));
      assertSame(m.result, want, '1M rows with result limits on');
      assertBounded('1M rows with result limits on', m, want.ms);
    },
  );
});
