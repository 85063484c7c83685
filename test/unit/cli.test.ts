import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const CLI = ['--import', 'tsx', 'src/cli.ts'];

function run(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [...CLI, ...args], {
    encoding: 'utf8',
    input,
    env: { ...process.env, PGHOST: '' },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const checkCases: Array<{ sql: string; code: number; lines: RegExp[] }> = [
  { sql: 'SELECT 1', code: 0, lines: [/^ALLOW\s+SELECT/] },
  {
    sql: 'SELECT 1; INSERT INTO t VALUES (1)',
    code: 1,
    lines: [/^ALLOW\s+SELECT/, /^DENY\s+INSERT\s+write \(25006\)/],
  },
  {
    sql: 'SELECT pg_terminate_backend(1)',
    code: 1,
    lines: [/^DENY\s+SELECT\s+forbidden_function \(42501\)/],
  },
  { sql: 'SELEC 1', code: 1, lines: [/syntax_error \(42601\)/] },
];

for (const c of checkCases) {
  test(`check "${c.sql}" exits ${c.code} and explains each statement`, () => {
    const r = run(['check', c.sql]);
    assert.equal(r.code, c.code, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, c.lines.length, r.stdout);
    c.lines.forEach((re, i) => assert.match(lines[i]!, re));
  });
}

test('check reads SQL from stdin', () => {
  const r = run(['check'], 'SELECT (1).pg_sleep');
  assert.equal(r.code, 1);
  assert.match(r.stdout, /^DENY\s+SELECT\s+forbidden_function/);
});

test('check honours the policy in --config', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'pgro-cli-'));
  const file = path.join(dir, 'c.yaml');
  writeFileSync(file, 'policy:\n  allow_statements: [ANALYZE]\n');
  assert.equal(run(['check', 'ANALYZE']).code, 1);
  assert.equal(run(['check', '--config', file, 'ANALYZE']).code, 0);
});

test('an unknown config key stops the proxy with an error naming its path', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'pgro-cli-'));
  const file = path.join(dir, 'bad.yaml');
  writeFileSync(file, 'policy:\n  functions:\n    mde: denylist\nlimits:\n  max_client_connections: -1\n');
  const r = run(['--config', file]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /policy\.functions\.mde: unknown key/);
  assert.match(r.stderr, /limits\.max_client_connections: must be >= 1/);
});

test('--help and --version answer and exit 0', () => {
  const h = run(['--help']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /--upstream URL/);
  const v = run(['--version']);
  assert.equal(v.code, 0);
  assert.match(v.stdout.trim(), /^\d+\.\d+\.\d+$/);
});

test('an unknown flag or command exits 2', () => {
  assert.equal(run(['--bogus']).code, 2);
  assert.equal(run(['frobnicate']).code, 2);
});
