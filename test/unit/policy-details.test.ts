/**
 * The policy beyond the corpus: decision shape, positions, options, helpers.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { before, describe, test } from 'node:test';
import {
  createPolicy,
  defaultPolicyOptions,
  formatCheckReport,
  loadParser,
  ReasonCode,
  type Decision,
} from '../../src/policy/index.js';
import { classifyWith, compileOptions } from '../../src/policy/classify.js';
import { parseIntervalSeconds } from '../../src/policy/functions.js';
import {
  cleanEncodingName,
  isClientOnlyEncoding,
  parseBool,
  parseSettingNumber,
} from '../../src/policy/settings.js';
import { STATEMENT_RULES } from '../../src/policy/statements.js';
import { checkStatement } from '../../src/policy/walk.js';

before(async () => {
  await loadParser();
  await loadParser(); // idempotent
});

function code(d: Decision): string {
  return d.allowed ? 'allow' : (d.refusal?.code ?? '?');
}

describe('decision shape', () => {
  test('empty input, comments and semicolons are allowed with no statements', () => {
    const p = createPolicy();
    for (const sql of ['', '  ', '-- x', '/* x */', ';', ';;']) {
      assert.deepEqual(p.classify(sql), { allowed: true, statements: [] }, JSON.stringify(sql));
    }
  });

  test('one entry per statement with its own kind and text; the first refusal wins', () => {
    const d = createPolicy().classify('SELECT 1; COMMIT; DROP TABLE x;  INSERT INTO t VALUES (1)');
    assert.equal(d.allowed, false);
    assert.deepEqual(
      d.statements.map((s) => [s.kind, s.text, s.refusal?.code]),
      [
        ['SELECT', 'SELECT 1', undefined],
        ['COMMIT', 'COMMIT', undefined],
        ['DROP TABLE', 'DROP TABLE x', 'ddl'],
        ['INSERT', 'INSERT INTO t VALUES (1)', 'write'],
      ],
    );
    assert.equal(d.refusal, d.statements[2]?.refusal);
    assert.equal(d.refusal?.sqlstate, '25006');
    assert.equal(
      d.refusal?.message,
      'pg-readonly-proxy: DROP TABLE is not allowed: this connection is read-only',
    );
    assert.equal(
      d.refusal?.hint,
      'pg-readonly-proxy allows read-only statements only; connect to the primary directly to write.',
    );
  });

  test('the message names a write and its hint says where to write', () => {
    const r = createPolicy().classify('INSERT INTO t VALUES (1)').refusal;
    assert.equal(r?.message, 'pg-readonly-proxy: INSERT is not allowed: this connection is read-only');
    assert.equal(r?.kind, 'INSERT');
  });

  test('statement text is sliced by bytes, so non-ASCII text before it does not shift it', () => {
    const d = createPolicy().classify("SELECT 'é😀'; DROP TABLE x");
    assert.deepEqual(
      d.statements.map((s) => s.text),
      ["SELECT 'é😀'", 'DROP TABLE x'],
    );
  });

  test('positions are 1-based characters, as the server reports them', () => {
    const p = createPolicy();
    assert.equal(p.classify('SELECT pg_terminate_backend(1)').refusal?.position, 8);
    // 'é' is 2 bytes and '😀' 4 in UTF-8, one character each.
    assert.equal(p.classify("SELECT 'é😀', pg_advisory_lock(1)").refusal?.position, 14);
  });

  test('syntax errors carry the server message and the cursor position', () => {
    const d = createPolicy().classify('SELECT 1; SELEC 2');
    assert.equal(d.allowed, false);
    assert.deepEqual(d.statements, []);
    assert.equal(d.refusal?.code, ReasonCode.SyntaxError);
    assert.equal(d.refusal?.sqlstate, '42601');
    assert.equal(d.refusal?.message, 'syntax error at or near "SELEC"');
    assert.equal(d.refusal?.position, 11);
    assert.equal(createPolicy().classify("SELECT 'é😀' x y").refusal?.position, 15);
  });

  test('a NUL byte is refused: text after it would be hidden from the parser', () => {
    const d = createPolicy().classify('SELECT 1\0; DROP TABLE x');
    assert.equal(d.refusal?.code, ReasonCode.SyntaxError);
  });

  test('decisions are frozen and cached', () => {
    const p = createPolicy();
    const a = p.classify('SELECT 42');
    assert.equal(p.classify('SELECT 42'), a);
    assert.ok(Object.isFrozen(a) && Object.isFrozen(a.statements) && Object.isFrozen(a.statements[0]));
    const uncached = createPolicy({ cacheSize: 0 });
    assert.notEqual(uncached.classify('SELECT 42'), uncached.classify('SELECT 42'));
  });

  test('deeply nested expressions neither overflow nor slip through', () => {
    const p = createPolicy();
    const sum = `SELECT ${Array.from({ length: 5000 }, () => '1').join(' + ')} + pg_terminate_backend(1)`;
    assert.equal(code(p.classify(sum)), ReasonCode.ForbiddenFunction);
    const nested = `SELECT ${'coalesce('.repeat(200)}pg_cancel_backend(1)${')'.repeat(200)}`;
    assert.equal(code(p.classify(nested)), ReasonCode.ForbiddenFunction);
  });

  test('a WITH write is named with where it sits', () => {
    const r = createPolicy().classify('WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x').refusal;
    assert.equal(
      r?.message,
      'pg-readonly-proxy: DELETE in a WITH query is not allowed: this connection is read-only',
    );
    assert.equal(r?.kind, 'SELECT');
    const e = createPolicy().classify('EXPLAIN ANALYZE UPDATE t SET a = 1').refusal;
    assert.equal(
      e?.message,
      'pg-readonly-proxy: UPDATE inside EXPLAIN is not allowed: this connection is read-only',
    );
  });
});

describe('statement catalogue', () => {
  test('unknown statement node types are refused with 0A000, at the top and nested', () => {
    const policy = compileOptions(defaultPolicyOptions);
    const top = checkStatement({ FutureStmt: { x: 1 } }, policy);
    assert.equal(top.finding?.code, ReasonCode.Unknown);
    const nested = checkStatement(
      {
        SelectStmt: { targetList: [{ ResTarget: { val: { SubLink: { subselect: { FutureStmt: {} } } } } }] },
      },
      policy,
    );
    assert.equal(nested.finding?.code, ReasonCode.Unknown);
    const notStatement = checkStatement({ NotAStatement: {} }, policy);
    assert.equal(notStatement.finding?.code, ReasonCode.Unknown);
  });

  test('a function call under a field the policy has never heard of is still found', () => {
    const policy = compileOptions(defaultPolicyOptions);
    const tree = {
      SelectStmt: {
        brandNewField: [
          { Wrapper: { deeper: { FuncCall: { funcname: [{ String: { sval: 'pg_promote' } }] } } } },
        ],
      },
    };
    assert.equal(checkStatement(tree, policy).finding?.code, ReasonCode.ForbiddenFunction);
  });

  test('every statement type of the installed @pgsql/types has a rule', () => {
    const require = createRequire(import.meta.url);
    const file = require.resolve('@pgsql/types/types.d.ts');
    const names = [...readFileSync(file, 'utf8').matchAll(/^export interface (\w+Stmt) /gm)].map(
      (m) => m[1] ?? '',
    );
    const expectedMissing = new Set(['RawStmt', 'ReturnStmt', 'PLAssignStmt']);
    const missing = names.filter((n) => !STATEMENT_RULES.has(n) && !expectedMissing.has(n));
    assert.deepEqual(missing, []);
  });
});

describe('options', () => {
  test('allowStatements lifts catalogue refusals only', () => {
    const p = createPolicy({ allowStatements: ['analyze', 'VACUUM'] });
    assert.equal(code(p.classify('ANALYZE t')), 'allow');
    assert.equal(code(p.classify('VACUUM t')), 'allow');
    assert.equal(code(p.classify('CLUSTER t')), ReasonCode.Utility);
    assert.equal(code(createPolicy().classify('ANALYZE t')), ReasonCode.Utility);
    const w = createPolicy({ allowStatements: ['INSERT'] });
    assert.equal(code(w.classify('INSERT INTO t VALUES (1)')), 'allow');
    assert.equal(
      code(w.classify('INSERT INTO t SELECT pg_terminate_backend(1)')),
      ReasonCode.ForbiddenFunction,
    );
    assert.equal(code(w.classify('BEGIN READ WRITE')), ReasonCode.ReadWriteTransaction);
    const lock = createPolicy({ allowStatements: ['SELECT FOR SHARE'] });
    assert.equal(code(lock.classify('SELECT * FROM t FOR SHARE')), 'allow');
    assert.equal(code(lock.classify('SELECT * FROM t FOR UPDATE')), ReasonCode.LockingClause);
  });

  test('denyFunctions: plain and schema-qualified entries, case-insensitive', () => {
    const p = createPolicy({ denyFunctions: ['My_Func', 'audit.log_event'] });
    for (const sql of [
      'SELECT my_func()',
      'SELECT public.MY_FUNC(1)',
      'SELECT "my_func"()',
      'SELECT * FROM my_func()',
      'SELECT t.my_func FROM t',
      'SELECT audit.log_event(1)',
      'SELECT log_event(1)',
    ]) {
      assert.equal(code(p.classify(sql)), ReasonCode.ForbiddenFunction, sql);
    }
    assert.equal(code(p.classify('SELECT other.log_event(1)')), 'allow');
    assert.match(p.classify('SELECT my_func()').refusal?.message ?? '', /the proxy operator denies it/);
  });

  test('allowlist mode: curated built-ins and listed functions only', () => {
    const p = createPolicy({ functionMode: 'allowlist', allowFunctions: ['public.safe_fn', 'report'] });
    for (const sql of [
      'SELECT lower(x), count(*), now() FROM t GROUP BY 1',
      'SELECT pg_catalog.format_type(1, NULL)',
      "SELECT extract(year FROM now()), substring('abc' FROM 1 FOR 2), 'x' || 'y'",
      "SELECT set_config('search_path', '', false)",
      'SELECT public.safe_fn()',
      'SELECT safe_fn()',
      'SELECT anything.report()',
      "SELECT '1'::int, CAST(1 AS text)",
    ]) {
      assert.equal(code(p.classify(sql)), 'allow', sql);
    }
    for (const sql of [
      'SELECT my_function()',
      'SELECT evil.lower(x) FROM t',
      'SELECT other.safe_fn()',
      'SELECT pg_terminate_backend(1)',
      'SELECT pg_sleep(100)',
      "SELECT set_config('role', 'x', false)",
    ]) {
      assert.notEqual(code(p.classify(sql)), 'allow', sql);
    }
  });

  test('settingLimits: lower or equal allowed, higher, zero and unreadable refused', () => {
    const p = createPolicy({
      settingLimits: { statement_timeout: 30_000, Work_Mem: 65_536, max_parallel_workers_per_gather: 2 },
    });
    for (const sql of [
      'SET statement_timeout = 30000',
      'SET statement_timeout = 1000',
      "SET statement_timeout = '30s'",
      "SET statement_timeout = '0.5min'",
      "SET statement_timeout TO '250ms'",
      "SET LOCAL statement_timeout = '1 s'",
      'RESET statement_timeout',
      'SET statement_timeout TO DEFAULT',
      'RESET ALL',
      "SET work_mem = '64MB'",
      "SET work_mem = '4096kB'",
      'SET work_mem = 1024',
      "SELECT set_config('statement_timeout', '10s', false)",
      'SET max_parallel_workers_per_gather = 0',
    ]) {
      assert.equal(code(p.classify(sql)), 'allow', sql);
    }
    for (const sql of [
      'SET statement_timeout = 0',
      'SET statement_timeout = 30001',
      "SET statement_timeout = '1min'",
      "SET statement_timeout = '1h'",
      "SET statement_timeout = '31 s'",
      'SET statement_timeout = -1',
      "SET statement_timeout = '30 seconds'",
      "SET work_mem = '1GB'",
      "SET sort_mem = '1GB'",
      "SELECT set_config('statement_timeout', '0', false)",
      "SELECT set_config('statement_timeout', current_setting('x'), false)",
      'SET max_parallel_workers_per_gather = 8',
    ]) {
      const d = p.classify(sql);
      assert.equal(code(d), ReasonCode.ProtectedSetting, sql);
      assert.equal(d.refusal?.sqlstate, '42501');
    }
    assert.match(
      p.classify('SET statement_timeout = 0').refusal?.message ?? '',
      /the proxy limits statement_timeout to at most 30000 ms/,
    );
  });

  test('protectedSettings: any change refused, RESET allowed', () => {
    const p = createPolicy({ protectedSettings: ['Search_Path', 'my.tenant'] });
    assert.equal(code(p.classify('SET search_path = x')), ReasonCode.ProtectedSetting);
    assert.equal(
      code(p.classify("SELECT set_config('search_path', '', false)")),
      ReasonCode.ProtectedSetting,
    );
    assert.equal(code(p.classify("SET my.tenant = 'b'")), ReasonCode.ProtectedSetting);
    assert.equal(code(p.classify('SET "MY.TENANT" = \'b\'')), ReasonCode.ProtectedSetting);
    assert.equal(code(p.classify('RESET search_path')), 'allow');
    assert.equal(code(p.classify('SET search_path FROM CURRENT')), 'allow');
  });

  test('maxSleepSeconds is configurable', () => {
    const p = createPolicy({ maxSleepSeconds: 60 });
    assert.equal(code(p.classify('SELECT pg_sleep(60)')), 'allow');
    assert.equal(code(p.classify("SELECT pg_sleep_for('1 minute')")), 'allow');
    assert.equal(code(p.classify('SELECT pg_sleep(61)')), ReasonCode.ForbiddenFunction);
    assert.equal(code(createPolicy().classify('SELECT pg_sleep(10)')), 'allow');
    assert.equal(code(createPolicy().classify('SELECT pg_sleep(10.5)')), ReasonCode.ForbiddenFunction);
  });

  test('defaults', () => {
    assert.deepEqual(
      { ...defaultPolicyOptions },
      {
        allowStatements: [],
        functionMode: 'denylist',
        denyFunctions: [],
        allowFunctions: [],
        protectedSettings: [],
        settingLimits: {},
        maxSleepSeconds: 10,
        cacheSize: 10_000,
      },
    );
    assert.deepEqual(createPolicy().options, defaultPolicyOptions);
  });

  test('classifyWith is usable without the cache', () => {
    const d = classifyWith('SELECT 1', compileOptions(defaultPolicyOptions));
    assert.equal(d.allowed, true);
  });
});

describe('helpers', () => {
  test("parseBool reads what PostgreSQL's parse_bool reads", () => {
    for (const t of ['on', 'ON', 'true', 't', 'tr', 'TRU', 'yes', 'y', 'ye', '1'])
      assert.equal(parseBool(t), true, t);
    for (const f of ['off', 'of', 'false', 'f', 'fa', 'no', 'n', '0', 'OFF'])
      assert.equal(parseBool(f), false, f);
    for (const x of ['', 'o', 'onn', 'offf', '2', '01', 'truee', 'yess', ' on'])
      assert.equal(parseBool(x), undefined, x);
  });

  test('encoding names are cleaned like pg_char_to_encoding does', () => {
    assert.equal(cleanEncodingName('Shift-JIS_2004'), 'shiftjis2004');
    for (const e of [
      'SJIS',
      'Shift_JIS',
      's-j-i-s',
      'BIG5',
      'big_5',
      'Win950',
      'GBK',
      'cp936'.replace('cp', 'win'),
      'UHC',
      'windows-949',
      'GB18030',
      'johab',
      'MS_KANJI',
    ]) {
      assert.equal(isClientOnlyEncoding(e), true, e);
    }
    for (const e of ['UTF8', 'utf-8', 'LATIN1', 'EUC_JP', 'EUC_KR', 'SQL_ASCII', 'WIN1252', 'KOI8R']) {
      assert.equal(isClientOnlyEncoding(e), false, e);
    }
  });

  test('setting values with units', () => {
    assert.equal(parseSettingNumber('statement_timeout', '5s'), 5000);
    assert.equal(parseSettingNumber('statement_timeout', ' 1.5 min '), 90_000);
    assert.equal(parseSettingNumber('statement_timeout', '2h'), 7_200_000);
    assert.equal(parseSettingNumber('statement_timeout', '1d'), 86_400_000);
    assert.equal(parseSettingNumber('statement_timeout', '500'), 500);
    assert.equal(parseSettingNumber('statement_timeout', '0x10'), 16);
    assert.equal(parseSettingNumber('statement_timeout', '5S'), undefined);
    assert.equal(parseSettingNumber('statement_timeout', '5 seconds'), undefined);
    assert.equal(parseSettingNumber('work_mem', '64MB'), 65_536);
    assert.equal(parseSettingNumber('work_mem', '1GB'), 1_048_576);
    assert.equal(parseSettingNumber('work_mem', '64mb'), undefined);
    assert.equal(parseSettingNumber('max_connections', '5'), 5);
    assert.equal(parseSettingNumber('max_connections', '5s'), undefined);
  });

  test('interval literals for pg_sleep_for', () => {
    assert.equal(parseIntervalSeconds('5 seconds'), 5);
    assert.equal(parseIntervalSeconds('1 min 30 s'), 90);
    assert.equal(parseIntervalSeconds('00:00:05'), 5);
    assert.equal(parseIntervalSeconds('1:00'), 3600);
    assert.equal(parseIntervalSeconds('@ 2 hours ago'), -7200);
    assert.equal(parseIntervalSeconds('100 ms'), 0.1);
    assert.equal(parseIntervalSeconds('3'), 3);
    assert.equal(parseIntervalSeconds('1 fortnight'), undefined);
    assert.equal(parseIntervalSeconds('PT5S'), undefined);
    assert.equal(parseIntervalSeconds(''), undefined);
  });
});

describe('formatCheckReport', () => {
  test('one line per statement with ALLOW/DENY, kind, code, message and hint', () => {
    const sql = 'SELECT 1; INSERT INTO t VALUES (1)';
    const out = formatCheckReport(sql, createPolicy().classify(sql));
    const lines = out.split('\n');
    assert.equal(lines.length, 2);
    assert.match(lines[0] ?? '', /^ALLOW\s+SELECT\s+SELECT 1$/);
    assert.match(
      lines[1] ?? '',
      /^DENY\s+INSERT\s+write \(25006\): pg-readonly-proxy: INSERT is not allowed/,
    );
    assert.match(lines[1] ?? '', /Hint: pg-readonly-proxy allows read-only statements only/);
  });

  test('empty input and syntax errors get one line', () => {
    assert.match(formatCheckReport('', createPolicy().classify('')), /^ALLOW/);
    const out = formatCheckReport('SELEC 1', createPolicy().classify('SELEC 1'));
    assert.match(
      out,
      /^DENY\s+UNKNOWN\s+syntax_error \(42601\): syntax error at or near "SELEC" \[at character 1\]$/,
    );
  });
});
