/**
 * The policy corpus, table-driven: every row through the default policy.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { createPolicy, loadParser, PolicySqlState, ReasonCode, type Policy } from '../../src/policy/index.js';
import { corpus } from '../fixtures/policy/corpus.js';

const SQLSTATE_OF: Record<string, string> = {
  [ReasonCode.Write]: PolicySqlState.ReadOnlySqlTransaction,
  [ReasonCode.Ddl]: PolicySqlState.ReadOnlySqlTransaction,
  [ReasonCode.Utility]: PolicySqlState.ReadOnlySqlTransaction,
  [ReasonCode.ReadWriteTransaction]: PolicySqlState.ReadOnlySqlTransaction,
  [ReasonCode.LockingClause]: PolicySqlState.ReadOnlySqlTransaction,
  [ReasonCode.Copy]: PolicySqlState.ReadOnlySqlTransaction,
  [ReasonCode.Procedural]: PolicySqlState.ReadOnlySqlTransaction,
  [ReasonCode.TwoPhase]: PolicySqlState.ReadOnlySqlTransaction,
  [ReasonCode.Notify]: PolicySqlState.ReadOnlySqlTransaction,
  [ReasonCode.TransactionBoundary]: PolicySqlState.ReadOnlySqlTransaction,
  [ReasonCode.ProtectedSetting]: PolicySqlState.InsufficientPrivilege,
  [ReasonCode.ForbiddenFunction]: PolicySqlState.InsufficientPrivilege,
  [ReasonCode.RoleChange]: PolicySqlState.InsufficientPrivilege,
  [ReasonCode.SyntaxError]: PolicySqlState.SyntaxError,
  [ReasonCode.Unknown]: PolicySqlState.FeatureNotSupported,
};

function label(sql: string): string {
  const flat = JSON.stringify(sql.replace(/\s+/g, ' ').trim());
  return flat.length > 100 ? `${flat.slice(0, 97)}...` : flat;
}

let policy: Policy;
before(async () => {
  await loadParser();
  policy = createPolicy();
});

test('the corpus is big and covers every reason code the default policy can give', () => {
  assert.ok(corpus.length >= 300, `corpus has ${corpus.length} rows`);
  const seen = new Set(corpus.map((r) => r.expect));
  for (const code of Object.values(ReasonCode)) {
    if (code === ReasonCode.Unknown || code === ReasonCode.Internal || code === ReasonCode.BatchBoundary)
      continue;
    assert.ok(seen.has(code), `no corpus row expects ${code}`);
  }
  assert.ok(corpus.filter((r) => r.expect === 'allow').length >= 150);
});

describe('corpus', () => {
  corpus.forEach((row, i) => {
    test(`#${i} ${row.expect}: ${label(row.sql)}`, () => {
      const d = policy.classify(row.sql);
      if (row.expect === 'allow') {
        assert.equal(d.allowed, true, `refused: ${d.refusal?.code} ${d.refusal?.message}`);
        assert.equal(d.refusal, undefined);
        for (const s of d.statements) assert.equal(s.refusal, undefined);
        return;
      }
      assert.equal(d.allowed, false, `allowed, expected ${row.expect}`);
      const r = d.refusal;
      assert.ok(r);
      assert.equal(r.code, row.expect, `got ${r.code}: ${r.message}`);
      assert.equal(r.sqlstate, SQLSTATE_OF[row.expect]);
      assert.ok(r.message.length > 0);
      if (r.code !== ReasonCode.SyntaxError) {
        assert.match(r.message, /^pg-readonly-proxy: .+ is not allowed: .+/);
        // The first refused statement carries the same refusal.
        assert.deepEqual(
          d.statements.find((s) => s.refusal),
          d.statements.find((s) => s.refusal === r),
        );
      }
      if (r.position !== undefined) {
        assert.ok(r.position >= 1 && r.position <= [...row.sql].length + 1, `position ${r.position}`);
      }
    });
  });
});
