/**
 * Authentication passthrough: the server's own exchange is relayed unchanged for
 * every method it may ask for (trust, cleartext password, MD5, SCRAM-SHA-256),
 * wrong passwords get the server's own 28P01, and no password reaches a log line.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { direct, startProxy, type RunningProxy } from '../helpers/harness.js';

const PASSWORD = 'S3cret-pässword!';
const WRONG = 'Wr0ng-pw-7f3a';
const methods = [
  { user: 'auth_trust', method: 'trust' },
  { user: 'auth_cleartext', method: 'password' },
  { user: 'auth_md5', method: 'md5' },
  { user: 'auth_scram', method: 'scram-sha-256' },
] as const;

let proxy: RunningProxy;
let hbaFile: string;
let hbaBefore: string;

before(async () => {
  const dataDir = process.env.TEST_PG_DATA;
  assert.ok(dataDir, 'scripts/run-tests.ts passes TEST_PG_DATA');
  hbaFile = path.join(dataDir, 'pg_hba.conf');
  hbaBefore = readFileSync(hbaFile, 'utf8');
  // First match wins: these lines go before the cluster's catch-all SCRAM line.
  const lines = methods.map((m) => `host all ${m.user} 127.0.0.1/32 ${m.method}`).join('\n');
  writeFileSync(hbaFile, `${lines}\n${hbaBefore}`);
  const d = await direct();
  for (const m of methods) {
    await d.query(`DROP ROLE IF EXISTS ${m.user}`);
    // MD5 needs an MD5-stored password; the others get a SCRAM verifier.
    await d.query(`SET password_encryption = '${m.method === 'md5' ? 'md5' : 'scram-sha-256'}'`);
    await d.query(`CREATE ROLE ${m.user} LOGIN PASSWORD '${PASSWORD}'`);
  }
  await d.query('SELECT pg_reload_conf()');
  await d.end();
  proxy = await startProxy();
});

after(async () => {
  writeFileSync(hbaFile, hbaBefore);
  const d = await direct();
  await d.query('SELECT pg_reload_conf()');
  await d.end();
  await proxy.close();
});

for (const m of methods) {
  test(`${m.method} authentication is relayed: the right password logs in and reads`, async () => {
    const c = new pg.Client({
      host: proxy.host,
      port: proxy.port,
      user: m.user,
      password: PASSWORD,
      database: 'postgres',
    });
    await c.connect();
    try {
      const r = await c.query('SELECT current_user AS u, current_setting($1) AS ro', [
        'default_transaction_read_only',
      ]);
      assert.deepEqual(r.rows[0], { u: m.user, ro: 'on' });
    } finally {
      await c.end();
    }
  });

  if (m.method !== 'trust') {
    test(`${m.method} authentication: a wrong password gets the server's 28P01`, async () => {
      const c = new pg.Client({
        host: proxy.host,
        port: proxy.port,
        user: m.user,
        password: 'wrong',
        database: 'postgres',
      });
      c.on('error', () => undefined);
      await assert.rejects(c.connect(), { code: '28P01' });
    });
  }
}

test('no log line carries a password', () => {
  assert.ok(proxy.logs.length > 0);
  for (const line of proxy.logs) {
    const text = JSON.stringify(line);
    assert.ok(!text.includes(PASSWORD), `password in a log line: ${text}`);
    assert.ok(!text.includes(WRONG), `password in a log line: ${text}`);
  }
});
