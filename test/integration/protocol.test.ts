/**
 * Every protocol path through the proxy, with a raw client: each case asserts the
 * exact message sequence the client sees and the ReadyForQuery status.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  direct,
  eventually,
  startProxy,
  testServer,
  type RunningProxy,
  whenRunning,
} from '../helpers/harness.js';
import {
  errorFields,
  fe,
  firstColumn,
  frame,
  label,
  sendCancelRequest,
  WireClient,
  type BackendMessage,
} from '../helpers/wire.js';

let proxy: RunningProxy;
/** A proxy with a small message limit, for the oversized-length cases. */
let small: RunningProxy;

before(async () => {
  [proxy, small] = await Promise.all([startProxy(), startProxy({ config: { maxMessageBytes: 4096 } })]);
  const d = await direct();
  await d.query(`
    DROP TABLE IF EXISTS proto_items, proto_victim;
    CREATE TABLE proto_items (id int primary key, name text);
    INSERT INTO proto_items SELECT g, 'item ' || g FROM generate_series(1, 10) g;
    CREATE TABLE proto_victim (id int);
  `);
  await d.end();
});
after(async () => Promise.all([proxy.close(), small.close()]));

function wire(p: RunningProxy = proxy): Promise<WireClient> {
  const s = testServer();
  return WireClient.connect({ host: p.host, port: p.port, user: s.user, password: s.password });
}

/** Runs `fn` with a fresh raw client through the proxy, then ends it. */
async function withWire(fn: (c: WireClient) => Promise<void>, p: RunningProxy = proxy): Promise<void> {
  const c = await wire(p);
  try {
    await fn(c);
  } finally {
    await c.end();
  }
}

async function directScalar(sql: string): Promise<unknown> {
  const d = await direct();
  try {
    const r = await d.query(sql);
    return Object.values(r.rows[0] as Record<string, unknown>)[0];
  } finally {
    await d.end();
  }
}

const proxyError = (m: BackendMessage | undefined, code: string): void => {
  assert.ok(m, 'expected an ErrorResponse');
  assert.equal(m.code, 'E', `expected an ErrorResponse, got ${label(m)}`);
  const f = errorFields(m);
  assert.equal(f.C, code);
  assert.match(f.M ?? '', /^pg-readonly-proxy/);
};

/** A Parse/Bind/Execute of one unnamed statement. */
const pbe = (sql: string): Buffer[] => [fe.parse('', sql), fe.bind('', ''), fe.execute('')];

const ready = (status: 'I' | 'T' | 'E'): string => `ReadyForQuery ${status}`;

describe('extended query: a refused statement in a pipeline', () => {
  test('the statements before it complete, the rest up to Sync is skipped, RFQ I', async () => {
    await withWire(async (c) => {
      c.write(
        ...pbe('SELECT 1'),
        ...pbe('SELECT 2'),
        ...pbe("INSERT INTO proto_items VALUES (100, 'x')"),
        ...pbe('SELECT 3'),
        fe.describe('S', ''),
        fe.sync(),
      );
      const msgs = await c.untilReady();
      assert.deepEqual(msgs.map(label), [
        'ParseComplete',
        'BindComplete',
        'DataRow',
        'CommandComplete SELECT 1',
        'ParseComplete',
        'BindComplete',
        'DataRow',
        'CommandComplete SELECT 1',
        'ErrorResponse 25006',
        ready('I'),
      ]);
      assert.deepEqual([firstColumn(msgs[2]!), firstColumn(msgs[6]!)], ['1', '2']);
      proxyError(msgs[8], '25006');
      assert.deepEqual(await c.simple('SELECT 4'), [
        'RowDescription',
        'DataRow',
        'CommandComplete SELECT 1',
        ready('I'),
      ]);
    });
    assert.equal(await directScalar('SELECT count(*)::int FROM proto_items WHERE id = 100'), 0);
  });

  test('inside BEGIN the block is left failed (E) until ROLLBACK', async () => {
    await withWire(async (c) => {
      assert.deepEqual(await c.simple('BEGIN'), ['CommandComplete BEGIN', ready('T')]);
      c.write(...pbe('SELECT 1'), ...pbe('DELETE FROM proto_items'), ...pbe('SELECT 2'), fe.sync());
      const msgs = await c.untilReady();
      assert.deepEqual(msgs.map(label), [
        'ParseComplete',
        'BindComplete',
        'DataRow',
        'CommandComplete SELECT 1',
        'ErrorResponse 25006',
        ready('E'),
      ]);
      proxyError(msgs[4], '25006');
      const aborted = await c.simple('SELECT 1');
      assert.deepEqual(aborted, ['ErrorResponse 25P02', ready('E')]);
      assert.deepEqual(await c.simple('ROLLBACK'), ['CommandComplete ROLLBACK', ready('I')]);
    });
    assert.equal(await directScalar('SELECT count(*)::int FROM proto_items'), 10);
  });

  test('several Syncs: only the segment holding the refusal fails, replies stay in order', async () => {
    await withWire(async (c) => {
      c.write(
        ...pbe('SELECT 1'),
        fe.sync(),
        ...pbe('UPDATE proto_items SET name = name'),
        fe.sync(),
        ...pbe('SELECT 2'),
        fe.sync(),
        ...pbe('TRUNCATE proto_items'),
        ...pbe('SELECT 3'),
        fe.sync(),
        ...pbe('SELECT 4'),
        fe.sync(),
      );
      const all: string[] = [];
      for (let i = 0; i < 5; i++) all.push(...(await c.labelsUntilReady()));
      assert.deepEqual(all, [
        'ParseComplete',
        'BindComplete',
        'DataRow',
        'CommandComplete SELECT 1',
        ready('I'),
        'ErrorResponse 25006',
        ready('I'),
        'ParseComplete',
        'BindComplete',
        'DataRow',
        'CommandComplete SELECT 1',
        ready('I'),
        'ErrorResponse 25006',
        ready('I'),
        'ParseComplete',
        'BindComplete',
        'DataRow',
        'CommandComplete SELECT 1',
        ready('I'),
      ]);
    });
  });

  test('more than 1024 refused statements before one Sync: the error is still the proxy’s', async () => {
    await withWire(async (c) => {
      const msgs: Buffer[] = [];
      for (let i = 0; i < 1100; i++) msgs.push(...pbe('DELETE FROM proto_items'));
      c.write(...msgs, fe.sync());
      const r = await c.untilReady();
      assert.deepEqual(r.map(label), ['ErrorResponse 25006', ready('I')]);
      proxyError(r[0], '25006');
    });
  });

  test('more than 1024 pipelined segments with a refused statement each: every error is the proxy’s', async () => {
    await withWire(async (c) => {
      const msgs: Buffer[] = [];
      for (let i = 0; i < 1100; i++) msgs.push(fe.parse('', 'DELETE FROM proto_items'), fe.sync());
      c.write(...msgs);
      const counts = new Map<string, number>();
      for (let i = 0; i < 1100; i++) {
        for (const l of await c.labelsUntilReady()) counts.set(l, (counts.get(l) ?? 0) + 1);
      }
      assert.deepEqual(
        counts,
        new Map([
          ['ErrorResponse 25006', 1100],
          [ready('I'), 1100],
        ]),
      );
    });
  });

  test('a long pipeline of 500 Parse/Bind/Execute before one Sync stays in order', async () => {
    await withWire(async (c) => {
      const msgs: Buffer[] = [];
      for (let i = 0; i < 500; i++) msgs.push(...pbe(`SELECT ${i}`));
      c.write(...msgs, fe.sync());
      const rows = (await c.untilReady()).filter((m) => m.code === 'D').map(firstColumn);
      assert.deepEqual(
        rows,
        Array.from({ length: 500 }, (_, i) => String(i)),
      );
    });
  });
});

describe('extended query: named statements', () => {
  test('a name Closed and Parsed again with a write is refused; Bind to it then gets 26000', async () => {
    await withWire(async (c) => {
      c.write(fe.parse('s1', 'SELECT id FROM proto_items WHERE id = $1'), fe.sync());
      assert.deepEqual(await c.labelsUntilReady(), ['ParseComplete', ready('I')]);
      c.write(fe.bind('', 's1', ['3']), fe.execute(''), fe.sync());
      assert.deepEqual(await c.labelsUntilReady(), [
        'BindComplete',
        'DataRow',
        'CommandComplete SELECT 1',
        ready('I'),
      ]);
      c.write(fe.close('S', 's1'), fe.sync());
      assert.deepEqual(await c.labelsUntilReady(), ['CloseComplete', ready('I')]);

      c.write(fe.parse('s1', 'DELETE FROM proto_items WHERE id = $1'), fe.sync());
      const refused = await c.untilReady();
      assert.deepEqual(refused.map(label), ['ErrorResponse 25006', ready('I')]);
      proxyError(refused[0], '25006');

      c.write(fe.bind('', 's1', ['3']), fe.execute(''), fe.sync());
      const bound = await c.untilReady();
      assert.deepEqual(bound.map(label), ['ErrorResponse 26000', ready('I')]);
      assert.match(errorFields(bound[0]!).M ?? '', /prepared statement "s1" does not exist/);
    });
    assert.equal(await directScalar('SELECT count(*)::int FROM proto_items WHERE id = 3'), 1);
  });

  test('Close and re-Parse in the same pipeline as the Bind', async () => {
    await withWire(async (c) => {
      c.write(fe.parse('s2', 'SELECT 1'), fe.sync());
      assert.deepEqual(await c.labelsUntilReady(), ['ParseComplete', ready('I')]);
      c.write(
        fe.close('S', 's2'),
        fe.parse('s2', "INSERT INTO proto_items VALUES (101, 'x')"),
        fe.bind('', 's2'),
        fe.execute(''),
        fe.sync(),
      );
      assert.deepEqual(await c.labelsUntilReady(), ['CloseComplete', 'ErrorResponse 25006', ready('I')]);
      c.write(fe.describe('S', 's2'), fe.sync());
      assert.deepEqual(await c.labelsUntilReady(), ['ErrorResponse 26000', ready('I')]);
    });
    assert.equal(await directScalar('SELECT count(*)::int FROM proto_items WHERE id = 101'), 0);
  });
});

describe('extended query: more sequences', () => {
  test('a refused Parse of the unnamed statement drops the one before it, as a failed Parse does', async () => {
    await withWire(async (c) => {
      c.write(fe.parse('', 'SELECT 42'), fe.sync());
      assert.deepEqual(await c.labelsUntilReady(), ['ParseComplete', ready('I')]);
      c.write(fe.parse('', 'DELETE FROM proto_items'), fe.sync());
      assert.deepEqual(await c.labelsUntilReady(), ['ErrorResponse 25006', ready('I')]);
      c.write(fe.bind('', ''), fe.execute(''), fe.sync());
      assert.deepEqual(await c.labelsUntilReady(), ['ErrorResponse 26000', ready('I')]);
    });
  });

  test('Describe of a statement and a portal, with parameters', async () => {
    await withWire(async (c) => {
      c.write(
        fe.parse('s3', 'SELECT $1::int + 1 AS n', [23]),
        fe.describe('S', 's3'),
        fe.bind('p', 's3', ['41']),
        fe.describe('P', 'p'),
        fe.execute('p'),
        fe.close('P', 'p'),
        fe.close('S', 's3'),
        fe.sync(),
      );
      const msgs = await c.untilReady();
      assert.deepEqual(msgs.map(label), [
        'ParseComplete',
        'ParameterDescription',
        'RowDescription',
        'BindComplete',
        'RowDescription',
        'DataRow',
        'CommandComplete SELECT 1',
        'CloseComplete',
        'CloseComplete',
        ready('I'),
      ]);
      assert.equal(firstColumn(msgs[5]!), '42');
    });
  });

  test('a statement whose safety depends on a bound value is refused at Parse', async () => {
    await withWire(async (c) => {
      c.write(
        fe.parse('', 'SELECT set_config($1, $2, false)'),
        fe.bind('', '', ['default_transaction_read_only', 'off']),
        fe.execute(''),
        fe.sync(),
      );
      const msgs = await c.untilReady();
      assert.equal(msgs.length, 2);
      assert.match(errorFields(msgs[0]!).M ?? '', /^pg-readonly-proxy/);
      assert.equal(label(msgs[1]!), ready('I'));
      assert.deepEqual(await c.simple('SHOW default_transaction_read_only'), [
        'RowDescription',
        'DataRow',
        'CommandComplete SHOW',
        ready('I'),
      ]);
    });
  });

  test('empty queries answer EmptyQueryResponse, as a server does', async () => {
    await withWire(async (c) => {
      for (const sql of ['', ';', '  -- nothing\n', '/* c */ ;;']) {
        assert.deepEqual(await c.simple(sql), ['EmptyQueryResponse', ready('I')], JSON.stringify(sql));
      }
      c.write(...pbe(''), fe.sync());
      assert.deepEqual(await c.labelsUntilReady(), [
        'ParseComplete',
        'BindComplete',
        'EmptyQueryResponse',
        ready('I'),
      ]);
    });
  });

  test('a 6 MB bound parameter and a 20 MB row pass through', async () => {
    await withWire(async (c) => {
      c.write(
        fe.parse('', 'SELECT length($1::text)'),
        fe.bind('', '', ['z'.repeat(6_000_000)]),
        fe.execute(''),
        fe.sync(),
      );
      const msgs = await c.untilReady();
      assert.equal(firstColumn(msgs.find((m) => m.code === 'D')!), '6000000');
      c.write(fe.query("SELECT repeat('w', 20000000) AS big"));
      const big = await c.untilReady();
      assert.deepEqual(big.map(label), ['RowDescription', 'DataRow', 'CommandComplete SELECT 1', ready('I')]);
      assert.equal(firstColumn(big[1]!)?.length, 20_000_000);
    });
  });
});

test('portal suspension: Execute with a row limit returns PortalSuspended, then the rest', async () => {
  await withWire(async (c) => {
    c.write(
      fe.parse('', 'SELECT g FROM generate_series(1, 5) g'),
      fe.bind('p1', ''),
      fe.describe('P', 'p1'),
      fe.execute('p1', 2),
      fe.execute('p1', 2),
      fe.execute('p1', 2),
      fe.sync(),
    );
    const msgs = await c.untilReady();
    assert.deepEqual(msgs.map(label), [
      'ParseComplete',
      'BindComplete',
      'RowDescription',
      'DataRow',
      'DataRow',
      'PortalSuspended',
      'DataRow',
      'DataRow',
      'PortalSuspended',
      'DataRow',
      'CommandComplete SELECT 1',
      ready('I'),
    ]);
    assert.deepEqual(msgs.filter((m) => m.code === 'D').map(firstColumn), ['1', '2', '3', '4', '5']);
    // Execute with a limit, Flush, read, Execute again: the way cursors in drivers do it.
    c.write(fe.query('BEGIN'));
    assert.deepEqual(await c.labelsUntilReady(), ['CommandComplete BEGIN', ready('T')]);
    c.write(
      fe.parse('', 'SELECT g FROM generate_series(1, 3) g'),
      fe.bind('p2', ''),
      fe.execute('p2', 2),
      fe.flush(),
    );
    const first: string[] = [];
    for (let i = 0; i < 5; i++) first.push(label(await c.next()));
    assert.deepEqual(first, ['ParseComplete', 'BindComplete', 'DataRow', 'DataRow', 'PortalSuspended']);
    c.write(fe.execute('p2', 2), fe.sync());
    assert.deepEqual(await c.labelsUntilReady(), ['DataRow', 'CommandComplete SELECT 1', ready('T')]);
    assert.deepEqual(await c.simple('COMMIT'), ['CommandComplete COMMIT', ready('I')]);
  });
});

describe('FunctionCall', () => {
  test('is refused with 42501 and the session stays usable', async () => {
    const oid = Number(await directScalar("SELECT 'pg_catalog.int4abs'::regproc::oid"));
    await withWire(async (c) => {
      c.write(fe.functionCall(oid, ['-5']));
      const msgs = await c.untilReady();
      assert.deepEqual(msgs.map(label), ['ErrorResponse 42501', ready('I')]);
      proxyError(msgs[0], '42501');
      assert.deepEqual(await c.simple('SELECT 1'), [
        'RowDescription',
        'DataRow',
        'CommandComplete SELECT 1',
        ready('I'),
      ]);
      // Inside a block it fails the block, as a server-side error would.
      assert.deepEqual(await c.simple('BEGIN'), ['CommandComplete BEGIN', ready('T')]);
      c.write(fe.functionCall(oid, ['-5']));
      assert.deepEqual(await c.labelsUntilReady(), ['ErrorResponse 42501', ready('E')]);
      assert.deepEqual(await c.simple('ROLLBACK'), ['CommandComplete ROLLBACK', ready('I')]);
    });
  });
});

/** Sends bytes on a fresh session and expects a FATAL 08P01 and the close. */
async function expectProtocolViolation(
  bytes: Buffer[],
  p: RunningProxy = proxy,
): Promise<Record<string, string>> {
  const c = await wire(p);
  try {
    c.write(...bytes);
    const msgs = await c.untilClosed();
    assert.deepEqual(msgs.map(label), ['ErrorResponse 08P01']);
    const f = errorFields(msgs[0]!);
    assert.equal(f.S, 'FATAL');
    assert.ok(c.isClosed);
    return f;
  } finally {
    c.destroy();
  }
}

describe('COPY messages outside COPY', () => {
  for (const [name, msg] of [
    ['CopyData', fe.copyData('1\tx\n')],
    ['CopyDone', fe.copyDone()],
    ['CopyFail', fe.copyFail('client gave up')],
  ] as const) {
    test(`${name} is a protocol violation: FATAL 08P01 and the connection closes`, async () => {
      await expectProtocolViolation([msg]);
    });
  }
});

describe('malformed input', () => {
  test('a length above the limit: FATAL 08P01 as soon as the header arrives', async () => {
    const header = Buffer.from([0x51, 0, 0x01, 0, 0]); // Query claiming 65536 bytes, none sent
    const f = await expectProtocolViolation([header], small);
    assert.match(f.M ?? '', /exceeds the limit/);
  });

  test('a length just above the limit with the whole body sent: FATAL 08P01', async () => {
    await expectProtocolViolation([fe.query(`SELECT '${'x'.repeat(4096)}'`)], small);
  });

  test('a message just under the limit goes through', async () => {
    await withWire(async (c) => {
      const sql = `SELECT '${'x'.repeat(4000)}' AS v`;
      assert.ok(sql.length + 5 < 4096);
      assert.deepEqual(await c.simple(sql), [
        'RowDescription',
        'DataRow',
        'CommandComplete SELECT 1',
        ready('I'),
      ]);
    }, small);
  });

  for (const len of [0, 3, -1]) {
    test(`a length of ${len} (below 4): FATAL 08P01`, async () => {
      const header = Buffer.alloc(5);
      header[0] = 0x51;
      header.writeInt32BE(len, 1);
      await expectProtocolViolation([header]);
    });
  }

  test("an unknown message type 'z': FATAL 08P01", async () => {
    await expectProtocolViolation([frame('z', Buffer.from('hello\0'))]);
  });

  test('a Query with bytes after its NUL: FATAL 08P01, nothing runs', async () => {
    await expectProtocolViolation([frame('Q', Buffer.from('SELECT 1\0DROP TABLE proto_victim\0'))]);
    await expectProtocolViolation([frame('Q', Buffer.from('SELECT 1\0DROP TABLE proto_victim'))]);
    assert.equal(await directScalar("SELECT to_regclass('proto_victim') IS NOT NULL"), true);
  });

  test('a Parse whose query hides a second statement after a NUL: FATAL 08P01, nothing runs', async () => {
    const body = Buffer.concat([Buffer.from('\0SELECT 1\0DROP TABLE proto_victim\0'), Buffer.from([0, 0])]);
    await expectProtocolViolation([frame('P', body), ...[fe.bind('', ''), fe.execute(''), fe.sync()]]);
    assert.equal(await directScalar("SELECT to_regclass('proto_victim') IS NOT NULL"), true);
  });

  test('a truncated message then the client vanishes: the proxy and other sessions keep working', async () => {
    const bystander = await wire();
    try {
      assert.deepEqual(await bystander.simple('BEGIN'), ['CommandComplete BEGIN', ready('T')]);
      for (let i = 0; i < 5; i++) {
        const c = await wire();
        const q = fe.query(`SELECT '${'y'.repeat(1000)}'`);
        c.write(q.subarray(0, 1 + ((i * 97) % q.length)));
        await new Promise((r) => setTimeout(r, 10));
        c.destroy();
        await c.closed;
      }
      const sessions = (): number => proxy.server.activeSessions;
      await eventually(() => sessions() === 1, 5000, 'the vanished sessions to be closed');
      assert.deepEqual(await bystander.simple('SELECT 1'), [
        'RowDescription',
        'DataRow',
        'CommandComplete SELECT 1',
        ready('T'),
      ]);
      assert.deepEqual(await bystander.simple('COMMIT'), ['CommandComplete COMMIT', ready('I')]);
      await withWire(async (c) => {
        assert.deepEqual(await c.simple('SELECT 1'), [
          'RowDescription',
          'DataRow',
          'CommandComplete SELECT 1',
          ready('I'),
        ]);
      });
    } finally {
      await bystander.end();
    }
  });
});

describe('simple Query with several statements', () => {
  test('one refused: nothing runs, not even the statements before it', async () => {
    await withWire(async (c) => {
      const before = c.parameters.get('application_name');
      const msgs = await c.simple(
        "SET application_name = 'multi-before'; SELECT 1; INSERT INTO proto_items VALUES (102, 'x'); SELECT 2",
      );
      assert.deepEqual(msgs, ['ErrorResponse 25006', ready('I')]);
      assert.equal(c.parameters.get('application_name'), before);
      c.write(fe.query('SHOW application_name'));
      const shown = (await c.untilReady()).find((m) => m.code === 'D');
      assert.equal(firstColumn(shown!), before ?? '');
    });
    assert.equal(await directScalar('SELECT count(*)::int FROM proto_items WHERE id = 102'), 0);
  });

  test('all allowed: every statement answers in order', async () => {
    await withWire(async (c) => {
      assert.deepEqual(await c.simple('SELECT 1; SELECT 2, 3; SHOW server_version'), [
        'RowDescription',
        'DataRow',
        'CommandComplete SELECT 1',
        'RowDescription',
        'DataRow',
        'CommandComplete SELECT 1',
        'RowDescription',
        'DataRow',
        'CommandComplete SHOW',
        ready('I'),
      ]);
    });
  });

  /**
   * The ReadyForQuery status after a multi-statement string holding a write, from
   * the proxy and from the server itself in a read-only session (the oracle).
   */
  const cases: Array<{ name: string; setup?: string; sql: string; proxyStatus?: 'I' | 'E' }> = [
    {
      name: 'idle, write in the middle',
      sql: "SELECT 1; INSERT INTO proto_items VALUES (106, 'x'); SELECT 2",
    },
    {
      name: 'in a block, write in the middle',
      setup: 'BEGIN',
      sql: 'SELECT 1; UPDATE proto_items SET name = name; SELECT 2',
    },
    {
      name: 'idle, a whole block ending before the write',
      sql: 'BEGIN; SELECT 1; COMMIT; DELETE FROM proto_items',
    },
    {
      name: "idle, 'BEGIN; <write>'",
      sql: "BEGIN; INSERT INTO proto_items VALUES (106, 'x')",
      proxyStatus: 'I',
    },
    {
      name: "in a block, 'COMMIT; <write>'",
      setup: 'BEGIN',
      sql: "COMMIT; INSERT INTO proto_items VALUES (106, 'x')",
      proxyStatus: 'E',
    },
    {
      name: "in a block, 'ROLLBACK; <write>'",
      setup: 'BEGIN',
      sql: 'ROLLBACK; DELETE FROM proto_items',
      proxyStatus: 'E',
    },
  ];
  /**
   * A string holding a refused statement runs not at all, transaction control
   * before it included (the documented rule). Where a server would have run that
   * transaction control first, the status differs from the server's oracle, so
   * those cases assert the proxy's own status and that it is the upstream's real
   * state: the next statement succeeds after 'I' and gets 25P02 after 'E'.
   */
  for (const k of cases) {
    test(`RFQ status after a refused multi-statement string: ${k.name}`, async () => {
      const s = testServer();
      const oracle = await WireClient.connect({
        host: s.host,
        port: s.port,
        user: s.user,
        password: s.password,
        params: { default_transaction_read_only: 'on' },
      });
      let expected: string;
      try {
        if (k.setup) await oracle.simple(k.setup);
        const labels = await oracle.simple(k.sql);
        assert.ok(labels.includes('ErrorResponse 25006'), `the server refuses it too: ${labels.join(', ')}`);
        expected = labels.at(-1)!;
      } finally {
        await oracle.end();
      }
      if (k.proxyStatus) expected = ready(k.proxyStatus);
      await withWire(async (c) => {
        if (k.setup) await c.simple(k.setup);
        assert.deepEqual(await c.simple(k.sql), ['ErrorResponse 25006', expected]);
        const next = await c.simple('SELECT 1');
        if (expected === ready('E')) assert.deepEqual(next, ['ErrorResponse 25P02', ready('E')]);
        else assert.equal(next.at(-1), expected);
      });
    });
  }
  test('after all that nothing was written', async () => {
    assert.equal(await directScalar('SELECT count(*)::int FROM proto_items'), 10);
  });
});

describe('COPY', () => {
  test('COPY (SELECT ...) TO STDOUT streams 200k rows complete', async () => {
    await withWire(async (c) => {
      c.write(fe.query('COPY (SELECT g, md5(g::text) FROM generate_series(1, 200000) g) TO STDOUT'));
      const first = await c.next();
      assert.equal(label(first), 'CopyOutResponse');
      // A slow reader: the proxy must hold back the server, not lose or reorder rows.
      c.socket.pause();
      await new Promise((r) => setTimeout(r, 300));
      c.socket.resume();
      let rows = 0;
      let last = '';
      for (;;) {
        const m = await c.next();
        if (m.code !== 'd') {
          assert.equal(label(m), 'CopyDone');
          break;
        }
        rows++;
        if (rows === 200000) last = m.body.toString('utf8');
      }
      assert.equal(rows, 200000);
      assert.match(last, /^200000\t[0-9a-f]{32}\n$/);
      assert.deepEqual(await c.labelsUntilReady(), ['CommandComplete COPY 200000', ready('I')]);
    });
  });

  test('COPY TO STDOUT in csv and binary formats', async () => {
    await withWire(async (c) => {
      for (const opts of ['(FORMAT csv, HEADER)', '(FORMAT binary)']) {
        const labels = await c.simple(`COPY (SELECT g FROM generate_series(1, 3) g) TO STDOUT ${opts}`);
        assert.equal(labels[0], 'CopyOutResponse');
        assert.deepEqual(labels.slice(-3), ['CopyDone', 'CommandComplete COPY 3', ready('I')]);
      }
    });
  });

  test('COPY FROM STDIN is refused with 25006 and no CopyInResponse is ever sent', async () => {
    await withWire(async (c) => {
      c.write(fe.query('COPY proto_items FROM STDIN'));
      const msgs = await c.untilReady();
      assert.deepEqual(msgs.map(label), ['ErrorResponse 25006', ready('I')]);
      proxyError(msgs[0], '25006');
      c.write(fe.parse('', 'COPY proto_items (id) FROM STDIN'), fe.bind('', ''), fe.execute(''), fe.sync());
      assert.deepEqual(await c.labelsUntilReady(), ['ErrorResponse 25006', ready('I')]);
      // The data a client would have sent is a protocol violation, not rows.
      c.write(fe.copyData('104\tx\n'), fe.copyDone());
      const rest = await c.untilClosed();
      assert.deepEqual(rest.map(label), ['ErrorResponse 08P01']);
    });
    assert.equal(await directScalar('SELECT count(*)::int FROM proto_items WHERE id = 104'), 0);
  });
});

test('LISTEN: a NotificationResponse from a NOTIFY sent directly arrives', async () => {
  await withWire(async (c) => {
    assert.deepEqual(await c.simple('LISTEN proto_channel'), ['CommandComplete LISTEN', ready('I')]);
    const d = await direct();
    await d.query("NOTIFY proto_channel, 'hello'");
    await d.end();
    const m = await c.next();
    assert.equal(label(m), 'NotificationResponse');
    const channelEnd = m.body.indexOf(0, 4);
    assert.equal(m.body.toString('utf8', 4, channelEnd), 'proto_channel');
    assert.equal(m.body.toString('utf8', channelEnd + 1, m.body.length - 1), 'hello');
    assert.deepEqual(await c.simple('SELECT 1'), [
      'RowDescription',
      'DataRow',
      'CommandComplete SELECT 1',
      ready('I'),
    ]);
  });
});

describe('CancelRequest', () => {
  test('the client gets the proxy’s own BackendKeyData, not the upstream backend’s', async () => {
    await withWire(async (c) => {
      c.write(fe.query('SELECT pg_backend_pid()'));
      const pid = Number(firstColumn((await c.untilReady()).find((m) => m.code === 'D')!));
      assert.notEqual(c.processId, 0);
      assert.notEqual(c.processId, pid);
      assert.equal(c.secretKey.length, 4);
    });
  });

  test('a wrong key is ignored; the right key cancels pg_sleep with 57014', async () => {
    await withWire(async (c) => {
      const wrong = Buffer.from(c.secretKey.map((b) => b ^ 0xff));
      c.write(fe.query('SELECT pg_sleep(0.6)'));
      await whenRunning('SELECT pg_sleep(0.6)');
      await sendCancelRequest(proxy.host, proxy.port, c.processId, wrong);
      await sendCancelRequest(proxy.host, proxy.port, c.processId ^ 1, c.secretKey);
      assert.deepEqual(await c.labelsUntilReady(), [
        'RowDescription',
        'DataRow',
        'CommandComplete SELECT 1',
        ready('I'),
      ]);

      const started = Date.now();
      c.write(fe.query('SELECT pg_sleep(5)'));
      await whenRunning('SELECT pg_sleep(5)');
      await sendCancelRequest(proxy.host, proxy.port, c.processId, c.secretKey);
      const msgs = await c.untilReady();
      assert.deepEqual(msgs.filter((m) => m.code !== 'T').map(label), ['ErrorResponse 57014', ready('I')]);
      assert.ok(Date.now() - started < 4000);
      assert.deepEqual(await c.simple('SELECT 1'), [
        'RowDescription',
        'DataRow',
        'CommandComplete SELECT 1',
        ready('I'),
      ]);
    });
  });

  test('a cancel of an extended-protocol query inside a block fails the block (E)', async () => {
    await withWire(async (c) => {
      assert.deepEqual(await c.simple('BEGIN'), ['CommandComplete BEGIN', ready('T')]);
      c.write(...pbe('SELECT pg_sleep(5.1)'), fe.sync());
      await whenRunning('SELECT pg_sleep(5.1)');
      await sendCancelRequest(proxy.host, proxy.port, c.processId, c.secretKey);
      assert.deepEqual(await c.labelsUntilReady(), [
        'ParseComplete',
        'BindComplete',
        'ErrorResponse 57014',
        ready('E'),
      ]);
      assert.deepEqual(await c.simple('ROLLBACK'), ['CommandComplete ROLLBACK', ready('I')]);
    });
  });
});

test('transaction status: the client sees I/T/E exactly as the server would give them', async () => {
  await withWire(async (c) => {
    const statuses: string[] = [];
    const step = async (...msgs: Buffer[]): Promise<void> => {
      c.write(...msgs);
      const labels = await c.labelsUntilReady();
      statuses.push(labels.at(-1)!.slice(-1));
    };
    await step(fe.query('SELECT 1')); // I
    await step(fe.query('BEGIN')); // T
    await step(fe.query('SELECT 1')); // T
    await step(fe.query('SELECT 1/0')); // E (server error)
    await step(fe.query('SELECT 1')); // E (25P02)
    await step(fe.query('ROLLBACK')); // I
    await step(fe.query('BEGIN')); // T
    await step(fe.query('DELETE FROM proto_items')); // E (refused)
    await step(fe.query('ROLLBACK')); // I
    await step(...pbe('BEGIN'), fe.sync()); // T
    await step(...pbe('SELECT 1'), fe.sync()); // T
    await step(...pbe('INSERT INTO proto_items VALUES (105)'), fe.sync()); // E (refused Parse)
    await step(fe.sync()); // E
    await step(...pbe('ROLLBACK'), fe.sync()); // I
    await step(fe.query('BEGIN; SAVEPOINT a')); // T
    await step(fe.query("UPDATE proto_items SET name = 'x'")); // E
    await step(fe.query('ROLLBACK TO SAVEPOINT a')); // T
    await step(fe.query('SELECT count(*) FROM proto_items')); // T
    await step(fe.query('COMMIT')); // I
    await step(fe.query('BEGIN READ WRITE')); // I (refused outside a block: nothing began)
    await step(fe.query('START TRANSACTION READ ONLY')); // T
    await step(fe.query('COMMIT')); // I
    await step(fe.sync()); // I
    assert.deepEqual(statuses.join(''), 'ITTEEITEITTEEITETTIITII');
  });
});
