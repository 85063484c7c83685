/**
 * Turning TLS on and off in the shared test PostgreSQL, and adding pg_hba.conf
 * lines for a test file: every change is undone by the returned function.
 * Settings are changed with ALTER SYSTEM and a reload (no restart), and each
 * helper waits until new connections see the change.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { chownSync, copyFileSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import path from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { encodeSslRequest } from '../../src/protocol/frontend-messages.js';
import { direct, testServer } from './harness.js';

function dataDir(): string {
  const dir = process.env.TEST_PG_DATA;
  assert.ok(dir, 'scripts/run-tests.ts passes TEST_PG_DATA');
  return dir;
}

/** PostgreSQL wants to own its key file when it runs as another OS user. */
function giveToServer(file: string): void {
  if (process.getuid?.() !== 0) return;
  const { uid, gid } = statSync(dataDir());
  chownSync(file, uid, gid);
}

/** The SHA-256 fingerprint of the certificate new connections get, or undefined when TLS is off. */
export async function servedFingerprint(): Promise<string | undefined> {
  const s = testServer();
  const raw = connect({ host: s.host, port: s.port });
  try {
    await new Promise<void>((resolve, reject) => {
      raw.once('connect', resolve);
      raw.once('error', reject);
    });
    raw.write(encodeSslRequest());
    const answer = await new Promise<Buffer>((resolve) => raw.once('data', resolve));
    if (answer.toString('latin1') !== 'S') return undefined;
    const t = tlsConnect({ socket: raw, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      t.once('secureConnect', resolve);
      t.once('error', reject);
    });
    const fp = t.getPeerX509Certificate()?.fingerprint256;
    t.destroy();
    return fp;
  } finally {
    raw.destroy();
  }
}

async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    assert.ok(Date.now() < deadline, `the test server did not ${what} (see its log)`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function sql(statements: string[]): Promise<void> {
  const d = await direct();
  try {
    for (const s of statements) await d.query(s);
  } finally {
    await d.end();
  }
}

/**
 * Serves TLS with this certificate and key (PEM files); with `ca`, client
 * certificates signed by it are accepted (for `cert` lines in pg_hba.conf).
 * Returns a function that turns TLS off again.
 */
export async function serveTls(files: {
  cert: string;
  key: string;
  ca?: string;
}): Promise<() => Promise<void>> {
  const dir = dataDir();
  const cert = path.join(dir, 'test-server.crt');
  const key = path.join(dir, 'test-server.key');
  const ca = path.join(dir, 'test-client-ca.crt');
  copyFileSync(files.cert, cert);
  writeFileSync(key, readFileSync(files.key), { mode: 0o600 });
  for (const f of [cert, key]) giveToServer(f);
  const settings = [
    'ALTER SYSTEM SET ssl = on',
    `ALTER SYSTEM SET ssl_cert_file = '${cert}'`,
    `ALTER SYSTEM SET ssl_key_file = '${key}'`,
  ];
  if (files.ca) {
    copyFileSync(files.ca, ca);
    giveToServer(ca);
    settings.push(`ALTER SYSTEM SET ssl_ca_file = '${ca}'`);
  }
  await sql([...settings, 'SELECT pg_reload_conf()']);
  const want = new X509Certificate(readFileSync(files.cert)).fingerprint256;
  await until('take up the certificate', async () => (await servedFingerprint()) === want);
  return async () => {
    await sql([
      ...['ssl', 'ssl_cert_file', 'ssl_key_file', 'ssl_ca_file'].map((s) => `ALTER SYSTEM RESET ${s}`),
      'SELECT pg_reload_conf()',
    ]);
    await until('stop offering TLS', async () => (await servedFingerprint()) === undefined);
    for (const f of [cert, key, ca]) rmSync(f, { force: true });
  };
}

/**
 * Puts these lines first in pg_hba.conf (first match wins) and reloads.
 * Returns a function that restores the file.
 */
export async function prependHba(lines: string[]): Promise<() => Promise<void>> {
  const file = path.join(dataDir(), 'pg_hba.conf');
  const before = readFileSync(file, 'utf8');
  writeFileSync(file, `${lines.join('\n')}\n${before}`);
  await sql(['SELECT pg_reload_conf()']);
  const d = await direct();
  try {
    // pg_hba_file_rules reads the file as it is now: a typo in a test's lines shows here.
    const r = await d.query('SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL');
    assert.deepEqual(r.rows, [], 'pg_hba.conf lines have errors');
  } finally {
    await d.end();
  }
  // The postmaster rereads the file on the reload signal; give it a moment.
  await new Promise((r) => setTimeout(r, 100));
  return async () => {
    writeFileSync(file, before);
    await sql(['SELECT pg_reload_conf()']);
  };
}
