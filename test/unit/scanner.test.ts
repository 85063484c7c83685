import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BackendCode, TxStatus } from '../../src/protocol/codes.js';
import {
  encodeAuthenticationOk,
  encodeBackendKeyData,
  encodeErrorResponse,
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../../src/protocol/backend-messages.js';
import { BackendScanner, codeSet, type Verdict } from '../../src/protocol/backend-scanner.js';
import { MessageWriter } from '../../src/protocol/writer.js';

function rowDescription(cols: string[]): Buffer {
  const w = new MessageWriter(BackendCode.RowDescription).int16(cols.length);
  for (const c of cols) w.cstring(c).int32(0).int16(0).int32(25).int16(-1).int32(-1).int16(0);
  return w.finish();
}

function dataRow(values: Array<string | null>): Buffer {
  const w = new MessageWriter(BackendCode.DataRow).int16(values.length);
  for (const v of values) {
    if (v === null) w.int32(-1);
    else w.int32(Buffer.byteLength(v)).bytes(Buffer.from(v));
  }
  return w.finish();
}

const commandComplete = (tag: string): Buffer =>
  new MessageWriter(BackendCode.CommandComplete).cstring(tag).finish();

/** A server's answer to a connection and two queries, the second failing. */
const messages: Buffer[] = [
  encodeAuthenticationOk(),
  encodeParameterStatus('server_version', '17.2'),
  encodeParameterStatus('is_superuser', 'on'),
  encodeParameterStatus('client_encoding', 'UTF8'),
  encodeBackendKeyData({ processId: 4242, secretKey: Buffer.from([1, 2, 3, 4]) }),
  encodeReadyForQuery(TxStatus.Idle),
  rowDescription(['id', 'name', 'payload']),
  ...Array.from({ length: 60 }, (_, i) =>
    dataRow([String(i), i % 7 === 0 ? null : `name-${i}`, 'x'.repeat((i * 13) % 90)]),
  ),
  commandComplete('SELECT 60'),
  encodeReadyForQuery(TxStatus.Idle),
  encodeErrorResponse({ severity: 'ERROR', code: '25006', message: 'cannot execute INSERT' }),
  encodeReadyForQuery(TxStatus.Idle),
  rowDescription(['n']),
  dataRow(['1']),
  commandComplete('SELECT 1'),
  encodeReadyForQuery(TxStatus.InBlock),
];
const stream = Buffer.concat(messages);

const INTERESTING = [
  BackendCode.ParameterStatus,
  BackendCode.BackendKeyData,
  BackendCode.ErrorResponse,
  BackendCode.ReadyForQuery,
];
const interestingSet = codeSet(INTERESTING);
const isInteresting = (m: Buffer): boolean => INTERESTING.includes(m[0]! as never);

/** A chunk in its own (non-pooled) ArrayBuffer, so shared memory can be told apart. */
function own(bytes: Buffer): Buffer {
  const c = Buffer.alloc(bytes.length);
  bytes.copy(c);
  return c;
}

function chunksAt(cuts: number[], src = stream): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, src.length]) {
    out.push(own(src.subarray(prev, c)));
    prev = c;
  }
  return out;
}

type Policy = (msg: Buffer, scanner: BackendScanner) => Verdict;

/** Runs a scanner over the chunks; returns output pieces (per chunk) and what the inspector saw. */
function run(chunks: Buffer[], policy: Policy = () => undefined, maxInspected = 1 << 20) {
  const seen: Buffer[] = [];
  const scanner: BackendScanner = new BackendScanner(
    interestingSet,
    (code, msg) => {
      assert.equal(code, msg[0]);
      seen.push(Buffer.from(msg));
      return policy(msg, scanner);
    },
    maxInspected,
  );
  const pieces = chunks.map((c) => scanner.scan(c));
  return { pieces, out: Buffer.concat(pieces.flat()), seen, scanner };
}

/** The output a policy should give, computed message by message. */
function expectedOutput(policy: Policy): Buffer {
  let halted = false;
  const fake = { halt: () => (halted = true) } as unknown as BackendScanner;
  const parts: Buffer[] = [];
  for (const m of messages) {
    if (!isInteresting(m)) parts.push(m);
    else {
      const v = policy(m, fake);
      if (v === undefined) parts.push(m);
      else if (v !== null) parts.push(v);
    }
    if (halted) break;
  }
  return Buffer.concat(parts);
}

const everyOffset = Array.from({ length: stream.length + 1 }, (_, i) => i);

const newKey = encodeBackendKeyData({ processId: 1, secretKey: Buffer.from('PRXY') });
const fakeReady = encodeReadyForQuery(TxStatus.Failed);
const policies: Array<[string, Policy]> = [
  ['keep everything', () => undefined],
  [
    'replace BackendKeyData, drop is_superuser, replace the InBlock ReadyForQuery',
    (m) => {
      if (m[0] === BackendCode.BackendKeyData) return newKey;
      if (m[0] === BackendCode.ParameterStatus && m.includes('is_superuser')) return null;
      if (m[0] === BackendCode.ReadyForQuery && m[5] === TxStatus.InBlock) return fakeReady;
      return undefined;
    },
  ],
  ['drop every interesting message', () => null],
  ['replace every interesting message by an empty buffer', () => Buffer.alloc(0)],
  [
    'halt after the ErrorResponse (kept)',
    (m, s) => {
      if (m[0] === BackendCode.ErrorResponse) s.halt();
      return undefined;
    },
  ],
  [
    'halt at the ErrorResponse, replacing it',
    (m, s) => {
      if (m[0] !== BackendCode.ErrorResponse) return undefined;
      s.halt();
      return encodeErrorResponse({ severity: 'FATAL', code: '57P01', message: 'bye' });
    },
  ],
  [
    'halt at the ErrorResponse, dropping it',
    (m, s) => {
      if (m[0] !== BackendCode.ErrorResponse) return undefined;
      s.halt();
      return null;
    },
  ],
  [
    'halt at the very first ParameterStatus',
    (m, s) => {
      s.halt();
      return m[0] === BackendCode.ParameterStatus ? undefined : null;
    },
  ],
];

describe('BackendScanner: output at every split', () => {
  const interestingMessages = messages.filter(isInteresting);

  for (const [name, policy] of policies) {
    test(name, () => {
      const want = expectedOutput(policy);
      const halts = name.startsWith('halt');
      for (const i of everyOffset) {
        const { out, seen } = run(chunksAt([i]), policy);
        assert.ok(out.equals(want), `split at ${i}: output differs`);
        if (!halts) assert.deepEqual(seen, interestingMessages, `split at ${i}: inspected`);
      }
    });
  }

  test('keep everything: split in three around every offset, and byte by byte', () => {
    for (let i = 0; i < stream.length; i += 3) {
      for (const j of [i + 1, i + 2, i + 4, i + 5, i + 6, i + 9]) {
        if (j > stream.length) continue;
        const { out, seen } = run(chunksAt([i, j]));
        assert.ok(out.equals(stream), `split at ${i},${j}`);
        assert.deepEqual(seen, interestingMessages);
      }
    }
    const bytes = run(chunksAt(Array.from({ length: stream.length - 1 }, (_, i) => i + 1)));
    assert.ok(bytes.out.equals(stream));
    assert.deepEqual(bytes.seen, interestingMessages);
  });

  test('a second policy byte by byte', () => {
    const [, policy] = policies[1]!;
    const bytes = run(chunksAt(Array.from({ length: stream.length - 1 }, (_, i) => i + 1)), policy);
    assert.ok(bytes.out.equals(expectedOutput(policy)));
  });

  test('the inspector may keep a reference: it sees a message that stays intact', () => {
    const kept: Buffer[] = [];
    const scanner = new BackendScanner(
      interestingSet,
      (_c, msg) => {
        kept.push(msg);
        return undefined;
      },
      1 << 20,
    );
    // Split inside the BackendKeyData so it is assembled from two chunks.
    const k = messages.slice(0, 4).reduce((n, m) => n + m.length, 0) + 7;
    for (const c of chunksAt([k])) scanner.scan(c);
    assert.deepEqual(kept, interestingMessages);
  });

  test('after halt() nothing more comes out', () => {
    const policy = policies.find(([n]) => n === 'halt after the ErrorResponse (kept)')![1];
    const { scanner } = run([own(stream)], policy);
    assert.deepEqual(scanner.scan(own(stream)), []);
    assert.deepEqual(scanner.scan(Buffer.alloc(0)), []);
  });
});

describe('BackendScanner: passthrough is not copied', () => {
  test('one chunk: every non-replaced piece is a view of the chunk', () => {
    const chunk = own(stream);
    const { pieces } = run([chunk]);
    assert.equal(pieces[0]!.length, 1, 'kept messages do not break the run');
    assert.equal(pieces[0]![0], chunk, 'the chunk itself is passed on');
    const [, policy] = policies[1]!;
    const r = run([chunk], policy);
    for (const p of r.pieces[0]!) {
      assert.ok(p === newKey || p === fakeReady || p.buffer === chunk.buffer, 'piece shares the chunk');
    }
  });

  test('at every split, bytes copied are at most the one message cut in two', () => {
    const starts: number[] = [];
    let at = 0;
    for (const m of messages) {
      starts.push(at);
      at += m.length;
    }
    for (const i of everyOffset) {
      const chunks = chunksAt([i]);
      const { pieces } = run(chunks);
      let copied = 0;
      pieces.forEach((ps, n) => {
        for (const p of ps) if (p.buffer !== chunks[n]!.buffer) copied += p.length;
      });
      const k = starts.findLastIndex((s) => s < i);
      const cut = k >= 0 && i < starts[k]! + messages[k]!.length ? messages[k]! : undefined;
      let allowed = 0;
      if (cut) allowed = isInteresting(cut) ? cut.length : i - starts[k]! < 5 ? 5 : 0;
      assert.ok(copied <= allowed, `split at ${i}: ${copied} bytes copied, allowed ${allowed}`);
    }
  });

  test('large DataRows stream through without being assembled', () => {
    const big = dataRow(['y'.repeat(100_000)]);
    const s = Buffer.concat([big, encodeReadyForQuery(TxStatus.Idle)]);
    // maxInspected is tiny: a DataRow is never inspected so its size does not matter.
    const chunks = chunksAt([3, 50_000, 100_010], s);
    const { pieces, out, seen } = run(chunks, () => undefined, 64);
    assert.ok(out.equals(s));
    assert.equal(seen.length, 1);
    pieces.forEach((ps, n) => {
      for (const p of ps) if (p.length > 5) assert.equal(p.buffer, chunks[n]!.buffer);
    });
  });
});

describe('BackendScanner: bad lengths throw RangeError, never loop', () => {
  const header = (code: number, len: number): Buffer => {
    const h = Buffer.alloc(5);
    h[0] = code;
    h.writeInt32BE(len, 1);
    return h;
  };
  const bad: Array<[string, Buffer]> = [];
  for (const len of [0, 3, -1, -0x80000000]) {
    bad.push([`DataRow length ${len}`, header(BackendCode.DataRow, len)]);
    bad.push([`ReadyForQuery length ${len}`, header(BackendCode.ReadyForQuery, len)]);
  }
  bad.push(['ErrorResponse longer than maxInspected', header(BackendCode.ErrorResponse, 1 << 30)]);

  for (const [name, hdr] of bad) {
    test(`${name}: whole header, split header, after other messages`, () => {
      const prefix = messages.slice(0, 3);
      const s = Buffer.concat([...prefix, hdr, Buffer.alloc(20)]);
      const headerAt = prefix.reduce((n, m) => n + m.length, 0);
      for (const cuts of [[], [headerAt], [headerAt + 1], [headerAt + 2], [headerAt + 4], [headerAt + 5]]) {
        const scanner = new BackendScanner(interestingSet, () => undefined, 1 << 16);
        assert.throws(
          () => {
            for (const c of chunksAt(cuts, s)) scanner.scan(c);
          },
          RangeError,
          `cuts ${cuts.join(',')}`,
        );
      }
    });
  }

  test('an inspected message exactly at maxInspected passes', () => {
    const z = encodeReadyForQuery(TxStatus.Idle); // length field 5
    const scanner = new BackendScanner(interestingSet, () => undefined, 5);
    assert.ok(Buffer.concat(scanner.scan(own(z))).equals(z));
  });
});

describe('BackendScanner: counted messages, from headers only', () => {
  const counted = codeSet([BackendCode.DataRow]);

  /** Drops DataRows after the first `keep`, and records every length it is told. */
  function countingRun(chunks: Buffer[], keep: number) {
    const lengths: number[] = [];
    const scanner = new BackendScanner(
      interestingSet,
      () => undefined,
      1 << 20,
      counted,
      (code, length) => {
        assert.equal(code, BackendCode.DataRow);
        lengths.push(length);
        return lengths.length > keep;
      },
    );
    const out = Buffer.concat(chunks.flatMap((c) => scanner.scan(c)));
    return { out, lengths };
  }

  const rows = messages.filter((m) => m[0] === BackendCode.DataRow);
  for (const keep of [0, 1, 30, 1000]) {
    test(`keeps the first ${keep} rows and drops the rest, at every split`, () => {
      let n = 0;
      const want = Buffer.concat(messages.filter((m) => m[0] !== BackendCode.DataRow || n++ < keep));
      for (const i of everyOffset) {
        for (const j of [i + 1, i + 3, i + 7]) {
          const cuts = j < stream.length ? [i, j] : [i];
          const { out, lengths } = countingRun(chunksAt(cuts), keep);
          assert.ok(out.equals(want), `split at ${cuts.join(',')}: output differs`);
          assert.deepEqual(
            lengths,
            rows.map((r) => r.length),
            `split at ${cuts.join(',')}: lengths`,
          );
        }
      }
      const bytes = countingRun(chunksAt(Array.from({ length: stream.length - 1 }, (_, i) => i + 1)), keep);
      assert.ok(bytes.out.equals(want), 'byte by byte');
    });
  }

  test('a counted row is never assembled: a 64 MB row streams through a 1 MB inspection limit', () => {
    const big = Buffer.alloc(64 * 1024 * 1024 + 11);
    big[0] = BackendCode.DataRow;
    big.writeInt32BE(big.length - 1, 1);
    let told = 0;
    const scanner = new BackendScanner(
      interestingSet,
      () => undefined,
      1 << 20,
      counted,
      (_c, len) => {
        told = len;
        return false;
      },
    );
    let forwarded = 0;
    for (let at = 0; at < big.length; at += 65536) {
      for (const p of scanner.scan(big.subarray(at, at + 65536))) forwarded += p.length;
    }
    assert.equal(told, big.length);
    assert.equal(forwarded, big.length);
  });
});
