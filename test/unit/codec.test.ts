import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BackendCode, FrontendCode, StartupCode, TxStatus } from '../../src/protocol/codes.js';
import {
  decodeAuthenticationCode,
  decodeBackendKeyData,
  decodeErrorFields,
  decodeParameterStatus,
  decodeReadyForQuery,
  encodeAuthenticationOk,
  encodeBackendKeyData,
  encodeErrorResponse,
  encodeNegotiateProtocolVersion,
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../../src/protocol/backend-messages.js';
import {
  decodeParse,
  decodeQuery,
  decodeStartupPacket,
  encodeCancelRequest,
  encodeParse,
  encodeQuery,
  encodeStartupMessage,
  encodeTerminate,
} from '../../src/protocol/frontend-messages.js';
import { MalformedMessage, MessageReader } from '../../src/protocol/reader.js';
import { MessageWriter } from '../../src/protocol/writer.js';

/**
 * Copies `msg` into the middle of a bigger, non-pooled buffer filled with `junk`
 * and returns the view on it: byteOffset ≠ 0, and readers that forget the
 * offset (or run past the end) see the junk. pg-gateway's DataView bug.
 */
function sliced(msg: Buffer, junk = 0xaa, before = 7, after = 9): Buffer {
  const big = Buffer.alloc(before + msg.length + after, junk);
  msg.copy(big, before);
  const view = big.subarray(before, before + msg.length);
  assert.notEqual(view.byteOffset, 0);
  return view;
}

/** Both a fresh copy and sliced views with different junk around it. */
function variants(msg: Buffer): Array<[string, Buffer]> {
  return [
    ['fresh', Buffer.from(msg)],
    ['sliced in 0xaa', sliced(msg, 0xaa)],
    ['sliced in NUL', sliced(msg, 0x00)],
    ['sliced in 0xff', sliced(msg, 0xff, 1, 1)],
  ];
}

/** A typed message built by hand: code, Int32 length, body. */
function typed(code: number, body: Buffer | string): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'binary') : body;
  const out = Buffer.alloc(5 + b.length);
  out[0] = code;
  out.writeInt32BE(4 + b.length, 1);
  b.copy(out, 5);
  return out;
}

/** An untyped (startup-phase) packet built by hand: Int32 length, Int32 code, rest. */
function untyped(code: number, rest: Buffer | string): Buffer {
  const b = typeof rest === 'string' ? Buffer.from(rest, 'binary') : rest;
  const out = Buffer.alloc(8 + b.length);
  out.writeInt32BE(8 + b.length, 0);
  out.writeInt32BE(code, 4);
  b.copy(out, 8);
  return out;
}

function parseMessage(name: string, query: string, types: number[]): Buffer {
  const w = new MessageWriter(FrontendCode.Parse, 8).cstring(name).cstring(query).int16(types.length);
  for (const t of types) w.int32(t | 0);
  return w.finish();
}

const isMalformed = (err: unknown): boolean => err instanceof MalformedMessage;

describe('frontend round trips (fresh and sliced buffers)', () => {
  const startupCases: Array<[string, Array<[string, string]>]> = [
    ['user only', [['user', 'alice']]],
    [
      'several keys in order',
      [
        ['user', 'alice'],
        ['database', 'shop'],
        ['application_name', 'psql'],
        ['options', '-c search_path=a\\ b'],
      ],
    ],
    [
      'empty value',
      [
        ['user', 'bob'],
        ['application_name', ''],
      ],
    ],
    [
      'utf-8',
      [
        ['user', 'zoë'],
        ['application_name', '日本語'],
      ],
    ],
  ];
  for (const [name, params] of startupCases) {
    test(`StartupMessage: ${name}`, () => {
      const msg = encodeStartupMessage(params);
      assert.equal(msg.readInt32BE(0), msg.length);
      for (const [how, b] of variants(msg)) {
        const p = decodeStartupPacket(b);
        assert.equal(p.type, 'startup', how);
        if (p.type !== 'startup') return;
        assert.equal(p.major, 3);
        assert.equal(p.minor, 0);
        assert.deepEqual([...p.params], params, how);
      }
    });
  }

  for (const keyLen of [4, 32, 256]) {
    test(`CancelRequest with a ${keyLen}-byte key`, () => {
      const key = Buffer.alloc(keyLen);
      for (let i = 0; i < keyLen; i++) key[i] = (i * 37 + 11) & 0xff;
      const msg = encodeCancelRequest(-123456, key);
      assert.equal(msg.length, 12 + keyLen);
      for (const [how, b] of variants(msg)) {
        const p = decodeStartupPacket(b);
        assert.deepEqual(p, { type: 'cancel', processId: -123456, secretKey: key }, how);
        // The key is a copy: it must survive the buffer being reused.
        if (p.type === 'cancel') {
          b.fill(0);
          assert.deepEqual(p.secretKey, key, how);
        }
      }
    });
  }

  test('SSLRequest and GSSENCRequest', () => {
    for (const [how, b] of variants(untyped(StartupCode.SSLRequest, ''))) {
      assert.deepEqual(decodeStartupPacket(b), { type: 'ssl' }, how);
    }
    for (const [how, b] of variants(untyped(StartupCode.GSSENCRequest, ''))) {
      assert.deepEqual(decodeStartupPacket(b), { type: 'gssenc' }, how);
    }
  });

  test('protocol 3.2 is a startup with minor 2; 2.0 and others are unknown', () => {
    const v32 = decodeStartupPacket(untyped((3 << 16) | 2, 'user\0u\0\0'));
    assert.equal(v32.type, 'startup');
    assert.equal(v32.type === 'startup' && v32.minor, 2);
    for (const code of [2 << 16, (2 << 16) | 0, 1 << 16, (4 << 16) | 0, 1234, 0]) {
      for (const [how, b] of variants(untyped(code, 'user\0u\0\0'))) {
        assert.deepEqual(decodeStartupPacket(b), { type: 'unknown', code }, `${code} ${how}`);
      }
    }
  });

  const queries = ['SELECT 1', '', "SELECT 'ü', E'\\\\'", 'x'.repeat(5000), 'SELECT 1; SELECT 2'];
  for (const q of queries) {
    test(`Query round trip: ${JSON.stringify(q.slice(0, 30))}`, () => {
      const msg = encodeQuery(q);
      assert.equal(msg[0], FrontendCode.Query);
      for (const [how, b] of variants(msg)) {
        assert.equal(decodeQuery(b).toString('utf8'), q, how);
      }
    });
  }

  const parses: Array<[string, string, number[]]> = [
    ['', 'SELECT 1', []],
    ['s1', 'SELECT $1, $2', [23, 25]],
    ['big oid', 'SELECT $1', [0xfffffff0]],
    ['unspecified', 'SELECT $1', [0]],
  ];
  for (const [name, query, types] of parses) {
    test(`Parse round trip: ${JSON.stringify(name)} ${types.length} types`, () => {
      const msgs = [parseMessage(name, query, types)];
      if (types.length === 0) msgs.push(encodeParse(name, query));
      for (const msg of msgs) {
        for (const [how, b] of variants(msg)) {
          const p = decodeParse(b);
          assert.equal(p.name, name, how);
          assert.equal(p.query.toString(), query, how);
          assert.deepEqual(p.paramTypes, types, how);
        }
      }
    });
  }

  test('Terminate is X with length 4', () => {
    assert.deepEqual(encodeTerminate(), Buffer.from([FrontendCode.Terminate, 0, 0, 0, 4]));
  });
});

describe('backend round trips (fresh and sliced buffers)', () => {
  test('ReadyForQuery', () => {
    for (const s of [TxStatus.Idle, TxStatus.InBlock, TxStatus.Failed]) {
      const msg = encodeReadyForQuery(s);
      assert.deepEqual(msg, Buffer.from([BackendCode.ReadyForQuery, 0, 0, 0, 5, s]));
      for (const [how, b] of variants(msg)) assert.equal(decodeReadyForQuery(b), s, how);
    }
  });

  for (const [name, value] of [
    ['server_version', '17.2'],
    ['application_name', ''],
    ['TimeZone', 'Europe/Zürich'],
  ] as const) {
    test(`ParameterStatus ${name}`, () => {
      for (const [how, b] of variants(encodeParameterStatus(name, value))) {
        assert.deepEqual(decodeParameterStatus(b), { name, value }, how);
      }
    });
  }

  for (const keyLen of [4, 32]) {
    test(`BackendKeyData with a ${keyLen}-byte key`, () => {
      const secretKey = Buffer.alloc(keyLen, 0x5c);
      secretKey[0] = 0;
      const msg = encodeBackendKeyData({ processId: 0x7fffffff, secretKey });
      assert.equal(msg.readInt32BE(1), 8 + keyLen);
      for (const [how, b] of variants(msg)) {
        const k = decodeBackendKeyData(b);
        assert.deepEqual(k, { processId: 0x7fffffff, secretKey }, how);
        b.fill(1);
        assert.deepEqual(k.secretKey, secretKey, `${how}: key is a copy`);
      }
    });
  }

  test('AuthenticationOk', () => {
    const msg = encodeAuthenticationOk();
    assert.deepEqual(msg, Buffer.from([BackendCode.Authentication, 0, 0, 0, 8, 0, 0, 0, 0]));
    for (const [how, b] of variants(msg)) assert.equal(decodeAuthenticationCode(b), 0, how);
    for (const [how, b] of variants(typed(BackendCode.Authentication, '\0\0\0\x0a'))) {
      assert.equal(decodeAuthenticationCode(b), 10, how);
    }
  });

  test('ErrorResponse and NoticeResponse: all fields', () => {
    const full = encodeErrorResponse({
      severity: 'ERROR',
      code: '25006',
      message: 'cannot execute INSERT in a read-only transaction',
      detail: 'détail',
      hint: 'hint',
      position: 42,
      routine: 'r',
    });
    for (const [how, b] of variants(full)) {
      assert.equal(b[0], BackendCode.ErrorResponse);
      assert.deepEqual(
        Object.fromEntries(decodeErrorFields(b)),
        {
          S: 'ERROR',
          V: 'ERROR',
          C: '25006',
          M: 'cannot execute INSERT in a read-only transaction',
          D: 'détail',
          H: 'hint',
          P: '42',
          R: 'r',
        },
        how,
      );
    }
    const notice = encodeErrorResponse(
      { severity: 'NOTICE', code: '00000', message: 'm' },
      BackendCode.NoticeResponse,
    );
    assert.equal(notice[0], BackendCode.NoticeResponse);
    assert.deepEqual(Object.fromEntries(decodeErrorFields(sliced(notice))), {
      S: 'NOTICE',
      V: 'NOTICE',
      C: '00000',
      M: 'm',
    });
  });

  test('NegotiateProtocolVersion layout', () => {
    const msg = encodeNegotiateProtocolVersion(196608, ['_pq_.a', '_pq_.b']);
    const r = new MessageReader(msg, 5, msg.length);
    assert.equal(msg[0], BackendCode.NegotiateProtocolVersion);
    assert.equal(msg.readInt32BE(1), msg.length - 1);
    assert.equal(r.int32(), 196608); // 3.0, as a full version code
    assert.equal(r.int32(), 2);
    assert.equal(r.cstring(), '_pq_.a');
    assert.equal(r.cstring(), '_pq_.b');
    r.expectEnd();
  });
});

describe('malformed frontend messages throw MalformedMessage', () => {
  const cases: Array<[string, () => unknown]> = [
    // Query
    ['Query without its NUL', () => decodeQuery(typed(FrontendCode.Query, 'SELECT 1'))],
    ['Query with a byte after its NUL', () => decodeQuery(typed(FrontendCode.Query, 'SELECT 1\0x'))],
    [
      'Query with a NUL hiding a second statement',
      () => decodeQuery(typed(FrontendCode.Query, 'SELECT 1\0DROP TABLE t\0')),
    ],
    ['Query with an empty body', () => decodeQuery(typed(FrontendCode.Query, ''))],
    // Parse
    ['Parse with no NUL after the name', () => decodeParse(typed(FrontendCode.Parse, 's1'))],
    ['Parse with no NUL after the query', () => decodeParse(typed(FrontendCode.Parse, 's1\0SELECT 1'))],
    ['Parse missing the param count', () => decodeParse(typed(FrontendCode.Parse, 's1\0SELECT 1\0'))],
    ['Parse with half a param count', () => decodeParse(typed(FrontendCode.Parse, 's1\0SELECT 1\0\0'))],
    ['Parse with a negative param count', () => decodeParse(typed(FrontendCode.Parse, 's\0q\0\xff\xff'))],
    ['Parse with param count -32768', () => decodeParse(typed(FrontendCode.Parse, 's\0q\0\x80\x00'))],
    [
      'Parse claiming 2 types, giving 1',
      () => decodeParse(typed(FrontendCode.Parse, 's\0q\0\x00\x02\x00\x00\x00\x17')),
    ],
    [
      'Parse with a byte after its types',
      () => decodeParse(typed(FrontendCode.Parse, 's\0q\0\x00\x01\x00\x00\x00\x17!')),
    ],
    [
      'Parse with a NUL hiding a second statement',
      () => decodeParse(typed(FrontendCode.Parse, 's\0SELECT 1\0DROP TABLE t\0\0\0')),
    ],
    // Startup
    ['startup: params without the final NUL', () => decodeStartupPacket(untyped(3 << 16, 'user\0u\0'))],
    ['startup: key without a value', () => decodeStartupPacket(untyped(3 << 16, 'user\0'))],
    ['startup: value without its NUL', () => decodeStartupPacket(untyped(3 << 16, 'user\0ali'))],
    ['startup: no params at all', () => decodeStartupPacket(untyped(3 << 16, ''))],
    ['startup: bytes after the terminator', () => decodeStartupPacket(untyped(3 << 16, 'user\0u\0\0x'))],
    [
      'startup: a key given twice',
      () => decodeStartupPacket(untyped(3 << 16, 'user\0a\0database\0d\0user\0b\0\0')),
    ],
    ['SSLRequest with extra bytes', () => decodeStartupPacket(untyped(StartupCode.SSLRequest, '\0'))],
    ['GSSENCRequest with extra bytes', () => decodeStartupPacket(untyped(StartupCode.GSSENCRequest, 'xx'))],
    ['cancel with no pid', () => decodeStartupPacket(untyped(StartupCode.CancelRequest, ''))],
    ['cancel with a 3-byte key', () => decodeStartupPacket(untyped(StartupCode.CancelRequest, 'pid!key'))],
    ['cancel with no key', () => decodeStartupPacket(untyped(StartupCode.CancelRequest, 'pid!'))],
    [
      'cancel with a 257-byte key',
      () => decodeStartupPacket(untyped(StartupCode.CancelRequest, Buffer.alloc(4 + 257))),
    ],
  ];
  for (const [name, fn] of cases) {
    test(name, () => {
      assert.throws(fn, isMalformed);
    });
  }

  test('the same malformed messages inside bigger buffers (NUL junk after cannot end a string)', () => {
    const q = typed(FrontendCode.Query, 'SELECT 1');
    assert.throws(() => decodeQuery(sliced(q, 0x00)), isMalformed);
    const p = typed(FrontendCode.Parse, 's1\0SELECT 1');
    assert.throws(() => decodeParse(sliced(p, 0x00)), isMalformed);
    const s = untyped(3 << 16, 'user\0u\0');
    assert.throws(() => decodeStartupPacket(sliced(s, 0x00)), isMalformed);
  });

  test('a cancel request whose key fits the limits decodes (4 and 32 bytes, not 3)', () => {
    for (const n of [4, 32]) {
      const p = decodeStartupPacket(untyped(StartupCode.CancelRequest, Buffer.alloc(4 + n, 1)));
      assert.equal(p.type === 'cancel' && p.secretKey.length, n);
    }
  });
});

describe('MessageReader / MessageWriter', () => {
  test('reader honours end and throws MalformedMessage past it', () => {
    const buf = Buffer.from([0, 0, 0, 1, 0x61, 0, 0x62, 0]);
    const r = new MessageReader(buf, 0, 6);
    assert.equal(r.int32(), 1);
    assert.equal(r.cstring(), 'a');
    assert.equal(r.remaining, 0);
    assert.throws(() => r.int8(), isMalformed);
    assert.throws(() => r.int16(), isMalformed);
    assert.throws(() => r.int32(), isMalformed);
    assert.throws(() => r.cstring(), isMalformed, 'the NUL at 7 lies past end 6');
    assert.throws(() => r.bytes(1), isMalformed);
    assert.throws(() => new MessageReader(buf, 0).bytes(-1), isMalformed);
    r.expectEnd();
  });

  test('writer grows past its initial size and fills the header', () => {
    const long = 'é'.repeat(300);
    const msg = new MessageWriter(0x51, 1).cstring(long).int8(7).int16(-2).int32(-3).finish();
    assert.equal(msg.readInt32BE(1), msg.length - 1);
    const r = new MessageReader(msg, 5);
    assert.equal(r.cstring(), long);
    assert.equal(r.int8(), 7);
    assert.equal(r.int16(), -2);
    assert.equal(r.int32(), -3);
    r.expectEnd();
    const u = new MessageWriter(null, 1).int32(StartupCode.SSLRequest).finish();
    assert.deepEqual(u, Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
  });
});
