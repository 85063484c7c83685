import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { serialize } from 'pg-protocol';
import { FrontendCode, StartupCode } from '../../src/protocol/codes.js';
import { encodeQuery, encodeStartupMessage, encodeTerminate } from '../../src/protocol/frontend-messages.js';
import { type FrameResult, MessageFramer } from '../../src/protocol/message-framer.js';

const MAX = 1 << 20;

/** A deterministic PRNG (mulberry32) so random splits are reproducible. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const b = (u: Uint8Array): Buffer => Buffer.from(u);

/** What a real client sends: startup, simple query, an extended-protocol round, terminate. */
const startup = encodeStartupMessage([
  ['user', 'alice'],
  ['database', 'shop'],
  ['application_name', 'psql'],
]);
const typedMessages: Buffer[] = [
  encodeQuery('SELECT 1'),
  b(serialize.parse({ name: 's1', text: 'SELECT * FROM t WHERE id = $1', types: [23] })),
  b(serialize.bind({ statement: 's1', portal: '', values: ['42', null, Buffer.from([0, 1, 2])] })),
  b(serialize.describe({ type: 'P', name: '' })),
  b(serialize.execute({ portal: '', rows: 0 })),
  b(serialize.sync()),
  encodeQuery(''),
  b(serialize.flush()),
  encodeQuery('SELECT ' + "'x'".repeat(700)),
  encodeTerminate(),
];
const stream = Buffer.concat([startup, ...typedMessages]);
const expected: Array<{ code: number; msg: Buffer }> = [
  { code: 0, msg: startup },
  ...typedMessages.map((m) => ({ code: m[0]!, msg: m })),
];

/** Feeds chunks, switching to typed after the first message; collects messages. */
function frameAll(chunks: Buffer[], max = MAX): Array<{ code: number; msg: Buffer }> {
  const f = new MessageFramer(max, { untypedFirst: true });
  const out: Array<{ code: number; msg: Buffer }> = [];
  for (const c of chunks) {
    f.push(c);
    for (;;) {
      const r = f.next();
      if (r.kind === 'incomplete') break;
      assert.equal(r.kind, 'message', `unexpected ${JSON.stringify(r)}`);
      if (r.kind !== 'message') break;
      // Copy: a later push may reuse nothing, but the test should not depend on it.
      out.push({ code: r.code, msg: Buffer.from(r.msg) });
      if (out.length === 1) f.expectUntyped(false);
    }
  }
  assert.equal(f.buffered, 0, 'nothing left over');
  return out;
}

function splitAt(buf: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, buf.length]) {
    out.push(buf.subarray(prev, c));
    prev = c;
  }
  return out;
}

describe('MessageFramer: the same messages however the stream is split', () => {
  test('whole stream in one chunk', () => {
    assert.deepEqual(frameAll([stream]), expected);
    assert.equal(expected[1]!.code, FrontendCode.Query);
    assert.equal(expected.at(-1)!.code, FrontendCode.Terminate);
  });

  test('split in two at every byte offset', () => {
    for (let i = 0; i <= stream.length; i++) {
      assert.deepEqual(frameAll(splitAt(stream, [i])), expected, `split at ${i}`);
    }
  });

  test('split in three at every pair of offsets around message boundaries', () => {
    // All pairs would be O(n²) framings of a ~3 KB stream; take every offset
    // within 6 bytes of a message boundary, paired with each of the 10 after it.
    const boundaries = [0];
    for (const m of [startup, ...typedMessages]) boundaries.push(boundaries.at(-1)! + m.length);
    const near = new Set<number>();
    for (const at of boundaries) for (let d = -6; d <= 6; d++) near.add(at + d);
    for (const i of [...near].filter((x) => x >= 0 && x <= stream.length)) {
      for (let j = i; j <= Math.min(stream.length, i + 10); j++) {
        assert.deepEqual(frameAll(splitAt(stream, [i, j])), expected, `split at ${i},${j}`);
      }
    }
  });

  test('byte by byte', () => {
    const chunks = [...stream].map((x) => Buffer.from([x]));
    assert.deepEqual(frameAll(chunks), expected);
  });

  test('random splits with a fixed seed, chunks sliced from bigger buffers', () => {
    const rand = rng(20240611);
    for (let round = 0; round < 300; round++) {
      const cuts: number[] = [];
      let pos = 0;
      while (pos < stream.length) {
        pos += 1 + Math.floor(rand() * (rand() < 0.5 ? 8 : 600));
        if (pos < stream.length) cuts.push(pos);
      }
      const chunks = splitAt(stream, cuts).map((c) => {
        const big = Buffer.alloc(c.length + 6, 0xee);
        c.copy(big, 3);
        return big.subarray(3, 3 + c.length);
      });
      assert.deepEqual(frameAll(chunks), expected, `round ${round}: cuts ${cuts.join(',')}`);
    }
  });

  test('empty chunks change nothing', () => {
    const chunks = splitAt(stream, [0, 0, 3, 3, 9, 9, 9]);
    assert.deepEqual(frameAll(chunks), expected);
  });

  test('messages inside one chunk are subarrays of it (no copy)', () => {
    const f = new MessageFramer(MAX);
    const chunk = Buffer.concat(typedMessages);
    f.push(chunk);
    for (const m of typedMessages) {
      const r = f.next();
      assert.equal(r.kind, 'message');
      if (r.kind !== 'message') return;
      assert.equal(r.msg.buffer, chunk.buffer);
      assert.deepEqual(r.msg, m);
    }
    assert.deepEqual(f.next(), { kind: 'incomplete' });
  });
});

describe('MessageFramer: startup packets', () => {
  test('untyped first: SSLRequest, then the StartupMessage, then typed', () => {
    const ssl = Buffer.alloc(8);
    ssl.writeInt32BE(8, 0);
    ssl.writeInt32BE(StartupCode.SSLRequest, 4);
    const all = Buffer.concat([ssl, startup, encodeQuery('SELECT 1')]);
    for (let i = 0; i <= all.length; i++) {
      const f = new MessageFramer(MAX, { untypedFirst: true });
      const got: FrameResult[] = [];
      for (const c of splitAt(all, [i])) {
        f.push(c);
        for (let r = f.next(); r.kind !== 'incomplete'; r = f.next()) {
          got.push(r);
          if (got.length === 2) f.expectUntyped(false);
        }
      }
      assert.deepEqual(
        got.map((r) => r.kind === 'message' && [r.code, r.msg.toString('hex')]),
        [
          [0, ssl.toString('hex')],
          [0, startup.toString('hex')],
          [FrontendCode.Query, encodeQuery('SELECT 1').toString('hex')],
        ],
        `split at ${i}`,
      );
    }
  });

  test('drain hands back what is buffered', () => {
    const f = new MessageFramer(MAX);
    f.push(stream.subarray(0, 3));
    f.push(stream.subarray(3, 10));
    assert.deepEqual(f.drain(), stream.subarray(0, 10));
    assert.equal(f.buffered, 0);
  });
});

describe('MessageFramer: bad lengths', () => {
  const header = (code: number, len: number): Buffer => {
    const h = Buffer.alloc(5);
    h[0] = code;
    h.writeInt32BE(len, 1);
    return h;
  };
  const uheader = (len: number): Buffer => {
    const h = Buffer.alloc(4);
    h.writeInt32BE(len, 0);
    return h;
  };

  const cases: Array<[string, boolean, Buffer, FrameResult]> = [
    ['typed length 0', false, header(0x51, 0), { kind: 'error', reason: 'length_invalid', length: 0 }],
    ['typed length 3', false, header(0x51, 3), { kind: 'error', reason: 'length_invalid', length: 3 }],
    ['typed length -1', false, header(0x51, -1), { kind: 'error', reason: 'length_invalid', length: -1 }],
    [
      'typed length INT32_MIN',
      false,
      header(0x51, -0x80000000),
      { kind: 'error', reason: 'length_invalid', length: -0x80000000 },
    ],
    [
      'typed length max+1',
      false,
      header(0x51, MAX + 1),
      { kind: 'error', reason: 'length_too_large', length: MAX + 1 },
    ],
    [
      'typed length 0x7fffffff',
      false,
      header(0x51, 0x7fffffff),
      { kind: 'error', reason: 'length_too_large', length: 0x7fffffff },
    ],
    ['untyped length 4', true, uheader(4), { kind: 'error', reason: 'length_invalid', length: 4 }],
    ['untyped length 7', true, uheader(7), { kind: 'error', reason: 'length_invalid', length: 7 }],
    ['untyped length -8', true, uheader(-8), { kind: 'error', reason: 'length_invalid', length: -8 }],
    [
      'untyped length max+1',
      true,
      uheader(MAX + 1),
      { kind: 'error', reason: 'length_too_large', length: MAX + 1 },
    ],
  ];
  for (const [name, untypedFirst, hdr, want] of cases) {
    test(`${name}: an error as soon as the header is in, before any body`, () => {
      // Header byte by byte: incomplete until the last header byte, then the error.
      const f = new MessageFramer(MAX, { untypedFirst });
      for (let i = 0; i < hdr.length - 1; i++) {
        f.push(hdr.subarray(i, i + 1));
        assert.deepEqual(f.next(), { kind: 'incomplete' }, `after ${i + 1} header bytes`);
      }
      f.push(hdr.subarray(hdr.length - 1));
      assert.deepEqual(f.next(), want);
      assert.equal(f.buffered, hdr.length, 'no body was awaited or reserved');
    });
  }

  test('exactly max is accepted', () => {
    const f = new MessageFramer(16);
    const m = Buffer.concat([header(0x51, 16), Buffer.from('0123456789a\0')]);
    f.push(m);
    const r = f.next();
    assert.equal(r.kind, 'message');
  });

  test('a claimed 1 GB message below the max costs only the bytes sent', () => {
    const f = new MessageFramer(0x7fffffff);
    const hdr = header(0x51, 1 << 30);
    f.push(hdr);
    f.push(Buffer.from('SELE'));
    f.push(Buffer.from('C'));
    assert.deepEqual(f.next(), { kind: 'incomplete' });
    assert.equal(f.buffered, 10);
    const before = process.memoryUsage().arrayBuffers;
    for (let i = 0; i < 5; i++) assert.deepEqual(f.next(), { kind: 'incomplete' });
    f.push(Buffer.from('T'));
    assert.deepEqual(f.next(), { kind: 'incomplete' });
    assert.equal(f.buffered, 11);
    assert.ok(process.memoryUsage().arrayBuffers - before < 64 << 20, 'no large allocation');
  });

  test('a claimed 1 GB startup packet likewise', () => {
    const f = new MessageFramer(0x7fffffff, { untypedFirst: true });
    f.push(uheader(1 << 30));
    f.push(Buffer.from('\0\x03\0\0user\0'));
    assert.deepEqual(f.next(), { kind: 'incomplete' });
    assert.equal(f.buffered, 4 + 4 + 5);
  });
});
