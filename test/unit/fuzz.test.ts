import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { serialize } from 'pg-protocol';
import { BackendCode, FrontendCode, StartupCode, TxStatus } from '../../src/protocol/codes.js';
import {
  encodeBackendKeyData,
  encodeErrorResponse,
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../../src/protocol/backend-messages.js';
import { BackendScanner, codeSet } from '../../src/protocol/backend-scanner.js';
import {
  decodeParse,
  decodeQuery,
  decodeStartupPacket,
  encodeCancelRequest,
  encodeQuery,
  encodeStartupMessage,
  encodeTerminate,
} from '../../src/protocol/frontend-messages.js';
import { MessageFramer } from '../../src/protocol/message-framer.js';
import { MalformedMessage } from '../../src/protocol/reader.js';

/** mulberry32: deterministic, so a failure names a reproducible iteration. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  const bytes = (n: number): Buffer => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = next() < 0.15 ? 0 : int(256);
    return b;
  };
  return { next, int, bytes };
}
type Rng = ReturnType<typeof rng>;

const u8 = (x: Uint8Array): Buffer => Buffer.from(x);

const validStartups: Buffer[] = [
  encodeStartupMessage([
    ['user', 'alice'],
    ['database', 'db'],
    ['options', '-c a=b'],
  ]),
  encodeCancelRequest(42, Buffer.alloc(4, 7)),
  encodeCancelRequest(42, Buffer.alloc(32, 7)),
  (() => {
    const b = Buffer.alloc(8);
    b.writeInt32BE(8, 0);
    b.writeInt32BE(StartupCode.SSLRequest, 4);
    return b;
  })(),
];
const validTyped: Buffer[] = [
  encodeQuery('SELECT 1'),
  encodeQuery(''),
  u8(serialize.parse({ name: 's', text: 'SELECT $1', types: [23, 25] })),
  u8(serialize.parse({ name: '', text: 'SELECT 2', types: [] })),
  u8(serialize.bind({ statement: 's', values: ['1', null] })),
  u8(serialize.execute({ portal: '', rows: 10 })),
  u8(serialize.sync()),
  encodeTerminate(),
];

/** Mutations of a valid message; the length field is kept honest unless `lie`. */
function mutate(r: Rng, msg: Buffer, lenAt: 0 | 1, lie = false): Buffer {
  let b = Buffer.from(msg);
  const op = r.int(6);
  if (op === 0 && b.length > lenAt + 4) b[lenAt + 4 + r.int(b.length - lenAt - 4)] = r.int(256);
  else if (op === 1) b = Buffer.concat([b, r.bytes(1 + r.int(8))]);
  else if (op === 2 && b.length > lenAt + 5) b = b.subarray(0, lenAt + 4 + r.int(b.length - lenAt - 4));
  else if (op === 3) {
    const at = lenAt + 4 + r.int(Math.max(1, b.length - lenAt - 4));
    b = Buffer.concat([b.subarray(0, at), Buffer.from([0]), b.subarray(at)]);
  } else if (op === 4 && b.length > lenAt + 4) {
    for (let k = 0; k < 3; k++) b[lenAt + 4 + r.int(b.length - lenAt - 4)] = r.next() < 0.5 ? 0 : 0xff;
  } else b = Buffer.concat([b.subarray(0, lenAt + 4), r.bytes(r.int(40))]);
  if (lenAt === 1 && b.length < 5) b = Buffer.concat([b, Buffer.alloc(5 - b.length)]);
  if (lenAt === 0 && b.length < 8) b = Buffer.concat([b, Buffer.alloc(8 - b.length)]);
  b.writeInt32BE(lie ? r.int(1 << 16) - 8 : b.length - lenAt, lenAt);
  return b;
}

/** Calls a decoder: returns normally or throws MalformedMessage, nothing else. */
function onlyMalformed(what: string, i: number, input: Buffer, fn: () => unknown): boolean {
  try {
    fn();
    return true;
  } catch (err) {
    if (!(err instanceof MalformedMessage)) {
      assert.fail(`${what} iteration ${i}: threw ${String(err)} for ${input.toString('hex')}`);
    }
    return false;
  }
}

describe('fuzz: decoders on whole messages throw only MalformedMessage', () => {
  test('decodeStartupPacket: random bodies and mutated valid packets', () => {
    const r = rng(1);
    let ok = 0;
    for (let i = 0; i < 4000; i++) {
      let msg: Buffer;
      if (i % 2 === 0) {
        msg = mutate(r, validStartups[r.int(validStartups.length)]!, 0);
      } else {
        const body = r.bytes(4 + r.int(60));
        // Often a plausible request code, so the interesting branches are reached.
        const codes = [
          3 << 16,
          (3 << 16) | 2,
          StartupCode.CancelRequest,
          StartupCode.SSLRequest,
          r.int(1 << 30),
        ];
        body.writeInt32BE(codes[r.int(codes.length)]!, 0);
        msg = Buffer.concat([Buffer.alloc(4), body]);
        msg.writeInt32BE(msg.length, 0);
      }
      if (onlyMalformed('decodeStartupPacket', i, msg, () => decodeStartupPacket(msg))) ok++;
    }
    assert.ok(ok > 100, `some inputs decode (${ok})`);
  });

  test('decodeQuery and decodeParse: random bodies and mutated valid messages', () => {
    const r = rng(2);
    for (let i = 0; i < 4000; i++) {
      let msg: Buffer;
      if (i % 2 === 0) msg = mutate(r, validTyped[r.int(4)]!, 1);
      else {
        msg = Buffer.concat([
          Buffer.from([r.next() < 0.5 ? FrontendCode.Query : FrontendCode.Parse, 0, 0, 0, 0]),
          r.bytes(r.int(40)),
        ]);
        msg.writeInt32BE(msg.length - 1, 1);
      }
      onlyMalformed('decodeQuery', i, msg, () => decodeQuery(msg));
      onlyMalformed('decodeParse', i, msg, () => decodeParse(msg));
    }
  });

  test('a decoded Query never contains a NUL and decodes exactly the bytes before it', () => {
    const r = rng(3);
    for (let i = 0; i < 2000; i++) {
      const msg = mutate(r, encodeQuery('SELECT 1; SELECT 2'), 1);
      try {
        const text = decodeQuery(msg);
        assert.equal(text.indexOf(0), -1);
        assert.equal(5 + text.length + 1, msg.length, 'the NUL is the last byte');
      } catch (err) {
        assert.ok(err instanceof MalformedMessage);
      }
    }
  });
});

describe('fuzz: MessageFramer', () => {
  function frameAll(r: Rng, stream: Buffer, max: number, untypedFirst: boolean) {
    const f = new MessageFramer(max, { untypedFirst });
    let steps = 0;
    let first = untypedFirst;
    for (let pos = 0; pos < stream.length;) {
      const n = 1 + r.int(r.next() < 0.3 ? 4 : 200);
      f.push(stream.subarray(pos, pos + n));
      pos += n;
      for (;;) {
        assert.ok(++steps < stream.length * 4 + 100, 'the framer does not spin');
        const res = f.next();
        if (res.kind === 'incomplete') break;
        if (res.kind === 'error') {
          assert.ok(res.reason === 'length_invalid' || res.reason === 'length_too_large');
          if (res.reason === 'length_too_large') assert.ok(res.length > max);
          return;
        }
        const lenAt = first ? 0 : 1;
        assert.equal(res.msg.length, lenAt + res.msg.readInt32BE(lenAt));
        assert.ok(res.msg.length <= max + 1);
        // Whatever the framer hands over goes to the decoders.
        if (first) onlyMalformed('decodeStartupPacket', steps, res.msg, () => decodeStartupPacket(res.msg));
        else if (res.code === FrontendCode.Query)
          onlyMalformed('decodeQuery', steps, res.msg, () => decodeQuery(res.msg));
        else if (res.code === FrontendCode.Parse)
          onlyMalformed('decodeParse', steps, res.msg, () => decodeParse(res.msg));
        if (first) {
          first = false;
          f.expectUntyped(false);
        }
      }
    }
  }

  test('random byte streams', () => {
    const r = rng(4);
    for (let i = 0; i < 1500; i++) {
      frameAll(r, r.bytes(r.int(300)), 16 + r.int(1 << 12), r.next() < 0.5);
    }
  });

  test('random messages with plausible headers and random bodies', () => {
    const r = rng(7);
    const codes = [FrontendCode.Query, FrontendCode.Parse, FrontendCode.Bind, FrontendCode.Sync, 0, 0xff];
    for (let i = 0; i < 1500; i++) {
      const parts = [mutate(r, validStartups[0]!, 0)];
      for (let k = 1 + r.int(6); k > 0; k--) {
        const body = r.bytes(r.int(30));
        const head = Buffer.from([codes[r.int(codes.length)]!, 0, 0, 0, 0]);
        head.writeInt32BE(r.next() < 0.05 ? r.int(16) : 4 + body.length, 1);
        parts.push(head, body);
      }
      frameAll(r, Buffer.concat(parts), 40 + r.int(64), true);
    }
  });

  test('mutated realistic streams', () => {
    const r = rng(5);
    for (let i = 0; i < 1500; i++) {
      const parts = [mutate(r, validStartups[r.int(validStartups.length)]!, 0, r.next() < 0.1)];
      for (let k = r.int(8); k > 0; k--) {
        const m = validTyped[r.int(validTyped.length)]!;
        parts.push(r.next() < 0.3 ? mutate(r, m, 1, r.next() < 0.1) : m);
      }
      frameAll(r, Buffer.concat(parts), 64 + r.int(512), true);
    }
  });
});

describe('fuzz: BackendScanner', () => {
  const interesting = codeSet([
    BackendCode.ParameterStatus,
    BackendCode.BackendKeyData,
    BackendCode.ErrorResponse,
    BackendCode.ReadyForQuery,
  ]);
  const server = [
    encodeParameterStatus('a', 'b'),
    encodeBackendKeyData({ processId: 1, secretKey: Buffer.alloc(4) }),
    encodeErrorResponse({ severity: 'ERROR', code: '42000', message: 'x' }),
    encodeReadyForQuery(TxStatus.Idle),
    Buffer.from([BackendCode.DataRow, 0, 0, 0, 6, 0, 0]),
    Buffer.from([BackendCode.CommandComplete, 0, 0, 0, 5, 0]),
  ];

  test('valid streams pass through intact; corrupted ones end in RangeError at worst', () => {
    const r = rng(6);
    for (let i = 0; i < 1500; i++) {
      const parts: Buffer[] = [];
      for (let k = 1 + r.int(10); k > 0; k--) parts.push(server[r.int(server.length)]!);
      const valid = Buffer.concat(parts);
      const corrupt = r.next() < 0.5;
      const stream = corrupt ? Buffer.from(valid) : valid;
      if (corrupt) for (let k = 0; k < 3; k++) stream[r.int(stream.length)] = r.int(256);
      const scanner = new BackendScanner(interesting, () => undefined, 1 << 12);
      const out: Buffer[] = [];
      try {
        for (let pos = 0; pos < stream.length;) {
          const n = 1 + r.int(12);
          out.push(...scanner.scan(stream.subarray(pos, pos + n)));
          pos += n;
        }
      } catch (err) {
        assert.ok(corrupt && err instanceof RangeError, `iteration ${i}: ${String(err)}`);
        continue;
      }
      // Without an error the output is a prefix of the input (a message may be pending).
      const joined = Buffer.concat(out);
      assert.ok(stream.subarray(0, joined.length).equals(joined), `iteration ${i}`);
      if (!corrupt) assert.ok(joined.equals(stream));
    }
  });
});
