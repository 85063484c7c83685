/**
 * Startup packet tricks. Each refused startup must get a FATAL ErrorResponse
 * with a SQLSTATE and must send nothing upstream: those cases run against a
 * proxy whose "upstream" is a sentinel socket that counts connections, so
 * "nothing sent upstream" is observed, not inferred. Allowed startups run
 * against the real server and their settings are checked with SHOW.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import type pg from 'pg';
import { direct, startProxy, testServer, type RunningProxy } from '../helpers/harness.js';
import {
  PROTOCOL_2_0,
  PROTOCOL_3_2,
  RawClient,
  encodeSslRequest,
  encodeStartup,
  errorFields,
  firstColumn,
  type BackendMessage,
} from '../helpers/raw-client.js';

const ROLE = 'startup_rw_role';
const ROLE_SJIS = 'startup_sjis_role';
const ROLE_PASSWORD = 'startup-pw';

let proxy: RunningProxy;
let trap: RunningProxy;
let sentinel: Server;
let sentinelConnections = 0;

before(async () => {
  sentinel = createServer((sock) => {
    sentinelConnections++;
    sock.destroy();
  });
  await new Promise<void>((resolve) => sentinel.listen(0, testServer().host, resolve));
  const addr = sentinel.address();
  assert.ok(addr && typeof addr === 'object');
  // Plaintext upstream: with sslmode=prefer a sentinel that hangs up on the
  // SSLRequest would be tried twice (TLS, then plaintext), as libpq does.
  trap = await startProxy({
    config: {
      upstream: {
        host: testServer().host,
        port: addr.port,
        tls: { sslmode: 'disable', sslnegotiation: 'postgres' },
      },
    },
  });
  proxy = await startProxy();
  const d = await direct();
  await d.query(`DROP ROLE IF EXISTS ${ROLE}; DROP ROLE IF EXISTS ${ROLE_SJIS}`);
  await d.query(`CREATE ROLE ${ROLE} LOGIN PASSWORD '${ROLE_PASSWORD}'`);
  await d.query(`ALTER ROLE ${ROLE} SET default_transaction_read_only = off`);
  await d.query(`ALTER ROLE ${ROLE} SET standard_conforming_strings = off`);
  await d.query(`CREATE ROLE ${ROLE_SJIS} LOGIN PASSWORD '${ROLE_PASSWORD}'`);
  await d.query(`ALTER ROLE ${ROLE_SJIS} SET client_encoding = 'SJIS'`);
  await d.end();
});
after(async () => {
  await trap.close();
  await proxy.close();
  await new Promise<void>((resolve) => sentinel.close(() => resolve()));
});

/** Sends a startup packet to `target` and returns the first message and whether the proxy closed. */
async function startupReply(
  target: RunningProxy,
  params: Array<[string, string]>,
  version?: number,
): Promise<{ msg: BackendMessage; fields: Map<string, string> }> {
  const raw = await RawClient.connect(target.host, target.port);
  try {
    raw.send(encodeStartup(params, version));
    const msg = await raw.read();
    await raw.waitClosed(2000);
    return { msg, fields: msg.type === 'E' ? errorFields(msg.body) : new Map() };
  } finally {
    raw.close();
  }
}

const base = (): Array<[string, string]> => [
  ['user', testServer().user],
  ['database', 'postgres'],
];

/** [name, extra startup keys, expected SQLSTATE] */
const tricks: Array<[string, Array<[string, string]>, string]> = [
  [
    'options -c default_transaction_read_only=off',
    [['options', '-c default_transaction_read_only=off']],
    '42501',
  ],
  [
    'options --default-transaction-read-only=off',
    [['options', '--default-transaction-read-only=off']],
    '42501',
  ],
  [
    'options --default_transaction_read_only=off',
    [['options', '--default_transaction_read_only=off']],
    '42501',
  ],
  [
    'options -cdefault_transaction_read_only=off',
    [['options', '-cdefault_transaction_read_only=off']],
    '42501',
  ],
  [
    'options -c default-transaction-read-only=off',
    [['options', '-c default-transaction-read-only=off']],
    '42501',
  ],
  [
    'options with an escaped space -c\\ name=off',
    [['options', '-c\\ default_transaction_read_only=off']],
    '08P01',
  ],
  ['options in upper case', [['options', '-c DEFAULT_TRANSACTION_READ_ONLY=OFF']], '42501'],
  [
    'options: a later -c overriding an earlier one',
    [['options', '-c default_transaction_read_only=on -c default_transaction_read_only=off']],
    '42501',
  ],
  ['options -c transaction_read_only=off', [['options', '-c transaction_read_only=off']], '42501'],
  ['options -c role=postgres', [['options', '-c role=postgres']], '42501'],
  [
    'options -c standard_conforming_strings=off',
    [['options', '-c standard_conforming_strings=off']],
    '42501',
  ],
  ['options -c client_encoding=SJIS', [['options', '-c client_encoding=SJIS']], '42501'],
  ['options with an unknown switch -F', [['options', '-F']], '42501'],
  ['options with -D datadir', [['options', '-D /tmp']], '42501'],
  ['key default_transaction_read_only=off', [['default_transaction_read_only', 'off']], '42501'],
  ['key DEFAULT_TRANSACTION_READ_ONLY=off', [['DEFAULT_TRANSACTION_READ_ONLY', 'off']], '42501'],
  ['key transaction_read_only=off', [['transaction_read_only', 'off']], '42501'],
  ['key role=postgres', [['role', 'postgres']], '42501'],
  ['key session_authorization=postgres', [['session_authorization', 'postgres']], '42501'],
  ['key standard_conforming_strings=off', [['standard_conforming_strings', 'off']], '42501'],
  ['key client_encoding=SJIS', [['client_encoding', 'SJIS']], '42501'],
  ['key replication=database', [['replication', 'database']], '42501'],
  ['key replication=true', [['replication', 'true']], '42501'],
  ['key with characters no setting name has', [['search_path;drop', 'x']], '08P01'],
];

describe('startup-packet tricks are refused with FATAL and nothing is sent upstream', () => {
  for (const [name, extra, code] of tricks) {
    test(name, async () => {
      const before = sentinelConnections;
      const { msg, fields } = await startupReply(trap, [
        ...base(),
        ...extra,
        ['application_name', 'startup_trick'],
      ]);
      assert.equal(msg.type, 'E');
      assert.equal(fields.get('S'), 'FATAL');
      assert.equal(fields.get('C'), code, fields.get('M'));
      assert.match(fields.get('M') ?? '', /pg-readonly-proxy/);
      // Give a wrongly forwarded startup time to reach the sentinel.
      await new Promise((r) => setTimeout(r, 30));
      assert.equal(sentinelConnections, before, 'the proxy connected upstream');
    });
  }

  test('every refused startup wrote a security log line and none reached authentication', () => {
    const refused = trap.logs.filter((l) => l.event === 'security');
    assert.equal(refused.length, tricks.length);
    for (const l of refused) assert.match(String(l.kind), /^startup_/);
    assert.equal(
      trap.logs.some((l) => l.event === 'authenticated'),
      false,
    );
  });

  test('control: a harmless startup through the same proxy does reach the upstream sentinel', async () => {
    const before = sentinelConnections;
    const raw = await RawClient.connect(trap.host, trap.port);
    try {
      raw.send(encodeStartup([...base(), ['options', '-c search_path=public']]));
      await raw.readUntil('E', 3000).catch(() => undefined);
    } finally {
      raw.close();
    }
    assert.equal(sentinelConnections, before + 1);
  });

  test('node-postgres options=-c default_transaction_read_only=off is refused with 42501', async () => {
    await assert.rejects(proxy.client({ options: '-c default_transaction_read_only=off' }), {
      code: '42501',
    });
  });
});

describe('harmless startup parameters are allowed and applied', () => {
  test('options -c search_path=public, application_name, statement_timeout as its own key', async () => {
    const s = testServer();
    const raw = await RawClient.connect(proxy.host, proxy.port);
    try {
      raw.send(
        encodeStartup([
          ...base(),
          ['options', '-c search_path=public,pg_catalog --work-mem=5MB'],
          ['application_name', 'startup_harmless'],
          ['statement_timeout', '1000'],
        ]),
      );
      await raw.login(s.user, s.password);
      const show = async (name: string) => firstColumn(await raw.query(`SHOW ${name}`))[0];
      assert.equal(await show('search_path'), 'public,pg_catalog');
      assert.equal(await show('application_name'), 'startup_harmless');
      assert.equal(await show('statement_timeout'), '1s');
      assert.equal(await show('work_mem'), '5MB');
      assert.equal(await show('default_transaction_read_only'), 'on');
      assert.equal(await show('transaction_read_only'), 'on');
    } finally {
      raw.close();
    }
  });

  test('default_transaction_read_only=on as its own key is accepted (it only repeats the pin)', async () => {
    const c = await proxy.client({ options: '-c default_transaction_read_only=on' });
    try {
      const r = await c.query('SHOW default_transaction_read_only');
      assert.equal(r.rows[0].default_transaction_read_only, 'on');
    } finally {
      await c.end();
    }
  });
});

describe('protocol negotiation', () => {
  async function loginAndSelect(raw: RawClient, first?: BackendMessage): Promise<void> {
    const s = testServer();
    const after = await raw.login(s.user, s.password, first);
    assert.ok(
      after.some((m) => m.type === 'K'),
      'BackendKeyData',
    );
    const msgs = await raw.query('SELECT 40 + 2');
    assert.deepEqual(firstColumn(msgs), ['42']);
  }

  test('protocol 3.2 gets NegotiateProtocolVersion (3.0) and then works', async () => {
    const raw = await RawClient.connect(proxy.host, proxy.port);
    try {
      raw.send(encodeStartup(base(), PROTOCOL_3_2));
      const v = await raw.read();
      assert.equal(v.type, 'v');
      // The newest version supported for major version 3 (3.0, as PostgreSQL codes
      // it: 3 << 16 | 0), and no unrecognised options.
      assert.equal(v.body.readInt32BE(0), 196608);
      assert.equal(v.body.readInt32BE(4), 0);
      await loginAndSelect(raw);
    } finally {
      raw.close();
    }
  });

  test('a _pq_.x protocol option is listed in NegotiateProtocolVersion and the session works', async () => {
    const raw = await RawClient.connect(proxy.host, proxy.port);
    try {
      raw.send(encodeStartup([...base(), ['_pq_.x', 'y']]));
      const v = await raw.read();
      assert.equal(v.type, 'v');
      assert.equal(v.body.readInt32BE(0), 196608);
      assert.equal(v.body.readInt32BE(4), 1);
      assert.equal(v.body.subarray(8, v.body.indexOf(0, 8)).toString(), '_pq_.x');
      await loginAndSelect(raw);
    } finally {
      raw.close();
    }
  });

  test('protocol 2.0 gets FATAL 0A000 and is closed', async () => {
    const { msg, fields } = await startupReply(trap, base(), PROTOCOL_2_0);
    assert.equal(msg.type, 'E');
    assert.equal(fields.get('S'), 'FATAL');
    assert.equal(fields.get('C'), '0A000');
  });

  test("SSLRequest is answered 'N' and a plaintext startup then works", async () => {
    const raw = await RawClient.connect(proxy.host, proxy.port);
    try {
      raw.send(encodeSslRequest());
      assert.equal(await raw.readByte(), 'N');
      raw.send(encodeStartup(base()));
      await loginAndSelect(raw);
    } finally {
      raw.close();
    }
  });

  test('psql with sslmode=prefer falls back to plaintext through the proxy', async () => {
    const { psql } = await import('../fixtures/integration/psql.js');
    const r = await psql(proxy, ['-A', '-t', '-c', 'SHOW default_transaction_read_only'], {
      env: { PGSSLMODE: 'prefer' },
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'on');
  });
});

describe('upstream read-only is verified', () => {
  test('SHOW default_transaction_read_only is on even when the role sets it off (ALTER ROLE ... SET)', async () => {
    // Direct: the role's setting applies.
    const d = await direct({ user: ROLE, password: ROLE_PASSWORD });
    const directValue = (await d.query('SHOW default_transaction_read_only')).rows[0]
      .default_transaction_read_only as string;
    await d.end();
    assert.equal(directValue, 'off');
    const c: pg.Client = await proxy.client({ user: ROLE, password: ROLE_PASSWORD });
    try {
      const r = await c.query(
        'SELECT current_setting($1) AS dtro, current_setting($2) AS tro, current_setting($3) AS scs',
        ['default_transaction_read_only', 'transaction_read_only', 'standard_conforming_strings'],
      );
      assert.deepEqual(r.rows[0], { dtro: 'on', tro: 'on', scs: 'on' });
    } finally {
      await c.end();
    }
  });

  test('a role whose client_encoding defaults to SJIS is ended at login when the client sends none', async () => {
    const raw = await RawClient.connect(proxy.host, proxy.port);
    try {
      raw.send(
        encodeStartup([
          ['user', ROLE_SJIS],
          ['database', 'postgres'],
        ]),
      );
      await assert.rejects(raw.login(ROLE_SJIS, ROLE_PASSWORD), /client_encoding/);
      await raw.waitClosed(2000);
    } finally {
      raw.close();
    }
  });
});
