import assert from 'node:assert/strict';
import { test } from 'node:test';
import { renderTable } from '../../scripts/compat-table.js';
import type { Record as CompatRecord } from '../compat/compat.js';

const rec = (client: string, scenario: string, outcome: CompatRecord['outcome']): CompatRecord => ({
  client,
  scenario,
  outcome,
});

test('compat table: one row per client, one column per version, failures and skips stand out', () => {
  const table = renderTable(
    new Map([
      [
        18,
        [
          rec('psql', 'meta-commands', { status: 'passed' }),
          rec('psql', 'cancel', { status: 'passed' }),
          rec('pg_dump', 'plain', { status: 'skipped', reason: 'pg_dump 15 cannot dump 18' }),
          rec('JDBC', 'fetch size', { status: 'failed' }),
        ],
      ],
      [
        14,
        [
          rec('psql', 'meta-commands', { status: 'passed' }),
          rec('psql', 'cancel', { status: 'skipped', reason: 'no psql' }),
          rec('pg_dump', 'plain', { status: 'passed' }),
          rec('JDBC', 'fetch size', { status: 'passed' }),
        ],
      ],
    ]),
  );
  const lines = table.split('\n');
  assert.equal(lines[0], '| Client | PostgreSQL 14 | PostgreSQL 18 |');
  assert.ok(lines.includes('| JDBC | pass (1) | **1 of 1 failed** |'), table);
  assert.ok(lines.includes('| pg_dump | pass (1) | skipped: pg_dump 15 cannot dump 18 |'), table);
  assert.ok(lines.includes('| psql | 1 of 2 pass, 1 skipped | pass (2) |'), table);
  assert.ok(lines.includes('| cancel | skipped: no psql | pass |'), table);
  assert.ok(lines.includes('| fetch size | pass | **FAIL** |'), table);
});

test('compat table: no results yet says how to make them', () => {
  assert.match(renderTable(new Map()), /npm run test:compat/);
});
