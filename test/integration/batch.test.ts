/**
 * Extended-query batches where a function changes a setting mid-batch. The server
 * reports such a change only at Sync, so whatever it runs later in the same batch
 * must not depend on the proxy having seen it. Regression tests for the attacks a
 * security review found (named after them).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import type pg from 'pg';
import { direct, startProxy, testServer, type RunningProxy } from '../helpers/harness.js';
import { errorFields, fe, label, WireClient, type BackendMessage } from '../helpers/wire.js';

let proxy: RunningProxy;
let d: pg.Client;

before(async () => {
  proxy = await startProxy();
  d = await direct();
  await d.query(`
    DROP TABLE IF EXISTS batch_t;
    CREATE TABLE batch_t (id int);
    CREATE OR REPLACE FUNCTION batch_flip() RETURNS text LANGUAGE sql AS
      $$ SELECT set_config('default_transaction_read_only', 'off', false) $$;
    CREATE OR REPLACE FUNCTION batch_flip_scs() RETURNS text LANGUAGE sql AS
      $$ SELECT set_config('standard_conforming_strings', 'off', false) $$;
    CREATE OR REPLACE FUNCTION batch_flip_scs_imm() RETURNS text LANGUAGE plpgsql IMMUTABLE AS
      $$ BEGIN RETURN set_config('standard_conforming_strings', 'off', false); END $$;
    CREATE OR REPLACE FUNCTION batch_setenc(text) RETURNS text LANGUAGE sql AS
      $$ SELECT set_config('client_encoding', $1, false) $$;
    CREATE OR REPLACE FUNCTION batch_write() RETURNS int LANGUAGE sql VOLATILE AS
      $$ INSERT INTO batch_t VALUES (1) RETURNING 1 $$;
    CREATE OR REPLACE FUNCTION batch_write_imm() RETURNS int LANGUAGE plpgsql IMMUTABLE AS
      $$ BEGIN PERFORM batch_write(); RETURN 1; END $$;
  `);
});
after(async () => {
  await d.end();
  await proxy.close();
});

async function rows(): Promise<number> {
  return (await d.query('SELECT count(*)::int AS n FROM batch_t')).rows[0].n as number;
}

async function wire(): Promise<WireClient> {
  const s = testServer();
  return WireClient.connect({ host: proxy.host, port: proxy.port, user: s.user, password: s.password });
}

/** Everything up to ReadyForQuery, or up to the close if the proxy ends the session. */
async function answer(c: WireClient): Promise<BackendMessage[]> {
  const out: BackendMessage[] = [];
  for (;;) {
    const m = await c.next();
    if (m.code === 'closed') return out;
    out.push(m);
    if (label(m).startsWith('ReadyForQuery')) return out;
  }
}

test('review t4: Bind after COMMIT in one batch (an IMMUTABLE writer folded at plan time) writes nothing', async () => {
  const before = await rows();
  const c = await wire();
  try {
    await c.simple('BEGIN');
    c.write(
      ...[fe.parse('', 'SELECT batch_flip()'), fe.bind('', ''), fe.execute('')],
      ...[fe.parse('c', 'COMMIT'), fe.bind('', 'c'), fe.execute('')],
      ...[fe.parse('', 'SELECT batch_write_imm()'), fe.bind('', ''), fe.sync()],
    );
    const got = await answer(c);
    const refusal = got.find((m) => label(m) === 'ErrorResponse 25006');
    assert.ok(refusal, got.map(label).join(', '));
    assert.match(errorFields(refusal).M ?? '', /after COMMIT in the same batch/);
  } finally {
    c.destroy();
  }
  assert.equal(await rows(), before);
});

test('review t1: a COMMIT statement name kept by the server after a failed re-Parse still counts as COMMIT', async () => {
  const before = await rows();
  const c = await wire();
  try {
    c.write(fe.parse('s', 'COMMIT'), fe.sync());
    await answer(c);
    c.write(fe.parse('s', 'SELECT 1'), fe.sync()); // fails: "s" already exists, still COMMIT
    await answer(c);
    await c.simple('BEGIN');
    c.write(
      ...[fe.parse('', 'SELECT batch_flip()'), fe.bind('', ''), fe.execute('')],
      ...[fe.bind('', 's'), fe.execute('')],
      ...[fe.parse('', 'SELECT batch_write()'), fe.bind('', ''), fe.execute(''), fe.sync()],
    );
    const got = await answer(c);
    assert.ok(
      got.some((m) => label(m) === 'ErrorResponse 25006'),
      got.map(label).join(', '),
    );
  } finally {
    c.destroy();
  }
  assert.equal(await rows(), before);
});

test('review t2: an unnamed COMMIT statement left in place by a skipped Parse still counts as COMMIT', async () => {
  const before = await rows();
  const c = await wire();
  try {
    c.write(fe.parse('', 'COMMIT'), fe.sync());
    await answer(c);
    c.write(fe.execute('nope'), fe.parse('', 'SELECT 1'), fe.sync()); // the Parse is skipped after the error
    await answer(c);
    // BEGIN through a named statement: a simple Query would drop the unnamed one.
    c.write(fe.parse('b', 'BEGIN'), fe.bind('', 'b'), fe.execute(''), fe.sync());
    await answer(c);
    c.write(
      ...[fe.parse('f', 'SELECT batch_flip()'), fe.bind('', 'f'), fe.execute('')],
      ...[fe.bind('', ''), fe.execute('')], // the unnamed statement: still COMMIT on the server
      ...[fe.parse('w', 'SELECT batch_write()'), fe.bind('', 'w'), fe.execute(''), fe.sync()],
    );
    const got = await answer(c);
    assert.ok(
      got.some((m) => label(m) === 'ErrorResponse 25006'),
      got.map(label).join(', '),
    );
  } finally {
    c.destroy();
  }
  assert.equal(await rows(), before);
});

test('review t3: standard_conforming_strings turned off mid-batch cannot smuggle a denied function past the proxy', async () => {
  const c = await wire();
  try {
    c.write(
      ...[fe.parse('', 'SELECT batch_flip_scs()'), fe.bind('', ''), fe.execute('')],
      fe.parse('', "SELECT 'a\\' /* ' , pg_read_file($$/etc/hostname$$) -- */"),
      ...[fe.bind('', ''), fe.execute(''), fe.sync()],
    );
    const got = await answer(c);
    const refusal = got.find((m) => label(m) === 'ErrorResponse 0A000');
    assert.ok(refusal, got.map(label).join(', '));
    assert.match(errorFields(refusal).M ?? '', /backslashes or non-ASCII characters after a Bind or Execute/);
    assert.ok(!got.some((m) => label(m) === 'DataRow' && m.body.toString().includes('hostname')));
  } finally {
    c.destroy();
  }
});

test('an IMMUTABLE function folded at Bind (before any Execute) cannot change how a later Parse is read', async () => {
  const c = await wire();
  try {
    c.write(
      ...[fe.parse('', 'SELECT batch_flip_scs_imm()'), fe.bind('', '')],
      fe.parse('', "SELECT 'a\\' /* ' , pg_read_file($$/etc/hostname$$) -- */"),
      ...[fe.bind('', ''), fe.execute(''), fe.sync()],
    );
    const got = await answer(c);
    assert.ok(
      got.some((m) => label(m) === 'ErrorResponse 0A000'),
      got.map(label).join(', '),
    );
  } finally {
    c.destroy();
  }
});

test('review t5: a function that sets client_encoding to SHIFT_JIS_2004 ends the session', async () => {
  const c = await wire();
  try {
    c.write(fe.query("SELECT batch_setenc('SHIFT_JIS_2004')"));
    const got = await c.untilClosed();
    const fatal = got.find((m) => label(m).startsWith('ErrorResponse'));
    assert.ok(fatal, got.map(label).join(', '));
    assert.equal(errorFields(fatal).V, 'FATAL');
    assert.match(errorFields(fatal).M ?? '', /client_encoding/);
  } finally {
    c.destroy();
  }
});

test('after a COMMIT was parsed, batches with several Executes still work (each answered before the next)', async () => {
  const c = await wire();
  try {
    c.write(fe.parse('', 'COMMIT'), fe.bind('', ''), fe.execute(''), fe.sync());
    await answer(c);
    c.write(
      ...[fe.parse('', 'SELECT 1'), fe.bind('', ''), fe.execute('')],
      ...[fe.parse('', 'SELECT 2'), fe.bind('', ''), fe.execute(''), fe.sync()],
    );
    const got = (await answer(c)).map(label);
    assert.deepEqual(
      got.filter((l) => l.startsWith('CommandComplete') || l.startsWith('ReadyForQuery')),
      ['CommandComplete SELECT 1', 'CommandComplete SELECT 1', got.at(-1)],
    );
    assert.match(got.at(-1)!, /^ReadyForQuery/);
    assert.ok(!got.some((l) => l.startsWith('ErrorResponse')), got.join(', '));
  } finally {
    c.destroy();
  }
});

test('a startup packet larger than PostgreSQL accepts (10000 bytes) is refused at once', async () => {
  const got = await new Promise<Buffer>((resolve, reject) => {
    const s = net.connect(proxy.port, proxy.host);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('close', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
    const header = Buffer.alloc(8);
    header.writeInt32BE(20000, 0);
    header.writeInt32BE(196608, 4);
    s.write(header);
  });
  assert.equal(String.fromCharCode(got[0]!), 'E');
  assert.match(got.toString('latin1'), /08P01/);
});

test('a client that never finishes logging in is disconnected after the startup timeout', async () => {
  const short = await startProxy({ config: { startupTimeoutMs: 300 } });
  try {
    const started = Date.now();
    const got = await new Promise<Buffer>((resolve, reject) => {
      const s = net.connect(short.port, short.host);
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('close', () => resolve(Buffer.concat(chunks)));
      s.on('error', reject);
    });
    assert.ok(Date.now() - started < 5000);
    assert.match(got.toString('latin1'), /57014/);
    assert.match(got.toString('latin1'), /timeout/);
  } finally {
    await short.close();
  }
});

test("a driver's BEGIN in the same batch (JDBC, autocommit off) does not stop a later non-ASCII or backslash statement", async () => {
  const c = await wire();
  try {
    c.write(
      ...[fe.parse('', 'BEGIN'), fe.bind('', ''), fe.execute('')],
      ...[fe.parse('S_1', 'SAVEPOINT a'), fe.bind('P_1', 'S_1'), fe.execute('P_1')],
      ...[fe.parse('', "SELECT 'Zoë', 'C:\\temp'"), fe.bind('', ''), fe.execute(''), fe.sync()],
    );
    const got = await answer(c);
    assert.ok(!got.some((m) => label(m).startsWith('ErrorResponse')), got.map(label).join(', '));
    const row = got.find((m) => label(m) === 'DataRow');
    assert.ok(row?.body.toString('utf8').includes('Zoë'), got.map(label).join(', '));
    assert.ok(row?.body.toString('utf8').includes('C:\\temp'));
  } finally {
    c.destroy();
  }
});

test('an inert name does not cover a statement re-parsed under it, a portal re-bound, or a Close', async () => {
  const cases: Array<[string, Buffer[]]> = [
    [
      'statement re-parsed',
      [
        ...[
          fe.parse('s', 'BEGIN'),
          fe.parse('s', 'SELECT batch_flip_scs()'),
          fe.bind('', 's'),
          fe.execute(''),
        ],
        fe.parse('', "SELECT 'a\\'"),
      ],
    ],
    [
      'portal re-bound',
      [
        ...[fe.parse('b', 'BEGIN'), fe.bind('', 'b'), fe.parse('f', 'SELECT batch_flip_scs()')],
        ...[fe.bind('', 'f'), fe.execute(''), fe.parse('', "SELECT 'a\\'")],
      ],
    ],
    [
      'after a Close',
      [
        ...[fe.parse('b', 'BEGIN'), fe.close('S', 'b'), fe.parse('', 'SELECT batch_flip_scs()')],
        ...[fe.bind('', ''), fe.execute(''), fe.parse('', "SELECT 'a\\'")],
      ],
    ],
  ];
  for (const [name, messages] of cases) {
    const c = await wire();
    try {
      c.write(...messages, fe.bind('', ''), fe.execute(''), fe.sync());
      const got = await answer(c);
      assert.ok(
        got.some((m) => label(m).startsWith('ErrorResponse')),
        `${name}: ${got.map(label).join(', ')}`,
      );
      const refusal = got.find((m) => label(m) === 'ErrorResponse 0A000');
      // Either the proxy refused the backslash statement, or the server failed the
      // batch earlier (a named statement re-parsed, a named portal re-bound) and
      // skipped the rest.
      if (!refusal)
        assert.ok(
          got.some((m) => label(m) === 'ErrorResponse 42P05' || label(m) === 'ErrorResponse 42P03'),
          `${name}: ${got.map(label).join(', ')}`,
        );
    } finally {
      c.destroy();
    }
  }
});
