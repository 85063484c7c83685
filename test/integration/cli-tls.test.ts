/**
 * The command line with TLS and proxy-managed users: a real SIGHUP makes the
 * running proxy read its certificate and users file again, sessions stay up, a
 * broken file is logged and the old one kept, and SIGTERM still stops it.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import pg from 'pg';
import { createScramVerifier } from '../../src/auth/scram.js';
import { psql } from '../fixtures/integration/psql.js';
import { makeTestCerts, type TestCerts } from '../helpers/certs.js';
import { startCli } from '../helpers/cli-process.js';
import { direct } from '../helpers/harness.js';
import { encodeSslRequest } from '../helpers/raw-client.js';

const UPSTREAM_ROLE = 'cli_tls_reader';
const UPSTREAM_PASSWORD = 'cli-tls-Upstream-9';
const ENV_VAR = 'PGRO_TEST_CLI_TLS_UPSTREAM';

let certs: TestCerts;
let dir: string;

before(async () => {
  certs = makeTestCerts();
  dir = mkdtempSync(path.join(tmpdir(), 'pgro-cli-tls-'));
  const d = await direct();
  try {
    await d.query(`DROP ROLE IF EXISTS ${UPSTREAM_ROLE}`);
    await d.query(`CREATE ROLE ${UPSTREAM_ROLE} LOGIN PASSWORD '${UPSTREAM_PASSWORD}'`);
  } finally {
    await d.end();
  }
});

after(async () => {
  const d = await direct();
  try {
    await d.query(`DROP ROLE IF EXISTS ${UPSTREAM_ROLE}`);
  } finally {
    await d.end();
  }
  rmSync(dir, { recursive: true, force: true });
  rmSync(certs.dir, { recursive: true, force: true });
});

async function fingerprint(port: number): Promise<string> {
  const raw = netConnect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => {
    raw.once('connect', resolve);
    raw.once('error', reject);
  });
  raw.write(encodeSslRequest());
  const answer = await new Promise<Buffer>((resolve) => raw.once('data', resolve));
  assert.equal(answer.toString('latin1'), 'S');
  const t = tlsConnect({ socket: raw, ca: readFileSync(certs.ca.cert), servername: 'localhost' });
  await new Promise<void>((resolve, reject) => {
    t.once('secureConnect', resolve);
    t.once('error', reject);
  });
  const fp = t.getPeerX509Certificate()!.fingerprint256;
  t.destroy();
  return fp;
}

const fingerprintOf = (file: string): string => new X509Certificate(readFileSync(file)).fingerprint256;

function usersYaml(users: Record<string, string>): string {
  const lines = ['users:'];
  for (const [name, password] of Object.entries(users)) {
    lines.push(
      `  ${name}:`,
      `    password: "${createScramVerifier(password)}"`,
      `    upstream_user: ${UPSTREAM_ROLE}`,
      `    upstream_password_env: ${ENV_VAR}`,
      `    databases: [postgres]`,
    );
  }
  return lines.join('\n') + '\n';
}

test('SIGHUP reloads the certificate and the users file; a broken file is logged and the old kept; SIGTERM stops', async () => {
  const cert = path.join(dir, 'proxy.crt');
  const key = path.join(dir, 'proxy.key');
  const users = path.join(dir, 'users.yaml');
  const config = path.join(dir, 'config.yaml');
  copyFileSync(certs.localhost.cert, cert);
  copyFileSync(certs.localhost.key, key);
  writeFileSync(users, usersYaml({ cli_first: 'first-pw' }));
  writeFileSync(config, `auth:\n  mode: proxy\n  users_file: ${users}\nlog:\n  level: info\n`);
  const cli = startCli(config, ['--tls-cert', cert, '--tls-key', key, '--client-tls', 'require'], {
    [ENV_VAR]: UPSTREAM_PASSWORD,
  });
  let open: pg.Client | undefined;
  try {
    const listening = await cli.line((l) => l.event === 'listening');
    assert.equal(listening.client_tls, 'require');
    assert.equal(listening.auth, 'proxy');
    const port = Number(String(listening.listen).split(':').pop());
    const original = fingerprintOf(certs.localhost.cert);
    const renewed = fingerprintOf(certs.localhostRenewed.cert);
    assert.equal((listening.certificate as Record<string, string>).fingerprint256, original);
    assert.equal(await fingerprint(port), original);

    const login = (user: string, password: string) =>
      psql({ host: 'localhost', port }, ['-tA', '-c', 'SELECT current_user'], {
        user,
        password,
        env: { PGSSLMODE: 'verify-full', PGSSLROOTCERT: certs.ca.cert, PGCHANNELBINDING: 'require' },
      });
    const first = await login('cli_first', 'first-pw');
    assert.equal(first.status, 0, first.stderr);
    assert.equal(first.stdout.trim(), UPSTREAM_ROLE);

    open = new pg.Client({
      host: 'localhost',
      port,
      user: 'cli_first',
      password: 'first-pw',
      database: 'postgres',
      ssl: { ca: readFileSync(certs.ca.cert) },
    });
    await open.connect();

    // Renew the certificate, swap the users: cli_first out, cli_second in.
    copyFileSync(certs.localhostRenewed.cert, cert);
    copyFileSync(certs.localhostRenewed.key, key);
    writeFileSync(users, usersYaml({ cli_second: 'second-pw' }));
    cli.child.kill('SIGHUP');
    const reloaded = await cli.line((l) => l.event === 'reloaded');
    assert.equal(reloaded.ok, true);
    assert.equal(reloaded.users, 1);
    assert.equal((reloaded.certificate as Record<string, string>).fingerprint256, renewed);
    assert.equal(await fingerprint(port), renewed);
    const second = await login('cli_second', 'second-pw');
    assert.equal(second.status, 0, second.stderr);
    const gone = await login('cli_first', 'first-pw');
    assert.notEqual(gone.status, 0);
    assert.match(gone.stderr, /password authentication failed for user "cli_first"/);
    assert.deepEqual((await open.query('SELECT 1 AS n')).rows, [{ n: 1 }], 'the open session is undisturbed');

    // A broken key and a users file that does not parse: both logged, both kept
    // (the users file is read twice: for the configuration, then on its own).
    writeFileSync(key, 'not a key\n');
    writeFileSync(users, 'users: [\n');
    cli.child.kill('SIGHUP');
    const again = await cli.line((l) => l.event === 'reloaded', 2);
    assert.equal(again.ok, false);
    const failed = cli.lines.filter((l) => l.event === 'reload_failed').map((l) => l.part);
    assert.deepEqual(failed.sort(), ['client_tls', 'config', 'users']);
    assert.equal(await fingerprint(port), renewed);
    assert.equal((await login('cli_second', 'second-pw')).status, 0);
    assert.deepEqual((await open.query('SELECT 2 AS n')).rows, [{ n: 2 }]);
    await open.end();
    open = undefined;

    cli.child.kill('SIGTERM');
    assert.equal(await cli.exited, 0, cli.stderr);
    await cli.line((l) => l.event === 'stopped');
  } finally {
    await open?.end().catch(() => undefined);
    cli.child.kill('SIGKILL');
  }
});
