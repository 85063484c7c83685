/**
 * The audit log: one record per statement string, checked field by field; the
 * literals (and so secrets) replaced unless the full text is opted in; a file of
 * its own when configured; off when turned off.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { resolveConfig } from '../../src/config/config.js';
import { eventually, startProxy, testServer } from '../helpers/harness.js';

const dir = mkdtempSync(path.join(tmpdir(), 'pgro-audit-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const audits = (logs: Array<Record<string, unknown>>): Array<Record<string, unknown>> =>
  logs.filter((l) => l.event === 'audit');

test('one record per statement: who, what was decided and why, fingerprint, literals replaced, duration, rows, bytes', async () => {
  const proxy = await startProxy();
  const s = testServer();
  try {
    const c = await proxy.client({ application_name: 'audit-test' });
    await c.query("SELECT g FROM generate_series(1, 3) g WHERE 'hunter2' <> 'x'");
    await assert.rejects(c.query("DELETE FROM pg_class WHERE relname = 'secret-name'"), { code: '25006' });
    await c.query({ text: 'SELECT $1::int AS n', values: [7] });
    await c.end();
    await eventually(() => audits(proxy.logs).length >= 3, 5000, 'audit records');
    const [read, write, parsed] = audits(proxy.logs);
    for (const r of [read, write, parsed]) {
      assert.equal(r!.user, s.user);
      assert.equal(r!.database, 'postgres');
      assert.equal(r!.application_name, 'audit-test');
      assert.match(String(r!.client), /^127\.0\.0\.1:\d+$/);
      assert.equal(typeof r!.session, 'number');
      assert.match(String(r!.fingerprint), /^[0-9a-f]{16}$/);
      assert.equal(r!.text, undefined, 'the full text only when opted in');
      assert.ok(!JSON.stringify(r).includes('hunter2') && !JSON.stringify(r).includes('secret-name'));
    }
    assert.deepEqual(
      [read!.via, read!.decision, read!.kind, read!.rows, read!.normalized],
      ['Query', 'allowed', 'SELECT', 3, 'SELECT g FROM generate_series($1, $2) g WHERE $3 <> $4'],
    );
    assert.equal(typeof read!.duration_ms, 'number');
    assert.ok((read!.bytes as number) > 0);
    assert.deepEqual(
      [write!.via, write!.decision, write!.reason, write!.kind, write!.rows],
      ['Query', 'refused', 'write', 'DELETE', 0],
    );
    assert.deepEqual(
      [parsed!.via, parsed!.decision, parsed!.kind, parsed!.normalized],
      ['Parse', 'allowed', 'SELECT', 'SELECT $1::int AS n'],
    );
    // The same statement shape has the same fingerprint whatever its literals.
    const again = await proxy.client();
    await again.query("SELECT g FROM generate_series(4, 9) g WHERE 'other' <> 'y'");
    await again.end();
    await eventually(() => audits(proxy.logs).length >= 4, 5000, 'the fourth record');
    assert.equal(audits(proxy.logs)[3]!.fingerprint, read!.fingerprint);
  } finally {
    await proxy.close();
  }
});

test('include_text adds the full text; a file of its own; enabled: false writes none', async () => {
  const file = path.join(dir, 'audit.jsonl');
  const base = resolveConfig({}, { listen: '127.0.0.1:0' }, {});
  const withText = await startProxy({ config: { audit: { enabled: true, includeText: true, file } } });
  const off = await startProxy({ config: { audit: { ...base.audit, enabled: false } } });
  try {
    const c = await withText.client();
    await c.query("SELECT 'visible' AS v");
    await c.end();
    await eventually(
      () => {
        try {
          return readFileSync(file, 'utf8').includes('"event":"audit"');
        } catch {
          return false;
        }
      },
      5000,
      'the audit file',
    );
    const record = JSON.parse(readFileSync(file, 'utf8').trim().split('\n').at(-1)!) as Record<
      string,
      unknown
    >;
    assert.equal(record.text, "SELECT 'visible' AS v");
    assert.equal(record.normalized, 'SELECT $1 AS v');
    assert.equal(audits(withText.logs).length, 0, 'not also on the main log');
    const d = await off.client();
    await d.query('SELECT 1');
    await d.end();
    assert.equal(audits(off.logs).length, 0);
  } finally {
    await withText.close();
    await off.close();
  }
});

test('literals the normalizer leaves (PREPARE, comments) keep the text out; a session ended mid-query still gets its record', async () => {
  const proxy = await startProxy();
  try {
    const c = await proxy.client();
    c.on('error', () => undefined);
    await c.query("PREPARE audit_q AS SELECT 1 WHERE 'sk-hidden' <> ''");
    await c.query('SELECT 1 /* sk-comment */');
    await c.query('DEALLOCATE audit_q');
    const slow = c.query('SELECT pg_sleep(0.5)').catch(() => undefined);
    await new Promise((r) => setTimeout(r, 150));
    (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    await slow;
    await eventually(
      () => audits(proxy.logs).some((l) => l.session_ended !== undefined),
      5000,
      'the last record',
    );
    const all = audits(proxy.logs);
    assert.ok(!JSON.stringify(all).includes('sk-hidden') && !JSON.stringify(all).includes('sk-comment'));
    const prepared = all.find((l) => l.kind === 'PREPARE')!;
    assert.match(String(prepared.fingerprint), /^[0-9a-f]{16}$/);
    assert.equal(prepared.normalized, undefined);
    const ended = all.find((l) => l.session_ended !== undefined)!;
    assert.equal(ended.normalized, 'SELECT pg_sleep($1)');
  } finally {
    await proxy.close();
  }
});
